"""Why half-precision params get a float32 second moment by default: the evidence.

Run from the repository root (about a minute; ``make bench-half``)::

  python benchmarks/half_precision.py            # prints, and updates benchmarks/RESULTS.md
  python benchmarks/half_precision.py --no-write

Two experiments, each against the same run in float32:

1. float16 params with constant gradients of several sizes: Adam's second moment
   ``(1 - b2) g^2`` underflows float16 below |g| ~ 1e-3 (each step then grows towards
   ``lr / sqrt(1 - b2)``) and ``g^2`` overflows above 256 (the param freezes).
2. bfloat16 params on a noisy linear regression (64 features, minibatches of 64, 3000
   steps): a bfloat16 second moment stalls (an increment ``(1 - b2) g^2`` below half an ulp
   of ``v`` is lost), a float32 one does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adam_optax
from benchmarks.run import machine

RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- BEGIN HALF PRECISION -->", "<!-- END HALF PRECISION -->"
LR16 = 2.0**-10  # float16 holds multiples of 2^-10 exactly up to 2: no rounding of the steps


def float16_constant_gradient(optimizer, scale: float, steps: int = 1500) -> float:
  """The param after ``steps`` steps of a constant gradient ``scale`` (float16 params)."""
  dtype = jnp.float32 if optimizer is None else jnp.float16
  optimizer = optimizer or adam_optax.adam(LR16)
  params = jnp.zeros((), dtype)

  def step(carry, _):
    params, state = carry
    updates, state = optimizer.update(jnp.asarray(scale, dtype), state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
  return float(params)


def bfloat16_regression(optimizer, dtype, lr_steps: int = 3000) -> tuple[float, float]:
  """Final full-batch loss and distance to the true weights of a noisy linear regression."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4096, 64)), jnp.float32)
  w_true = jnp.asarray(rng.standard_normal(64), jnp.float32)
  y = x @ w_true + 0.1 * jnp.asarray(rng.standard_normal(4096), jnp.float32)

  def loss(w, xb, yb):
    return jnp.mean((xb @ w.astype(jnp.float32) - yb) ** 2)

  def step(carry, key):
    w, state = carry
    index = jax.random.randint(key, (64,), 0, 4096)
    grads = jax.grad(loss)(w, x[index], y[index]).astype(dtype)
    updates, state = optimizer.update(grads, state, w)
    return (optax.apply_updates(w, updates), state), None

  w = jnp.zeros(64, dtype)
  keys = jax.random.split(jax.random.key(1), lr_steps)
  (w, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, keys))((w, optimizer.init(w)))
  return float(loss(w, x, y)), float(jnp.linalg.norm(w.astype(jnp.float32) - w_true))


def report() -> str:
  lines = [
    f"Machine: {machine()}",
    "",
    f"### float16 params, constant gradient, 1500 steps, lr = 2^-10 ({LR16:g})",
    "",
    "| gradient | float32 params | float16, float32 nu (default) | float16, float16 nu "
    "(optax's layout) | optax.adam, float16 |",
    "|---:|---:|---:|---:|---:|",
  ]
  for scale in (1e-4, 1e-3, 1.0, 300.0, 6e4):
    row = [
      float16_constant_gradient(None, scale),
      float16_constant_gradient(adam_optax.adam(LR16), scale),
      float16_constant_gradient(adam_optax.adam(LR16, nu_dtype=jnp.float16), scale),
      float16_constant_gradient(optax.adam(LR16), scale),
    ]
    lines.append(f"| {scale:g} | " + " | ".join(f"{value:.4g}" for value in row) + " |")
  lines += [
    "",
    "### bfloat16 params, noisy linear regression, 3000 steps",
    "",
    "| optimizer | lr | final loss | distance to w* |",
    "|---|---:|---:|---:|",
  ]
  for lr in (1e-2, 1e-3):
    runs = [
      ("float32 params, adam_optax.adam", adam_optax.adam(lr), jnp.float32),
      ("bfloat16, float32 nu (default)", adam_optax.adam(lr), jnp.bfloat16),
      ("bfloat16, bfloat16 nu", adam_optax.adam(lr, nu_dtype=jnp.bfloat16), jnp.bfloat16),
      ("bfloat16, optax.adam (bfloat16 nu)", optax.adam(lr), jnp.bfloat16),
    ]
    for label, optimizer, dtype in runs:
      final, distance = bfloat16_regression(optimizer, dtype)
      lines.append(f"| {label} | {lr:g} | {final:.4g} | {distance:.4g} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
  args = parser.parse_args()
  text = report()
  print(text)
  if not args.no_write:
    old = RESULTS.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old:
      head, rest = old.split(BEGIN, 1)
      RESULTS.write_text(head + block + rest.split(END, 1)[1])
    else:
      RESULTS.write_text(
        old.rstrip("\n") + "\n\n## Half-precision second moments\n\n" + block + "\n"
      )


if __name__ == "__main__":
  main()
