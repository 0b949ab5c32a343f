"""fused=True: the CPU kernel is the chain, bit for bit, and falls back where it cannot run.

The reference is always the same optimizer with ``fused=False`` (the XLA
path), jitted, on the same gradients: its ``update`` for ``fused=True``'s
``update`` (level 1), its ``update`` followed by ``optax.apply_updates`` in one
jitted function for :func:`adam_optax.update_and_apply` (level 2). Both paths
are also checked against optax, torch and float64 references by the parity
suites, which run with ``fused`` both ways.
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


def _level1(optimizer):
  return jax.jit(lambda params, state, grads: optimizer.update(grads, state, params))


def _level2(optimizer):
  return jax.jit(lambda p, s, g: adam_optax.update_and_apply(optimizer, g, s, p))


def _run(optimizer, level, params, grads):
  """Per step: (level 1) the updates and state, (level 2) the params and state."""
  step = _level1(optimizer) if level == 1 else _level2(optimizer)
  state = optimizer.init(params)
  out = []
  for g in grads:
    result, state = step(params, state, g)
    params = optax.apply_updates(params, result) if level == 1 else result
    out.append((result, state))
  return out


def _assert_bitwise(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_kernel_is_built_where_the_suite_runs_in_ci():
  assert LOAD_ERROR is None, LOAD_ERROR


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("scale", [1.0, 1e-9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(MEMBERS))
def test_bit_identical_to_the_xla_path(request, name, dtype, scale, level):
  """Updates (or params) and state equal the XLA path's exactly, step after step.

  Scale 1e-9 makes eps and eps_root dominate the denominator.
  """
  if dtype == np.float64:
    request.getfixturevalue("x64")
  params, grads = _tree(dtype), _grads(dtype, scale)
  fused = _run(MEMBERS[name](fused=True), level, params, grads)
  xla = _run(MEMBERS[name](), level, params, grads)
  _assert_bitwise(fused, xla)


SMALL_MINOR = {"a": (17, 5), "b": (16, 5), "c": (100, 3), "d": (2, 3, 7), "e": (31, 2)}


@pytest.mark.parametrize("scale", [1.0, 1e-2])
@pytest.mark.parametrize(
  "name", ["adam", "adamw-masked-schedules", "nadam", "nadamw", "amsgrad-torch"]
)
def test_small_minor_dimensions_state_identical_updates_within_two_ulps(name, scale):
  """Leaves with a short last dimension: XLA loops over their rows, and its scalar
  remainder code fuses the other product of NAdam's numerator and AdamW's decay
  into an FMA than its vector code does (the kernel follows the vector code).

  The state is still bit-identical; updates differ by at most that one rounding,
  relative to the largest update (``benchmarks/parity.py --fused``: 3.0e-7 over
  30 steps), and the params after ``update_and_apply`` by 2.6e-8.
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
  for level in (1, 2):
    fused = _run(MEMBERS[name](fused=True), level, params, grads)
    xla = _run(MEMBERS[name](), level, params, grads)
    _assert_bitwise([s for _, s in fused], [s for _, s in xla])
    for (ours, _), (theirs, _) in zip(fused, xla, strict=True):
      for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert relative_gap(a, b) <= 2.0**-21


