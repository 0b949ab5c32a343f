"""The papers' results, reproduced.

- Reddi, Kale & Kumar (2018), Theorem 1 and Section 5: on their online
  problems Adam ends near the worst point ``x = +1`` and AMSGrad, in each of
  the three conventions, near the optimum ``x = -1``.
- Kingma & Ba (2015), Section 2.1, as property tests: with ``eps = 0`` the
  first step is ``-lr sign(g)`` and the step size is bounded. The paper's
  bound (``lr (1 - b1) / sqrt(1 - b2)`` when ``1 - b1 > sqrt(1 - b2)``, else
  ``lr``) describes the typical and the sparse case; it is not a worst-case
  bound: gradients growing geometrically exceed it (checked below). What holds
  for every sequence is the Cauchy-Schwarz bound of ``step_bound``.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adam_optax
from tests.references import run_optax

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "amsgrad_counterexample.py"
_spec = importlib.util.spec_from_file_location("amsgrad_counterexample", EXAMPLE)
reddi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reddi)

CONVENTIONS = ["torch", "optax", "paper"]


def _last_period_mean(xs: np.ndarray, period: int) -> float:
  return float(xs[-period:].mean())


def test_reddi_theorem1_adam_fails_amsgrad_converges():
  """Theorem 1, C = 3, b1 = 0, b2 = 1/(1 + C^2), lr_t = 0.5/sqrt(t), 3000 steps."""
  lr = reddi.inverse_sqrt_schedule(0.5)
  b2 = reddi.B2_THEOREM1
  adam = reddi.run_projected(adam_optax.adam(lr, b1=0.0, b2=b2), reddi.theorem1_gradient, 3000)
  assert _last_period_mean(adam, 3) > 0.99  # measured +0.9959: the worst point
  for convention in CONVENTIONS:
    optimizer = adam_optax.amsgrad(lr, b1=0.0, b2=b2, convention=convention)
    xs = reddi.run_projected(optimizer, reddi.theorem1_gradient, 3000)
    assert _last_period_mean(xs, 3) < -0.99, convention  # measured -0.9968 .. -0.9970


def test_reddi_section5_synthetic_adam_fails_amsgrad_converges():
  """1010 x every 101st step, else -10 x; b1 = 0.9, b2 = 0.99, lr_t = 0.5/sqrt(t)."""
  lr = reddi.inverse_sqrt_schedule(0.5)
  steps = 400 * 101
  adam = reddi.run_projected(adam_optax.adam(lr, 0.9, 0.99), reddi.synthetic_gradient, steps)
  assert _last_period_mean(adam, 101) > 0.98  # measured +0.9925
  for convention in CONVENTIONS:
    optimizer = adam_optax.amsgrad(lr, 0.9, 0.99, convention=convention)
    xs = reddi.run_projected(optimizer, reddi.synthetic_gradient, steps)
    final = _last_period_mean(xs, 101)
    assert final < -0.85, convention  # measured torch -0.992, optax -0.932, paper -0.892
    assert final < _last_period_mean(xs[: steps // 2], 101), convention  # still descending


# Kingma & Ba, Section 2.1 -------------------------------------------------------------

STEPS, WIDTH = 24, 8
betas = st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999))
magnitudes = st.lists(st.floats(-6.0, 6.0), min_size=STEPS * WIDTH, max_size=STEPS * WIDTH).map(
  lambda e: 10.0 ** np.reshape(e, (STEPS, WIDTH))
)
signs = st.lists(st.booleans(), min_size=STEPS * WIDTH, max_size=STEPS * WIDTH).map(
  lambda s: np.where(np.reshape(s, (STEPS, WIDTH)), 1.0, -1.0)
)
exhaustive = settings(  # x64 is a context, valid for every example of a test
  max_examples=60,
  deadline=None,
  derandomize=True,
  database=None,
  suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@functools.partial(jax.jit, static_argnames="name")
def _updates(grads: jax.Array, lr, b1, b2, name: str = "adam") -> jax.Array:
  """Every step's update of ``name`` (eps = 0), hyperparameters traced: one compile."""
  factory = {"adam": adam_optax.adam, "adamax": adam_optax.adamax}[name]
  optimizer = optax.inject_hyperparams(factory)(learning_rate=lr, b1=b1, b2=b2, eps=0.0)

  def step(state, grad):
    updates, state = optimizer.update(grad, state)
    return state, updates

  return jax.lax.scan(step, optimizer.init(grads[0]), grads)[1]


