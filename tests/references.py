"""Reference implementations the tests compare against.

- :func:`algorithm1`: Kingma & Ba's Algorithm 1 written out in float64 NumPy.
- :func:`run_optax`: any optax transformation over a fixed gradient sequence.
- :func:`run_torch`: a ``torch.optim`` optimizer over the same sequence.

Every runner returns the parameter trajectory, one row per step, so that the
same gradients drive every implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def algorithm1(
  grads: Sequence[np.ndarray],
  params: np.ndarray,
  lr: float,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
) -> np.ndarray:
  """Kingma & Ba (2015), Algorithm 1, in float64 (``eps_root`` as in optax).

  ``1 - b**t`` is written ``-expm1(t log b)``: the same number, without the
  cancellation that costs ``1 - b**t`` ~3e-13 (relative) in float64 at
  ``b = 0.9999``, so the reference is accurate to float64 rounding.
  """
  theta = np.asarray(params, np.float64)
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  trajectory = []
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / _one_minus_power(b1, t)
    v_hat = v / _one_minus_power(b2, t)
    theta = theta - lr * m_hat / (np.sqrt(v_hat + eps_root) + eps)
    trajectory.append(theta)
  return np.stack(trajectory)


def _one_minus_power(b: float, t: int) -> float:
  return -math.expm1(t * math.log(b)) if b > 0 else 1.0


def run_optax(
  optimizer: optax.GradientTransformation,
  grads: Sequence[np.ndarray],
  params: np.ndarray,
  *,
  jit: bool = True,
) -> np.ndarray:
  """Applies ``optimizer`` to ``grads`` in turn, starting from ``params``."""
  params = jnp.asarray(params)
  state = optimizer.init(params)

  def step(params, state, grad):
    updates, state = optimizer.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  if jit:
    step = jax.jit(step)
  trajectory = []
  for grad in grads:
    params, state = step(params, state, jnp.asarray(grad, params.dtype))
    trajectory.append(np.asarray(params))
  return np.stack(trajectory)


def run_torch(
  make_optimizer: Callable[[list], object],
  grads: Sequence[np.ndarray],
  params: np.ndarray,
) -> np.ndarray:
  """Applies a ``torch.optim`` optimizer (built by ``make_optimizer([p])``)."""
  import torch

  param = torch.tensor(np.array(params), requires_grad=True)
  optimizer = make_optimizer([param])
  trajectory = []
  for grad in grads:
    param.grad = torch.tensor(np.array(grad, dtype=params.dtype))
    optimizer.step()
    trajectory.append(param.detach().numpy().copy())
  return np.stack(trajectory)


def normwise_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """max over steps of ``max|actual - expected| / max|expected|`` at that step.

  Elementwise relative error is meaningless for coordinates crossing zero, so
  each step's error is measured against the largest coordinate of that step.
  """
  actual = np.asarray(actual, np.float64).reshape(len(actual), -1)
  expected = np.asarray(expected, np.float64).reshape(len(expected), -1)
  scale = np.maximum(np.abs(expected).max(axis=1), np.finfo(np.float64).tiny)
  return float(np.max(np.abs(actual - expected).max(axis=1) / scale))


def gradient_sequence(
  seed: int, steps: int, size: int, scale: float, dtype=np.float32
) -> list[np.ndarray]:
  """Gradients with a log-normal spread of magnitudes around ``scale``."""
  rng = np.random.default_rng(seed)
  return [
    (scale * rng.standard_normal(size) * np.exp(rng.standard_normal(size))).astype(dtype)
    for _ in range(steps)
  ]
