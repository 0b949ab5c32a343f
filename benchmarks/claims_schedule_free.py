"""Schedule-Free's claim on the character LM of ``benchmarks/lm.py``, at a small scale.

Claim (Defazio et al. 2024, arXiv 2405.15682): one Schedule-Free run, with no
horizon given, ends within reach of cosine-decay AdamW tuned for each horizon.
Here: AdamW with linear warm-up and cosine decay to 0 is trained for horizons
T, 2T and 4T, each with the best of a learning-rate sweep; one Schedule-Free
AdamW run (same warm-up, its own learning-rate sweep) of 4T steps is evaluated
at its average x after T, 2T and 4T steps. Every run sees the same batches
from the same initial weights. Reported: the validation loss of each and
Schedule-Free's gap to the tuned cosine run, relative (the claim: within 1 %).

    python benchmarks/claims_schedule_free.py            # T = 100 (a few minutes on 2 cores)
    python benchmarks/claims_schedule_free.py --steps 40 # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lm

import adam_optax

SETUP = dataclasses.replace(lm.QUICK, eval_batches=8, weight_decay=0.01)
COSINE_LRS = (3e-3, 1e-2, 3e-2)
SCHEDULE_FREE_LRS = (3e-3, 1e-2, 3e-2)


def data(steps: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """The training batches (one per step, shared by every run) and the validation batches."""
  train, val, _ = lm.load_text()
  rng = np.random.default_rng(SETUP.seed)
  val_batches = [lm.sample(val, SETUP, rng) for _ in range(SETUP.eval_batches)]
  return [lm.sample(train, SETUP, rng) for _ in range(steps)], val_batches


def trainer(optimizer: optax.GradientTransformation):
  """``train(batches, checkpoints, set_lr, evaluate_at)`` for ``optimizer``, compiled once.

  ``optimizer`` is an ``optax.inject_hyperparams`` one, so every learning rate
  (and every step of a schedule, set by ``set_lr(hyperparams, step)``) runs
  the same compiled step.
  """
  graphdef, initial = nnx.split(lm.Transformer(SETUP, nnx.Rngs(SETUP.seed)), nnx.Param)

  def loss(params, batch):
    return lm.cross_entropy(nnx.merge(graphdef, params)(batch[:, :-1]), batch[:, 1:])

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, batch):
    updates, state = optimizer.update(jax.grad(loss)(params, batch), state, params)
    return optax.apply_updates(params, updates), state

  validation = jax.jit(loss)

  def train(batches, val_batches, checkpoints, set_lr, evaluate_at=None) -> dict[int, float]:
    params = jax.tree.map(jnp.copy, initial)
    state = optimizer.init(params)
    losses = {}
    for count, batch in enumerate(batches):
      set_lr(state.hyperparams if hasattr(state, "hyperparams") else state[0].hyperparams, count)
      params, state = step(params, state, batch)
      if count + 1 in checkpoints:
        point = params if evaluate_at is None else evaluate_at(state, params)
        losses[count + 1] = float(np.mean([float(validation(point, b)) for b in val_batches]))
    return losses

  return train


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100, help="the shortest horizon T")
  args = parser.parse_args(argv)
  horizons = (args.steps, 2 * args.steps, 4 * args.steps)
  warmup = max(1, args.steps // 10)
  batches, val_batches = data(horizons[-1])
  print(f"load before: {os.getloadavg()}; horizons {horizons}, warm-up {warmup} steps")

  train = trainer(
    optax.inject_hyperparams(adam_optax.adamw)(learning_rate=0.0, weight_decay=SETUP.weight_decay)
  )
  cosine: dict[int, dict[float, float]] = {h: {} for h in horizons}
  for horizon in horizons:
    for lr in COSINE_LRS:
      schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, horizon, 0.0)

      def set_cosine(hyperparams, count, schedule=schedule):
        hyperparams["learning_rate"] = jnp.asarray(schedule(count), jnp.float32)

      loss = train(batches[:horizon], val_batches, {horizon}, set_cosine)[horizon]
      cosine[horizon][lr] = loss
      print(f"cosine AdamW, T={horizon}, lr={lr:g}: {loss:.4f}", flush=True)
  train = trainer(
    optax.inject_hyperparams(adam_optax.schedule_free_adamw, static_args=("warmup_steps",))(
      learning_rate=0.0, warmup_steps=warmup, weight_decay=SETUP.weight_decay
    )
  )
  free: dict[float, dict[int, float]] = {}
  for lr in SCHEDULE_FREE_LRS:

    def set_constant(hyperparams, count, lr=lr):
      hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)

    free[lr] = train(
      batches, val_batches, set(horizons), set_constant, adam_optax.schedule_free_eval_params
    )
    print(f"Schedule-Free, lr={lr:g}: " + ", ".join(f"T={h}: {v:.4f}" for h, v in free[lr].items()))

  best_free_lr = min(free, key=lambda lr: free[lr][horizons[-1]])
  print(f"\nload after: {os.getloadavg()}")
  print(
    f"| horizon | cosine AdamW (best lr) | Schedule-Free (lr {best_free_lr:g}, one run) | gap |"
  )
  print("|---|---|---|---|")
  for horizon in horizons:
    best_lr = min(cosine[horizon], key=cosine[horizon].get)
    ours = free[best_free_lr][horizon]
    gap = ours / cosine[horizon][best_lr] - 1
    print(f"| {horizon} | {cosine[horizon][best_lr]:.4f} ({best_lr:g}) | {ours:.4f} | {gap:+.2%} |")


if __name__ == "__main__":
  main()
