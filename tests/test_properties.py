"""Property-based attack on every optimizer of the package (issue 8), derandomized.

Whatever the inputs, an optimizer either raises a ``ValueError``/``TypeError`` that names the
argument or the leaf's path, or returns finite updates with the params' structure, shapes and
dtypes, a state whose dtypes do not change, and a trajectory within a stated tolerance of a
float64 reference:

- float32 (float16 and bfloat16 leaves are computed in float32): the largest deviation from the
  float64 reference after t steps is at most ``FLOAT32_RTOL`` times the reference's path length
  (the sum over steps of its largest step), plus the rounding of the params themselves (half an
  ulp of the largest param per step), for gradients anywhere in [1e-30, 1e18], zeros included.
  The reference runs with the float32-rounded hyperparameters and flushes values below
  float32's smallest normal number to zero, as XLA does: a second moment that underflows holds
  nothing, and with ``eps = 0`` such an entry gets a zero step (``eps > 0``: ``m / eps``).
- Above |g| ~ 1.8e19, g^2 overflows float32: the second moment is inf for good, and later steps
  can be NaN (``0 * inf`` with ``b2 = 0`` or a zero learning rate). ``skip_nonfinite`` (default
  ``check="all"``) skips such a step, keeps the state finite and the updates finite: checked.
- float64 (x64): the same, to ``FLOAT64_RTOL``, for gradients in [1e-150, 1e150].
- NaN or inf gradients: ``skip_nonfinite`` returns zero updates and keeps the state.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adam_optax
from tests.references import adamax_reference, algorithm1

# Measured worst over 300 (float32) and 150 (float64) derandomized examples: 2.4e-7 (nadam)
# and 4.1e-16 (nadamw) of the path length, beyond the params' own rounding.
FLOAT32_RTOL = 1e-6
FLOAT64_RTOL = 4e-15
STEPS, WIDTH = 8, 6
ONE_BELOW = float(np.nextafter(np.float32(1), np.float32(0)))  # 0.99999994, the last float32 < 1

fast = settings(
  max_examples=40,
  deadline=None,
  derandomize=True,
  database=None,
  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

decays = st.one_of(
  st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, ONE_BELOW]), st.floats(0, 0.9999)
)
rates = st.one_of(st.just(0.0), st.floats(-6, 1).map(lambda e: 10.0**e))
epsilons = st.sampled_from([0.0, 1e-30, 1e-12, 1e-8, 1e-3, 1.0])


@st.composite
def configurations(draw):
  """A family member, its hyperparameters, and the reference that computes the same thing."""
  name = draw(st.sampled_from(["adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax"]))
  common = {"learning_rate": draw(rates), "b1": draw(decays), "b2": draw(decays)}
  common["eps"] = draw(epsilons)
  extra: dict = {}
  if name != "adamax":
    common["eps_root"] = draw(st.sampled_from([0.0, 0.0, 1e-16, 1e-8]))
  if name in ("adamw", "nadamw"):
    extra["weight_decay"] = draw(st.sampled_from([0.0, 1e-4, 0.1, 1.0]))
  if name in ("nadam", "nadamw"):
    extra["momentum_decay"] = draw(st.sampled_from([None, 0.0, 4e-3, 1.0]))
  if name == "amsgrad":
    extra["convention"] = draw(st.sampled_from(["torch", "optax", "paper"]))
  return name, common, extra


def reference(name, common, extra, grads, params, dtype):
  """The float64 trajectory of the same optimizer, hyperparameters rounded to ``dtype``."""
  rounded = {k: float(np.asarray(v, dtype)) for k, v in common.items()}
  lr, b1, b2, eps = (rounded[k] for k in ("learning_rate", "b1", "b2", "eps"))
  flush = float(np.finfo(dtype).tiny)
  if name == "adamax":
    return adamax_reference(grads, params, lr, b1, b2, eps, flush=flush)
  options: dict = {"flush": flush}
  if name in ("nadam", "nadamw"):
    options.update(nesterov=True, momentum_decay=extra["momentum_decay"])
  if name in ("adamw", "nadamw"):
    options["weight_decay"] = float(np.asarray(extra["weight_decay"], dtype))
  if name == "amsgrad":
    options["amsgrad"] = extra["convention"]
  return algorithm1(grads, params, lr, b1, b2, eps, rounded["eps_root"], **options)


def gradients(draw, low, high, dtype):
  """STEPS x WIDTH gradients of one random scale in [10^low, 10^high], some zeros and spread."""
  scale = 10.0 ** draw(st.floats(low, high))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  values = scale * rng.standard_normal((STEPS, WIDTH)) * 10.0 ** rng.uniform(-1, 1, (STEPS, WIDTH))
  values[rng.random((STEPS, WIDTH)) < 0.2] = 0.0
  if draw(st.booleans()):
    values[:, 0] = 0.0  # an entry that never sees a gradient
  return values.astype(dtype)


def _run(optimizer, grads, params):
  params = jnp.asarray(params)
  state = optimizer.init(params)
  trajectory = []
  for grad in grads:
    updates, state = optimizer.update(jnp.asarray(grad), state, params)
    assert updates.dtype == params.dtype and updates.shape == params.shape
    assert np.isfinite(np.asarray(updates)).all()
    params = optax.apply_updates(params, updates)
    trajectory.append(np.asarray(params, np.float64))
  return np.stack(trajectory), state


def _check_against_reference(config, grads, dtype, rtol):
  name, common, extra = config
  params = np.linspace(-1.0, 1.0, WIDTH).astype(dtype)
  optimizer = getattr(adam_optax, name)(**common, **extra)
  ours, state = _run(optimizer, grads, params)
  expected = reference(name, common, extra, grads, params, dtype)
  steps = np.abs(np.diff(np.concatenate([params[None].astype(np.float64), expected]), axis=0))
  path = np.cumsum(steps.max(axis=1))
  # Each step also rounds the params themselves to dtype: half an ulp of the largest.
  rounding = np.cumsum(np.finfo(dtype).eps / 2 * np.abs(expected).max(axis=1))
  error = np.abs(ours - expected).max(axis=1)
  bound = rtol * path + rounding + np.finfo(dtype).tiny
  assert np.all(error <= bound), (error - rounding) / np.maximum(path, 1e-300)
  floating = [leaf for leaf in jax.tree.leaves(state) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  assert all(np.isfinite(np.asarray(leaf, np.float64)).all() for leaf in floating)


@fast
@given(config=configurations(), data=st.data())
def test_float32_follows_the_float64_reference_from_1e_30_to_1e_18(config, data):
  grads = gradients(data.draw, -30, 18, np.float32)
  _check_against_reference(config, grads, np.float32, FLOAT32_RTOL)


@fast
@given(config=configurations(), data=st.data())
def test_float64_follows_the_float64_reference_from_1e_150_to_1e_150(x64, config, data):
  grads = gradients(data.draw, -150, 150, np.float64)
  _check_against_reference(config, grads, np.float64, FLOAT64_RTOL)


@fast
@given(config=configurations(), data=st.data())
def test_float32_overflow_is_caught_by_skip_nonfinite(config, data):
  """|g| in [1e19.5, 1e30]: g^2 overflows; skip_nonfinite skips those steps."""
  name, common, extra = config
  grads = gradients(data.draw, 19.5, 30, np.float32)
  params = np.zeros(WIDTH, np.float32)
  guarded = adam_optax.skip_nonfinite(getattr(adam_optax, name)(**common, **extra))
  _, state = _run(guarded, grads, params)
  for leaf in jax.tree.leaves(state.inner_state):
    assert np.isfinite(np.asarray(leaf, np.float64)).all()
  if name != "adamax":  # AdaMax never squares: nothing overflows
    assert int(state.skipped) >= 1


# Trees, dtypes and leaves of every kind -------------------------------------------------

DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.complex64]
SHAPES = [(), (0,), (3,), (2, 3), (1, 0, 2)]


@st.composite
def leaves(draw):
  if draw(st.integers(0, 6)) == 0:
    return ("python", (), None)
  return ("array", draw(st.sampled_from(SHAPES)), draw(st.sampled_from(DTYPES)))


def trees(leaf):
  """Nested dicts, lists and tuples of ``leaf`` and None (params are never a bare None)."""
  return st.recursive(
    st.one_of(leaf, st.none()),
    lambda children: st.one_of(
      st.dictionaries(st.sampled_from(["a", "b", "w", "bias"]), children, max_size=3),
      st.lists(children, max_size=3),
      st.lists(children, max_size=3).map(tuple),
    ),
    max_leaves=6,
  ).filter(lambda tree: tree is not None)


def _is_spec(x):
  return isinstance(x, tuple) and len(x) == 3 and x[0] in ("python", "array")


def _materialise(spec_tree, rng, scale):
  def make(spec):
    kind, shape, dtype = spec
    if kind == "python":
      return float(rng.standard_normal() * scale)
    finite_max = float(jnp.finfo(dtype).max) / 4
    values = np.asarray(np.clip(rng.standard_normal(shape) * scale, -finite_max, finite_max))
    values[rng.random(shape) < 0.3] = 0.0
    if jnp.issubdtype(dtype, jnp.complexfloating):
      values = values + 1j * np.clip(rng.standard_normal(shape) * scale, -finite_max, finite_max)
    return jnp.asarray(values, dtype)

  return jax.tree.map(make, spec_tree, is_leaf=_is_spec)


def _has_python_leaves(tree):
  return any(isinstance(leaf, float) for leaf in jax.tree.leaves(tree))


def _family(draw, *, python_leaves=False):
  name = draw(st.sampled_from(["adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax"]))
  kwargs = {"b1": draw(decays), "b2": draw(decays), "eps": draw(epsilons)}
  if name != "adamax" and draw(st.booleans()):
    kwargs["nu_dtype"] = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
  if draw(st.booleans()):
    kwargs["mu_dtype"] = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
  optimizer = getattr(adam_optax, name)(draw(rates), **kwargs)
  # optax.clip_by_global_norm itself fails on Python-float leaves.
  wrapper = draw(st.sampled_from(["none", "skip"] if python_leaves else ["none", "skip", "chain"]))
  if wrapper == "skip":
    return adam_optax.skip_nonfinite(optimizer)
  if wrapper == "chain":
    return optax.chain(optax.clip_by_global_norm(1.0), optimizer)
  return optimizer


@fast
@given(spec=trees(leaves()), data=st.data())
def test_any_tree_any_dtype_gives_finite_updates_of_the_params_dtypes(spec, data):
  rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
  scale = 10.0 ** data.draw(st.floats(-30, 4))
  params = _materialise(spec, rng, 1.0)
  optimizer = _family(data.draw, python_leaves=_has_python_leaves(params))
  state = optimizer.init(params)
  for _ in range(2):
    grads = _materialise(spec, rng, scale)
    updates, new_state = optimizer.update(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for update, grad in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
      assert jnp.shape(update) == jnp.shape(grad)
      assert jnp.result_type(update) == jnp.result_type(grad)
      assert np.isfinite(np.asarray(update, np.complex128)).all()
    assert jax.tree.map(jnp.result_type, new_state) == jax.tree.map(jnp.result_type, state)
    params, state = optax.apply_updates(params, updates), new_state


@fast
@given(spec=trees(leaves()), data=st.data())
def test_nonfinite_gradients_are_skipped_and_named(spec, data):
  rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
  params = _materialise(spec, rng, 1.0)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  sized = [i for i, (_, leaf) in enumerate(flat) if np.size(leaf) > 0]
  if not sized:
    return
  bad = data.draw(st.sampled_from(sized))
  value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
  grads = [jnp.asarray(leaf) for _, leaf in flat]
  grads[bad] = grads[bad].reshape(-1).at[0].set(value).reshape(jnp.shape(grads[bad]))
  grads = jax.tree.unflatten(treedef, grads)
  optimizer = adam_optax.skip_nonfinite(
    _family(data.draw, python_leaves=_has_python_leaves(params))
  )
  state = optimizer.init(params)
  updates, new_state = optimizer.update(grads, state, params)
  assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
  same = jax.tree.map(
    lambda a, b: bool(np.array_equal(a, b)), new_state.inner_state, state.inner_state
  )
  assert all(jax.tree.leaves(same))
  report = adam_optax.nonfinite_report(new_state, params)
  assert report.endswith(f"the first at {jax.tree_util.keystr(flat[bad][0]) or '<root>'}") or (
    "the first at" in report  # an earlier leaf may also be bad (Python floats are leaves too)
  )


# Bad input is refused, naming what was wrong --------------------------------------------

BAD_VALUES = {
  "learning_rate": [-1.0, np.nan, np.inf, "0.1", None, [1e-3], True, 1e39, 10**400, 1j],
  "b1": [1.0, -0.1, 0.99999999, np.nan, "0.9", True, jnp.ones(2), 10**400],
  "b2": [1.0, 1.5, 0.999999999, -1e-30, None, False],
  "eps": [-1e-8, np.inf, np.nan, 1e300, "1e-8", jnp.ones(3)],
  "eps_root": [-1.0, np.inf, 1e300],
}


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax"])
@pytest.mark.parametrize(
  ("argument", "value"),
  [(argument, value) for argument, values in BAD_VALUES.items() for value in values],
  ids=lambda x: repr(x)[:20],
)
def test_bad_hyperparameters_are_refused_naming_the_argument(name, argument, value):
  if name == "adamax" and argument == "eps_root":
    return  # adamax has no eps_root
  kwargs = {"learning_rate": 1e-3, argument: value}
  with pytest.raises((ValueError, TypeError), match=rf"^{name}\({argument}="):
    getattr(adam_optax, name)(**kwargs)


@fast
@given(spec=trees(leaves()), data=st.data())
def test_mismatched_gradients_are_refused_naming_the_leaf(spec, data):
  rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
  params = _materialise(spec, rng, 1.0)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  if not flat:
    return
  index = data.draw(st.integers(0, len(flat) - 1))
  path = jax.tree_util.keystr(flat[index][0]) or "<root>"
  grads = [jnp.asarray(leaf) for _, leaf in flat]
  kind = data.draw(st.sampled_from(["shape", "int", "complex"]))
  if kind == "shape":
    grads[index] = jnp.zeros((*jnp.shape(grads[index]), 2), grads[index].dtype)
    error, message = ValueError, f"the gradient at {path} has shape"
  elif kind == "int":
    grads[index] = jnp.zeros(jnp.shape(grads[index]), jnp.int32)
    error, message = TypeError, f"the gradient at {path} has dtype int32"
  else:
    if jnp.iscomplexobj(grads[index]):
      return
    grads[index] = jnp.zeros(jnp.shape(grads[index]), jnp.complex64)
    error, message = TypeError, f"the gradient at {path} is complex64 but the param is real"
  optimizer = _family(data.draw, python_leaves=_has_python_leaves(params))
  state = optimizer.init(params)
  with pytest.raises(error, match=re.escape(message)):
    optimizer.update(jax.tree.unflatten(treedef, grads), state, params)
