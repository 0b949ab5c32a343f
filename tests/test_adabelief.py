"""AdaBelief against pytorch_optimizer.AdaBelief, optax.adabelief and the paper's equations.

pytorch_optimizer uses one eps inside s_t and outside its root; optax and ours
take two (eps, eps_root), equal by default as in the paper's Algorithm 2.
"""

from __future__ import annotations

import numpy as np
import optax
import pytest
import pytorch_optimizer

import adam_optax
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

LR, B1, B2 = 1e-2, 0.9, 0.999


def paper(lr, b1=B1, b2=B2, eps=1e-16, eps_root=1e-16, *, weight_decay=0.0):
  """Zhuang et al. (2020), Algorithm 2 (float64), with decoupled weight decay."""

  def step(x, g, t, memory):
    rate = lr(t - 1) if callable(lr) else lr
    m = memory["m"] = b1 * memory.get("m", 0.0) + (1 - b1) * g
    s = memory["s"] = b2 * memory.get("s", 0.0) + (1 - b2) * (g - m) ** 2 + eps_root
    m_hat, s_hat = m / one_minus_power(b1, t), s / one_minus_power(b2, t)
    return x - rate * (m_hat / (np.sqrt(s_hat) + eps) + weight_decay * x)

  return step


def torch_adabelief(lr=LR, eps=1e-16, **options):
  return lambda params: pytorch_optimizer.AdaBelief(
    params, lr=lr, betas=(B1, B2), eps=eps, foreach=False, **options
  )


def set_lr(optimizer, t):
  optimizer.param_groups[0]["lr"] = schedule(t)


@pytest.mark.parametrize(
  "problem, weight_decay, eps",
  [
    ("quadratic", 0.0, 1e-16),
    ("mlp", 0.1, 1e-16),
    ("ill_scaled", 0.0, 1e-16),
    ("ill_scaled", 0.1, 1e-3),
  ],
)
def test_matches_pytorch_optimizer(problem, weight_decay, eps):
  grad = PROBLEMS[problem]
  ours = run_ours(
    adam_optax.adabelief(LR, eps=eps, eps_root=eps, weight_decay=weight_decay), grad, np.float32
  )
  theirs = run_torch(torch_adabelief(eps=eps, weight_decay=weight_decay), grad, np.float32)
  assert normwise_error(ours, theirs) < 1e-5


def test_matches_pytorch_optimizer_with_a_schedule():
  grad = PROBLEMS["mlp"]
  ours = run_ours(adam_optax.adabelief(schedule, weight_decay=0.1), grad, np.float32)
  theirs = run_torch(torch_adabelief(weight_decay=0.1), grad, np.float32, before_step=set_lr)
  assert normwise_error(ours, theirs) < 1e-5


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_matches_optax(problem):
  """optax rounds its bias corrections' b2 first: allowed its own distance from the paper."""
  grad = PROBLEMS[problem]
  ours = run_ours(adam_optax.adabelief(LR), grad, np.float32)
  theirs = run_ours(optax.adabelief(LR), grad, np.float32)
  assert_no_further_than_reference(ours, theirs, run_paper(paper(LR), grad))


@pytest.mark.parametrize(
  "problem, options",
  [
    ("quadratic", {}),
    ("mlp", {"weight_decay": 0.1}),
    ("ill_scaled", {}),
    ("ill_scaled", {"eps": 1e-3, "eps_root": 1e-6}),
    ("mlp", {"lr": schedule, "weight_decay": 0.1}),
  ],
  ids=["quadratic", "mlp-decay", "ill_scaled", "eps-dominates", "schedule"],
)
def test_matches_the_paper_in_float64(x64, problem, options):
  assert_matches_paper(adam_optax.adabelief, paper, problem, options, LR)


def test_second_moment_is_the_deviation_not_the_square():
  """Constant gradients: s_t holds the shrinking (g - m_t)^2, not g^2 (Adam's v_t ~ 0.003)."""
  belief = adam_optax.scale_by_belief(eps=0.0, eps_root=0.0)
  state = belief.init(np.zeros(1, np.float32))
  for _ in range(3):
    _, state = belief.update(np.ones(1, np.float32), state)
  m = 1 - 0.9 ** np.arange(1, 4)  # m_t for g = 1
  deviation = (1 - m) ** 2
  expected = sum(0.001 * 0.999 ** (2 - i) * deviation[i] for i in range(3))
  # 1 - float32(0.999) weighs each increment, 1.3e-5 above 1 - 0.999 (bias-corrected later)
  np.testing.assert_allclose(state.nu, [expected], rtol=2e-5)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"b1": 1.0}, r"adabelief\(b1=1.0\)"),
    ({"b2": -0.1}, r"adabelief\(b2=-0.1\)"),
    ({"eps": -1.0}, r"adabelief\(eps=-1.0\)"),
    ({"eps_root": float("inf")}, r"adabelief\(eps_root=inf\)"),
    ({"weight_decay": -1.0}, r"adabelief\(weight_decay=-1.0\)"),
  ],
)
def test_bad_hyperparameters_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    adam_optax.adabelief(1e-3, **kwargs)
