"""AdEMAMix against pytorch_optimizer.AdEMAMix and the paper's equations (float64).

pytorch_optimizer has one warm-up length for alpha and b3 (``t_alpha_beta3``);
ours takes one each, as the paper does.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_optimizer

import adam_optax
from tests.modern_references import (
  PROBLEMS,
  assert_matches_paper,
  one_minus_power,
  run_ours,
  run_torch,
  schedule,
)
from tests.references import normwise_error

LR = 1e-2


def paper(
  lr,
  b1=0.9,
  b2=0.999,
  b3=0.9999,
  alpha=5.0,
  eps=1e-8,
  *,
  alpha_warmup=None,
  b3_warmup=None,
  weight_decay=0.0,
):
  """Pagliardini et al. (2024), Algorithm 1 with the warm-up schedulers (float64)."""

  def step(x, g, t, memory):
    rate = lr(t - 1) if callable(lr) else lr
    a = alpha if alpha_warmup is None else min(t * alpha / alpha_warmup, alpha)
    mix3 = 1 - b3
    if b3_warmup is not None:
      s = t / b3_warmup
      exponent = math.log(b1) * math.log(b3) / ((1 - s) * math.log(b3) + s * math.log(b1))
      mix3 = max(-math.expm1(exponent), 1 - b3)  # 1 - min(b3_t, b3), without cancellation
    m1 = memory["m1"] = b1 * memory.get("m1", 0.0) + (1 - b1) * g
    v = memory["v"] = b2 * memory.get("v", 0.0) + (1 - b2) * g * g
    m2 = memory["m2"] = (1 - mix3) * memory.get("m2", 0.0) + mix3 * g
    direction = (m1 / one_minus_power(b1, t) + a * m2) / (np.sqrt(v / one_minus_power(b2, t)) + eps)
    return x - rate * (direction + weight_decay * x)

  return step


def torch_ademamix(lr=LR, *, warmup=None, weight_decay=0.0, alpha=5.0):
  return lambda params: pytorch_optimizer.AdEMAMix(
    params,
    lr=lr,
    alpha=alpha,
    t_alpha_beta3=warmup,
    weight_decay=weight_decay,
    weight_decouple=True,
    foreach=False,
  )


def set_lr(optimizer, t):
  optimizer.param_groups[0]["lr"] = schedule(t)


@pytest.mark.parametrize(
  "problem, warmup, weight_decay",
  [("quadratic", None, 0.0), ("mlp", 50, 0.1), ("ill_scaled", 50, 0.0), ("ill_scaled", None, 0.1)],
)
def test_matches_pytorch_optimizer(problem, warmup, weight_decay):
  grad = PROBLEMS[problem]
  ours = run_ours(
    adam_optax.ademamix(LR, alpha_warmup=warmup, b3_warmup=warmup, weight_decay=weight_decay),
    grad,
    np.float32,
  )
  theirs = run_torch(torch_ademamix(warmup=warmup, weight_decay=weight_decay), grad, np.float32)
  assert normwise_error(ours, theirs) < 1e-5


def test_matches_pytorch_optimizer_with_a_schedule():
  grad = PROBLEMS["mlp"]
  ours = run_ours(adam_optax.ademamix(schedule, weight_decay=0.1), grad, np.float32)
  theirs = run_torch(torch_ademamix(weight_decay=0.1), grad, np.float32, before_step=set_lr)
  assert normwise_error(ours, theirs) < 1e-5


@pytest.mark.parametrize(
  "problem, options",
  [
    ("quadratic", {}),
    ("mlp", {"weight_decay": 0.1, "alpha_warmup": 30, "b3_warmup": 80}),
    ("ill_scaled", {"b3_warmup": 60}),
    ("ill_scaled", {"eps": 1e-3, "alpha": 2.0}),
    ("mlp", {"lr": schedule}),
  ],
  ids=["quadratic", "mlp-warmups", "ill_scaled-b3-warmup", "eps-dominates", "schedule"],
)
def test_matches_the_paper_in_float64(x64, problem, options):
  assert_matches_paper(adam_optax.ademamix, paper, problem, options, LR)


def test_alpha_zero_is_adam():
  grad = PROBLEMS["mlp"]
  ours = run_ours(adam_optax.ademamix(LR, alpha=0.0), grad, np.float32)
  adam = run_ours(adam_optax.adam(LR), grad, np.float32)
  assert normwise_error(ours, adam) < 1e-6


def test_b3_warmup_starts_at_b1_and_ends_at_b3(x64):
  import jax.numpy as jnp

  from adam_optax._ademamix import warmed_up

  for t, expected in ((0.0, 0.9), (100.0, 0.9999), (1000.0, 0.9999)):
    _, keep, mix = warmed_up(5.0, 0.9, 0.9999, 100, 100, jnp.float64(t), jnp.float64)
    np.testing.assert_allclose([keep, 1 - mix], expected, rtol=1e-12)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"b3": 1.0}, r"ademamix\(b3=1.0\)"),
    ({"alpha": -1.0}, r"ademamix\(alpha=-1.0\)"),
    ({"alpha_warmup": 0}, r"ademamix\(alpha_warmup=0\): alpha_warmup must be None or"),
    ({"b3_warmup": 2.5}, r"ademamix\(b3_warmup=2.5\)"),
    ({"eps": -1.0}, r"ademamix\(eps=-1.0\)"),
  ],
)
def test_bad_hyperparameters_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    adam_optax.ademamix(1e-3, **kwargs)
