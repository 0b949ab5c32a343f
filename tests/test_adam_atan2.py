"""adam_atan2 against adam_atan2_pytorch.AdamAtan2 0.4.1 and the paper's equations in float64.

Also the paper's claim: no epsilon, so the trajectory is invariant to the scale
of the loss (bit for bit for powers of two), where Adam's is not.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from adam_atan2_pytorch import AdamAtan2

import adam_optax
from tests.modern_checks import (
  check_composes,
  check_zero1,
  corrected_moments,
  linear_decay,
  problems,
  run_problems,
  run_torch_problems,
  start,
)
from tests.references import normwise_error, run_optax

A, B = 1.27, 1.0


def paper(grads, params, lr, b1=0.9, b2=0.99, a=A, b=B, weight_decay=0.0):
  """Everett et al. (2024), Adam-atan2, in float64; ``lr`` a number or a function of the step."""
  theta = np.asarray(params, np.float64)
  trajectory = []
  for t, _, m_hat, v_hat in corrected_moments(grads, b1, b2):
    rate = lr(t - 1) if callable(lr) else lr
    theta = theta - rate * (a * np.arctan2(m_hat, b * np.sqrt(v_hat)) + weight_decay * theta)
    trajectory.append(theta)
  return np.stack(trajectory)


CASES = {  # (learning rate, b1, b2, a, b, weight decay)
  "defaults": (1e-2, 0.9, 0.99, A, B, 0.0),
  "decay": (1e-2, 0.9, 0.99, A, B, 0.1),
  "schedule-other-betas": (linear_decay, 0.8, 0.999, 1.0, 2.0, 0.05),
}


def _ours(lr, b1, b2, a, b, wd):
  return adam_optax.adam_atan2(lr, b1, b2, a=a, b=b, weight_decay=wd)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_adam_atan2_pytorch_in_float32(case):
  lr, b1, b2, a, b, wd = CASES[case]

  def make(p, rate):
    return AdamAtan2(p, lr=rate, betas=(b1, b2), weight_decay=wd, a=a, b=b)

  ours = run_problems(_ours(lr, b1, b2, a, b, wd), np.float32)
  for problem, theirs in run_torch_problems(make, lr).items():
    assert normwise_error(ours[problem], theirs) < 1e-5, problem


@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_paper_in_float64(x64, case):
  lr, b1, b2, a, b, wd = CASES[case]
  ours = run_problems(_ours(lr, b1, b2, a, b, wd), np.float64)
  for problem, grads in problems(np.float64).items():
    assert ours[problem].dtype == np.float64
    expected = paper(grads, start(np.float64), lr, b1, b2, a, b, wd)
    assert normwise_error(ours[problem], expected) < 1e-12, problem


def _scaled_runs(optimizer, factors):
  """One run per factor, as the rows of one (elementwise) optimizer's params."""
  grads = problems(np.float32)["mlp"]
  factors = np.asarray(factors, np.float32)[:, None]
  rows = [(factors * g[None, :]).astype(np.float32) for g in grads]
  params = np.tile(start(np.float32), (len(factors), 1))
  return run_optax(optimizer, rows, params)  # (steps, factors, SIZE)


def test_loss_scaled_by_powers_of_two_gives_the_same_bits():
  k = np.arange(-30, 31)
  runs = _scaled_runs(adam_optax.adam_atan2(1e-2), np.exp2(k))
  reference = runs[:, k == 0]
  assert all(np.array_equal(runs[:, [i]], reference) for i in range(len(k)))
  # Adam with eps = 1e-8 is not invariant: at 2^-30 (gradients ~1e-11) eps dominates.
  adam = _scaled_runs(adam_optax.adam(1e-2, 0.9, 0.99, eps=1e-8), np.exp2(k))
  errors = [normwise_error(adam[:, i], adam[:, k == 0][:, 0]) for i in range(len(k))]
  assert errors[0] > 0.5  # k = -30: the steps shrink by the ratio of |g| to eps
  assert not all(np.array_equal(adam[:, [i]], adam[:, k == 0]) for i in range(len(k)))


