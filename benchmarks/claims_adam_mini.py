"""Adam-mini's claim on the character LM of ``benchmarks/lm.py``, at a small scale.

Claim (Zhang et al. 2024, arXiv 2406.16793): AdamW's quality with 45-50 % less
optimizer state. Here AdamW and Adam-mini (the default rule by shape, and a
rule close to the paper's partition: per token for the embeddings, per head
for the fused q/k/v kernel) train the same model from the same weights on the
same batches, each with the best of a learning-rate sweep under cosine decay.
Reported: optimizer-state bytes relative to AdamW's, and the final validation
loss relative to AdamW's (the claim: state at least 45 % smaller, loss within 1 %).

    python benchmarks/claims_adam_mini.py             # 400 steps (a few minutes on 2 cores)
    python benchmarks/claims_adam_mini.py --steps 40  # a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lm
from claims_schedule_free import SETUP, data, trainer

import adam_optax

LRS = (3e-3, 1e-2)


def paper_like_blocks(path, shape):
  """Per token for the embeddings, per head for the fused q/k/v kernel, else by shape."""
  names = [str(getattr(key, "key", getattr(key, "idx", key))) for key in path]
  if "embedding" in names:
    return adam_optax.Blocks.along(shape, 0)
  if "qkv" in names and "kernel" in names:
    return adam_optax.Blocks.per_head(shape, 3 * SETUP.heads, axis=-1)
  return adam_optax.blocks_by_shape(path, shape)


def state_bytes(optimizer) -> int:
  _, params = nnx.split(lm.Transformer(SETUP, nnx.Rngs(SETUP.seed)), nnx.Param)
  abstract = jax.tree.leaves(jax.eval_shape(optimizer.init, params))
  return sum(x.size * x.dtype.itemsize for x in abstract)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  args = parser.parse_args(argv)
  warmup = max(1, args.steps // 10)
  batches, val_batches = data(args.steps)
  print(f"load before: {os.getloadavg()}; {args.steps} steps, warm-up {warmup}")
  wd = SETUP.weight_decay
  factories = {
    "AdamW": (adam_optax.adamw, {"weight_decay": wd}, ()),
    "Adam-mini (by shape)": (adam_optax.adam_mini, {"weight_decay": wd}, ("blocks",)),
    "Adam-mini (paper-like)": (
      adam_optax.adam_mini,
      {"weight_decay": wd, "blocks": paper_like_blocks},
      ("blocks",),
    ),
  }
  results = {}
  for name, (factory, kwargs, static) in factories.items():
    optimizer = optax.inject_hyperparams(factory, static_args=static)(learning_rate=0.0, **kwargs)
    train = trainer(optimizer)
    losses = {}
    for lr in LRS:
      schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, args.steps, 0.0)

      def set_lr(hyperparams, count, schedule=schedule):
        hyperparams["learning_rate"] = jnp.asarray(schedule(count), jnp.float32)

      losses[lr] = train(batches, val_batches, {args.steps}, set_lr)[args.steps]
      print(f"{name}, lr={lr:g}: {losses[lr]:.4f}", flush=True)
    best = min(losses, key=losses.get)
    results[name] = (losses[best], best, state_bytes(factory(1e-3, **kwargs)))
  print(f"\nload after: {os.getloadavg()}")
  loss0, _, bytes0 = results["AdamW"]
  print("| optimizer | state bytes (vs AdamW) | final val loss (best lr) | vs AdamW |")
  print("|---|---|---|---|")
  for name, (loss, lr, size) in results.items():
    print(
      f"| {name} | {size:,} ({size / bytes0 - 1:+.1%}) | {loss:.4f} ({lr:g}) "
      f"| {loss / loss0 - 1:+.2%} |"
    )


if __name__ == "__main__":
  main()