def test_one_call_per_32_leaves_and_none_per_leaf():
  optimizer = adam_optax.adam(1e-3, fused=True)
  params = {f"p{i:03d}": jnp.ones(4) for i in range(70)}
  jaxpr = jax.make_jaxpr(optimizer.update)(params, optimizer.init(params), params)
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
  steps = [_level1(fused), _level1(plain)]
  swapped = [plain.init(params), params]  # state, params: alternate the two optimizers
  reference = [plain.init(params), params]
  for t, g in enumerate(grads):
    updates, swapped[0] = steps[t % 2](swapped[1], swapped[0], g)
    swapped[1] = optax.apply_updates(swapped[1], updates)
    updates, reference[0] = steps[1](reference[1], reference[0], g)
    reference[1] = optax.apply_updates(reference[1], updates)
  _assert_bitwise(swapped, reference)


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize(
  ("dtype", "mu_dtype"),
  [(jnp.bfloat16, None), (jnp.float16, None), (jnp.bfloat16, np.float32)],
  ids=["bfloat16", "float16", "bfloat16-mu-float32"],
)
@pytest.mark.parametrize("name", ["adam", "adamw-masked-schedules", "nadamw", "amsgrad-torch"])
def test_half_precision_params_are_bit_identical_too(name, dtype, mu_dtype, level):
  """Half-precision params with the default float32 second moment: float32 math,
  rounded to the params' dtype between the chain's maps as the chain rounds."""
  params, grads = _tree(dtype), _grads(dtype, 1e-2, steps=6)
  fused = _run(MEMBERS[name](fused=True, mu_dtype=mu_dtype), level, params, grads)
  xla = _run(MEMBERS[name](mu_dtype=mu_dtype), level, params, grads)
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
  8.1e-4 / 3.9e-5 / 4.0e-4 (one unit of bfloat16 or float16), updates 3.8e-3 /
  1.9e-3 / 4.8e-3, params after ``update_and_apply`` 1.2e-6 / 3.3e-7 / 2.7e-7.
  """
  if dtype == np.float64:
    request.getfixturevalue("x64")
  kwargs = {"mu_dtype": mu_dtype, "nu_dtype": nu_dtype}
  params, grads = _tree(dtype), _grads(dtype, 1e-2, steps=8)
  for level, bound in ((1, 1e-2), (2, 1e-5)):
    fused = _run(adam_optax.adamw(1e-3, fused=True, **kwargs), level, params, grads)
    xla = _run(adam_optax.adamw(1e-3, **kwargs), level, params, grads)
    for (out, state), (xla_out, xla_state) in zip(fused, xla, strict=True):
      for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(xla_out), strict=True):
        assert a.size == 0 or relative_gap(a, b) <= bound
      for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(xla_state), strict=True):
        assert a.size == 0 or relative_gap(a, b) <= 1e-3


def test_mixed_tree_complex_and_python_leaves_take_the_xla_path_in_the_same_step():
  params = {
    "real": jnp.linspace(-1.0, 1.0, 6),
    "complex": jnp.asarray([1 + 2j, -0.5j], jnp.complex64),
    "bf16": jnp.ones(3, jnp.bfloat16),
    "none": None,
  }
  grads = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)
  for level in (1, 2):
    fused = _run(adam_optax.adamw(1e-2, fused=True), level, params, [grads] * 3)
    xla = _run(adam_optax.adamw(1e-2), level, params, [grads] * 3)
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


def test_in_a_training_step_the_updates_overwrite_the_gradients_without_a_copy():
  """The gradients from jax.grad are a temporary: the updates need no buffer of their own."""
  optimizer = adam_optax.adam(1e-3, fused=True)
  params = {"w": jnp.ones((256, 128)), "b": jnp.ones(128)}

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, state, x):
    grads = jax.grad(lambda p: jnp.sum(jnp.tanh(x @ p["w"] + p["b"])))(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = train_step.lower(params, optimizer.init(params), jnp.ones((4, 256))).compile()
  entry = compiled.as_text().split("ENTRY", 1)[1]
  assert " copy(" not in entry  # no buffer is copied for the kernel (fusions may transpose)
  assert 'custom_call_target="adam_optax_fused_f32"' in entry


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


def test_without_the_library_fused_warns_and_is_the_xla_chain(monkeypatch, tmp_path):
  monkeypatch.setenv("ADAM_OPTAX_FUSED_LIBRARY", str(tmp_path / "missing.so"))
  _kernel.load_error.cache_clear()
  try:
    with pytest.warns(RuntimeWarning, match=r"adam\(fused=True\): the fused CPU kernel is una"):
      optimizer = adam_optax.adam(1e-3, fused=True)
    assert not isinstance(optimizer.update, _fused.FusedUpdate)
    assert "was not built" in _kernel.load_error()
  finally:
    monkeypatch.delenv("ADAM_OPTAX_FUSED_LIBRARY")
    _kernel.load_error.cache_clear()
  params, grads = _tree(np.float32), _grads(np.float32, 1e-2)
  _assert_bitwise(_run(optimizer, 2, params, grads), _run(adam_optax.adam(1e-3), 2, params, grads))


def test_the_build_skips_the_kernel_without_a_compiler(tmp_path):
  """hatch_build.compile_kernel reports why instead of failing the install."""
  root = Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("hatch_build", root / "hatch_build.py")
  hatch_build = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(hatch_build)
  output = tmp_path / "kernel.so"
  error = hatch_build.compile_kernel(output, compiler=str(tmp_path / "no-such-c++"))
  assert error is not None and "no C++ compiler" in error
  assert not output.exists()
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
  """Differentiating through update runs the XLA path's JVP: the same numbers."""
  target = jnp.array([1.0, -2.0, 0.5])

  def loss_after_steps(lr, fused, apply):
    optimizer = adam_optax.adamw(lr, eps_root=1e-8, weight_decay=0.1, fused=fused)
    params = jnp.zeros(3)
    state = optimizer.init(params)
    for _ in range(3):
      grads = jax.grad(lambda p: jnp.sum((p - target) ** 2))(params)
      if apply:
        params, state = adam_optax.update_and_apply(optimizer, grads, state, params)
      else:
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return jnp.sum((params - target) ** 2)

  lr = jnp.asarray(0.1, jnp.float64)
  for apply in (False, True):
    fused = functools.partial(loss_after_steps, fused=True, apply=apply)
    xla = functools.partial(loss_after_steps, fused=False, apply=apply)
    expected = jax.jit(jax.value_and_grad(xla))(lr)
    # The JVP program adds p + u apart from the multiply by -lr that XLA's own
    # step fuses into it: one rounding apart there (measured: 2.3e-16).
    tolerance = 1e-15 if apply else 0.0
    np.testing.assert_allclose(jax.jit(jax.value_and_grad(fused))(lr), expected, rtol=tolerance)
    np.testing.assert_allclose(jax.jacfwd(fused)(lr), jax.jacfwd(xla)(lr), rtol=tolerance)


