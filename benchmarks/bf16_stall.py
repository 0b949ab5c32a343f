"""Where round-to-nearest bfloat16 loses Adam's updates, on the language model of lm.py.

Trains the model with fp32 AdamW for ``--steps`` steps, then takes one more
step's update u for every weight w and counts the entries whose bfloat16
round-to-nearest sum equals the weight, bf16(w + u) == bf16(w): the update is
lost. Stochastic rounding keeps them in expectation. Reported per group of
leaves (embeddings, LayerNorm scales and biases, linear kernels and biases).

    python benchmarks/bf16_stall.py [--steps 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lm


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=100)
  args = parser.parse_args()
  setup = dataclasses.replace(lm.Setup(), steps=args.steps)
  train, _, _ = lm.load_text()
  rng = np.random.default_rng(setup.seed)
  graphdef, params = lm.nnx.split(lm.Transformer(setup, lm.nnx.Rngs(setup.seed)), lm.nnx.Param)
  optimizer, dtype = lm.jax_optimizers(setup)["jax fp32 AdamW"]
  run = lm.JaxRun("fp32", graphdef, params, optimizer, dtype)
  for _ in range(args.steps):
    run.step(lm.sample(train, setup, rng))

  def loss(p, batch):
    return lm.cross_entropy(lm.nnx.merge(graphdef, p)(batch[:, :-1]), batch[:, 1:])

  grads = jax.grad(loss)(run.params, lm.sample(train, setup, rng))
  updates, _ = optimizer.update(grads, run.state, run.params)
  groups: dict[str, list[int]] = {}
  flat = jax.tree_util.tree_flatten_with_path(run.params)[0]
  for (path, w), u in zip(flat, jax.tree.leaves(updates), strict=True):
    name = jax.tree_util.keystr(path)
    group = (
      "embeddings"
      if "embed" in name or "position" in name
      else "LayerNorm"
      if "ln" in name
      else "linear kernels"
      if "kernel" in name
      else "linear biases"
    )
    w16 = w.astype(jnp.bfloat16)
    lost = jnp.asarray(optax.apply_updates(w16, u.astype(jnp.bfloat16)) == w16) & (u != 0)
    counts = groups.setdefault(group, [0, 0])
    counts[0] += int(jnp.sum(lost))
    counts[1] += int(w.size)
  print(f"After {args.steps} fp32 AdamW steps (lr {setup.lr}): entries whose next update is lost")
  print("by round-to-nearest bfloat16, bf16(w + u) == bf16(w) with u != 0.\n")
  print("| leaves | entries | update lost |")
  print("|---|---:|---:|")
  total = [0, 0]
  for group, (lost, size) in groups.items():
    print(f"| {group} | {size:,} | {100 * lost / size:.1f} % |")
    total = [total[0] + lost, total[1] + size]
  print(f"| all | {total[1]:,} | {100 * total[0] / total[1]:.1f} % |")


if __name__ == "__main__":
  main()
