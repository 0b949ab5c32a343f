"""fused=True: update_and_apply's CPU kernel is the chain, bit for bit; where it falls back.

The reference is always the same optimizer with ``fused=False`` (the XLA
path), jitted, on the same gradients: its ``update`` followed by
``optax.apply_updates`` in one jitted function. A fused optimizer's ``update``
is the chain's own (the kernel runs in :func:`adam_optax.update_and_apply`
only). Both paths are also checked against optax, torch and float64
references by the parity suites, which run with ``fused`` both ways.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adam_optax
from adam_optax import _fused, _kernel
from tests.references import relative_gap

LOAD_ERROR = _kernel.load_error()
pytestmark = pytest.mark.skipif(
  LOAD_ERROR is not None and not os.environ.get("CI"),
  reason=f"the fused CPU kernel is not built here: {LOAD_ERROR}",
)

STEPS = 4
# Odd sizes, a 0-d leaf, a leaf past the threading threshold (2**17 elements)
# whose chunks do not end on a block, and an empty one.
SHAPES = {"a": (3, 5), "b": (), "c": (131_071 + 4_099,), "d": (1000,), "e": (0, 2)}
MEMBERS = {
  "adam": lambda **k: adam_optax.adam(1e-3, **k),
  "adam-eps-root": lambda **k: adam_optax.adam(3e-3, b1=0.5, b2=0.9, eps=0.0, eps_root=1e-8, **k),
  "adam-nesterov": lambda **k: adam_optax.adam(1e-3, nesterov=True, **k),
  "adamw": lambda **k: adam_optax.adamw(1e-3, weight_decay=0.1, **k),
  "adamw-masked-schedules": lambda **k: adam_optax.adamw(
    optax.cosine_decay_schedule(1e-2, 10),
    weight_decay=optax.linear_schedule(0.0, 0.5, 10),
    mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
    **k,
  ),
  "nadam": lambda **k: adam_optax.nadam(1e-3, **k),
  "nadam-torch": lambda **k: adam_optax.nadam(1e-3, momentum_decay=4e-3, **k),
  "nadamw": lambda **k: adam_optax.nadamw(1e-3, weight_decay=0.1, **k),
  "amsgrad-torch": lambda **k: adam_optax.amsgrad(1e-3, **k),
  "amsgrad-optax": lambda **k: adam_optax.amsgrad(1e-3, convention="optax", **k),
  "amsgrad-paper": lambda **k: adam_optax.amsgrad(1e-3, convention="paper", **k),
  "adamax": lambda **k: adam_optax.adamax(1e-3, **k),
}


def _tree(dtype, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return {
    name: jnp.asarray(
      scale * rng.standard_normal(shape) * np.exp(rng.standard_normal(shape)), dtype
    )
    for name, shape in SHAPES.items()
  }


def _grads(dtype, scale, steps=STEPS):
  return [_tree(dtype, seed=1 + t, scale=scale) for t in range(steps)]


def _step(optimizer):
  return jax.jit(lambda p, s, g: adam_optax.update_and_apply(optimizer, g, s, p))


def _run(optimizer, params, grads):
  """Per step of update_and_apply: the params and the state."""
  step = _step(optimizer)
  state = optimizer.init(params)
  out = []
  for g in grads:
    params, state = step(params, state, g)
    out.append((params, state))
  return out


def _assert_bitwise(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_kernel_is_built_where_the_suite_runs_in_ci():
  assert LOAD_ERROR is None, LOAD_ERROR


@pytest.mark.parametrize("scale", [1.0, 1e-9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(MEMBERS))
def test_bit_identical_to_the_xla_path(request, name, dtype, scale):
  """Params and state equal the XLA path's exactly, step after step.

  Scale 1e-9 makes eps and eps_root dominate the denominator.
  """
  if dtype == np.float64:
    request.getfixturevalue("x64")
  params, grads = _tree(dtype), _grads(dtype, scale)
  _assert_bitwise(
    _run(MEMBERS[name](fused=True), params, grads), _run(MEMBERS[name](), params, grads)
  )


UNIT_RATES = {
  "adam lr 1": lambda **k: adam_optax.adam(1.0, **k),
  "adam lr schedule returning 1": lambda **k: adam_optax.adam(optax.constant_schedule(1.0), **k),
  "nadam lr 1": lambda **k: adam_optax.nadam(1.0, **k),
  "adamax lr 1": lambda **k: adam_optax.adamax(1.0, **k),
  "amsgrad-paper lr 1 (no bias correction)": lambda **k: adam_optax.amsgrad(
    1.0, convention="paper", **k
  ),
  "adamw lr 1": lambda **k: adam_optax.adamw(1.0, weight_decay=0.1, **k),
  "adamw weight_decay 1": lambda **k: adam_optax.adamw(1e-3, weight_decay=1.0, **k),
  "adamw lr 1, weight_decay schedule returning 1": lambda **k: adam_optax.adamw(
    1.0, weight_decay=lambda count: 1.0, **k
  ),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(UNIT_RATES))
def test_a_learning_rate_or_decay_of_one_is_bit_identical_too(request, name, dtype):
  """XLA drops a multiply by the constant 1 and fuses the product before it into the
  add after it; the kernel is told so (issue 17: 46,447 of 140,000 params differed)."""
  if dtype == np.float64:
    request.getfixturevalue("x64")
  params, grads = _tree(dtype), _grads(dtype, 1e-2, steps=3)
  make = UNIT_RATES[name]
  _assert_bitwise(_run(make(fused=True), params, grads), _run(make(), params, grads))


def test_a_traced_learning_rate_of_one_is_multiplied_by_as_xla_does():
  """Only a constant is folded: a rate of 1 passed into the step (as inject_hyperparams
  passes it) keeps its multiply, on both paths."""
  params, grads = _tree(np.float32), _grads(np.float32, 1e-2, steps=2)
  results = []
  for fused in (True, False):

    def step(p, s, g, lr, fused=fused):
      return adam_optax.update_and_apply(adam_optax.adam(lr, fused=fused), g, s, p)

    out, state, lr = params, adam_optax.adam(1.0).init(params), jnp.ones([], jnp.float32)
    for g in grads:
      out, state = jax.jit(step)(out, state, g, lr)
    assert "adam_optax_fused" in str(jax.make_jaxpr(step)(out, state, g, lr)) or not fused
    results.append(out)
  _assert_bitwise(results[0], results[1])


SMALL_MINOR = {"a": (17, 5), "b": (16, 5), "c": (100, 3), "d": (2, 3, 7), "e": (31, 2)}


@pytest.mark.parametrize("scale", [1.0, 1e-2])
@pytest.mark.parametrize(
  "name", ["adam", "adamw-masked-schedules", "nadam", "nadamw", "amsgrad-torch"]
)
def test_small_minor_dimensions_state_identical_params_within_one_rounding(name, scale):
  """Leaves with a short last dimension: XLA loops over their rows, and its scalar
  remainder code fuses the other product of NAdam's numerator and AdamW's decay
  into an FMA than its vector code does (the kernel follows the vector code).

  The state is still bit-identical; the params after ``update_and_apply``
  differ by that one rounding of the update, relative to the largest param
  (``benchmarks/parity.py --fused``: 2.6e-8 over 30 steps).
  """
  rng = np.random.default_rng(0)
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SMALL_MINOR.items()}
  grads = [
    jax.tree.map(
      lambda p, t=t: jnp.asarray(scale * np.cos(np.arange(p.size) + t), p.dtype).reshape(p.shape),
      params,
    )
    for t in range(8)
  ]
  fused = _run(MEMBERS[name](fused=True), params, grads)
  xla = _run(MEMBERS[name](), params, grads)
  _assert_bitwise([s for _, s in fused], [s for _, s in xla])
  for (ours, _), (theirs, _) in zip(fused, xla, strict=True):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
      assert relative_gap(a, b) <= 2.0**-24


def test_one_call_per_32_leaves_and_none_per_leaf():
  optimizer = adam_optax.adam(1e-3, fused=True)
  params = {f"p{i:03d}": jnp.ones(4) for i in range(70)}
  step = functools.partial(adam_optax.update_and_apply, optimizer)
  jaxpr = jax.make_jaxpr(step)(params, optimizer.init(params), params)
  assert str(jaxpr).count("target_name=adam_optax_fused_f32") == 3  # 32 + 32 + 6 leaves
  leaf_sized = [
    eqn.primitive.name
    for eqn in jaxpr.jaxpr.eqns
    if any(getattr(v.aval, "shape", ()) == (4,) for v in eqn.outvars)
  ]
  assert leaf_sized == ["custom_jvp_call"] * 3  # no per-leaf arithmetic outside the kernel


@pytest.mark.parametrize("name", ["adam", "adamw", "amsgrad-torch"])
def test_states_are_interchangeable_with_the_unfused_optimizer(name):
  params, grads = _tree(np.float32), _grads(np.float32, 1e-2, steps=6)
  fused, plain = MEMBERS[name](fused=True), MEMBERS[name]()
  state = fused.init(params)
  _assert_bitwise(state, plain.init(params))
  steps = [_step(fused), _step(plain)]
  swapped = [params, plain.init(params)]  # alternate the two optimizers
  reference = [params, plain.init(params)]
  for t, g in enumerate(grads):
    swapped = steps[t % 2](*swapped, g)
    reference = steps[1](*reference, g)
  _assert_bitwise(swapped, reference)


@pytest.mark.parametrize(
  ("dtype", "mu_dtype"),
  [(jnp.bfloat16, None), (jnp.float16, None), (jnp.bfloat16, np.float32)],
  ids=["bfloat16", "float16", "bfloat16-mu-float32"],
)
@pytest.mark.parametrize("name", ["adam", "adamw-masked-schedules", "nadamw", "amsgrad-torch"])
def test_half_precision_params_are_bit_identical_too(name, dtype, mu_dtype):
  """Half-precision params with the default float32 second moment: float32 math,
  rounded to the params' dtype between the chain's maps as the chain rounds."""
  params, grads = _tree(dtype), _grads(dtype, 1e-2, steps=6)
  fused = _run(MEMBERS[name](fused=True, mu_dtype=mu_dtype), params, grads)
  xla = _run(MEMBERS[name](mu_dtype=mu_dtype), params, grads)
  _assert_bitwise(fused, xla)


@pytest.mark.parametrize(
  ("dtype", "mu_dtype", "nu_dtype"),
  [
    (np.float32, jnp.bfloat16, None),
    (np.float32, None, jnp.bfloat16),
    (np.float64, np.float32, np.float16),
  ],
  ids=["f32-mu-bf16", "f32-nu-bf16", "f64-mu-f32-nu-f16"],
)
def test_moments_in_a_coarser_dtype_round_within_one_unit_of_it(request, dtype, mu_dtype, nu_dtype):
  """Moments stored in a coarser dtype than the params'.

  XLA then computes the moment in the loop that stores it and again in the
  loop of the update, with the other product of ``b1 m + (1 - b1) g`` fused
  into an FMA: the stored moment can round to the neighbouring value of its
  dtype, and the update moves with it. Both are equally valid roundings of the
  same step (the parity suites hold both to the same references).
  ``benchmarks/parity.py --fused`` measures, over 30 steps of five members at
  three gradient scales, the largest gap relative to the largest value: state
  8.1e-4 / 3.9e-5 / 4.0e-4 (one unit of bfloat16 or float16), params after
  ``update_and_apply`` 1.2e-6 / 3.3e-7 / 2.7e-7.
  """
  if dtype == np.float64:
    request.getfixturevalue("x64")
  kwargs = {"mu_dtype": mu_dtype, "nu_dtype": nu_dtype}
  params, grads = _tree(dtype), _grads(dtype, 1e-2, steps=8)
  fused = _run(adam_optax.adamw(1e-3, fused=True, **kwargs), params, grads)
  xla = _run(adam_optax.adamw(1e-3, **kwargs), params, grads)
  for (out, state), (xla_out, xla_state) in zip(fused, xla, strict=True):
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(xla_out), strict=True):
      assert a.size == 0 or relative_gap(a, b) <= 1e-5
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(xla_state), strict=True):
      assert a.size == 0 or relative_gap(a, b) <= 1e-3


@pytest.mark.parametrize("scale", [1.0, 1e-6])
@pytest.mark.parametrize("name", ["adam", "adamw-masked-schedules", "nadam-torch", "amsgrad-paper"])
def test_float64_moments_of_float32_params_state_identical_params_within_a_tenth_ulp(
  x64, name, scale
):
  """mu_dtype=nu_dtype=float64 on float32 params (issue 17): the stored moments are
  bit-identical, but XLA recomputes the float32 moment in the loop of the update with
  the other product of ``b1 m + (1 - b1) g`` fused into an FMA, so the update can
  differ by that rounding. Measured over 8 steps of every member at gradient scales
  1, 1e-2, 1e-6: up to 7 % of the params differ, by at most 1.3e-8 of the largest
  param (a tenth of its last place); the bound checked is 2**-24 (6.0e-8).
  """
  kwargs = {"mu_dtype": np.float64, "nu_dtype": np.float64}
  params, grads = _tree(np.float32), _grads(np.float32, scale, steps=8)
  fused = _run(MEMBERS[name](fused=True, **kwargs), params, grads)
  xla = _run(MEMBERS[name](**kwargs), params, grads)
  _assert_bitwise([s for _, s in fused], [s for _, s in xla])
  for (ours, _), (theirs, _) in zip(fused, xla, strict=True):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
      assert a.dtype == np.float32 and relative_gap(a, b) <= 2.0**-24


def test_mixed_tree_complex_and_python_leaves_take_the_xla_path_in_the_same_step():
  params = {
    "real": jnp.linspace(-1.0, 1.0, 6),
    "complex": jnp.asarray([1 + 2j, -0.5j], jnp.complex64),
    "bf16": jnp.ones(3, jnp.bfloat16),
    "none": None,
  }
  grads = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)
  fused = _run(adam_optax.adamw(1e-2, fused=True), params, [grads] * 3)
  xla = _run(adam_optax.adamw(1e-2), params, [grads] * 3)
  _assert_bitwise(fused, xla)


def test_update_and_apply_is_update_then_apply_updates_for_any_optimizer():
  params, grads = _tree(np.float32), _grads(np.float32, 1e-2)
  for optimizer in (optax.sgd(1e-2, momentum=0.9), optax.chain(adam_optax.adam(1e-3, fused=True))):
    state = optimizer.init(params)
    p1, s1 = jax.jit(lambda p, s, g, o=optimizer: adam_optax.update_and_apply(o, g, s, p))(
      params, state, grads[0]
    )

    @jax.jit
    def two_lines(p, s, g, o=optimizer):
      updates, s = o.update(g, s, p)
      return optax.apply_updates(p, updates), s

    _assert_bitwise((p1, s1), two_lines(params, state, grads[0]))


def test_donated_step_writes_params_and_state_in_place():
  optimizer = adam_optax.adamw(1e-3, weight_decay=0.1, fused=True)
  params = {"w": jnp.ones((512, 256)), "b": jnp.ones(256)}
  state = optimizer.init(params)
  step = jax.jit(
    lambda p, s, g: adam_optax.update_and_apply(optimizer, g, s, p), donate_argnums=(0, 1)
  )
  compiled = step.lower(params, state, params).compile()
  memory = compiled.memory_analysis()
  plain = adam_optax.adamw(1e-3, weight_decay=0.1)
  xla = jax.jit(lambda p, s, g: adam_optax.update_and_apply(plain, g, s, p), donate_argnums=(0, 1))
  xla_memory = xla.lower(params, plain.init(params), params).compile().memory_analysis()
  assert memory.alias_size_in_bytes == xla_memory.alias_size_in_bytes  # every param and moment
  assert memory.temp_size_in_bytes < 1024  # only the per-step scalars
  assert " copy(" not in compiled.as_text().split("ENTRY", 1)[1]


def test_in_a_training_step_update_and_apply_copies_nothing_and_update_is_the_chain():
  """update_and_apply writes over the donated params and state, whatever the gradients'
  origin; a fused optimizer's update is the chain's own, with no kernel call (the rule
  of docs/performance_fused.md: there the kernel would need a buffer for the updates)."""
  optimizer = adam_optax.adam(1e-3, fused=True)
  params = {"w": jnp.ones((256, 128)), "b": jnp.ones(128)}

  def train_step(params, state, x, fused_step):
    grads = jax.grad(lambda p: jnp.sum(jnp.tanh(x @ p["w"] + p["b"])))(params)
    if fused_step:
      return adam_optax.update_and_apply(optimizer, grads, state, params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  entries = {}
  for fused_step in (True, False):
    step = jax.jit(functools.partial(train_step, fused_step=fused_step), donate_argnums=(0, 1))
    compiled = step.lower(params, optimizer.init(params), jnp.ones((4, 256))).compile()
    entries[fused_step] = compiled.as_text().split("ENTRY", 1)[1]
  assert " copy(" not in entries[True]  # (fusions may transpose)
  assert 'custom_call_target="adam_optax_fused_f32"' in entries[True]
  assert "adam_optax_fused" not in entries[False]
  plain = adam_optax.adam(1e-3)
  assert str(jax.make_jaxpr(optimizer.update)(params, optimizer.init(params), params)) == str(
    jax.make_jaxpr(plain.update)(params, plain.init(params), params)
  )


@pytest.mark.parametrize("fused", [False, True])
def test_update_and_apply_needs_the_params_for_every_optimizer(fused):
  """issue 17: an unfused optimizer returned None params, a fused one raised."""
  params = {"w": jnp.ones(3)}
  for optimizer in (adam_optax.adamw(1e-3, fused=fused), optax.sgd(1e-2)):
    state = optimizer.init(params)
    with pytest.raises(ValueError, match=re.escape("update_and_apply(params=None)")):
      adam_optax.update_and_apply(optimizer, params, state, None)


def test_fused_must_be_a_bool_and_is_checked_first():
  for value in (1, "yes", None, np.array(True)):
    with pytest.raises(TypeError, match=re.escape("fused must be True or False")) as error:
      adam_optax.adamw(1e-3, fused=value)
    assert str(error.value).startswith("adamw(fused=")
  with pytest.raises(ValueError, match=re.escape("adam(b1=1.5): b1 must be")):
    adam_optax.adam(1e-3, b1=1.5, fused=True)  # the other checks are the same


def test_errors_are_the_xla_paths():
  """The same checks, in the same order, with the same messages."""
  params = {"w": jnp.ones(3)}
  amsgrad_state = adam_optax.amsgrad(1e-3).init(params)
  cases = {
    "no params for the decay": lambda o, s: o.update(params, s),
    "a gradient of another shape": lambda o, s: o.update({"w": jnp.ones(2)}, s, params),
    "another tree": lambda o, s: o.update({"v": jnp.ones(3)}, s, params),
    "integer gradients": lambda o, s: o.update({"w": jnp.ones(3, jnp.int32)}, s, params),
    "another optimizer's state": lambda o, s: o.update(params, amsgrad_state, params),
    "moments in another dtype": lambda o, s: o.update(
      params, jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.ndim else x, s), params
    ),
  }
  for name, case in cases.items():
    raised = []
    for fused in (False, True):
      optimizer = adam_optax.adamw(1e-3, fused=fused)
      with pytest.raises((ValueError, TypeError)) as error:
        case(optimizer, optimizer.init(params))
      raised.append((type(error.value), str(error.value)))
    assert raised[0] == raised[1], name


def _hatch_build():
  root = Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("hatch_build", root / "hatch_build.py")
  hatch_build = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(hatch_build)
  return hatch_build


def test_without_the_library_fused_warns_why_and_what_to_do(monkeypatch, tmp_path, capsys):
  """The build's reason reaches the user (pip hides the build's output without -v), and
  the advice fits an installed package: a compiler and a reinstall, or fused=False."""
  library = tmp_path / "adam_optax" / _kernel.LIBRARY
  assert _hatch_build().build(library, compiler=str(tmp_path / "no-such-c++")) is not None
  assert "no C++ compiler" in capsys.readouterr().err
  monkeypatch.setenv("ADAM_OPTAX_FUSED_LIBRARY", str(library))
  _kernel.load_error.cache_clear()
  try:
    with pytest.warns(RuntimeWarning, match=r"adam\(fused=True\): the fused CPU kernel is una"):
      optimizer = adam_optax.adam(1e-3, fused=True)
    assert not isinstance(optimizer.update, _fused.FusedUpdate)
    message = _kernel.load_error()
  finally:
    monkeypatch.delenv("ADAM_OPTAX_FUSED_LIBRARY")
    _kernel.load_error.cache_clear()
  assert "was not built when adam_optax was installed: no C++ compiler" in message
  assert "install one (g++ or clang++" in message and "reinstall adam_optax" in message
  assert "pass fused=False" in message and "hatch_build.py" not in message
  params, grads = _tree(np.float32), _grads(np.float32, 1e-2)
  _assert_bitwise(_run(optimizer, params, grads), _run(adam_optax.adam(1e-3), params, grads))


def test_the_build_skips_the_kernel_without_a_compiler_and_records_why(tmp_path):
  """hatch_build.build reports why instead of failing the install, in a file the runtime
  reads (NOTE, the name _kernel reads too); a later successful build would remove it."""
  hatch_build = _hatch_build()
  output = tmp_path / "kernel.so"
  error = hatch_build.build(output, compiler=str(tmp_path / "no-such-c++"))
  assert error is not None and "no C++ compiler" in error
  assert not output.exists()
  assert (tmp_path / hatch_build.NOTE).read_text().strip() == error
  assert hatch_build.NOTE == _kernel.NOTE and hatch_build.LIBRARY == _kernel.LIBRARY
  assert "-ffast-math" not in hatch_build.FLAGS and "-ffp-contract=off" in hatch_build.FLAGS


def test_a_library_for_a_newer_jaxlib_is_refused(monkeypatch):
  monkeypatch.setattr(_kernel.importlib.metadata, "version", lambda _: "0.4.0")
  _kernel.load_error.cache_clear()
  try:
    assert "newer than the jaxlib 0.4.0 running it" in _kernel.load_error()
  finally:
    monkeypatch.undo()
    _kernel.load_error.cache_clear()
  assert _kernel.load_error() is None


def test_meta_gradients_and_forward_mode_are_the_xla_paths(x64):
  """Differentiating through update_and_apply runs the XLA path's JVP: the same numbers."""
  target = jnp.array([1.0, -2.0, 0.5])

  def loss_after_steps(lr, fused):
    optimizer = adam_optax.adamw(lr, eps_root=1e-8, weight_decay=0.1, fused=fused)
    params = jnp.zeros(3)
    state = optimizer.init(params)
    for _ in range(3):
      grads = jax.grad(lambda p: jnp.sum((p - target) ** 2))(params)
      params, state = adam_optax.update_and_apply(optimizer, grads, state, params)
    return jnp.sum((params - target) ** 2)

  lr = jnp.asarray(0.1, jnp.float64)
  fused = functools.partial(loss_after_steps, fused=True)
  xla = functools.partial(loss_after_steps, fused=False)
  expected = jax.jit(jax.value_and_grad(xla))(lr)
  # The JVP program adds p + u apart from the multiply by -lr that XLA's own
  # step fuses into it: one rounding apart there (measured: 2.3e-16).
  np.testing.assert_allclose(jax.jit(jax.value_and_grad(fused))(lr), expected, rtol=1e-15)
  np.testing.assert_allclose(jax.jacfwd(fused)(lr), jax.jacfwd(xla)(lr), rtol=1e-15)


