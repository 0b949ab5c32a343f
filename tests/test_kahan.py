"""kahan_summation: what rounding drops is kept, deterministic, and pure-bfloat16 training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_optax
from tests.references import least_squares_loss_after, mean_after_sgd_steps


def _sgd_kahan(lr):
  return adam_optax.kahan_summation(optax.sgd(lr))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_the_books_balance_exactly_every_step(dtype):
  """p + c is the float32 sum of all updates, to c's own rounding, at every step."""
  rng = np.random.default_rng(0)
  params = jnp.asarray(rng.uniform(0.5, 2.0, 4096), dtype)
  optimizer = _sgd_kahan(1.0)
  state = optimizer.init(params)
  total = np.asarray(params, np.float64)
  allowed = np.zeros(4096)
  step = jax.jit(optimizer.update)
  for scale in [1e-4, 3e-3, 1e-2, 1e-5, 0.3, 1e-4]:
    grads = jnp.asarray(rng.normal(size=4096) * scale, jnp.float32)
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    total -= np.asarray(grads, np.float64)  # sgd: -lr * g
    compensation = np.asarray(state[1].compensation, np.float64)
    books = np.asarray(params, np.float64) + compensation
    # Each step loses only c's own rounding (c is stored in the params' dtype) and
    # float32's rounding of the sum: the losses add up over the steps, nothing more.
    # (A residual in float16's subnormal range is rounded to a multiple of its spacing.)
    info = jnp.finfo(dtype)
    allowed += np.abs(compensation) * float(info.eps) + float(info.smallest_subnormal)
    allowed += np.abs(total) * 2**-24
    np.testing.assert_array_less(np.abs(books - total), allowed)
  lost = np.abs(np.asarray(params, np.float64) - total)  # without the compensation
  assert np.max(np.abs(books - total)) < 0.01 * np.max(lost)


def test_small_updates_accumulate_where_nearest_rounding_loses_them():
  params = jnp.ones(8, jnp.bfloat16)
  grads = jnp.ones(8, jnp.bfloat16)
  kept, lost = _sgd_kahan(1e-3), optax.sgd(1e-3)
  kept_state, lost_state = kept.init(params), lost.init(params)
  kept_params = lost_params = params
  for _ in range(100):
    updates, kept_state = kept.update(grads, kept_state, kept_params)
    kept_params = optax.apply_updates(kept_params, updates)
    updates, lost_state = lost.update(grads, lost_state, lost_params)
    lost_params = optax.apply_updates(lost_params, updates)
  np.testing.assert_array_equal(lost_params, params)  # each -1e-3 is below half an ulp of 1
  exact = 1.0 - 100 * float(jnp.asarray(1e-3, jnp.bfloat16))
  assert np.allclose(np.asarray(kept_params, np.float32), exact, atol=2**-8)


def test_float32_params_pass_through_untouched():
  params = {"w": jnp.ones(3), "h": jnp.ones(3, jnp.bfloat16)}
  grads = jax.tree.map(jnp.ones_like, params)
  optimizer = _sgd_kahan(1e-3)
  state = optimizer.init(params)
  assert state[1].compensation["w"] is None
  assert state[1].compensation["h"].dtype == jnp.bfloat16
  updates, _ = optimizer.update(grads, state, params)
  reference, _ = optax.sgd(1e-3).update(grads, optax.sgd(1e-3).init(params), params)
  np.testing.assert_array_equal(updates["w"], reference["w"])


def test_non_finite_values_do_not_stay_in_the_compensation():
  params = jnp.array([jnp.inf, 1.0, 1.0], jnp.bfloat16)
  optimizer = _sgd_kahan(1.0)
  state = optimizer.init(params)
  updates, state = optimizer.update(jnp.array([1.0, jnp.nan, 1e-3]), state, params)
  new = optax.apply_updates(params, updates)
  assert np.isposinf(np.asarray(new[0], np.float32))  # inf stays inf, not NaN
  compensation = np.asarray(state[1].compensation, np.float32)
  assert compensation[0] == 0 and compensation[1] == 0 and compensation[2] != 0


def test_pure_bfloat16_training_tracks_float32():
  """The least-squares problem of test_stochastic_rounding, deterministic this time.

  Params and both moments in bfloat16, no float32 copy of the params: measured after
  400 steps 0.0693 for float32 Adam and 0.0654 (-5.7 %) with Kahan summation (stochastic
  rounding: +9 %); round-to-nearest does not move.
  """
  initial, fp32 = least_squares_loss_after(adam_optax.adam(1e-3))
  bf16 = adam_optax.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
  _, kahan = least_squares_loss_after(adam_optax.kahan_summation(bf16), jnp.bfloat16)
  assert fp32 < 0.1 * initial
  assert abs(kahan - fp32) <= 0.1 * fp32


def test_the_wrapper_moves_the_weights_and_the_old_chain_link_is_refused():
  """Issue 17: ``chain(kahan_summation(), sgd)`` compensated the gradients, not the
  updates, and the weights stayed at 1.0000 after 50 steps instead of 0.95, in silence."""
  # Deterministic: 0.95 to bfloat16's resolution there (2**-8).
  assert abs(mean_after_sgd_steps(_sgd_kahan(1e-3)) - 0.95) < 2**-8
  with pytest.raises(TypeError, match="missing 1 required positional argument: 'optimizer'"):
    adam_optax.kahan_summation()  # the old form, which could be placed first
  with pytest.raises(TypeError, match=r"kahan_summation\(optimizer=.*\): expected the optax"):
    adam_optax.kahan_summation(optax.sgd)  # the factory, not an optimizer


def test_misuse_is_named():
  optimizer = _sgd_kahan(1e-3)
  params = jnp.ones(3, jnp.bfloat16)
  with pytest.raises(ValueError, match=r"kahan_summation: update needs the params"):
    optimizer.update(params, optimizer.init(params))
  with pytest.raises(TypeError, match=r"kahan_summation.update: expected the KahanSummationState"):
    optimizer.update(params, (optax.sgd(1e-3).init(params), optax.EmptyState()), params)
