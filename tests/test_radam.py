"""RAdam against torch.optim.RAdam, optax.radam and the paper's equations (float64).

torch (and the authors' code) add eps to sqrt(v_t) and rectify once rho_t > 5;
the paper has no eps and says rho_t > 4; optax adds eps to sqrt(v_hat_t). We
follow torch (the issue's reference): the float64 evaluation below is the
paper's Algorithm 2 with torch's eps and threshold, its rho_t computed exactly
in rational arithmetic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import optax
import pytest
import torch

import adam_optax
from adam_optax._radam import sma_length
from tests.modern_references import (
  PROBLEMS,
  assert_matches_paper,
  assert_no_further_than_reference,
  one_minus_power,
  run_ours,
  run_paper,
  run_torch,
  schedule,
)
from tests.references import normwise_error

LR, B1, B2, EPS = 1e-2, 0.9, 0.999, 1e-8


def exact_rho(b2: float, t: int) -> tuple[float, float]:
  """(rho_inf, rho_t) in rational arithmetic, rounded once."""
  b = Fraction(b2)
  power = b**t
  rho_inf = 2 / (1 - b) - 1
  return float(rho_inf), float(rho_inf - 2 * t * power / (1 - power))


def paper(lr, b1=B1, b2=B2, eps=EPS, *, weight_decay=0.0, decoupled=False, threshold=5.0):
  """Liu et al. (2020), Algorithm 2, with torch's eps (on sqrt(v_t)) and threshold."""

  def step(x, g, t, memory):
    rate = lr(t - 1) if callable(lr) else lr
    if decoupled:
      x = x * (1 - rate * weight_decay)
    else:
      g = g + weight_decay * x
    m = memory["m"] = b1 * memory.get("m", 0.0) + (1 - b1) * g
    v = memory["v"] = b2 * memory.get("v", 0.0) + (1 - b2) * g * g
    m_hat = m / one_minus_power(b1, t)
    rho_inf, rho = exact_rho(b2, t)
    if rho <= threshold:
      return x - rate * m_hat
    r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    return x - rate * r * m_hat * math.sqrt(one_minus_power(b2, t)) / (np.sqrt(v) + eps)

  return step


def radam_with_flag(lr, decoupled=False, **options):
  """``radam`` with the float64 evaluation's name for ``decoupled_weight_decay``."""
  return adam_optax.radam(lr, decoupled_weight_decay=decoupled, **options)


def torch_radam(lr=LR, **options):
  return lambda params: torch.optim.RAdam(params, lr=lr, betas=(B1, B2), eps=EPS, **options)


def set_lr(optimizer, t):
  optimizer.param_groups[0]["lr"] = schedule(t)


@pytest.mark.parametrize(
  "problem, weight_decay, decoupled",
  [
    ("quadratic", 0.0, False),
    ("mlp", 0.1, False),
    ("mlp", 0.1, True),
    ("ill_scaled", 0.0, False),
    ("ill_scaled", 0.1, True),
  ],
)
def test_matches_torch(problem, weight_decay, decoupled):
  grad = PROBLEMS[problem]
  options = {"weight_decay": weight_decay, "decoupled_weight_decay": decoupled}
  ours = run_ours(adam_optax.radam(LR, **options), grad, np.float32)
  theirs = run_torch(torch_radam(**options), grad, np.float32)
  assert normwise_error(ours, theirs) < 1e-5


def test_matches_torch_with_a_schedule():
  grad = PROBLEMS["mlp"]
  options = {"weight_decay": 0.1, "decoupled_weight_decay": True}
  ours = run_ours(adam_optax.radam(schedule, **options), grad, np.float32)
  theirs = run_torch(torch_radam(**options), grad, np.float32, before_step=set_lr)
  assert normwise_error(ours, theirs) < 1e-5


