"""Which quantization map for Adam's moments? Round-trip errors on real moments.

Trains the language model of ``lm.py`` with fp32 AdamW for a few hundred steps,
takes the moments ``m`` and ``v`` of every leaf with at least 4096 elements,
and quantizes them block-wise with each candidate map:

- ``power p``: this package's companded maps (levels evenly spaced in
  ``|y|^(1/p)``; the unsigned ones exclude zero), p = 1 (linear) to 4;
- ``dynamic``: bitsandbytes' dynamic (tree) map, rebuilt here in NumPy
  (signed for m, unsigned with zero for v; at 4 bits it is Li et al.'s
  dynamic-exponent map);
- ``rank-1 linear`` (v at 4 bits): Li et al.'s rank-1 normalisation (each
  element scaled by the smaller of its row's and its column's maximum) with a
  linear zero-excluded map, for 2-D leaves; other leaves block-wise.

Reported: normwise relative error of m, of sqrt(v), and of the Adam direction
m / (sqrt(v) + eps) with both moments quantized (m with the best signed map of
its bit width), and the largest direction entry over the exact one's (a blow-up
from a v rounded to zero shows there).

    python benchmarks/quantized_maps.py [--steps 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lm

from adam_optax import _quantize

EPS = 1e-8


def dynamic_levels(bits: int, signed: bool) -> np.ndarray:
  """bitsandbytes' dynamic map: per exponent 10^k, linearly spaced fractions in (0.1, 1)."""
  exponents = bits - 1
  levels = [0.0, 1.0]
  for i in range(exponents):
    items = 2**i if signed else 2 ** (i + 1)
    bounds = np.linspace(0.1, 1, items + 1)
    means = (bounds[:-1] + bounds[1:]) / 2 * 10.0 ** (i - (exponents - 1))
    levels += list(means) + (list(-means) if signed else [])
  return np.sort(np.array(levels))


def table_roundtrip(x: np.ndarray, table: np.ndarray, block: int) -> np.ndarray:
  """Block-wise absmax scaling and nearest level of ``table``, in NumPy."""
  flat = x.ravel().astype(np.float64)
  pad = -len(flat) % block
  blocks = np.pad(flat, (0, pad)).reshape(-1, block)
  scale = np.abs(blocks).max(axis=1, keepdims=True)
  y = blocks / np.where(scale > 0, scale, 1)
  mids = (table[1:] + table[:-1]) / 2
  out = table[np.searchsorted(mids, y)] * scale
  return out.ravel()[: len(flat)].reshape(x.shape)


def rank1_roundtrip(v: np.ndarray, bits: int) -> np.ndarray:
  """Li et al.'s rank-1 normalisation with a linear zero-excluded map (2-D leaves)."""
  scale = np.minimum(v.max(axis=1, keepdims=True), v.max(axis=0, keepdims=True))
  table = (np.arange(2**bits) + 1) / 2**bits
  y = v / np.where(scale > 0, scale, 1)
  mids = (table[1:] + table[:-1]) / 2
  return table[np.searchsorted(mids, y)] * scale


def package_roundtrip(x: np.ndarray, bits: int, signed: bool, power: int) -> np.ndarray:
  block = 256 if bits == 8 else 128
  codes, scales = _quantize.encode(
    jnp.asarray(x), bits, signed=signed, block_size=block, power=power
  )
  flat = _quantize.decode(codes, scales, bits, signed=signed, power=power).reshape(-1)
  return np.asarray(flat[: x.size].reshape(x.shape), np.float64)


def relative(a: list[np.ndarray], b: list[np.ndarray]) -> float:
  num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True))
  den = sum(float(np.sum(y**2)) for y in b)
  return float(np.sqrt(num / den))


def direction(m: list[np.ndarray], v: list[np.ndarray]) -> list[np.ndarray]:
  return [x / (np.sqrt(np.maximum(y, 0)) + EPS) for x, y in zip(m, v, strict=True)]


def moments(steps: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
  setup = dataclasses.replace(lm.Setup(), steps=steps)
  train, _, _ = lm.load_text()
  rng = np.random.default_rng(setup.seed)
  graphdef, params = lm.nnx.split(lm.Transformer(setup, lm.nnx.Rngs(0)), lm.nnx.Param)
  (optimizer, dtype) = lm.jax_optimizers(setup)["jax fp32 AdamW"]
  run = lm.JaxRun("fp32", graphdef, params, optimizer, dtype)
  for _ in range(steps):
    run.step(lm.sample(train, setup, rng))
  state = run.state[0]
  m = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.mu) if x.size >= 4096]
  v = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.nu) if x.size >= 4096]
  return m, v


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args()
  m, v = moments(args.steps)
  exact = direction(m, v)
  print(f"{sum(x.size for x in m):,} params in {len(m)} leaves >= 4096, after {args.steps} steps")
  for bits in (8, 4):
    block = 256 if bits == 8 else 128
    signed = {f"power {p}": [package_roundtrip(x, bits, True, p) for x in m] for p in (1, 2, 3, 4)}
    signed["dynamic"] = [table_roundtrip(x, dynamic_levels(bits, True), block) for x in m]
    unsigned = {
      f"power {p}": [package_roundtrip(x, bits, False, p) for x in v] for p in (1, 2, 3, 4)
    }
    unsigned["dynamic (zero included)"] = [
      table_roundtrip(x, dynamic_levels(bits, False), block) for x in v
    ]
    if bits == 4:
      unsigned["rank-1 linear"] = [
        rank1_roundtrip(x, bits) if x.ndim == 2 else package_roundtrip(x, bits, False, 1) for x in v
      ]
    best_m = min(signed, key=lambda k: relative(signed[k], m))
    print(f"\n### {bits} bits, blocks of {block}\n")
    print("| map for m | rel. error of m |")
    print("|---|---:|")
    for name, q in signed.items():
      print(f"| {name} | {relative(q, m):.4f} |")
    print(
      f"\n| map for v (m: {best_m}) | rel. error of sqrt(v) | rel. error of m/(sqrt(v)+eps) "
      "| max entry / exact max |"
    )
    print("|---|---:|---:|---:|")
    for name, q in unsigned.items():
      d = direction(signed[best_m], q)
      roots = [np.sqrt(np.maximum(x, 0)) for x in q]
      peak = max(float(np.abs(x).max()) for x in d) / max(float(np.abs(x).max()) for x in exact)
      print(
        f"| {name} | {relative(roots, [np.sqrt(x) for x in v]):.4f} | {relative(d, exact):.4f} "
        f"| {peak:.2f} |"
      )


if __name__ == "__main__":
  main()
