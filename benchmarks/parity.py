"""Prints adam_optax's measured distance from optax, torch and float64 references.

The same gradient sequences as the parity tests (300 steps, 64 coordinates,
log-normal magnitudes at scales 1 .. 1e-9), for the default and a few other
hyperparameter sets, in float32 and float64. Errors are normwise per step
(max |a - b| / max |b|), maximised over steps and scales.

The second table does the same for every member of the family, with the
variants, gradients and references of ``tests/test_family_parity.py``.

Run: ``python benchmarks/parity.py`` (from the repository root).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import optax
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adam_optax
from tests.references import (
  algorithm1,
  gradient_sequence,
  normwise_error,
  run_optax,
  run_torch,
)
from tests.test_family_parity import HYPERPARAMETERS, VARIANTS, errors

SETTINGS = [(1e-3, 0.9, 0.999, 1e-8), (3e-2, 0.8, 0.99, 1e-3), (1e-3, 0.95, 0.9999, 1e-8)]
SCALES = [1.0, 1e-3, 1e-6, 1e-9]


def measure(dtype) -> dict[str, float]:
  worst = {
    "ours-ref": 0.0,
    "ours-optax": 0.0,
    "ours-torch": 0.0,
    "optax-ref": 0.0,
    "torch-ref": 0.0,
  }
  for lr, b1, b2, eps in SETTINGS:
    for scale in SCALES:
      grads = [g.astype(dtype) for g in gradient_sequence(1, 300, 64, scale)]
      params = np.zeros(64, dtype)
      ours = run_optax(adam_optax.adam(lr, b1, b2, eps), grads, params)
      theirs = run_optax(optax.adam(lr, b1, b2, eps), grads, params)
      torch_run = run_torch(
        lambda p, lr=lr, b1=b1, b2=b2, eps=eps: torch.optim.Adam(p, lr=lr, betas=(b1, b2), eps=eps),
        grads,
        params,
      )
      reference = algorithm1(grads, params, lr, b1, b2, eps)
      pairs = {
        "ours-ref": (ours, reference),
        "ours-optax": (ours, theirs),
        "ours-torch": (ours, torch_run),
        "optax-ref": (theirs, reference),
        "torch-ref": (torch_run, reference),
      }
      for key, (a, b) in pairs.items():
        worst[key] = max(worst[key], normwise_error(a, b))
  return worst


def main() -> None:
  print(
    "| dtype | adam_optax vs float64 Alg. 1 | vs optax.adam | vs torch.optim.Adam "
    "| optax vs Alg. 1 | torch vs Alg. 1 |"
  )
  print("|---|---|---|---|---|---|")
  for dtype, x64 in [(np.float32, False), (np.float64, True)]:
    with jax.enable_x64(x64):
      w = measure(dtype)
    print(
      f"| {np.dtype(dtype).name} | {w['ours-ref']:.1e} | {w['ours-optax']:.1e} | "
      f"{w['ours-torch']:.1e} | {w['optax-ref']:.1e} | {w['torch-ref']:.1e} |"
    )
  family_table()


def family_table() -> None:
  print(
    "\n| variant | float32 vs ref | vs optax (optax vs ref) | vs torch (torch vs ref) "
    "| float64 vs ref / optax / torch |"
  )
  print("|---|---|---|---|---|")
  for name in VARIANTS:
    row = []
    for dtype, x64 in [(np.float32, False), (np.float64, True)]:
      worst: dict[str, float] = {}
      with jax.enable_x64(x64):
        for hyperparameters in HYPERPARAMETERS:
          for scale in (1.0, 1e-6):
            for key, value in errors(name, dtype, hyperparameters, scale).items():
              worst[key] = max(worst.get(key, 0.0), value)
      row.append(worst)
    f32, f64 = row

    def pair(d, key):
      return f"{d[key]:.1e} ({d[key + '_vs_reference']:.1e})" if key in d else "n/a"

    def single(d, key):
      return f"{d[key]:.1e}" if key in d else "n/a"

    print(
      f"| {name} | {f32['reference']:.1e} | {pair(f32, 'optax')} | {pair(f32, 'torch')} | "
      f"{single(f64, 'reference')} / {single(f64, 'optax')} / {single(f64, 'torch')} |"
    )


if __name__ == "__main__":
  main()
