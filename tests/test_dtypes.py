"""State dtypes are stable, half precision stays finite, odd trees work."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_optax
from tests.references import algorithm1

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64]


def _dtypes(tree):
  return jax.tree.map(lambda x: jnp.result_type(x), tree)


def _step(optimizer, params, state, grads):
  updates, state = jax.jit(optimizer.update)(grads, state, params)
  return optax.apply_updates(params, updates), updates, state


@pytest.mark.parametrize("fused", [False, True], ids=["xla", "fused"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_state_dtypes_after_update_equal_those_after_init(dtype, strict_promotion, fused):
  optimizer = adam_optax.adam(1e-3, fused=fused)
  params = {"w": jnp.ones((4, 3), dtype), "b": jnp.zeros(3, dtype)}
  state = optimizer.init(params)
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
  new_params, updates, new_state = _step(optimizer, params, state, grads)
  assert _dtypes(new_state) == _dtypes(state)
  assert _dtypes(updates) == _dtypes(params)
  assert _dtypes(new_params) == _dtypes(params)


@pytest.mark.parametrize("fused", [False, True], ids=["xla", "fused"])
def test_float64_state_is_float64(x64, strict_promotion, fused):
  optimizer = adam_optax.adam(1e-3, mu_dtype=jnp.float64, fused=fused)
  params = jnp.ones(3, jnp.float64)
  state = optimizer.init(params)
  _, _, new_state = _step(optimizer, params, state, jnp.ones(3, jnp.float64))
  assert _dtypes(new_state) == _dtypes(state)
  assert new_state[0].mu.dtype == jnp.float64


@pytest.mark.parametrize("fused", [False, True], ids=["xla", "fused"])
def test_mixed_dtype_tree_with_none_and_zero_size_leaves(strict_promotion, fused):
  optimizer = adam_optax.adam(1e-2, mu_dtype=jnp.float32, nu_dtype=jnp.float32, fused=fused)
  params = {
    "f32": jnp.ones(3, jnp.float32),
    "bf16": jnp.ones(2, jnp.bfloat16),
    "c64": jnp.ones(2, jnp.complex64),
    "empty": jnp.zeros((0, 4), jnp.float32),
    "none": None,
  }
  state = optimizer.init(params)
  moments = state[0]
  assert moments.mu["none"] is None and moments.nu["none"] is None
  assert moments.mu["bf16"].dtype == jnp.float32  # mu_dtype applies to every leaf
  assert moments.mu["c64"].dtype == jnp.complex64  # ... keeping complex moments complex
  assert moments.nu["c64"].dtype == jnp.float32  # |g|^2 is real
  grads = jax.tree.map(jnp.ones_like, params)
  _, updates, new_state = _step(optimizer, params, state, grads)
  assert _dtypes(new_state) == _dtypes(state)
  assert updates["none"] is None and updates["empty"].shape == (0, 4)
  # The first step is -lr * g/|g| for every (nonzero) coordinate, complex included.
  np.testing.assert_allclose(updates["f32"], -1e-2, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(updates["bf16"], np.float32), -1e-2, rtol=1e-2)
  np.testing.assert_allclose(updates["c64"], -1e-2 * np.ones(2), rtol=1e-6)


def test_complex_params_follow_real_adam_on_magnitudes():
  """For complex g, nu is the EMA of |g|^2: a real-valued g gives real Adam's step."""
  grads = [np.array([0.3, -1.0, 2.0]) * s for s in (1.0, 0.5, -2.0, 1.5)]
  params = jnp.zeros(3, jnp.complex64)
  optimizer = adam_optax.adam(0.1)
  state = optimizer.init(params)
  for g in grads:
    updates, state = optimizer.update(jnp.asarray(g, jnp.complex64), state, params)
    params = optax.apply_updates(params, updates)
  expected = algorithm1(grads, np.zeros(3), 0.1)[-1]
  np.testing.assert_allclose(params.real, expected, rtol=1e-5)
  np.testing.assert_array_equal(params.imag, 0.0)


@pytest.mark.parametrize("fused", [False, True], ids=["xla", "fused"])
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_half_precision_zero_gradients_stay_finite_where_optax_gives_nan(dtype, fused):
  params = jnp.linspace(-1, 1, 8).astype(dtype)
  zeros = jnp.zeros_like(params)
  ours, theirs = adam_optax.adam(1e-3, fused=fused), optax.adam(1e-3)
  ours_params, _, _ = _step(ours, params, ours.init(params), zeros)
  theirs_params, _, _ = _step(theirs, params, theirs.init(params), zeros)
  np.testing.assert_array_equal(np.asarray(ours_params), np.asarray(params))
  if dtype == jnp.float16:  # the bug we fix: eps = 1e-8 underflows in float16
    assert np.isnan(np.asarray(theirs_params, np.float32)).all()


@pytest.mark.parametrize("fused", [False, True], ids=["xla", "fused"])
def test_float16_large_gradients_do_not_overflow_in_the_second_moment(fused):
  """g = 300 has g^2 = 9e4 > float16 max (65504); computed in float32, it is fine."""
  params = jnp.zeros(4, jnp.float16)
  optimizer = adam_optax.adam(1e-3, fused=fused)
  new_params, _, state = _step(
    optimizer, params, optimizer.init(params), jnp.full(4, 300.0, jnp.float16)
  )
  assert np.isfinite(np.asarray(state[0].nu, np.float32)).all()
  np.testing.assert_allclose(np.asarray(new_params, np.float32), -1e-3, rtol=1e-3)


def _constant_gradient_updates(optimizer, dtype, steps):
  params = jnp.zeros(4, dtype)

  def step(state, _):
    updates, state = optimizer.update(jnp.ones(4, dtype), state, params)
    return state, updates

  return jax.lax.scan(step, optimizer.init(params), length=steps)[1]


def test_float32_nu_by_default_fixes_bfloat16_second_moment_stalling():
  """A constant gradient must give steps of exactly -lr; bfloat16 nu stalls."""
  steps = 3000
  low = _constant_gradient_updates(
    adam_optax.adam(1e-3, mu_dtype=jnp.float32, nu_dtype=jnp.bfloat16), jnp.bfloat16, steps
  )
  high = _constant_gradient_updates(
    adam_optax.adam(1e-3, mu_dtype=jnp.float32), jnp.bfloat16, steps
  )
  np.testing.assert_allclose(np.asarray(high, np.float32), -1e-3, rtol=1e-2)
  # The stalled bfloat16 EMA under-estimates v, so steps grow well past lr.
  assert np.abs(np.asarray(low[-1], np.float32)).min() > 1.5e-3


@pytest.mark.parametrize(
  "params", [{}, {"a": None}, ()], ids=["empty-dict", "none-leaf", "empty-tuple"]
)
@pytest.mark.parametrize("fused", [False, True], ids=["xla", "fused"])
@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "amsgrad", "adamax"])
def test_trees_without_array_leaves_work_like_optax(name, params, fused):
  optimizer = getattr(adam_optax, name)(1e-3, fused=fused)
  state = optimizer.init(params)
  updates, new_state = jax.jit(optimizer.update)(params, state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
