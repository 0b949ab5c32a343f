"""The modern members' step and compile time, relative to ``adam_optax.adam``.

Run from the repository root (``make bench-modern``)::

  python benchmarks/modern.py            # the transformer tree of benchmarks/run.py
  python benchmarks/modern.py --quick    # its 3-layer version, a minute or two

For every name of issue 18 that ``adam_optax`` has (looked up by name, so the
members of every branch appear once merged; the others are listed as
missing), it measures:

- the donated jitted step (``update`` then ``optax.apply_updates``) on the
  transformer tree of ``benchmarks/run.py``, median of interleaved rounds,
  as a ratio to ``adam``'s (the issue asks for at most 1.25x);
- the time to lower and compile that step on a tree of 1024 small leaves, as a
  ratio to ``adam``'s (the issue asks for at most 2x).

A Markdown table goes to stdout, with the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adam_optax
from benchmarks.run import Runner, _jax_runner, machine, measure, transformer_shapes

LEARNING_RATE = 1e-3
COMPILE_LEAVES = 1024
MEMBERS = [  # every optimizer of issue 18, in the order
  "adopt",
  "ademamix",
  "simplified_ademamix",
  "cautious",
  "stable_adamw",
  "adam_atan2",
  "schedule_free_adamw",
  "laprop",
  "radam",
  "adabelief",
  "mars_adamw",
  "adam_mini",
]
WRAPPERS = {"cautious"}  # take an optimizer, not a learning rate: measured around adam


def build(name: str) -> optax.GradientTransformation | None:
  """The member ``name`` with its defaults, or ``None`` if this package has no such name."""
  factory: Callable[..., Any] | None = getattr(adam_optax, name, None)
  if factory is None:
    return None
  if name in WRAPPERS:
    return factory(adam_optax.adam(LEARNING_RATE))
  return factory(LEARNING_RATE)


def tree(shapes: list[tuple[int, ...]], seed: int) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  return {
    f"p{i:04d}": jnp.asarray(rng.standard_normal(s), jnp.float32) for i, s in enumerate(shapes)
  }


def compile_seconds(optimizer: optax.GradientTransformation, leaves: int) -> float:
  """Seconds to lower and compile the donated step on ``leaves`` leaves of 16 floats."""
  params = tree([(16,)] * leaves, seed=1)
  return _jax_runner("compile", optimizer, params, params).compile_s or float("nan")


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="the 3-layer transformer tree")
  parser.add_argument("--smoke", action="store_true", help="a tiny run, for the tests")
  args = parser.parse_args(argv)
  if args.smoke:
    shapes, budget, leaves = transformer_shapes(1, 8, 16), 0.2, len(transformer_shapes(1, 8, 16))
  elif args.quick:
    shapes, budget, leaves = transformer_shapes(3, 128, 1024), 20.0, COMPILE_LEAVES
  else:
    shapes, budget, leaves = transformer_shapes(10, 256, 4096), 60.0, COMPILE_LEAVES
  params = tree(shapes, seed=0)
  grads = tree(shapes, seed=2)
  names = ["adam", *MEMBERS]
  optimizers = {name: build(name) for name in names}
  runners: list[Runner] = []
  compile_s: dict[str, float] = {}
  for name, optimizer in optimizers.items():
    if optimizer is None:
      continue
    own = jax.tree.map(jnp.copy, params)  # each runner donates its own buffers
    runners.append(_jax_runner(name, optimizer, own, grads))
    # The smoke run reads the compile time of the step it already built.
    compile_s[name] = runners[-1].compile_s if args.smoke else compile_seconds(optimizer, leaves)
  start = time.perf_counter()
  measure(runners, budget_s=budget, min_sample_s=0.02 if not args.smoke else 0.0)
  median = {runner.name: statistics.median(runner.samples) for runner in runners}
  count = sum(int(np.prod(s)) for s in shapes)
  lines = [
    f"Donated step on the transformer tree ({len(shapes)} leaves, {count / 1e6:.2f}M params) "
    f"and compile time at {leaves} leaves, relative to `adam`; "
    f"{time.perf_counter() - start:.0f} s of rounds.",
    "",
    "| optimizer | step | vs adam | compile | vs adam |",
    "|---|---|---|---|---|",
  ]
  for name in names:
    if optimizers[name] is None:
      lines.append(f"| `{name}` | missing | | | |")
      continue
    step, built = median[name], compile_s[name]
    lines.append(
      f"| `{name}` | {step * 1e3:.2f} ms | {step / median['adam']:.2f}x | "
      f"{built:.2f} s | {built / compile_s['adam']:.2f}x |"
    )
  lines += ["", f"Machine: {machine()}"]
  text = "\n".join(lines)
  print(text)
  return text


if __name__ == "__main__":
  main()
