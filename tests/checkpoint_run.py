"""A small training run to checkpoint: shared by ``test_checkpoint`` and its child processes.

The gradients are fixed arrays drawn per step (one of them NaN for the guarded
optimizer), so a step is elementwise arithmetic only: two runs of the same
steps agree bit for bit whatever the devices or the process, and a resumed run
must agree with an uninterrupted one exactly.

As a script (``python -m tests.checkpoint_run COMMAND DIRECTORY``):

- ``resume``: for every optimizer, restores the step-``SAVED`` checkpoint under
  ``DIRECTORY/<name>``, trains to ``STEPS`` and saves that too.
- ``stall``: trains the guarded optimizer, saves step ``SAVED``, trains on and
  starts saving step ``STEPS`` with a commit that never happens: it prints
  ``committing`` once the step's data are written and waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_optax

SAVED, STEPS = 3, 6
POISONED_STEP = 2  # its gradient has a NaN; only guarded optimizers see it
GUARDED = "skip_nonfinite(adamw(schedule, mask))"


def decay_matrices(params: Any) -> Any:
  """The weight-decay mask: decay the matrices only."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
  "adam": lambda: adam_optax.adam(1e-2),
  "adamw": lambda: adam_optax.adamw(1e-2, weight_decay=1e-2),
  "nadam": lambda: adam_optax.nadam(1e-2),
  "nadamw(momentum_decay)": lambda: adam_optax.nadamw(1e-2, momentum_decay=4e-3),
  "amsgrad": lambda: adam_optax.amsgrad(1e-2),
  "adamax": lambda: adam_optax.adamax(1e-2),
  "inject_hyperparams(adam)": lambda: optax.inject_hyperparams(adam_optax.adam)(1e-2),
  GUARDED: lambda: adam_optax.skip_nonfinite(
    adam_optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, STEPS),
      weight_decay=1e-2,
      mask=decay_matrices,
    )
  ),
}


def initial_params() -> dict[str, Any]:
  rng = np.random.default_rng(0)
  return {
    "dense": {
      "w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
      "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
    },
    "scale": jnp.asarray(1.5, jnp.float32),
  }


def gradients(step: int, name: str) -> dict[str, Any]:
  """The gradient tree of ``step``; NaN in one entry at ``POISONED_STEP`` for the guarded run."""
  rng = np.random.default_rng(100 + step)
  grads = jax.tree.map(
    lambda p: np.asarray(rng.normal(size=np.shape(p)) * 10.0 ** rng.integers(-6, 2), np.float32),
    initial_params(),
  )
  if name == GUARDED and step == POISONED_STEP:
    grads["dense"]["b"][3] = np.nan
  return jax.tree.map(jnp.asarray, grads)


def train(
  name: str,
  optimizer: optax.GradientTransformation,
  params: Any,
  state: Any,
  first: int,
  last: int,
) -> tuple[Any, Any]:
  """Steps ``first .. last - 1`` of the run, each a jitted update plus ``apply_updates``."""

  @jax.jit
  def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for index in range(first, last):
    params, state = step(params, state, gradients(index, name))
  return params, state


def manager(directory: Path, **options: Any) -> Any:
  """An orbax ``CheckpointManager`` over ``directory``, synchronous unless told otherwise."""
  import orbax.checkpoint as ocp

  options.setdefault("enable_async_checkpointing", False)
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(**options),
    item_handlers=ocp.StandardCheckpointHandler(),  # so that a new manager reads metadata
  )


def save(directory: Path, step: int, params: Any, state: Any, **options: Any) -> Any:
  import orbax.checkpoint as ocp

  checkpoints = manager(directory, **options)
  checkpoints.save(step, args=ocp.args.StandardSave({"params": params, "opt_state": state}))
  return checkpoints


def restore(directory: Path, step: int, optimizer: optax.GradientTransformation) -> Any:
  """The checkpoint at ``step``, restored through :func:`adam_optax.restore_target`."""
  import orbax.checkpoint as ocp

  checkpoints = manager(directory)
  params = initial_params()
  saved = checkpoints.item_metadata(step)
  target = {
    "params": jax.eval_shape(lambda: params),
    "opt_state": adam_optax.restore_target(optimizer, params, saved=saved["opt_state"]),
  }
  restored = checkpoints.restore(step, args=ocp.args.StandardRestore(target))
  return restored["params"], restored["opt_state"]


def _resume(directory: Path) -> None:
  for name, factory in OPTIMIZERS.items():
    optimizer = factory()
    params, state = restore(directory / name, SAVED, optimizer)
    params, state = train(name, optimizer, params, state, SAVED, STEPS)
    save(directory / name, STEPS, params, state).close()


def _stall(directory: Path) -> None:
  import orbax.checkpoint as ocp

  class NeverCommitted(ocp.path.atomicity.AtomicRenameTemporaryPath):
    """Writes the step's data like orbax, then blocks where it would commit them."""

    async def finalize(self, *args: Any, **kwargs: Any) -> None:
      print("committing", flush=True)
      await asyncio.sleep(3600)

  optimizer = OPTIMIZERS[GUARDED]()
  params = initial_params()
  params, state = train(GUARDED, optimizer, params, optimizer.init(params), 0, SAVED)
  save(directory, SAVED, params, state).close()
  params, state = train(GUARDED, optimizer, params, state, SAVED, STEPS)
  checkpoints = manager(directory, temporary_path_class=NeverCommitted)
  checkpoints.save(STEPS, args=ocp.args.StandardSave({"params": params, "opt_state": state}))
  raise AssertionError("the save of the last step returned; it should have blocked")


if __name__ == "__main__":
  command, directory = sys.argv[1], Path(sys.argv[2])
  {"resume": _resume, "stall": _stall}[command](directory)
