"""Simplified AdEMAMix against optax.contrib, pytorch_optimizer and the paper (float64).

``optax.contrib.simplified_ademamix`` follows the paper (no warm-up).
``pytorch_optimizer.SimplifiedAdEMAMix`` 4.1.0 differs twice: it keeps an EMA,
``m = b1 m + (1 - b1) g``, where the paper and the authors' code keep the
undamped ``m = b1 m + g`` (a convention: rescaling the learning rate,
``alpha`` and the weight decay by ``1 - b1`` undoes it), and it divides its
step by ``1 - b2 ** t`` where the authors' code multiplies by ``sqrt(1 - b2 **
t)`` after folding that factor into the denominator (a bug: its first step is
``1 / (1 - b2) = 20`` times the paper's). It is matched here with both undone
by our learning-rate and weight-decay schedules, and the tests below show
each difference against the float64 paper.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import pytorch_optimizer

import adam_optax
from tests.modern_references import (
  PROBLEMS,
  assert_matches_paper,
  one_minus_power,
  run_ours,
  run_paper,
  run_torch,
  schedule,
  start,
)
from tests.references import normwise_error

LR = 1e-3  # the momentum sums ~1 / (1 - b1) = 100 gradients


def paper(
  lr,
  b1=0.99,
  b2=0.95,
  alpha=0.0,
  eps=1e-8,
  *,
  b1_warmup=None,
  min_b1=0.9,
  weight_decay=0.0,
):
  """Morwani et al. (2025), Simplified AdEMAMix with the half-life warm-up of b1 (float64)."""

  def half_life(beta):
    return math.log(0.5) / math.log(beta) - 1

  def step(x, g, t, memory):
    rate = lr(t - 1) if callable(lr) else lr
    beta1 = b1
    if b1_warmup is not None and t < b1_warmup:
      s = t / b1_warmup
      beta1 = 0.5 ** (1 / ((1 - s) * half_life(min_b1) + s * half_life(b1) + 1))
    m = memory["m"] = beta1 * memory.get("m", 0.0) + g
    v = memory["v"] = b2 * memory.get("v", 0.0) + (1 - b2) * g * g
    direction = (alpha * g + m) / (np.sqrt(v / one_minus_power(b2, t)) + eps)
    return x - rate * (direction + weight_decay * x)

  return step


CASES = [
  ("quadratic", 0.0, 0.0),
  ("mlp", 0.5, 0.1),
  ("ill_scaled", 2.0, 0.0),
  ("ill_scaled", 0.0, 0.1),
]


@pytest.mark.parametrize("problem, alpha, weight_decay", CASES[1:3])  # all four: pytorch_optimizer
def test_matches_optax_contrib(problem, alpha, weight_decay):
  grad = PROBLEMS[problem]
  options = {"alpha": alpha, "weight_decay": weight_decay}
  ours = run_ours(adam_optax.simplified_ademamix(LR, **options), grad, np.float32)
  theirs = run_ours(optax.contrib.simplified_ademamix(LR, **options), grad, np.float32)
  assert normwise_error(ours, theirs) < 1e-5


def test_matches_optax_contrib_with_a_schedule():
  grad = PROBLEMS["mlp"]
  rate = lambda count: schedule(count) / 10  # noqa: E731
  ours = run_ours(adam_optax.simplified_ademamix(rate, weight_decay=0.1), grad, np.float32)
  theirs = run_ours(optax.contrib.simplified_ademamix(rate, weight_decay=0.1), grad, np.float32)
  assert normwise_error(ours, theirs) < 1e-5


def torch_simplified(*, lr=LR, b1=0.99, alpha=0.0, weight_decay=0.0, rescale=True):
  """pytorch_optimizer's optimizer, its EMA rescaled by ``1 - b1`` (if ``rescale``)."""
  scale = 1 - b1 if rescale else 1.0
  return lambda params: pytorch_optimizer.SimplifiedAdEMAMix(
    params,
    lr=lr / scale,
    betas=(b1, 0.95),
    alpha=alpha * scale,
    weight_decay=weight_decay * scale,
    weight_decouple=True,
    foreach=False,
  )