def test_vmap_over_a_batch_of_models_is_the_xla_path_vectorised():
  params = jnp.arange(12.0).reshape(4, 3)
  grads = jnp.arange(1.0, 13.0).reshape(4, 3) / 7
  results = {}
  for fused in (False, True):
    optimizer = adam_optax.adamw(1e-2, fused=fused)
    state = jax.vmap(optimizer.init)(params)
    batched = jax.vmap(lambda p, s, g, o=optimizer: adam_optax.update_and_apply(o, g, s, p))
    shared = jax.vmap(  # params unbatched
      lambda s, g, o=optimizer: adam_optax.update_and_apply(o, g, s, params[0])
    )
    results[fused] = (jax.jit(batched)(params, state, grads), jax.jit(shared)(state, grads))
  _assert_bitwise(results[True], results[False])


def test_traced_hyperparameters_run_the_kernel_without_recompiling():
  """A learning rate passed into the step (as inject_hyperparams passes it)."""
  params = _tree(np.float32)

  @jax.jit
  def step(p, s, g, lr):
    return adam_optax.update_and_apply(adam_optax.adam(lr, fused=True), g, s, p)

  state, lr = adam_optax.adam(1e-2).init(params), jnp.asarray(1e-2, jnp.float32)
  assert "adam_optax_fused" in str(jax.make_jaxpr(step)(params, state, params, lr))
  plain = adam_optax.adam(1e-2)
  plain_params, plain_state = params, plain.init(params)
  ours = params
  for g in _grads(np.float32, 1e-2):
    ours, state = step(ours, state, g, lr)
    plain_params, plain_state = _step(plain)(plain_params, plain_state, g)
  _assert_bitwise((ours, state), (plain_params, plain_state))
  unchanged, _ = step(ours, state, params, jnp.zeros([], jnp.float32))
  _assert_bitwise(unchanged, ours)
  assert step._cache_size() == 1