@pytest.mark.parametrize(
  "problem, options",
  [
    ("quadratic", {}),
    ("mlp", {"weight_decay": 0.1}),
    ("ill_scaled", {}),
    ("mlp", {"weight_decay": 0.1, "decoupled": True, "lr": schedule}),
    ("quadratic", {"b2": 0.9999, "eps": 1e-3}),
    ("ill_scaled", {"threshold": 4.0, "b2": 0.99}),
  ],
  ids=["quadratic", "mlp-l2", "ill_scaled", "decoupled-schedule", "eps-dominates", "paper-4"],
)
def test_matches_the_paper_in_float64(x64, problem, options):
  assert_matches_paper(radam_with_flag, paper, problem, options, LR)


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_closer_to_the_paper_than_optax_which_loses_rho_t_in_float32(problem):
  """With eps = 0 (where optax and torch agree), optax.radam's float32 rho_t cancels.

  optax forms rho_inf - 2 t b2^t / (1 - b2^t) in float32: ~2e3 minus nearly as
  much at b2 = 0.999, 0.7 % off where the rectification switches on. Measured
  gap to the float64 paper: optax ~1e-4, ours < 1e-5.
  """
  grad = PROBLEMS[problem]
  ours = run_ours(adam_optax.radam(LR, eps=0.0), grad, np.float32)
  theirs = run_ours(optax.radam(LR, eps=0.0), grad, np.float32)
  assert_no_further_than_reference(ours, theirs, run_paper(paper(LR, eps=0.0), grad))


def test_eps_sits_on_sqrt_v_as_in_torch_not_on_sqrt_v_hat_as_in_optax():
  """With eps = 1e-3 on gradients ~1e-3 the two placements give different optimizers."""

  def grad(x, t, xp):
    return xp.asarray(1e-3, x.dtype) * PROBLEMS["mlp"](x, t, xp)

  ours = run_ours(adam_optax.radam(LR, eps=1e-3), grad, np.float32)
  as_torch = run_torch(
    lambda params: torch.optim.RAdam(params, lr=LR, betas=(B1, B2), eps=1e-3), grad, np.float32
  )
  as_optax = run_ours(optax.radam(LR, eps=1e-3), grad, np.float32)
  assert normwise_error(ours, as_torch) < 1e-5
  assert normwise_error(ours, as_optax) > 1e-3


@pytest.mark.parametrize("b2", [0.5, 0.9, 0.999, 0.9999])
def test_sma_length_is_accurate_in_float32(b2):
  """rho_t within 1e-6 of the exact value where 1 - b2^t cancellation would lose it all."""
  import jax.numpy as jnp

  for t in (1, 2, 5, 6, 7, 10, 100, 1000):
    expected = exact_rho(float(np.float32(b2)), t)[1]
    actual = float(sma_length(b2, jnp.asarray(t), jnp.float32)[1])
    assert abs(actual - expected) <= 1e-6 * expected, t


def test_first_steps_are_momentum_sgd():
  """rho_t <= 5 for t <= 5 at b2 = 0.999: the update is -lr m_hat (= -lr g for constant g)."""
  ours = run_ours(adam_optax.radam(0.1), lambda x, t, xp: xp.ones_like(x), np.float32, steps=6)
  steps = np.diff(ours, axis=0)
  np.testing.assert_allclose(steps[:4], -0.1, rtol=1e-6)
  assert np.all(np.abs(steps[4]) < 0.01)  # step 6: the rectified adaptive step, r_6 ~ 0.026


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"b1": 1.0}, r"radam\(b1=1.0\)"),
    ({"b2": -0.1}, r"radam\(b2=-0.1\)"),
    ({"eps": -1.0}, r"radam\(eps=-1.0\)"),
    ({"weight_decay": -1.0}, r"radam\(weight_decay=-1.0\)"),
    ({"threshold": 3.0}, r"radam\(threshold=3.0\): threshold must be >= 4"),
  ],
)
def test_bad_hyperparameters_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    adam_optax.radam(1e-3, **kwargs)


def test_decoupled_flag_must_be_a_bool():
  with pytest.raises(TypeError, match=r"radam\(decoupled_weight_decay=...\)"):
    adam_optax.radam(1e-3, decoupled_weight_decay="yes")