def bias_squared(count):
  """``1 - b2 ** t`` at step ``t = count + 1``, b2 = 0.95: pytorch_optimizer's extra divisor."""
  t = jnp.asarray(count, jnp.float32) + 1
  return -jnp.expm1(t * jnp.log(jnp.float32(0.95)))


@pytest.mark.parametrize("problem, alpha, weight_decay", CASES)
def test_matches_pytorch_optimizer_rescaled(problem, alpha, weight_decay):
  grad = PROBLEMS[problem]
  ours = adam_optax.simplified_ademamix(
    lambda count: LR / bias_squared(count),
    alpha=alpha,
    weight_decay=lambda count: weight_decay * bias_squared(count),
  )
  theirs = run_torch(torch_simplified(alpha=alpha, weight_decay=weight_decay), grad, np.float32)
  assert normwise_error(run_ours(ours, grad, np.float32), theirs) < 1e-5


def test_pytorch_optimizer_first_step_is_20_times_the_papers(x64):
  grad = PROBLEMS["mlp"]
  exact = run_paper(paper(LR, alpha=1.0), grad, steps=1)[0] - start(np.float64)
  theirs = run_torch(torch_simplified(alpha=1.0), grad, np.float64, steps=1)[0] - start(np.float64)
  np.testing.assert_allclose(theirs, exact / (1 - 0.95), rtol=1e-12)


def test_pytorch_optimizer_with_the_same_hyperparameters_is_not_the_paper(x64):
  grad = PROBLEMS["mlp"]
  exact = run_paper(paper(LR, alpha=1.0), grad)
  ours = run_ours(adam_optax.simplified_ademamix(LR, alpha=1.0), grad, np.float64)
  theirs = run_torch(torch_simplified(alpha=1.0, rescale=False), grad, np.float64)
  assert normwise_error(ours, exact) < 1e-12
  assert normwise_error(theirs, exact) > 1e-2


def test_warmup_in_float32_stays_on_the_paper():
  grad = PROBLEMS["mlp"]
  options = {"b1_warmup": 80, "alpha": 1.0, "weight_decay": 0.1}
  ours = run_ours(adam_optax.simplified_ademamix(LR, **options), grad, np.float32)
  assert normwise_error(ours, run_paper(paper(LR, **options), grad)) < 1e-5


@pytest.mark.parametrize(
  "problem, options",
  [
    ("quadratic", {}),
    ("mlp", {"weight_decay": 0.1, "alpha": 0.5, "b1_warmup": 60}),
    ("ill_scaled", {"b1_warmup": 150, "min_b1": 0.5, "b1": 0.999}),
    ("ill_scaled", {"eps": 1e-3, "alpha": 2.0}),
    ("mlp", {"lr": lambda count: schedule(count) / 10}),
  ],
  ids=["quadratic", "mlp-warmup", "ill_scaled-long-warmup", "eps-dominates", "schedule"],
)
def test_matches_the_paper_in_float64(x64, problem, options):
  assert_matches_paper(adam_optax.simplified_ademamix, paper, problem, options, LR)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"b1": 1.0}, r"simplified_ademamix\(b1=1.0\)"),
    ({"b2": -0.1}, r"simplified_ademamix\(b2=-0.1\)"),
    ({"alpha": -1.0}, r"simplified_ademamix\(alpha=-1.0\)"),
    ({"eps": math.nan}, r"simplified_ademamix\(eps=nan\)"),
    ({"b1_warmup": 0}, r"simplified_ademamix\(b1_warmup=0\): b1_warmup must be None or"),
    ({"min_b1": 1.5}, r"simplified_ademamix\(min_b1=1.5\)"),
    ({"b1_warmup": 10, "b1": 0.8}, r"simplified_ademamix\(min_b1=0.9\): min_b1 must be <= b1"),
    ({"weight_decay": -1.0}, r"simplified_ademamix\(weight_decay=-1.0\)"),
  ],
)
def test_bad_hyperparameters_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    adam_optax.simplified_ademamix(1e-3, **kwargs)
