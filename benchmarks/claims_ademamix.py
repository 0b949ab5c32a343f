"""AdEMAMix's claim, measured at a small scale: it forgets a batch seen once more slowly.

Run from the repository root (a minute or two on 2 cores)::

  python benchmarks/claims_ademamix.py

The paper's experiment (Pagliardini et al. 2024, Section 4, "forgetting"), shrunk: a
2-layer tanh MLP (32 -> 64 -> 1) learns a noisy teacher from fresh minibatches of 32
(3000 steps, so that AdEMAMix's warm-ups of alpha and b3 are complete). At step 3000 it
takes its step on a batch B of 32 examples with random labels (nothing the teacher
explains, so what is learnt of B is memorised), then trains on fresh batches for 3000 steps
more. A control run sees the same stream without B. The gain on B at each later step is
the control's loss on B minus the injected run's: what the model still remembers of B.
Printed: the gain 1, 100, 1000 and 3000 steps after, and the share of the first step's
gain still there after 3000 steps, for Adam and AdEMAMix (alpha 5, b3 0.9999, warm-ups of
3000 steps), median over 3 seeds, lr 1e-3.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adam_optax
from benchmarks.run import machine

BEFORE, AFTER, BATCH, FEATURES, HIDDEN, LR = 3000, 3000, 32, 32, 64, 1e-3
SEEDS = (0, 1, 2)
CHECKPOINTS = (1, 100, 1000, 3000)


def teacher(key: jax.Array, count: int, w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A fresh batch: Gaussian inputs, the teacher's labels with noise."""
  k_x, k_noise = jax.random.split(key)
  x = jax.random.normal(k_x, (count, FEATURES))
  return x, jnp.tanh(x @ w)[:, None] + 0.1 * jax.random.normal(k_noise, (count, 1))


def loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def run(optimizer: optax.GradientTransformation, seed: int, *, injected: bool) -> np.ndarray:
  """Loss on B after each step from the injection step on."""
  k_w, k_init, k_b, k_stream = jax.random.split(jax.random.key(seed), 4)
  w = jax.random.normal(k_w, (FEATURES,))
  xb = jax.random.normal(k_b, (BATCH, FEATURES))
  yb = jax.random.normal(jax.random.fold_in(k_b, 1), (BATCH, 1))
  k1, k2 = jax.random.split(k_init)
  params = {
    "w1": jax.random.normal(k1, (FEATURES, HIDDEN)) / jnp.sqrt(FEATURES),
    "b1": jnp.zeros(HIDDEN),
    "w2": jax.random.normal(k2, (HIDDEN, 1)) / jnp.sqrt(HIDDEN),
    "b2": jnp.zeros(1),
  }

  def step(carry, inputs):
    params, state = carry
    key, inject = inputs
    x, y = teacher(key, BATCH, w)
    x, y = jnp.where(inject, xb, x), jnp.where(inject, yb, y)
    updates, state = optimizer.update(jax.grad(loss)(params, x, y), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), loss(params, xb, yb)

  keys = jax.random.split(k_stream, BEFORE + AFTER)
  inject = (jnp.arange(BEFORE + AFTER) == BEFORE) & injected
  train = jax.jit(lambda p: jax.lax.scan(step, (p, optimizer.init(p)), (keys, inject))[1])
  losses = np.asarray(train(params))
  return losses[BEFORE:]


def summary(make: Any, seed: int) -> tuple[list[float], float]:
  gain = run(make(), seed, injected=False) - run(make(), seed, injected=True)
  return [float(gain[c - 1]) for c in CHECKPOINTS], float(gain[AFTER - 1] / gain[0])


def main() -> None:
  optimizers = {
    "adam": lambda: adam_optax.adam(LR),
    "ademamix": lambda: adam_optax.ademamix(LR, alpha_warmup=BEFORE, b3_warmup=BEFORE),
  }
  header = " | ".join(f"gain after {c}" for c in CHECKPOINTS)
  rows = [f"| optimizer | {header} | retained after {AFTER} |", "|---" * 6 + "|"]
  for name, make in optimizers.items():
    results = [summary(make, seed) for seed in SEEDS]
    gains = [statistics.median(r[0][i] for r in results) for i in range(len(CHECKPOINTS))]
    kept = statistics.median(r[1] for r in results)
    rows.append(f"| {name} | " + " | ".join(f"{g:.2e}" for g in gains) + f" | {kept:.1%} |")
  print("\n".join(rows))
  print(f"\nMachine: {machine()}")


if __name__ == "__main__":
  main()