def test_vmap_over_a_batch_of_models_is_the_xla_path_vectorised():
  params = jnp.arange(12.0).reshape(4, 3)
  grads = jnp.arange(1.0, 13.0).reshape(4, 3) / 7
  results = {}
  for fused in (False, True):
    optimizer = adam_optax.adamw(1e-2, fused=fused)
    state = jax.vmap(optimizer.init)(params)
    level1 = jax.vmap(lambda p, s, g, o=optimizer: o.update(g, s, p))
    level2 = jax.vmap(lambda p, s, g, o=optimizer: adam_optax.update_and_apply(o, g, s, p))
    shared = jax.vmap(lambda s, g, o=optimizer: o.update(g, s, params[0]))  # params unbatched
    results[fused] = (
      jax.jit(level1)(params, state, grads),
      jax.jit(level2)(params, state, grads),
      jax.jit(shared)(state, grads),
    )
  _assert_bitwise(results[True], results[False])


def test_inject_hyperparams_runs_the_kernel_without_recompiling():
  optimizer = optax.inject_hyperparams(adam_optax.adam)(learning_rate=1e-2, fused=True)
  plain = adam_optax.adam(1e-2)
  params = _tree(np.float32)
  state, plain_state = optimizer.init(params), plain.init(params)
  step = jax.jit(lambda p, s, g: optimizer.update(g, s, p))
  assert "adam_optax_fused" in str(jax.make_jaxpr(step)(params, state, params))
  for g in _grads(np.float32, 1e-2):
    updates, state = step(params, state, g)
    plain_updates, plain_state = _level1(plain)(params, plain_state, g)
    _assert_bitwise(updates, plain_updates)
  state.hyperparams["learning_rate"] = jnp.zeros([], jnp.float32)
  updates, state = step(params, state, params)
  assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
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
  expected = _level2(plain)(params, plain.init(params), params)
  _assert_bitwise(ours, expected)


def _mlp(seed=0):
  """Host arrays: device_put may share a device array's buffer, and the step donates."""
  rng = np.random.default_rng(seed)
  shapes = {"w1": (16, 32), "b1": (32,), "w2": (32, 3), "b2": (3,)}
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


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
