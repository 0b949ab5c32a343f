"""One optimizer step on whatever device JAX runs on, as a share of that device's bandwidth.

Run from the repository root (``make bench-gpu`` runs it with the virtualenv's
Python where there is one, else ``python3``; it needs jax and optax, not torch)::

  python benchmarks/device.py           # the backend's sizes (GPU/TPU: 268M params)
  python benchmarks/device.py --quick   # small sizes, a few seconds on a CPU

The backend is ``jax.default_backend()``. On one transformer-like tree of
float32 params (sizes per backend, :data:`SIZES`) it times five donated jitted
steps, ``jit(step, donate_argnums=(0, 1))(params, state, grads) ->
(optax.apply_updates(params, updates), new_state)``:

- ``adam_optax.adam`` on the tree;
- ``adam_optax.adam`` on bucketed params (``adam_optax.bucket``: one contiguous
  buffer, gradients bucket-shaped);
- ``adam_optax.quantized(adam, bits=8)`` and ``bits=4`` on the tree;
- ``optax.adam`` on the tree.

**Bytes per step** are counted from the arrays' dtypes, not measured: every
byte of the params, the gradients and the optimizer state read once, and every
byte of the params and the state written once (``nbytes`` of each leaf of
``jax.tree.leaves``; a quantized moment counts its ``uint8`` codes and
``float32`` scales). That is the least a one-pass step must move: 28 bytes
per param for float32 Adam.

**The bandwidth reference** is a probe run in the same rounds on the same
device: a donated jitted ``x + 1`` over a float32 buffer as large as what the
Adam step moves (it reads and writes each element once). "% probe" is a step's
bytes per second over the probe's. Steps and probe run in interleaved rounds
(each round runs each once, in rotating order); a time is the median over
rounds of one sample, a sample being enough back-to-back steps to last
``min_sample_s``, waited for once at its end.

Prints a Markdown table and writes the same figures as JSON (by default to
``benchmarks/out/device-<backend>[-quick].json``). A step that fails to build
or run is reported with its error; the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adam_optax

ROOT = Path(__file__).resolve().parents[1]

LEARNING_RATE = 1e-3
PROBE = "probe: jit(x + 1), donated"


@dataclass(frozen=True)
class Size:
  """A tree's size and how long to measure it."""

  width: int
  layers: int
  budget_s: float  # measuring time per step, all rounds together
  min_sample_s: float


# (backend, quick) -> size. GPU/TPU: 268M params (4.3 GB of Adam params, grads and moments per
# step set up; five set up at once), --quick 67M. CPU: 16.8M; --quick 7K (the smoke test's
# size: one array reaches quantized's default min_size of 4096 elements).
SIZES = {
  ("accelerator", False): Size(width=2048, layers=4, budget_s=4.0, min_sample_s=0.02),
  ("accelerator", True): Size(width=1024, layers=4, budget_s=1.0, min_sample_s=0.01),
  ("cpu", False): Size(width=512, layers=4, budget_s=6.0, min_sample_s=0.01),
  ("cpu", True): Size(width=16, layers=1, budget_s=0.1, min_sample_s=1e-3),
}


def tree_shapes(width: int, layers: int) -> list[tuple[int, ...]]:
  """An embedding (16 * width rows), then per layer a fused qkv, the output and MLP matrices
  with their vectors: ``16 w^2 + layers (12 w^2 + 11 w)`` params."""
  layer = [(width, 3 * width), (3 * width,), (width, width), (width,)]
  layer += [(width, 4 * width), (4 * width,), (4 * width, width), (width,), (width,), (width,)]
  return [(16 * width, width), *layer * layers]


def nbytes(tree: Any) -> int:
  """Bytes of every array in ``tree``, from its shape and dtype."""
  return sum(
    int(np.prod(jnp.shape(x))) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
  )


