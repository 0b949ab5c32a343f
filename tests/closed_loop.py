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

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_optax

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


Shapes = dict[str, tuple[int, ...]]  # a tree's leaves, by name, in the flat vector's order


def unflatten(flat: np.ndarray, shapes: Shapes) -> dict[str, np.ndarray]:
  """The flat vector cut into named leaves, in ``shapes``' order."""
  sizes = [int(np.prod(shape)) for shape in shapes.values()]
  pieces = np.split(np.asarray(flat), np.cumsum(sizes)[:-1])
  return {
    name: piece.reshape(shape) for (name, shape), piece in zip(shapes.items(), pieces, strict=True)
  }


def flatten(tree: dict, shapes: Shapes) -> np.ndarray:
  """The named leaves of ``tree`` as one vector, in ``shapes``' order."""
  return np.concatenate([np.ravel(np.asarray(tree[name])) for name in shapes])


def run_ours(
  optimizer: optax.GradientTransformation,
  params: np.ndarray,
  grad: GradFn,
  dtype=np.float32,
  steps: int = STEPS,
  shapes: Shapes | None = None,
) -> tuple[np.ndarray, optax.OptState]:
  """``optimizer`` (jitted) on ``grad`` from ``params``: the trajectory and the last state.

  With ``shapes``, the optimizer sees a dict of leaves cut from the flat vector.
  """
  if shapes is None:
    y = jnp.asarray(params, dtype)
    as_vector = np.asarray
  else:
    y = jax.tree.map(lambda a: jnp.asarray(a, dtype), unflatten(params, shapes))
    as_vector = lambda tree: flatten(tree, shapes)  # noqa: E731
  state = optimizer.init(y)

  @jax.jit
  def step(y, state, g):
    updates, state = optimizer.update(g, state, y)
    return optax.apply_updates(y, updates), state

  rows = []
  for t in range(steps):
    g = grad(as_vector(y).astype(np.float64), t).astype(dtype)
    y, state = step(y, state, g if shapes is None else unflatten(g, shapes))
    rows.append(as_vector(y))
  return np.stack(rows), state


def run_torch(
  make_optimizer: Callable[[list], object],
  params: np.ndarray,
  grad: GradFn,
  dtype=np.float32,
  steps: int = STEPS,
  *,
  before_step: Callable[[object, int], None] | None = None,
  shapes: Shapes | None = None,
) -> tuple[np.ndarray, object]:
  """A torch optimizer (``make_optimizer([p])``) on ``grad``: the trajectory and the optimizer.

  ``before_step(optimizer, step)`` may set a scheduled ``lr`` in its groups.
  With ``shapes``, ``make_optimizer`` gets ``[(name, tensor), ...]`` instead
  (``named_parameters()``), one tensor per leaf cut from the flat vector.
  """
  import torch

  leaves = {"": np.asarray(params)} if shapes is None else unflatten(params, shapes)
  tensors = {
    name: torch.tensor(np.asarray(leaf, dtype), requires_grad=True) for name, leaf in leaves.items()
  }
  optimizer = make_optimizer(list(tensors.values()) if shapes is None else list(tensors.items()))

  def vector() -> np.ndarray:
    return np.concatenate([np.ravel(t.detach().numpy()) for t in tensors.values()])

  rows = []
  for t in range(steps):
    if before_step is not None:
      before_step(optimizer, t)
    g = grad(vector().astype(np.float64), t).astype(dtype)
    pieces = {"": g} if shapes is None else unflatten(g, shapes)
    for name, tensor in tensors.items():
      tensor.grad = torch.tensor(pieces[name])
    optimizer.step()  # type: ignore[attr-defined]
    rows.append(vector().copy())
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


def assert_injected_rate_matches_schedule(
  factory: Callable[..., optax.GradientTransformation],
  params: optax.Params,
  loss: Callable[[optax.Params], jax.Array],
  static_args: tuple[str, ...] = (),
  **kwargs,
) -> optax.OptState:
  """``inject_hyperparams(factory)`` inside ``MultiSteps(k=1)`` and ``skip_nonfinite``.

  A learning rate changed at every step compiles the step once and gives the
  run of ``factory(schedule)`` with the same rates. Returns the injected state.
  """

  def schedule(count):
    return 1e-2 / (1 + count)

  injected = optax.inject_hyperparams(factory, static_args=static_args)(
    learning_rate=1e-2, **kwargs
  )
  wrapped = adam_optax.skip_nonfinite(optax.MultiSteps(injected, 1).gradient_transformation())

  def run(optimizer, before_step=None, max_traces=None):
    p, state = params, optimizer.init(params)

    def step(p, state):
      updates, state = optimizer.update(jax.grad(loss)(p), state, p)
      return optax.apply_updates(p, updates), state

    step = jax.jit(chex.assert_max_traces(step, n=max_traces) if max_traces else step)
    for count in range(3):
      if before_step is not None:
        before_step(state, count)
      p, state = step(p, state)
    return p, state

  def set_rate(state, count):
    state.inner_state.inner_opt_state.hyperparams["learning_rate"] = jnp.asarray(schedule(count))

  ours, state = run(wrapped, set_rate, max_traces=1)
  expected, _ = run(factory(schedule, **kwargs))
  chex.assert_trees_all_close(ours, expected, rtol=1e-6)
  return state
