"""Prints adam_optax's measured distance from optax, torch and float64 references.

The same gradient sequences as the parity tests (300 steps, 64 coordinates,
log-normal magnitudes at scales 1 .. 1e-9), for the default and a few other
hyperparameter sets, in float32 and float64. Errors are normwise per step
(max |a - b| / max |b|), maximised over steps and scales.

The second table does the same for every member of the family, with the
variants, gradients and references of ``tests/test_family_parity.py``.

The third compares ``update_and_apply`` with ``fused=True`` with the XLA path
(the same optimizer unfused, jitted) on the trees of ``tests/test_fused.py``:
30 steps, gradient scales 1, 1e-2 and 1e-6, adam, adamw (schedules and a
mask), nadamw, amsgrad and adamax (and, for a rate of 1, the members of
``UNIT_RATES``), the state and the params. (A fused optimizer's ``update`` is
the chain's own: nothing to compare.)
"identical": the same bits in every element of every step; otherwise the
largest difference over the largest value ("gap").

Run: ``python benchmarks/parity.py`` (from the repository root; ``--fused`` for
the third table alone, ``--no-fused`` for the first two: ``make docs`` runs the
two halves side by side).
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
from adam_optax import _kernel
from tests.references import (
  algorithm1,
  gradient_sequence,
  normwise_error,
  relative_gap,
  run_optax,
  run_torch,
  units_apart,
)
from tests.test_family_parity import HYPERPARAMETERS, VARIANTS, errors
from tests.test_fused import MEMBERS, SMALL_MINOR, UNIT_RATES, _grads, _run, _tree

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


def main(fused: bool = True) -> None:
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
  if fused:
    fused_table()


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


FUSED_CONFIGURATIONS = [  # (label, params dtype, x64, moment dtypes, shapes)
  ("float32", np.float32, False, {}, None),
  ("float64", np.float64, True, {}, None),
  (
    "float32, learning rate or weight decay 1 (constant or schedule)",
    np.float32,
    False,
    {},
    "unit",
  ),
  (
    "float32, mu_dtype=nu_dtype=float64 ³",
    np.float32,
    True,
    {"mu_dtype": np.float64, "nu_dtype": np.float64},
    None,
  ),
  ("float32, leaves with a short last dimension ¹", np.float32, False, {}, SMALL_MINOR),
  ("bfloat16 params", jax.numpy.bfloat16, False, {}, None),
  ("float16 params", jax.numpy.float16, False, {}, None),
  ("bfloat16 params, mu_dtype=float32", jax.numpy.bfloat16, False, {"mu_dtype": np.float32}, None),
  ("float32, mu_dtype=bfloat16 ²", np.float32, False, {"mu_dtype": jax.numpy.bfloat16}, None),
  ("float32, nu_dtype=bfloat16 ²", np.float32, False, {"nu_dtype": jax.numpy.bfloat16}, None),
  (
    "float64, mu float32, nu float16 ²",
    np.float64,
    True,
    {"mu_dtype": np.float32, "nu_dtype": np.float16},
    None,
  ),
]
FUSED_MEMBERS = ["adam", "adamw-masked-schedules", "nadamw", "amsgrad-torch", "adamax"]


def fused_table(steps: int = 30) -> None:
  """fused=True against the XLA path: how far apart, per configuration."""
  if _kernel.load_error() is not None:  # fused=True would be the XLA path itself
    print(f"\n(fused kernel not built here: {_kernel.load_error()})")
    return
  print("\n| configuration | state | params (update_and_apply) |")
  print("|---|---|---|")
  for label, dtype, x64, moment_dtypes, shapes in FUSED_CONFIGURATIONS:
    worst = {"state": [0, 0.0], "params": [0, 0.0]}
    members = UNIT_RATES if shapes == "unit" else {n: MEMBERS[n] for n in FUSED_MEMBERS}
    shapes = None if shapes == "unit" else shapes
    with jax.enable_x64(x64):
      for make in members.values():
        for scale in (1.0, 1e-2, 1e-6):
          params = _tree(dtype) if shapes is None else _shaped(shapes, dtype)
          grads = (
            _grads(dtype, scale, steps) if shapes is None else _shaped_grads(params, scale, steps)
          )
          fused = _run(make(fused=True, **moment_dtypes), params, grads)
          xla = _run(make(**moment_dtypes), params, grads)
          for (out, state), (xla_out, xla_state) in zip(fused, xla, strict=True):
            for kind, a_tree, b_tree in (("state", state, xla_state), ("params", out, xla_out)):
              for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True):
                if np.size(a):
                  worst[kind][0] = max(worst[kind][0], units_apart(a, b))
                  if jax.numpy.issubdtype(a.dtype, jax.numpy.floating):
                    worst[kind][1] = max(worst[kind][1], relative_gap(a, b))

    def cell(units: int, gap: float) -> str:
      return "identical" if units == 0 else f"gap {gap:.1e}"

    print(f"| {label} | " + " | ".join(cell(*worst[k]) for k in worst) + " |", flush=True)


def _shaped(shapes, dtype):
  rng = np.random.default_rng(0)
  return {k: jax.numpy.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}


def _shaped_grads(params, scale, steps):
  rng = np.random.default_rng(1)
  return [
    jax.tree.map(lambda p: jax.numpy.asarray(scale * rng.standard_normal(p.shape), p.dtype), params)
    for _ in range(steps)
  ]


if __name__ == "__main__":
  if sys.argv[1:] == ["--fused"]:
    fused_table()
  else:
    main(fused=sys.argv[1:] != ["--no-fused"])
