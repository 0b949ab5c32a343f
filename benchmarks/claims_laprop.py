"""LaProp's claim, measured: stable for b1 > b2 where Adam is not.

Run from the repository root (about a minute on 2 cores)::

  python benchmarks/claims_laprop.py

A 2-layer tanh MLP (32 -> 64 -> 1) fits a noisy teacher by minibatch SGD-style
training (batch 16 of 4096 examples, 3000 steps), its input features sparse
(each present in 5 % of examples), so a weight's gradient is large on the
batches that contain its feature and small otherwise: the regime where Adam's
step m_hat / sqrt(v_hat) grows when b1 > b2 (v forgets faster than m). For
Adam and LaProp at (b1, b2) = (0.99, 0.9) and at the default (0.9, 0.999),
over three learning rates, it prints the final full-batch loss (median of 3
seeds) and the largest step any weight took, in units of the learning rate.
The paper's experiments are larger (Ziyin et al. 2020, Figure 2); this is the
same question at a scale this machine runs.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adam_optax
from benchmarks.run import machine

STEPS, BATCH, EXAMPLES, FEATURES, HIDDEN = 3000, 16, 4096, 32, 64
RATES = (1e-3, 3e-3, 1e-2)
BETAS = ((0.99, 0.9), (0.9, 0.999))
SEEDS = (0, 1, 2)


def data(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  k_mask, k_x, k_w, k_noise = jax.random.split(key, 4)
  present = jax.random.bernoulli(k_mask, 0.05, (EXAMPLES, FEATURES))
  x = jnp.where(present, jax.random.normal(k_x, (EXAMPLES, FEATURES)), 0.0)
  y = jnp.tanh(x @ jax.random.normal(k_w, (FEATURES,)))[:, None]
  return x, y + 0.1 * jax.random.normal(k_noise, y.shape)


def loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def train(optimizer: optax.GradientTransformation, lr: float, seed: int) -> tuple[float, float]:
  """(final full-batch loss, largest |step| / lr over the run)."""
  key = jax.random.key(seed)
  k_data, k_init, k_batches = jax.random.split(key, 3)
  x, y = data(k_data)
  k1, k2 = jax.random.split(k_init)
  params = {
    "w1": jax.random.normal(k1, (FEATURES, HIDDEN)) / jnp.sqrt(FEATURES),
    "b1": jnp.zeros(HIDDEN),
    "w2": jax.random.normal(k2, (HIDDEN, 1)) / jnp.sqrt(HIDDEN),
    "b2": jnp.zeros(1),
  }

  def step(carry, batch_key):
    params, state, largest = carry
    index = jax.random.randint(batch_key, (BATCH,), 0, EXAMPLES)
    grads = jax.grad(loss)(params, x[index], y[index])
    updates, state = optimizer.update(grads, state, params)
    biggest = jnp.max(jnp.stack([jnp.max(jnp.abs(u)) for u in jax.tree.leaves(updates)]))
    return (optax.apply_updates(params, updates), state, jnp.maximum(largest, biggest)), None

  keys = jax.random.split(k_batches, STEPS)
  run = jax.jit(lambda p: jax.lax.scan(step, (p, optimizer.init(p), jnp.float32(0)), keys)[0])
  params, _, largest = run(params)
  final = float(loss(params, x, y))
  return final, float(largest) / lr


def main() -> None:
  rows = [
    "| optimizer | (b1, b2) | lr | final loss (median of 3) | largest step / lr |",
    "|---|---|---|---|---|",
  ]
  for b1, b2 in BETAS:
    for lr in RATES:
      for name, factory in (("adam", adam_optax.adam), ("laprop", adam_optax.laprop)):
        results = [train(factory(lr, b1=b1, b2=b2), lr, seed) for seed in SEEDS]
        final = statistics.median(r[0] for r in results)
        largest = max(r[1] for r in results)
        rows.append(f"| {name} | ({b1}, {b2}) | {lr:g} | {final:.4g} | {largest:.3g} |")
  print("\n".join(rows))
  print(f"\nMachine: {machine()}")


if __name__ == "__main__":
  main()