def test_loss_scaled_by_powers_of_ten_moves_the_trajectory_by_rounding_only():
  # |k| <= 12: below, (1 - b2) g^2 of the smallest gradients (~4e-5 * 10^k)
  # leaves float32's normal range and is flushed to zero: float32's limit, not the method's.
  k = np.arange(-12, 13)
  runs = _scaled_runs(adam_optax.adam_atan2(1e-2), 10.0**k)
  reference = runs[:, k == 0][:, 0]
  errors = [normwise_error(runs[:, i], reference) for i in range(len(k))]
  assert max(errors) < 1e-6
  adam = _scaled_runs(adam_optax.adam(1e-2, 0.9, 0.99, eps=1e-8), 10.0**k)
  adam_errors = [normwise_error(adam[:, i], adam[:, k == 0][:, 0]) for i in range(len(k))]
  broken = [int(kk) for kk, e in zip(k, adam_errors, strict=True) if e > 1e-6]
  # Adam breaks for every scale from 10^-2 down, as the smallest |g| * 10^k (4e-7 there)
  # approach eps = 1e-8 (measured: 4.6e-6 at 10^-2, 4.5e-3 at 10^-5, 0.53 at 10^-12).
  assert broken == list(range(-12, -1)), adam_errors


def test_every_step_is_bounded_by_a_pi_over_two():
  lr, a = 1e-2, A
  grads = problems(np.float32)["ill_scaled"]
  trajectory = run_optax(adam_optax.adam_atan2(lr, a=a), grads, start(np.float32))
  steps = np.abs(np.diff(trajectory, axis=0, prepend=start(np.float32)[None]))
  assert steps.max() <= lr * a * np.pi / 2 * (1 + 1e-6)


def test_first_step_is_a_times_pi_over_four_times_the_sign():
  updates, _ = adam_optax.adam_atan2(0.1).update(
    jnp.array([3e-7, -5e3]), adam_optax.adam_atan2(0.1).init(jnp.zeros(2))
  )
  np.testing.assert_allclose(updates, [-0.1 * A * np.pi / 4, 0.1 * A * np.pi / 4], rtol=1e-6)


def test_zero_second_moment_gives_a_zero_step():
  optimizer = adam_optax.adam_atan2(0.1)
  updates, _ = optimizer.update(jnp.zeros(3), optimizer.init(jnp.ones(3)))
  np.testing.assert_array_equal(updates, np.zeros(3))


def test_no_weight_decay_block_for_a_zero_decay():
  params = jnp.ones(3)
  assert len(adam_optax.adam_atan2(0.1).init(params)) == 4
  assert len(adam_optax.adam_atan2(0.1, weight_decay=0.1).init(params)) == 5


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"b1": 1.0}, r"adam_atan2\(b1=1.0\)"),
    ({"b2": -0.1}, r"adam_atan2\(b2=-0.1\)"),
    ({"a": -1.0}, r"adam_atan2\(a=-1.0\)"),
    ({"b": 0.0}, r"adam_atan2\(b=0.0\): b must be a finite number > 0"),
    ({"b": float("inf")}, r"adam_atan2\(b=inf\)"),
    ({"weight_decay": -1.0}, r"adam_atan2\(weight_decay=-1.0\)"),
    ({"learning_rate": float("nan")}, r"adam_atan2\(learning_rate=nan\)"),
    ({"mu_dtype": jnp.int32}, r"adam_atan2\(mu_dtype="),
  ],
)
def test_bad_hyperparameters_are_named(kwargs, message):
  arguments = {"learning_rate": 1e-3, **kwargs}
  with pytest.raises(ValueError, match=message):
    adam_optax.adam_atan2(**arguments)


def test_scale_by_atan_rejects_a_zero_b():
  with pytest.raises(ValueError, match=r"scale_by_atan\(b=0"):
    adam_optax.scale_by_atan(b=0)


def test_composes(strict_promotion):
  check_composes(lambda learning_rate: adam_optax.adam_atan2(learning_rate, weight_decay=0.1))


@pytest.mark.devices(8)
def test_zero1_state_shardings():
  check_zero1(lambda learning_rate: adam_optax.adam_atan2(learning_rate, weight_decay=0.1))
