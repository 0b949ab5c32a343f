"""The problems the modern members are compared on, and runners that train on them.

Each problem is a gradient function of the flat parameter vector, computed in
float64 NumPy and cast to the run's dtype, so that optax-style and torch
optimizers see the same gradients at the same points and differ only by their
own arithmetic. Runners return the trajectory of the params, one row per step.

- ``quadratic``: an ill-conditioned quadratic (curvatures 1e-2..1e2).
- ``mlp``: a 2-layer tanh MLP regressing a fixed target (closed loop).
- ``ill_scaled``: fixed gradients whose coordinates span 1e-6..1e4 (open loop).
- :func:`all_problems`: the three in one vector.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

GradFn = Callable[[np.ndarray, int], np.ndarray]  # (params in float64, step) -> gradient
STEPS = 100


def quadratic(size: int = 16) -> tuple[np.ndarray, GradFn]:
  """``0.5 sum h_i (p_i - 1)^2`` from ``p = 0`` (open to every step size)."""
  curvature = np.logspace(-2, 2, size)
  return np.zeros(size), lambda p, step: curvature * (p - 1.0)


def mlp(inputs: int = 4, hidden: int = 8, samples: int = 16) -> tuple[np.ndarray, GradFn]:
  """Mean squared error of ``tanh(X W1 + b1) w2 + b2``; params flattened in that order."""
  rng = np.random.default_rng(7)
  x = rng.standard_normal((samples, inputs))
  target = np.sin(x.sum(axis=1))
  shapes = [(inputs, hidden), (hidden,), (hidden,), ()]
  sizes = [int(np.prod(s)) for s in shapes]

  def unflatten(p: np.ndarray) -> list[np.ndarray]:
    parts = np.split(p, np.cumsum(sizes)[:-1])
    return [part.reshape(shape) for part, shape in zip(parts, shapes, strict=True)]

  def grad(p: np.ndarray, step: int) -> np.ndarray:
    w1, b1, w2, b2 = unflatten(p)
    h = np.tanh(x @ w1 + b1)
    residual = 2 * (h @ w2 + b2 - target) / samples
    dh = np.outer(residual, w2) * (1 - h**2)
    parts = [x.T @ dh, dh.sum(axis=0), h.T @ residual, residual.sum()]
    return np.concatenate([np.ravel(g) for g in parts])

  return 0.5 * rng.standard_normal(sum(sizes)), grad


def ill_scaled(size: int = 16, steps: int = STEPS) -> tuple[np.ndarray, GradFn]:
  """Noisy gradients, coordinate ``i`` of magnitude ``scale_i`` in 1e-6..1e4."""
  rng = np.random.default_rng(3)
  scales = np.logspace(-6, 4, size)
  grads = scales * (0.5 + rng.standard_normal((steps, size)))
  return np.linspace(-1.0, 1.0, size), lambda p, step: grads[step]


PROBLEMS = {"quadratic": quadratic, "mlp": mlp, "ill_scaled": ill_scaled}


def all_problems() -> tuple[np.ndarray, GradFn]:
  """The three problems side by side in one vector (one compilation instead of three).

  For elementwise optimizers only: a per-tensor statistic would mix the problems.
  """
  parts = [make() for make in PROBLEMS.values()]
  bounds = np.cumsum([len(params) for params, _ in parts])[:-1]

  def grad(p: np.ndarray, step: int) -> np.ndarray:
    pieces = np.split(p, bounds)
    return np.concatenate([g(piece, step) for (_, g), piece in zip(parts, pieces, strict=True)])

  return np.concatenate([params for params, _ in parts]), grad


def run_ours(
  optimizer: optax.GradientTransformation,
  params: np.ndarray,
  grad: GradFn,
  dtype=np.float32,
  steps: int = STEPS,
) -> tuple[np.ndarray, optax.OptState]:
  """``optimizer`` (jitted) on ``grad`` from ``params``: the trajectory and the last state."""
  y = jnp.asarray(params, dtype)
  state = optimizer.init(y)

  @jax.jit
  def step(y, state, g):
    updates, state = optimizer.update(g, state, y)
    return optax.apply_updates(y, updates), state

  rows = []
  for t in range(steps):
    g = jnp.asarray(grad(np.asarray(y, np.float64), t), dtype)
    y, state = step(y, state, g)
    rows.append(np.asarray(y))
  return np.stack(rows), state


def run_torch(
  make_optimizer: Callable[[list], object],
  params: np.ndarray,
  grad: GradFn,
  dtype=np.float32,
  steps: int = STEPS,
  *,
  before_step: Callable[[object, int], None] | None = None,
) -> tuple[np.ndarray, object]:
  """A torch optimizer (``make_optimizer([p])``) on ``grad``: the trajectory and the optimizer.

  ``before_step(optimizer, step)`` may set a scheduled ``lr`` in its groups.
  """
  import torch

  param = torch.tensor(np.asarray(params, dtype), requires_grad=True)
  optimizer = make_optimizer([param])
  rows = []
  for t in range(steps):
    if before_step is not None:
      before_step(optimizer, t)
    g = grad(param.detach().numpy().astype(np.float64), t)
    param.grad = torch.tensor(g.astype(dtype))
    optimizer.step()  # type: ignore[attr-defined]
    rows.append(param.detach().numpy().copy())
  return np.stack(rows), optimizer


def run_numpy(
  step: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
  params: np.ndarray,
  grad: GradFn,
  steps: int = STEPS,
) -> np.ndarray:
  """A float64 reference ``step(params, gradient, t)`` (t from 1) on ``grad``: the trajectory."""
  p = np.asarray(params, np.float64)
  rows = []
  for t in range(steps):
    p = step(p, grad(p, t), t + 1)
    rows.append(p)
  return np.stack(rows)