@dataclass
class Runner:
  """One step set up on the device: what it moves, and its measured times."""

  name: str
  bytes_per_step: int
  state_bytes: int
  step: Callable[[], Any]
  compile_s: float | None = None
  samples: list[float] = field(default_factory=list)
  repeats: int = 1
  check: Callable[[], bool] = lambda: True


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  """Whether every floating element of ``tree`` is finite (one compiled program per tree)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def step_runner(name: str, optimizer: Any, params: Any, grads: Any) -> Runner:
  """A donated jitted update-and-apply step of ``optimizer`` from ``params``."""

  def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = optimizer.init(params)
  moved = 2 * nbytes(params) + nbytes(grads) + 2 * nbytes(state)
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
  compile_s = time.perf_counter() - start
  box = [params, state]

  def run() -> Any:
    box[0], box[1] = compiled(box[0], box[1], grads)
    return box[0]

  def finite() -> bool:
    return bool(_all_finite(box))

  return Runner(name, moved, nbytes(state), run, compile_s, check=finite)


def probe_runner(bytes_per_step: int) -> Runner:
  """A donated jitted ``x + 1`` that reads and writes ``bytes_per_step`` bytes."""
  length = max(1, bytes_per_step // 8)
  add_one = jax.jit(lambda x: x + jnp.float32(1), donate_argnums=0)
  box = [jnp.zeros((length,), jnp.float32)]

  def run() -> Any:
    box[0] = add_one(box[0])
    return box[0]

  return Runner(PROBE, 8 * length, 0, run)


def make_runners(size: Size, errors: dict[str, str]) -> list[Runner]:
  """The five steps (those that build) and the probe, on one tree and one set of gradients.

  The arrays are drawn on the host and copied to the device, once per step (each step
  donates its own params): no per-shape compilation before the steps'.
  """
  rng = np.random.default_rng(0)
  shapes = tree_shapes(size.width, size.layers)
  host = {f"p{i:02d}": rng.standard_normal(s, np.float32) for i, s in enumerate(shapes)}
  grads = jax.device_put(
    {k: np.float32(1e-2) * rng.standard_normal(v.shape, np.float32) for k, v in host.items()}
  )
  fresh = lambda: jax.device_put(host)  # noqa: E731
  ours = adam_optax.adam(LEARNING_RATE)
  steps = {
    "adam_optax.adam": lambda: (ours, fresh(), grads),
    "adam_optax.adam, bucketed": lambda: (ours, *_bucketed(fresh(), grads)),
    **{
      f"adam_optax.quantized(adam, bits={bits})": lambda bits=bits: (
        adam_optax.quantized(adam_optax.adam(LEARNING_RATE), bits=bits),
        fresh(),
        grads,
      )
      for bits in (8, 4)
    },
    "optax.adam": lambda: (optax.adam(LEARNING_RATE), fresh(), grads),
  }
  builds = {
    name: lambda name=name, make=make: step_runner(name, *make()) for name, make in steps.items()
  }
  adam_bytes = 2 * nbytes(host) + nbytes(grads) + 2 * nbytes(jax.eval_shape(ours.init, host))
  builds[PROBE] = lambda: probe_runner(adam_bytes)
  runners = []
  for name, build in builds.items():
    try:
      runners.append(build())
    except Exception as error:  # report it and measure the others
      errors[name] = f"{type(error).__name__}: {error}"
    print(f"  set up {name}" + (f": FAILED ({errors[name]})" if name in errors else ""), flush=True)
  return runners


def _bucketed(params: Any, grads: Any) -> tuple[Any, Any]:
  buckets, layout = adam_optax.bucket(params)
  return buckets, layout.bucket(grads)


def _once(runner: Runner) -> float:
  start = time.perf_counter()
  jax.block_until_ready(runner.step())
  return time.perf_counter() - start


def measure(runners: list[Runner], size: Size, errors: dict[str, str]) -> list[Runner]:
  """Interleaved rounds until ``size.budget_s`` per runner is spent; the runners that ran."""
  alive = []
  for runner in runners:
    try:
      _once(runner)  # the first call may allocate or load
      first = _once(runner)
    except Exception as error:
      errors[runner.name] = f"{type(error).__name__}: {error}"
      continue
    runner.repeats = max(1, math.ceil(size.min_sample_s / max(first, 1e-7)))
    alive.append((runner, first * runner.repeats))
  if not alive:
    return []
  round_s = sum(seconds for _, seconds in alive)
  rounds = int(min(200, max(5, size.budget_s * len(alive) / max(round_s, 1e-9))))
  ordered = [runner for runner, _ in alive]
  for index in range(rounds):
    shift = index % len(ordered)
    for runner in ordered[shift:] + ordered[:shift]:
      start = time.perf_counter()
      for _ in range(runner.repeats - 1):
        runner.step()
      jax.block_until_ready(runner.step())
      runner.samples.append((time.perf_counter() - start) / runner.repeats)
  for runner in ordered:
    if not runner.check():
      errors[runner.name] = "non-finite params or state after the timed steps"
  return [runner for runner in ordered if runner.name not in errors]


def report(runners: list[Runner], num_params: int, errors: dict[str, str]) -> dict[str, Any]:
  """The figures of every runner (and the errors), as a JSON-ready dict."""
  seconds = {r.name: statistics.median(r.samples) for r in runners}
  probe = next((r for r in runners if r.name == PROBE), None)
  probe_gbs = probe.bytes_per_step / seconds[PROBE] / 1e9 if probe else None
  rows = []
  for r in runners:
    gbs = r.bytes_per_step / seconds[r.name] / 1e9
    rows.append(
      {
        "name": r.name,
        "state_bytes_per_param": r.state_bytes / num_params,
        "bytes_per_step": r.bytes_per_step,
        "seconds_per_step": seconds[r.name],
        "gb_per_s": gbs,
        "fraction_of_probe": gbs / probe_gbs if probe_gbs else None,
        "compile_s": r.compile_s,
        "rounds": len(r.samples),
      }
    )
  rows += [{"name": name, "error": error} for name, error in errors.items()]
  return {"probe_gb_per_s": probe_gbs, "steps": rows}


def markdown(figures: dict[str, Any], header: str) -> str:
  """The Markdown table of :func:`report`'s figures."""
  lines = [
    header,
    "",
    "| step | state B/param | moved/step | step | GB/s | % probe | compile |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for row in figures["steps"]:
    if "error" in row:
      lines.append(f"| {row['name']} | failed: {row['error'][:200]} | | | | | |")
      continue
    compile_s = "" if row["compile_s"] is None else f"{row['compile_s']:.2f} s"
    share = "" if row["fraction_of_probe"] is None else f"{100 * row['fraction_of_probe']:.0f} %"
    lines.append(
      f"| {row['name']} | {row['state_bytes_per_param']:.2f} | "
      f"{row['bytes_per_step'] / 2**20:,.1f} MiB | {row['seconds_per_step'] * 1e3:.3g} ms | "
      f"{row['gb_per_s']:.1f} | {share} | {compile_s} |"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes: seconds, not minutes")
  parser.add_argument("--out", type=Path, default=None, help="the JSON file to write")
  args = parser.parse_args(argv)
  backend = jax.default_backend()
  size = SIZES[("cpu" if backend == "cpu" else "accelerator", args.quick)]
  device = jax.devices()[0]
  shapes = tree_shapes(size.width, size.layers)
  num_params = sum(math.prod(s) for s in shapes)
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  started = datetime.datetime.now(datetime.timezone.utc)
  header = (
    f"Backend {backend} ({device.device_kind}, {jax.device_count()} device(s), step on one); "
    f"{num_params:,} float32 params in {len(shapes)} arrays; jax {jax.__version__}, "
    f"optax {optax.__version__}, Python {platform.python_version()}; host load average "
    f"{load:.2f} at start; {started:%Y-%m-%d %H:%M} UTC"
  )
  print(header, flush=True)
  errors: dict[str, str] = {}
  runners = measure(make_runners(size, errors), size, errors)
  figures = report(runners, num_params, errors)
  print("\n" + markdown(figures, f"### {num_params:,} params, {len(shapes)} arrays"), flush=True)
  figures = {
    "backend": backend,
    "device_kind": device.device_kind,
    "params": num_params,
    "arrays": len(shapes),
    "quick": args.quick,
    "header": header,
    "size": asdict(size),
    **figures,
  }
  out = args.out or ROOT / "benchmarks" / "out" / f"device-{backend}{'-quick' * args.quick}.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(figures, indent=1) + "\n")
  print(f"\nwritten to {out}", flush=True)
  return figures


if __name__ == "__main__":
  sys.exit(1 if any("error" in row for row in main()["steps"]) else 0)