def test_off_cpu_the_xla_path_is_lowered_and_on_cpu_the_kernel(monkeypatch):
  """Where the default backend is a GPU or TPU, platform_dependent picks per platform."""
  monkeypatch.setattr(_kernel, "default_backend", lambda: "gpu")
  optimizer = adam_optax.adam(1e-3, fused=True)
  params = {"w": jnp.ones(8)}
  state = optimizer.init(params)

  def step(p, s, g):
    return adam_optax.update_and_apply(optimizer, g, s, p)

  cuda = jax.export.export(jax.jit(step), platforms=["cuda"])(params, state, params)
  assert "adam_optax_fused" not in cuda.mlir_module()
  unchecked = [jax.export.DisabledSafetyCheck.custom_call("adam_optax_fused_f32")]
  both = jax.export.export(jax.jit(step), platforms=["cpu", "cuda"], disabled_checks=unchecked)(
    params, state, params
  )
  assert "adam_optax_fused_f32" in both.mlir_module()
  ours = both.call(params, state, params)
  plain = adam_optax.adam(1e-3)
  expected = _step(plain)(params, plain.init(params), params)
  _assert_bitwise(ours, expected)


def _mlp(seed=0):
  """Host arrays: device_put may share a device array's buffer, and the step donates."""
  rng = np.random.default_rng(seed)
  shapes = {"w1": (16, 32), "b1": (32,), "w2": (32, 3), "b2": (3,)}
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.devices(8)
@pytest.mark.parametrize("layout", ["zero1", "fsdp"])
def test_sharded_operands_run_the_kernel_per_shard_without_gathering(layout):
  """8 simulated devices: each device updates its shards; no collective is added."""
  mesh = jax.make_mesh((8,), ("data",))
  params = _mlp()
  if layout == "zero1":
    param_shardings = NamedSharding(mesh, P())
    zero1 = "data"
  else:  # the params themselves split over the devices, the state with them
    param_shardings = {
      "w1": NamedSharding(mesh, P(None, "data")),
      "b1": NamedSharding(mesh, P("data")),
      "w2": NamedSharding(mesh, P("data")),
      "b2": NamedSharding(mesh, P()),
    }
    zero1 = None
  rng = np.random.default_rng(3)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(p.dtype), params)]
  results, collectives = {}, {}
  for fused in (False, True):
    optimizer = adam_optax.adamw(1e-2, weight_decay=0.1, fused=fused)
    sharded_params = jax.device_put(params, param_shardings)
    shardings = adam_optax.state_shardings(
      optimizer, sharded_params, param_shardings, zero1_axis=zero1
    )
    state = adam_optax.init_sharded(optimizer, sharded_params, shardings)
    step = jax.jit(
      lambda p, s, g, o=optimizer: adam_optax.update_and_apply(o, g, s, p),
      out_shardings=(jax.tree.map(lambda x: x.sharding, sharded_params), shardings),
      donate_argnums=(0, 1),
    )
    grad = jax.device_put(grads[0], param_shardings)
    text = step.lower(sharded_params, state, grad).compile().as_text()
    collectives[fused] = sorted(re.findall(r"(all-gather|all-reduce|all-to-all)[-\w]*\(", text))
    if fused:
      calls = [line for line in text.splitlines() if "adam_optax_fused" in line]
      assert calls and "f32[16,4]" in calls[0]  # w1's shard, not the whole (16, 32)
    for _ in range(3):
      sharded_params, state = step(sharded_params, state, grad)
    results[fused] = (sharded_params, state)
  assert collectives[True] == collectives[False]
  if layout == "fsdp":
    assert collectives[True] == []
  _assert_bitwise(results[True], results[False])
  for a, b in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False]), strict=True):
    assert a.sharding == b.sharding


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")  # shape (c)
def test_the_step_shape_benchmark_runs_and_tabulates_every_shape():
  """A smoke test of benchmarks/run.py's fused=True vs fused=False rows (tiny tree)."""
  run = pytest.importorskip("benchmarks.run", reason="benchmarks/run.py needs torch")
  shapes = [(64, 8), (8,)]
  runners = run.step_shape_runners(shapes)
  run.measure(runners, budget_s=0.0, min_sample_s=0.0)
  table = run.step_shape_table("tiny", shapes, runners)
  for label in run.STEP_SHAPES.values():
    for api in (run.TWO_LINES, run.UPDATE_AND_APPLY):
      assert re.search(rf"\| {re.escape(f'{label} | {api}')} \| .+ \| [0-9.]+x \|", table)
