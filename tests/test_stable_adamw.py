"""stable_adamw against optimi.StableAdamW 0.3.3 and Wortsman et al.'s Algorithm 2 in float64.

Also the block: clip_by_update_rms around other chains, masks, and its rule
(exactly one ScaleByMomentsState).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optimi import StableAdamW

import adam_optax
from tests.modern_checks import (
  check_composes,
  check_zero1,
  linear_decay,
  problems,
  run_problems,
  run_torch_problems,
  start,
)
from tests.references import normwise_error, run_optax


def paper(grads, params, lr, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.01):
  """Wortsman et al. (2023), Algorithm 2 (StableAdamW), in float64.

  Written as the paper writes it: EMAs with the debiased decays
  ``b_hat = b (1 - b^(t-1)) / (1 - b^t)``, which hold the bias-corrected moments.
  """
  theta = np.asarray(params, np.float64)
  u, v = np.zeros_like(theta), np.zeros_like(theta)
  trajectory = []
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    b1_hat = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
    b2_hat = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
    v = b2_hat * v + (1 - b2_hat) * g * g
    u = b1_hat * u + (1 - b1_hat) * g
    rms = np.sqrt(np.mean(g * g / np.maximum(v, eps**2)))
    rate = (lr(t - 1) if callable(lr) else lr) / max(1.0, rms)
    theta = theta - rate * weight_decay * theta - rate * u / (np.sqrt(v) + eps)
    trajectory.append(theta)
  return np.stack(trajectory)


CASES = {  # (learning rate, b1, b2, eps, weight decay)
  "defaults": (1e-2, 0.9, 0.99, 1e-6, 0.01),
  "no-decay": (1e-2, 0.9, 0.99, 1e-6, 0.0),
  "schedule-other-betas": (linear_decay, 0.8, 0.999, 1e-4, 0.1),
}


def _ours(lr, b1, b2, eps, wd):
  return adam_optax.stable_adamw(lr, b1, b2, eps, wd)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_optimi_in_float32(case):
  lr, b1, b2, eps, wd = CASES[case]

  def make(p, rate):
    return StableAdamW(
      p, lr=rate, betas=(b1, b2), weight_decay=wd, eps=eps, kahan_sum=False, foreach=False
    )

  ours = run_problems(_ours(lr, b1, b2, eps, wd), np.float32)
  for problem, theirs in run_torch_problems(make, lr).items():
    assert normwise_error(ours[problem], theirs) < 1e-5, problem


@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_paper_in_float64(x64, case):
  lr, b1, b2, eps, wd = CASES[case]
  ours = run_problems(_ours(lr, b1, b2, eps, wd), np.float64)
  clipped = 0
  for problem, grads in problems(np.float64).items():
    expected = paper(grads, start(np.float64), lr, b1, b2, eps, wd)
    assert normwise_error(ours[problem], expected) < 1e-12, problem
    plain = run_optax(adam_optax.adamw(lr, b1, b2, eps, weight_decay=wd), grads, start(np.float64))
    clipped += normwise_error(plain, expected) > 1e-6
  assert clipped, "the clipping never acted: the test would not see it"


def test_a_gradient_jump_shrinks_the_step_where_adamw_grows():
  grads = [np.ones(4, np.float32)] * 20 + [np.full(4, 1000.0, np.float32)] * 20
  params = np.zeros(4, np.float32)
  stable = np.abs(
    np.diff(run_optax(adam_optax.stable_adamw(1.0, weight_decay=0.0), grads, params), axis=0)
  )
  adamw = np.abs(
    np.diff(
      run_optax(adam_optax.adamw(1.0, 0.9, 0.99, 1e-6, weight_decay=0.0), grads, params), axis=0
    )
  )
  # Measured: Adam's step grows to 1.20 (the steady step is 1) as m catches up with the
  # jump; the clipped step drops to 0.11 and climbs back to 0.89 in 20 steps.
  assert adamw[20:].max() > 1.15
  assert stable[20:].max() < 0.95


def test_clips_any_chain_with_one_moment_block_and_skips_masked_leaves():
  params = {"a": jnp.zeros(3), "b": jnp.zeros(3), "none": None}
  grads = {"a": jnp.ones(3), "b": jnp.ones(3), "none": None}
  inner = optax.masked(adam_optax.adam(0.1, b2=0.99), {"a": True, "b": False, "none": False})
  optimizer = adam_optax.clip_by_update_rms(inner, b2=0.99)
  state = optimizer.init(params)
  _, state = optimizer.update(grads, state, params)
  jump = jax.tree.map(lambda g: 1000 * g, grads)
  updates, _ = optimizer.update(jump, state, params)
  unclipped, _ = inner.update(jump, state, params)
  np.testing.assert_array_equal(updates["b"], jump["b"])  # masked out: passed through
  assert updates["none"] is None
  np.testing.assert_allclose(
    updates["a"], unclipped["a"] / np.sqrt(1e6 / (0.01 * 1e6 + 0.0099) * 0.0199), rtol=1e-5
  )


def test_the_rule_needs_exactly_one_moment_state():
  with pytest.raises(TypeError, match="holds 0 ScaleByMomentsState"):
    adam_optax.clip_by_update_rms(optax.sgd(0.1)).init(jnp.zeros(2))
  two = optax.chain(adam_optax.adam(0.1), adam_optax.adam(0.1))
  with pytest.raises(TypeError, match="holds 2 ScaleByMomentsState"):
    adam_optax.clip_by_update_rms(two).init(jnp.zeros(2))
  with pytest.raises(TypeError, match=r"clip_by_update_rms\(optimizer=...\)"):
    adam_optax.clip_by_update_rms(adam_optax.adam)


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"b1": 1.0}, r"stable_adamw\(b1=1.0\)"),
    ({"b2": 1.5}, r"stable_adamw\(b2=1.5\)"),
    ({"eps": -1e-6}, r"stable_adamw\(eps=-1e-06\)"),
    ({"weight_decay": -0.1}, r"stable_adamw\(weight_decay=-0.1\)"),
    ({"learning_rate": "0.1"}, r"stable_adamw\(learning_rate=...\)"),
    ({"nu_dtype": jnp.int8}, r"stable_adamw\(nu_dtype="),
  ],
)
def test_bad_hyperparameters_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    adam_optax.stable_adamw(**{"learning_rate": 1e-3, **kwargs})


def test_composes(strict_promotion):
  check_composes(lambda learning_rate: adam_optax.stable_adamw(learning_rate, weight_decay=0.1))


@pytest.mark.devices(8)
def test_zero1_state_shardings():
  check_zero1(lambda learning_rate: adam_optax.stable_adamw(learning_rate, weight_decay=0.1))
