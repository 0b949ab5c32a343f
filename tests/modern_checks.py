"""Problems and composition checks shared by the tests of the modern family's members.

- :func:`problems`: fixed gradient sequences (a quadratic, a 2-layer MLP and
  ill-scaled gradients from 1e-6 to 1e4), so every implementation sees the
  same gradients.
- :func:`check_composes`: jit with donation, ``inject_hyperparams``,
  ``MultiSteps``, masks, ``skip_nonfinite``, ZeRO-1 shardings, ``bucket()``
  and bfloat16 params, for any factory taking ``learning_rate`` by keyword.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_optax
from tests.references import run_optax, run_torch

SIZE = 24
STEPS = 100


def problems(dtype=np.float32, steps: int = STEPS) -> dict[str, list[np.ndarray]]:
  """Three gradient sequences of ``SIZE`` coordinates, in ``dtype``."""
  rng = np.random.default_rng(7)
  curvature = np.logspace(-2, 2, SIZE)
  x = rng.standard_normal(SIZE)
  quadratic = []
  for _ in range(steps):  # gradients of 0.5 x' A x along a noisy descent path
    g = curvature * x + 0.1 * rng.standard_normal(SIZE)
    quadratic.append(g)
    x = x - 0.005 * g
  w1, w2 = rng.standard_normal((4, 4)), rng.standard_normal((4, 2))  # 16 + 8 = SIZE
  mlp = []
  for _ in range(steps):  # gradients of a tanh MLP's squared error on fresh batches
    inputs, targets = rng.standard_normal((8, 4)), rng.standard_normal((8, 2))
    hidden = np.tanh(inputs @ w1)
    error = (hidden @ w2 - targets) / len(inputs)
    g2 = hidden.T @ error
    g1 = inputs.T @ ((error @ w2.T) * (1 - hidden**2))
    mlp.append(np.concatenate([g1.ravel(), g2.ravel()]))
    w1, w2 = w1 - 0.05 * g1, w2 - 0.05 * g2
  scales = np.logspace(-6, 4, SIZE)
  ill_scaled = [scales * rng.standard_normal(SIZE) for _ in range(steps)]
  return {
    name: [np.asarray(g, dtype) for g in grads]
    for name, grads in (("quadratic", quadratic), ("mlp", mlp), ("ill_scaled", ill_scaled))
  }


def start(dtype=np.float32) -> np.ndarray:
  """Params away from zero, so that weight decay acts from the first step."""
  return np.linspace(-0.5, 0.5, SIZE).astype(dtype)


Factory = Callable[..., optax.GradientTransformation]


def _step(optimizer, **jit_options):
  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, **jit_options)


def _tree_params(dtype=jnp.float32):
  return {"w": jnp.linspace(-1.0, 1.0, 32, dtype=dtype).reshape(8, 4), "b": jnp.full(8, 0.5, dtype)}


def _tree_grads(seed: int, like):
  key = jax.random.key(seed)
  return jax.tree.map(lambda p: jax.random.normal(key, p.shape, jnp.float32).astype(p.dtype), like)


def check_composes(factory: Factory, learning_rate: float = 1e-2) -> None:
  """Runs ``factory(learning_rate=...)`` through the composition checks; raises on a failure."""
  optimizer = factory(learning_rate=learning_rate)
  params = _tree_params()
  grads = [_tree_grads(seed, params) for seed in range(4)]

  # jit with donation, no retrace, state dtypes kept.
  state = optimizer.init(params)
  dtypes = jax.tree.map(lambda x: x.dtype, state)
  donated = jax.jit(
    chex.assert_max_traces(_step(optimizer).__wrapped__, n=1), donate_argnums=(0, 1)
  )
  plain_params, plain_state = jax.tree.map(jnp.copy, params), optimizer.init(params)
  for g in grads:
    plain_params, plain_state = donated(plain_params, plain_state, g)
  chex.clear_trace_counter()
  assert jax.tree.map(lambda x: x.dtype, plain_state) == dtypes

  # inject_hyperparams: the same bits, and a new learning rate does not retrace.
  injected = optax.inject_hyperparams(factory)(learning_rate=learning_rate)
  step = jax.jit(chex.assert_max_traces(_step(injected).__wrapped__, n=1))
  p, s = params, injected.init(params)
  for g in grads:
    p, s = step(p, s, g)
  chex.assert_trees_all_close(p, plain_params, rtol=1e-6, atol=1e-7)
  s.hyperparams["learning_rate"] = jnp.zeros_like(s.hyperparams["learning_rate"])
  frozen, s = step(p, s, grads[0])
  chex.assert_trees_all_equal(frozen, p)
  chex.clear_trace_counter()

  # MultiSteps(2): two micro-steps of g equal one step of g. (optax.MultiSteps
  # itself mixes int32 and float32, so it runs with standard promotion.)
  multi = optax.MultiSteps(optimizer, every_k_schedule=2)
  p, s = params, multi.init(params)
  with jax.numpy_dtype_promotion("standard"):
    for _ in range(2):
      updates, s = multi.update(grads[0], s, p)
      p = optax.apply_updates(p, updates)
  once, _ = _step(optimizer)(params, optimizer.init(params), grads[0])
  chex.assert_trees_all_close(p, once, rtol=1e-6, atol=1e-7)

  # A mask: the masked-out leaf's update is its gradient, passed through by
  # optax.masked; the other leaf's is this optimizer's.
  masked = optax.masked(optimizer, {"w": True, "b": False})
  updates, _ = masked.update(grads[0], masked.init(params), params)
  chex.assert_trees_all_equal(updates["b"], grads[0]["b"])
  full, _ = optimizer.update(grads[0], optimizer.init(params), params)
  chex.assert_trees_all_close(updates["w"], full["w"], rtol=1e-6)

  # skip_nonfinite: a NaN gradient leaves params and state as they were.
  guarded = adam_optax.skip_nonfinite(optimizer)
  s = guarded.init(params)
  bad = {"w": grads[0]["w"].at[0, 0].set(jnp.nan), "b": grads[0]["b"]}
  p, s2 = _step(guarded)(params, s, bad)
  chex.assert_trees_all_equal(p, params)
  chex.assert_trees_all_equal(s2.inner_state, s.inner_state)
  assert int(s2.skipped) == 1

  # bucket(): a bucketed run equals the run on one concatenated tensor.
  buckets, layout = adam_optax.bucket(params)
  flat = jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(params)])
  p, fp = buckets, flat
  s, fs = optimizer.init(buckets), optimizer.init(flat)
  step = _step(optimizer)
  for g in grads:
    p, s = step(p, s, layout.bucket(g))
    fp, fs = step(fp, fs, jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(g)]))
  np.testing.assert_array_equal(np.concatenate([np.ravel(x) for x in p.values()]), fp)

  # bfloat16 params: float32 second moments, finite steps, dtypes kept.
  half = _tree_params(jnp.bfloat16)
  s = optimizer.init(half)
  dtypes = jax.tree.map(lambda x: x.dtype, s)
  p = half
  for seed in range(3):
    p, s = step(p, s, _tree_grads(seed, half))
  assert jax.tree.map(lambda x: x.dtype, s) == dtypes
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(p))
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(p))
  moments = [x for x in jax.tree.leaves(s) if x.ndim and x.dtype == jnp.float32]
  assert moments, "bfloat16 params: no float32 second moment in the state"


def check_zero1(factory: Factory, learning_rate: float = 1e-2) -> None:
  """ZeRO-1 over 8 devices: the unsharded trajectory, with some state leaf split."""
  optimizer = factory(learning_rate=learning_rate)
  params = _tree_params()
  grads = [_tree_grads(seed, params) for seed in range(4)]
  plain_params, plain_state = params, optimizer.init(params)
  for g in grads:
    plain_params, plain_state = _step(optimizer)(plain_params, plain_state, g)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sharded_params = jax.device_put(params, replicated)
  shardings = adam_optax.state_shardings(optimizer, sharded_params, mesh, zero1_axis="data")
  s = jax.jit(optimizer.init, out_shardings=shardings)(sharded_params)
  step = _step(optimizer, out_shardings=(replicated, shardings))
  p = sharded_params
  for g in grads:
    p, s = step(p, s, g)
  chex.assert_trees_all_close(p, plain_params, rtol=1e-6, atol=1e-7)
  assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(s) if leaf.ndim), (
    "ZeRO-1 partitioned no state leaf"
  )


def run_problems(
  optimizer: optax.GradientTransformation, dtype=np.float32
) -> dict[str, np.ndarray]:
  """``optimizer`` on the three :func:`problems` at once (one leaf each, one compile).

  Returns each problem's trajectory, one row per step.
  """
  sequences = problems(dtype)
  names = sorted(sequences)  # the leaves' order in a dict
  grads = [{name: sequences[name][t] for name in names} for t in range(STEPS)]
  params = {name: start(dtype) for name in names}
  trajectory = run_optax(optimizer, grads, params)
  return {name: trajectory[:, i * SIZE : (i + 1) * SIZE] for i, name in enumerate(names)}


def linear_decay(count):
  """A schedule, 3e-2 -> 3e-3 over the 100 steps, in the precision of the count it gets."""
  return 3e-2 - 2.7e-2 * jnp.minimum(count, 100) / 100


def run_torch_problems(make: Callable, learning_rate, dtype=np.float32) -> dict[str, np.ndarray]:
  """``make(params, lr)`` (a torch optimizer) on each of the :func:`problems`.

  A schedule ``learning_rate`` is set into the optimizer's group before each step.
  """

  def schedule(optimizer, count):
    optimizer.param_groups[0]["lr"] = float(learning_rate(count))

  scheduled = callable(learning_rate)
  rate = 1.0 if scheduled else learning_rate
  return {
    name: run_torch(
      lambda p: make(p, rate), grads, start(dtype), before_step=schedule if scheduled else None
    )
    for name, grads in problems(dtype).items()
  }


def corrected_moments(grads, b1: float, b2: float):
  """Yields ``(t, g, m_hat, v_hat)`` for each gradient: Adam's bias-corrected EMAs in float64."""
  m = v = 0.0
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    yield t, g, m / -math.expm1(t * math.log(b1)), v / -math.expm1(t * math.log(b2))