def step_bound(b1: float, b2: float, steps: int) -> np.ndarray:
  r"""Cauchy-Schwarz: :math:`|\hat m_t| / \sqrt{\hat v_t} \le \frac{\sqrt{c_2}}{c_1}
  \frac{1 - \beta_1}{\sqrt{1 - \beta_2}} \sqrt{\sum_{k<t} (\beta_1^2/\beta_2)^k}`."""
  t = np.arange(1, steps + 1)
  ratio = b1 * b1 / b2
  total = np.cumsum(ratio ** np.arange(steps))
  return np.sqrt(1 - b2**t) / (1 - b1**t) * (1 - b1) / np.sqrt(1 - b2) * np.sqrt(total)


def paper_bound(b1: float, b2: float) -> float:
  return (1 - b1) / np.sqrt(1 - b2) if (1 - b1) > np.sqrt(1 - b2) else 1.0


@exhaustive
@given(lr=st.floats(1e-4, 1.0), betas=betas, magnitudes=magnitudes, signs=signs)
@pytest.mark.parametrize("name", ["adam", "adamax"])
def test_first_step_is_minus_lr_sign(x64, name, lr, betas, magnitudes, signs):
  grads = jnp.asarray(magnitudes * signs)
  first = np.asarray(_updates(grads[:1], lr, *betas, name=name))[0]
  np.testing.assert_allclose(first, -lr * signs[0], rtol=1e-12)


@exhaustive
@given(betas=betas, magnitudes=magnitudes, signs=signs)
def test_step_never_exceeds_the_cauchy_schwarz_bound(x64, betas, magnitudes, signs):
  steps = np.abs(np.asarray(_updates(jnp.asarray(magnitudes * signs), 1.0, *betas)))
  assert np.all(steps <= step_bound(*betas, STEPS)[:, None] * (1 + 1e-12) + 1e-300)


@exhaustive
@given(b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999), magnitudes=magnitudes, signs=signs)
def test_paper_bound_holds_when_gradients_do_not_grow(x64, b1, b2, magnitudes, signs):
  """b1 <= b2 and non-increasing |g|: the step is at most lr, hence within the paper's bound."""
  b1 = min(b1, b2)
  shrinking = -np.sort(-magnitudes, axis=0) * signs  # each coordinate's |g| decreases
  steps = np.abs(np.asarray(_updates(jnp.asarray(shrinking), 1.0, b1, b2)))
  assert np.all(steps <= 1.0 + 1e-12)
  assert np.all(steps <= paper_bound(b1, b2) * (1 + 1e-12))


@exhaustive
@given(betas=betas, spike=st.integers(0, STEPS - 1), size=st.floats(1e-6, 1e6))
def test_paper_bound_holds_in_the_sparse_case(x64, betas, spike, size):
  """The 'most severe sparsity': gradients zero at every step but the current one."""
  grads = np.zeros((STEPS, 1))  # (the steps before the spike are 0/0, not looked at)
  grads[spike] = size
  step = np.abs(np.asarray(_updates(jnp.asarray(grads), 1.0, *betas)))[spike, 0]
  assert step <= paper_bound(*betas) * (1 + 1e-12)


@pytest.mark.parametrize("b1, b2, exceeds", [(0.9, 0.99, 2.18), (0.5, 0.9, 1.86)])
def test_paper_bound_is_not_a_worst_case_bound(x64, b1, b2, exceeds):
  """Gradients growing by b2/b1 a step make |step| exceed the paper's bound, not ours."""
  grads = (b2 / b1) ** np.arange(200.0)
  steps = np.abs(run_optax(adam_optax.adam(1.0, b1, b2, eps=0.0), grads, np.zeros(())))
  steps = np.abs(np.diff(np.concatenate([[0.0], steps])))
  assert steps.max() > exceeds > paper_bound(b1, b2)
  assert np.all(steps <= step_bound(b1, b2, 200) * (1 + 1e-12))
