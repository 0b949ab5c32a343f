"""StableAdamW's claim: update clipping absorbs a sudden jump of the gradient scale better
than gradient clipping does (Wortsman et al. 2023, arXiv 2304.13013), at a small scale.

A tanh MLP (16 -> 64 -> 64 -> 1, ~5k params) regresses a fixed random teacher plus label
noise (std 0.1) on one full batch of 1024 samples (deterministic curves, no minibatch
noise). At step ``JUMP`` every gradient is multiplied by 1000 from then on (as a loss
scale or a layer whose gradient scale changes would). Three optimizers, same initial
weights, data and hyperparameters (lr 3e-3, b1 0.9, eps 1e-6, weight decay 0.01), each
for b2 in {0.99, 0.999}:

- AdamW;
- AdamW after ``optax.clip_by_global_norm(1.0)`` (the usual remedy);
- ``adam_optax.stable_adamw``.

Reported, per optimizer: the (unscaled) training loss just before the jump (mean of 10
steps), its peak in the 10 steps after the jump (the spike the jump causes) and the
ratio, the peak from 50 steps after the jump to the end, and the final loss (mean of the
last 10); the curves in ``docs/_static/stable_adamw_spike.png``.

    PYTHONPATH=. python benchmarks/claims_stable_adamw.py   # ~1 min on 2 shared CPU cores
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_optax

ROOT = Path(__file__).resolve().parents[1]
STEPS, JUMP, BATCH, JUMP_FACTOR = 600, 300, 1024, 1000.0
LR, B1, EPS, WD, NOISE = 3e-3, 0.9, 1e-6, 0.01, 0.1


def _init(key):
  sizes = [16, 64, 64, 1]
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
    for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def _forward(params, x):
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def _loss(params, x, y):
  return jnp.mean((_forward(params, x) - y) ** 2)


def train(optimizer: optax.GradientTransformation) -> np.ndarray:
  """The training loss (unscaled) at every step."""
  teacher, student = _init(jax.random.key(1)), _init(jax.random.key(2))
  x = jax.random.normal(jax.random.key(3), (BATCH, 16))
  y = _forward(teacher, x) + NOISE * jax.random.normal(jax.random.key(4), (BATCH, 1))

  def step(carry, t):
    params, state = carry
    loss, grads = jax.value_and_grad(_loss)(params, x, y)
    scale = jnp.where(t >= JUMP, JUMP_FACTOR, 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  carry = (student, optimizer.init(student))
  _, losses = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(STEPS)))(carry)
  return np.asarray(losses)


def optimizers(b2: float) -> dict[str, optax.GradientTransformation]:
  adamw = adam_optax.adamw(LR, B1, b2, EPS, weight_decay=WD)
  return {
    "AdamW": adamw,
    "AdamW + clip_by_global_norm(1)": optax.chain(optax.clip_by_global_norm(1.0), adamw),
    "StableAdamW": adam_optax.stable_adamw(LR, B1, b2, EPS, WD),
  }


def main() -> None:
  results = {}
  for b2 in (0.99, 0.999):
    for name, optimizer in optimizers(b2).items():
      losses = train(optimizer)
      before = float(np.mean(losses[JUMP - 10 : JUMP]))
      spike = float(np.max(losses[JUMP : JUMP + 10]))
      results[f"{name}, b2={b2}"] = {
        "before": before,
        "spike": spike,
        "ratio": spike / before,
        "later": float(np.max(losses[JUMP + 50 :])),
        "final": float(np.mean(losses[-10:])),
        "curve": losses.tolist(),
      }
  print(f"load: {os.getloadavg()}, jax {jax.__version__}, {sys.platform}")
  print(
    "| optimizer | before the jump | peak, 10 steps after | ratio | peak from jump + 50 | final |"
  )
  print("|---|---|---|---|---|---|")
  for name, r in results.items():
    row = (r["before"], r["spike"], r["ratio"], r["later"], r["final"])
    print(f"| {name} | " + " | ".join(f"{x:.2e}" for x in row) + " |")
  out = ROOT / "benchmarks" / "out"
  out.mkdir(exist_ok=True)
  (out / "claims_stable_adamw.json").write_text(json.dumps(results))
  _plot(results)


def _plot(results) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, b2 in zip(axes, (0.99, 0.999), strict=True):
    for name, r in results.items():
      if name.endswith(f"b2={b2}"):
        ax.semilogy(r["curve"], label=name.rsplit(",", 1)[0], linewidth=1)
    ax.axvline(JUMP, color="grey", linestyle=":")
    ax.set_title(f"gradients x{JUMP_FACTOR:g} from step {JUMP} (b2 = {b2})")
    ax.set_xlabel("step")
  axes[0].set_ylabel("training loss (unscaled)")
  axes[0].legend()
  fig.tight_layout()
  path = ROOT / "docs" / "_static" / "stable_adamw_spike.png"
  fig.savefig(path, dpi=110)
  print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
  main()
