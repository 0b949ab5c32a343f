"""Problems and runners shared by the modern family's reference tests.

Each problem is a gradient function ``grad(x, t, xp)`` of the flat parameter
vector ``x`` at step ``t`` (from 0), written once for ``xp = numpy`` (torch
runs and the float64 evaluations of the papers' equations) and ``xp =
jax.numpy`` (our optimizers, jitted), so every implementation follows its own
trajectory on the same problem:

- ``quadratic``: :math:`\\tfrac12 \\sum_i d_i x_i^2`, curvatures ``1e-2 .. 1e2``;
- ``mlp``: a 2-layer tanh MLP's least-squares gradient on a fixed batch;
- ``ill_scaled``: fixed log-normal gradients whose coordinates are scaled by
  ``1e-6 .. 1e4``.

The runners return the trajectory, one row per step.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tests.references import _one_minus_power as one_minus_power
from tests.references import gradient_sequence

__all__ = ["one_minus_power"]  # re-exported for the member tests

STEPS = 100
SIZE = 24  # the MLP: 3 inputs x 4 hidden + 4 hidden x 3 outputs
GradFn = Callable[[Any, Any, ModuleType], Any]

_RNG = np.random.default_rng(2024)
_CURVATURE = np.logspace(-2, 2, SIZE)
_SCALES = np.logspace(-6, 4, SIZE)
_FIXED = np.stack(gradient_sequence(7, STEPS, SIZE, 1.0, np.float64)) * _SCALES
_INPUTS = _RNG.standard_normal((16, 3))
_TARGETS = np.sin(_INPUTS @ _RNG.standard_normal((3, 3)))


def quadratic(x: Any, t: Any, xp: ModuleType) -> Any:
  del t
  return xp.asarray(_CURVATURE, x.dtype) * x


def mlp(x: Any, t: Any, xp: ModuleType) -> Any:
  del t
  inputs, targets = xp.asarray(_INPUTS, x.dtype), xp.asarray(_TARGETS, x.dtype)
  w1, w2 = xp.reshape(x[:12], (3, 4)), xp.reshape(x[12:], (4, 3))
  hidden = xp.tanh(inputs @ w1)
  residual = (hidden @ w2 - targets) / xp.asarray(len(_INPUTS), x.dtype)
  d_hidden = (residual @ w2.T) * (1 - hidden * hidden)
  return xp.concatenate(
    [xp.reshape(inputs.T @ d_hidden, (-1,)), xp.reshape(hidden.T @ residual, (-1,))]
  )


def ill_scaled(x: Any, t: Any, xp: ModuleType) -> Any:
  table = xp.asarray(_FIXED, x.dtype)
  return table[t]


PROBLEMS: dict[str, GradFn] = {"quadratic": quadratic, "mlp": mlp, "ill_scaled": ill_scaled}


def schedule(count: Any) -> Any:
  """A linear decay 3e-2 -> 1e-3 over the run, exact in float64 (optax's schedules are float32)."""
  return 3e-2 - 2.9e-2 * count / STEPS


def assert_no_further_than_reference(
  ours: np.ndarray, theirs: np.ndarray, exact: np.ndarray, tolerance: float = 1e-5
) -> None:
  """Ours within ``tolerance`` of the exact trajectory, and of theirs up to theirs' own error.

  For a reference whose float32 rounding (not ours) puts it further from the
  float64 paper than ``tolerance``, as in the family's parity tests.
  """
  from tests.references import normwise_error

  assert normwise_error(ours, exact) < tolerance
  assert normwise_error(ours, theirs) < normwise_error(theirs, exact) + tolerance


def assert_matches_paper(
  factory: Callable[..., optax.GradientTransformation],
  paper: Callable[..., Callable],
  problem: str,
  options: dict,
  lr: Any,
) -> None:
  """``factory(lr, **options)`` in float64 within 1e-12 of ``paper(lr, **options)``.

  ``options["lr"]``, if present, replaces ``lr`` (a schedule). Run under x64.
  """
  options = dict(options)
  lr = options.pop("lr", lr)
  grad = PROBLEMS[problem]
  ours = run_ours(factory(lr, **options), grad, np.float64)
  assert ours.dtype == np.float64
  from tests.references import normwise_error

  assert normwise_error(ours, run_paper(paper(lr, **options), grad)) < 1e-12


def start(dtype: Any) -> np.ndarray:
  """The common starting point: a ramp, so that a weight decay acts from step 1."""
  return np.linspace(-0.5, 0.5, SIZE).astype(dtype)


def run_ours(
  optimizer: optax.GradientTransformation, grad: GradFn, dtype: Any, steps: int = STEPS
) -> np.ndarray:
  """``optimizer`` on the problem, jitted, from :func:`start`."""
  x = jnp.asarray(start(dtype))

  def step(carry: Any, t: jax.Array) -> tuple[Any, jax.Array]:
    x, state = carry
    updates, state = optimizer.update(grad(x, t, jnp), state, x)
    x = optax.apply_updates(x, updates)
    return (x, state), x

  run = jax.jit(lambda x: jax.lax.scan(step, (x, optimizer.init(x)), jnp.arange(steps))[1])
  return np.asarray(run(x))


def run_torch(
  make_optimizer: Callable[[list], Any],
  grad: GradFn,
  dtype: Any,
  steps: int = STEPS,
  *,
  before_step: Callable[[Any, int], None] | None = None,
) -> np.ndarray:
  """A torch optimizer (``make_optimizer([param])``) on the problem, from :func:`start`.

  ``before_step(optimizer, t)`` may set a scheduled value in its param groups.
  """
  import torch

  default_dtype = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
  try:
    param = torch.tensor(start(dtype), requires_grad=True)
    optimizer = make_optimizer([param])
    trajectory = []
    for t in range(steps):
      if before_step is not None:
        before_step(optimizer, t)
      x = param.detach().numpy()
      param.grad = torch.tensor(np.asarray(grad(x, t, np), dtype=dtype))
      optimizer.step()
      trajectory.append(param.detach().numpy().copy())
  finally:
    torch.set_default_dtype(default_dtype)
  return np.stack(trajectory)


def run_paper(
  step: Callable[[np.ndarray, np.ndarray, int, dict], np.ndarray],
  grad: GradFn,
  steps: int = STEPS,
) -> np.ndarray:
  """A float64 evaluation: ``x = step(x, g, t, memory)`` with ``t`` from 1, ``memory`` a dict.

  ``step`` is the paper's update written in NumPy; ``memory`` carries its
  moments from one call to the next.
  """
  x = start(np.float64)
  memory: dict = {}
  trajectory = []
  for t in range(steps):
    x = step(x, np.asarray(grad(x, t, np), np.float64), t + 1, memory)
    trajectory.append(x)
  return np.stack(trajectory)


def load_example(name: str) -> ModuleType:
  """The module ``examples/<name>.py`` (examples are scripts, not a package)."""
  import importlib.util
  from pathlib import Path

  path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
