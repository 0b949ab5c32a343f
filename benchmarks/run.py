"""One Adam step, side by side: adam_optax, optax.adam and torch.optim.Adam on this CPU.

Run from the repository root::

  python benchmarks/run.py           # full table, written into benchmarks/RESULTS.md
  python benchmarks/run.py --quick   # smaller trees, under a minute, printed only

Every regime is a list of float32 parameter arrays. On the same arrays, in one
process and in interleaved rounds (each round runs every implementation once,
in rotating order), it times:

- ``optax.adam`` and ``adam_optax.adam`` on the tree of arrays;
- ``adam_optax.adam`` on bucketed params (``adam_optax.bucket``: one contiguous
  buffer), with bucket-shaped gradients, and with per-leaf gradients gathered
  into buckets inside the step (the cost of a model not written against
  ``layout.unbucket``);
- ``adam_optax.adam(fused=True)`` on the tree: its ``update`` runs the fused CPU
  kernel, then ``optax.apply_updates`` (the drop-in API); and
  ``adam_optax.update_and_apply`` with it, which also writes the params in place
  (one pass: read p, g, m, v; write p, m, v), on the tree and on buckets;
- ``torch.optim.Adam`` with ``foreach=True`` and with ``fused=True``;
- a floor: a donated jitted step that returns the params and Adam state it is
  given, untouched: what passing the tree's arrays in and out of a jitted
  function costs, before any arithmetic;
- two bandwidth probes, each an in-place ``x + 1`` over a float32 buffer of
  3.5 elements per parameter, which reads and writes the same 28 bytes per
  parameter that a single-pass Adam step must move: a donated jitted
  ``x + 1`` (XLA) and ``x.add_(1)`` (torch). The faster of the two is the
  bandwidth reference ("% probe").

A JAX step is ``jit(donate params and state)(params, state, grads) ->
(apply_updates(params, updates), state)``; its compile time is the wall time
of ``lower(...).compile()`` (tracing included). A step time is the median over
rounds of one sample, a sample averaging enough back-to-back steps to last a
millisecond or two. GB/s counts 28 bytes per parameter; "% probe" divides that
by the faster probe's GB/s from the same rounds; "x optax", "x XLA" (adam_optax on
the tree, unfused) and "x fused" (torch's) are the other's step time over this
one (above 1: faster).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adam_optax

BYTES_PER_PARAM = 28  # read p, g, m, v; write p, m, v (float32)
LEARNING_RATE = 1e-3
RESULTS = Path(__file__).with_name("RESULTS.md")
XLA_PROBE, TORCH_PROBE = "probe: jit(x + 1), donated", "probe: torch x.add_(1)"
XLA_TREE = "adam_optax (tree)"
FLOOR = "floor: jit returning the donated params and state (tree)"
FUSED_TREE = "adam_optax update_and_apply (tree)"
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
SHAPES_BEGIN, SHAPES_END = "<!-- BEGIN STEP SHAPES -->", "<!-- END STEP SHAPES -->"


def transformer_shapes(layers: int, width: int, vocab: int) -> list[tuple[int, ...]]:
  """A GPT-like tree: embeddings, per-layer attention/MLP/LayerNorm, a head."""
  shapes: list[tuple[int, ...]] = [(vocab, width), (512, width)]
  for _ in range(layers):
    shapes += [(width,), (width,)]  # LayerNorm
    shapes += [(width, width), (width,)] * 4  # q, k, v, out
    shapes += [(width,), (width,)]  # LayerNorm
    shapes += [(width, 4 * width), (4 * width,), (4 * width, width), (width,)]
  return [*shapes, (width,), (width,), (width, vocab), (vocab,)]


def regimes(quick: bool) -> list[tuple[str, list[tuple[int, ...]]]]:
  """(name, shapes) of every benchmarked tree."""
  if quick:
    return [
      ("1 x 4M", [(4 << 20,)]),
      ("256 x 16K", [(16 << 10,)] * 256),
      ("transformer 3 layers", transformer_shapes(3, 128, 1024)),
      ("512 x 8", [(8,)] * 512),
      ("1 x 1000", [(1000,)]),
    ]
  return [
    ("1 x 32M", [(32 << 20,)]),
    ("16 x 2M", [(2 << 20,)] * 16),
    ("256 x 128K", [(128 << 10,)] * 256),
    ("4096 x 8K", [(8 << 10,)] * 4096),
    ("transformer", transformer_shapes(10, 256, 4096)),
    ("4096 x 8", [(8,)] * 4096),
    ("1 x 1000", [(1000,)]),
  ]


@dataclass
class Runner:
  """One implementation set up on one regime."""

  name: str
  step: Callable[[], None]
  compile_s: float | None = None
  temp_bytes: int | None = None
  samples: list[float] = field(default_factory=list)
  repeats: int = 1
  prepare: Callable[[], None] | None = None  # run before each step, untimed

  def timed(self) -> float:
    """One step's wall time (``prepare`` first, untimed)."""
    if self.prepare is not None:
      self.prepare()
    start = time.perf_counter()
    self.step()
    return time.perf_counter() - start


def _jax_runner(
  name: str, optimizer: Any, params: Any, grads: Any, gather: Any = None, *, fused_step=False
) -> Runner:
  """A donated jitted step; ``gather`` maps incoming grads to the params' layout.

  The step is ``update`` then ``optax.apply_updates``, or with ``fused_step``
  :func:`adam_optax.update_and_apply`.
  """

  def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
    if gather is not None:
      grads = gather(grads)
    if fused_step:
      return adam_optax.update_and_apply(optimizer, grads, state, params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = optimizer.init(params)
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  box = [params, state]

  def run() -> None:
    box[0], box[1] = compiled(box[0], box[1], grads)
    jax.tree.leaves(box[0])[0].block_until_ready()

  temp = None if memory is None else int(memory.temp_size_in_bytes)
  return Runner(name, run, compile_s, temp)


def _torch_runner(name: str, arrays: list[np.ndarray], grads: list[np.ndarray], **kw) -> Runner:
  params = [torch.from_numpy(a.copy()).requires_grad_() for a in arrays]
  for p, g in zip(params, grads, strict=True):
    p.grad = torch.from_numpy(g.copy())
  optimizer = torch.optim.Adam(params, lr=LEARNING_RATE, **kw)
  start = time.perf_counter()
  optimizer.step()  # builds the state
  del start
  return Runner(name, optimizer.step)


def _floor_runner(tree: Any, state: Any, grads: Any) -> Runner:
  """A donated jitted step that returns params and state untouched: the per-array cost floor."""
  compiled = jax.jit(lambda p, s, g: (p, s), donate_argnums=(0, 1)).lower(tree, state, grads)
  compiled = compiled.compile()
  box = [tree, state]

  def run() -> None:
    box[0], box[1] = compiled(box[0], box[1], grads)
    jax.tree.leaves(box[0])[0].block_until_ready()

  return Runner(FLOOR, run)


def _probe_runners(num_params: int) -> list[Runner]:
  """In-place ``x + 1`` over 28 bytes per parameter, by XLA and by torch."""
  length = math.ceil(num_params * BYTES_PER_PARAM / 8)
  add_one = jax.jit(lambda x: x + jnp.float32(1), donate_argnums=0)
  box = [jnp.zeros((length,), jnp.float32)]

  def run_xla() -> None:
    box[0] = add_one(box[0])
    box[0].block_until_ready()

  tensor = torch.zeros(length)
  return [Runner(XLA_PROBE, run_xla), Runner(TORCH_PROBE, lambda: tensor.add_(1.0))]


def make_runners(shapes: list[tuple[int, ...]], seed: int = 0) -> list[Runner]:
  """Every implementation, on the same initial params and gradients."""
  rng = np.random.default_rng(seed)
  arrays = [rng.standard_normal(s, np.float32) for s in shapes]
  grad_arrays = [np.float32(1e-2) * rng.standard_normal(s, np.float32) for s in shapes]
  tree = {f"p{i:04d}": jnp.asarray(a) for i, a in enumerate(arrays)}
  grads = {f"p{i:04d}": jnp.asarray(g) for i, g in enumerate(grad_arrays)}
  buckets, layout = adam_optax.bucket(tree)
  bucket_grads = layout.bucket(grads)
  copy = functools.partial(jax.tree.map, jnp.copy)  # donation consumes the params
  ours = adam_optax.adam(LEARNING_RATE)
  fused = adam_optax.adam(LEARNING_RATE, fused=True)
  return [
    _jax_runner("optax.adam (tree)", optax.adam(LEARNING_RATE), copy(tree), grads),
    _jax_runner(XLA_TREE, ours, copy(tree), grads),
    _jax_runner("adam_optax (bucketed)", ours, copy(buckets), bucket_grads),
    _jax_runner("adam_optax (bucketed, tree grads)", ours, copy(buckets), grads, layout.bucket),
    _jax_runner("adam_optax fused=True + apply_updates (tree)", fused, copy(tree), grads),
    _jax_runner(FUSED_TREE, fused, copy(tree), grads, fused_step=True),
    _jax_runner(
      "adam_optax update_and_apply (bucketed)", fused, copy(buckets), bucket_grads, fused_step=True
    ),
    _floor_runner(copy(tree), ours.init(tree), grads),
    _torch_runner("torch Adam foreach", arrays, grad_arrays, foreach=True),
    _torch_runner("torch Adam fused", arrays, grad_arrays, fused=True),
    *_probe_runners(sum(math.prod(s) for s in shapes)),
  ]


# fused=True against fused=False in the three shapes a training step takes.
# Params and state are donated in all three; the step is written as users
# write it (update, then optax.apply_updates) and with update_and_apply.
STEP_SHAPES = {
  "a": "(a) gradients an argument",
  "b": "(b) gradients from jax.grad in the step",
  "c": "(c) gradients donated",
}
TWO_LINES, UPDATE_AND_APPLY = "update + apply_updates", "update_and_apply"


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
  """The 2-D view a leaf is used as in shape (b)'s loss (a matrix multiply)."""
  size = math.prod(shape)
  if len(shape) == 2:
    return shape[0], shape[1]
  rows = next((r for r in (1024, 8) if size % r == 0 and size >= 64 * r), 1)
  return rows, size // rows


def _loss(params: Any, inputs: Any) -> jax.Array:
  """sum(tanh(x @ W)) over the leaves: gradients that XLA materialises, as a model's are."""
  terms = [
    jnp.sum(jnp.tanh(x @ p.reshape(_matrix_shape(p.shape))))
    for p, x in zip(jax.tree.leaves(params), jax.tree.leaves(inputs), strict=True)
  ]
  return functools.reduce(jnp.add, terms)


def _step_shape_runner(shape: str, api: str, fused: bool, params: Any, grads: Any) -> Runner:
  """One step shape (``STEP_SHAPES``) of ``adam(fused=fused)`` with ``api``."""
  optimizer = adam_optax.adam(LEARNING_RATE, fused=fused)

  def apply(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
    if api == UPDATE_AND_APPLY:
      return adam_optax.update_and_apply(optimizer, grads, state, params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def from_inputs(params: Any, state: Any, inputs: Any) -> tuple[Any, Any]:
    return apply(params, state, jax.grad(_loss)(params, inputs))

  if shape == "b":
    rng = np.random.default_rng(1)
    args = jax.tree.map(
      lambda p: jnp.asarray(rng.standard_normal((4, _matrix_shape(p.shape)[0])), jnp.float32),
      params,
    )
  else:
    args = grads
  step = from_inputs if shape == "b" else apply
  donate = (0, 1, 2) if shape == "c" else (0, 1)
  params = jax.tree.map(jnp.copy, params)
  state = optimizer.init(params)
  compiled = jax.jit(step, donate_argnums=donate).lower(params, state, args).compile()
  box = [params, state, args]

  def fresh_gradients() -> None:  # shape (c): the step consumes them
    box[2] = jax.block_until_ready(jax.tree.map(jnp.copy, grads))

  def run() -> None:
    box[0], box[1] = compiled(*box)
    jax.tree.leaves(box[0])[0].block_until_ready()

  name = f"{STEP_SHAPES[shape]}, {api}, fused={fused}"
  return Runner(name, run, prepare=fresh_gradients if shape == "c" else None)


def step_shape_runners(shapes: list[tuple[int, ...]], seed: int = 0) -> list[Runner]:
  """fused=False and fused=True side by side, per step shape and API."""
  rng = np.random.default_rng(seed)
  params = {
    f"p{i:04d}": jnp.asarray(rng.standard_normal(s), jnp.float32) for i, s in enumerate(shapes)
  }
  grads = jax.tree.map(lambda p: jnp.float32(1e-2) * jnp.cos(p), params)
  return [
    _step_shape_runner(shape, api, fused, params, grads)
    for shape in STEP_SHAPES
    for api in (TWO_LINES, UPDATE_AND_APPLY)
    for fused in (False, True)
  ]


def step_shape_table(name: str, shapes: list[tuple[int, ...]], runners: list[Runner]) -> str:
  """fused=True's speed over fused=False's: the median over rounds of the paired ratio."""
  num_params = sum(math.prod(s) for s in shapes)
  by_name = {r.name: r for r in runners}
  lines = [
    f"### fused=True vs fused=False, {name}: {len(shapes)} arrays, {num_params:,} params",
    "",
    "| step shape | step written with | fused=False | fused=True | fused=True speed-up (paired) |",
    "|---|---|---:|---:|---:|",
  ]
  for label in STEP_SHAPES.values():
    for api in (TWO_LINES, UPDATE_AND_APPLY):
      off, on = (by_name[f"{label}, {api}, fused={fused}"] for fused in (False, True))
      ratio = statistics.median(a / b for a, b in zip(off.samples, on.samples, strict=True))
      lines.append(
        f"| {label} | {api} | {_fmt_time(statistics.median(off.samples))} "
        f"| {_fmt_time(statistics.median(on.samples))} | {ratio:.2f}x |"
      )
  return "\n".join(lines)


def step_shape_regimes(quick: bool) -> list[tuple[str, list[tuple[int, ...]]]]:
  """The trees of the step-shape tables: one large array and the transformer."""
  if quick:
    return [("1 x 4M", [(4 << 20,)]), ("transformer 3 layers", transformer_shapes(3, 128, 1024))]
  return [("1 x 32M", [(32 << 20,)]), ("transformer", transformer_shapes(10, 256, 4096))]


def measure(runners: list[Runner], budget_s: float, min_sample_s: float) -> None:
  """Interleaved rounds until about ``budget_s`` is spent; fills ``samples``."""
  for runner in runners:
    runner.timed()
    runner.repeats = max(1, math.ceil(min_sample_s / max(runner.timed(), 1e-7)))
  round_s = sum(r.repeats * r.timed() for r in runners)
  rounds = int(min(100, max(9, budget_s / max(round_s, 1e-9))))
  for index in range(rounds):
    shift = index % len(runners)
    for runner in runners[shift:] + runners[:shift]:
      total = sum(runner.timed() for _ in range(runner.repeats))
      runner.samples.append(total / runner.repeats)


def _fmt_time(seconds: float) -> str:
  if seconds >= 1:
    return f"{seconds:.2f} s"
  if seconds >= 1e-3:
    return f"{seconds * 1e3:.2f} ms"
  return f"{seconds * 1e6:.0f} us"


def table(name: str, shapes: list[tuple[int, ...]], runners: list[Runner]) -> str:
  """A Markdown table for one regime."""
  num_params = sum(math.prod(s) for s in shapes)
  median = {r.name: statistics.median(r.samples) for r in runners}
  probe = min(median[XLA_PROBE], median[TORCH_PROBE])
  optax_s = median["optax.adam (tree)"]
  xla_s = median[XLA_TREE]
  fused_s = median["torch Adam fused"]
  lines = [
    f"### {name}: {len(shapes)} arrays, {num_params:,} params",
    "",
    "| implementation | step | compile | GB/s | % probe | x optax | x XLA | x fused | XLA temp |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in runners:
    t = median[r.name]
    compile_s = "" if r.compile_s is None else f"{r.compile_s:.2f} s"
    temp = "" if r.temp_bytes is None else f"{r.temp_bytes / 2**20:.1f} MiB"
    gbs = f"{num_params * BYTES_PER_PARAM / t / 1e9:.1f}"
    share = f"{100 * probe / t:.0f} %"
    if r.name == FLOOR:  # moves no parameter data: no bandwidth to speak of
      gbs = share = ""
    lines.append(
      f"| {r.name} | {_fmt_time(t)} | {compile_s} | {gbs} | {share} "
      f"| {optax_s / t:.2f} | {xla_s / t:.2f} | {fused_s / t:.2f} | {temp} |"
    )
  return "\n".join(lines)


def machine() -> str:
  """What ran the benchmark."""
  cpu = "unknown CPU"
  cpuinfo = Path("/proc/cpuinfo")
  if cpuinfo.exists():
    found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
    cpu = found.group(1).strip() if found else cpu
  memory = ""
  meminfo = Path("/proc/meminfo")
  if meminfo.exists():
    found = re.search(r"MemTotal:\s*(\d+) kB", meminfo.read_text())
    memory = f", {int(found.group(1)) / 2**20:.0f} GiB RAM" if found else ""
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (
    f"{cpu}, {os.cpu_count()} cores{memory}; {platform.platform()}; Python "
    f"{platform.python_version()}, jax {jax.__version__}, optax {optax.__version__}, "
    f"torch {torch.__version__} ({torch.get_num_threads()} threads); load average "
    f"{load:.2f} at start; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
  )


# Peak memory, each variant in a fresh process: the high-water mark of the
# resident set (VmHWM) during three steps (the mark is reset after the set-up),
# minus the resident set after the imports: params + gradients + optimizer
# state + whatever the steps add.


def _status_kib(field_name: str) -> int:
  found = re.search(rf"{field_name}:\s*(\d+) kB", Path("/proc/self/status").read_text())
  return int(found.group(1)) if found else -1


def memory_child(variant: str, num_params: int) -> dict[str, Any]:
  """Three steps of ``variant``; the peak resident memory they needed, in MiB."""
  before = _status_kib("VmRSS")
  if variant.startswith("torch"):
    param = torch.full((num_params,), 0.5).requires_grad_()
    param.grad = torch.full((num_params,), 1e-2)
    step = torch.optim.Adam([param], lr=LEARNING_RATE, fused=True).step
  else:
    donate = (0, 1) if "not donated" not in variant else ()
    fused = "fused" in variant or "update_and_apply" in variant
    if variant.startswith("optax"):
      optimizer = optax.adam(LEARNING_RATE)
    else:
      optimizer = adam_optax.adam(LEARNING_RATE, fused=fused)
    # Filled in place: random numbers would leave a freed temporary in the RSS.
    params = {"float32": jnp.full((num_params,), 0.5, jnp.float32)}
    grads = {"float32": jnp.full((num_params,), 1e-2, jnp.float32)}

    def update(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
      if "update_and_apply" in variant:
        return adam_optax.update_and_apply(optimizer, grads, state, params)
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    compiled = jax.jit(update, donate_argnums=donate)
    box = [params, optimizer.init(params)]

    def step() -> None:
      box[0], box[1] = compiled(box[0], box[1], grads)
      jax.block_until_ready(box)

  Path("/proc/self/clear_refs").write_text("5")  # forget the set-up's temporaries
  for _ in range(3):
    step()
  return {"variant": variant, "peak_mib": (_status_kib("VmHWM") - before) / 1024}


MEMORY_VARIANTS = [
  "optax.adam, donated",
  "adam_optax (bucketed), donated",
  "adam_optax (bucketed), not donated",
  "adam_optax fused=True + apply_updates, donated",
  "adam_optax update_and_apply, donated",
  "torch Adam fused",
]


def _peak_mib(variant: str, num_params: int) -> float:
  out = subprocess.run(
    [sys.executable, __file__, "--memory-child", variant, "--params", str(num_params)],
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def memory_table(num_params: int) -> str:
  """Peak memory per variant, from child processes, less the same run on 1K params."""
  size_mib = num_params * 4 / 2**20
  lines = [
    f"### Peak memory: 1 x {num_params:,} params ({size_mib:.0f} MiB per param-sized buffer)",
    "",
    "Peak resident memory of a fresh process during three steps (the high-water",
    "mark is reset after the set-up), over its resident memory after the imports, less the same",
    "figure for 1,024 params (the runtime's and compiler's own memory). Params,",
    "gradients and two moments are 4 buffers; anything above is what the step",
    "allocates.",
    "",
    "| variant | peak | in param-sized buffers |",
    "|---|---:|---:|",
  ]
  for variant in MEMORY_VARIANTS:
    peak = _peak_mib(variant, num_params) - _peak_mib(variant, 1024)
    lines.append(f"| {variant} | {peak:.0f} MiB | {peak / size_mib:.2f} |")
  return "\n".join(lines)


def write_results(text: str, begin: str = BEGIN, end: str = END) -> None:
  """Replaces the block between ``begin`` and ``end`` in RESULTS.md (or appends it)."""
  block = f"{begin}\n{text}\n{end}"
  old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
  if begin in old and end in old:
    head, rest = old.split(begin, 1)
    RESULTS.write_text(head + block + rest.split(end, 1)[1])
  else:
    RESULTS.write_text(f"{old.rstrip()}\n\n{block}\n")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smaller trees, under a minute")
  parser.add_argument("--only", default="", help="run the regimes whose name contains this")
  parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
  parser.add_argument(
    "--step-shapes", action="store_true", help="only the fused=True vs fused=False tables"
  )
  parser.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--params", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.memory_child:
    print(json.dumps(memory_child(args.memory_child, args.params)))
    return
  budget_s, min_sample_s = (1.0, 1e-3) if args.quick else (10.0, 2e-3)
  write = not (args.quick or args.no_write or args.only)
  shape_sections = [f"Machine: {machine()}", ""]
  print(shape_sections[0], flush=True)
  for name, shapes in step_shape_regimes(args.quick):
    runners = step_shape_runners(shapes)
    measure(runners, budget_s, min_sample_s)
    shape_sections += [step_shape_table(name, shapes, runners), ""]
    print("\n" + shape_sections[-2], flush=True)
    del runners
  if write:
    write_results("\n".join(shape_sections), SHAPES_BEGIN, SHAPES_END)
  if args.step_shapes:
    return
  sections = [f"Machine: {machine()}", ""]
  for name, shapes in regimes(args.quick):
    if args.only not in name:
      continue
    runners = make_runners(shapes)
    measure(runners, budget_s, min_sample_s)
    sections += [table(name, shapes, runners), ""]
    print("\n" + sections[-2], flush=True)
    del runners
  if not args.only:
    sections.append(memory_table((4 if args.quick else 32) << 20))
    print("\n" + sections[-1], flush=True)
  if write:
    write_results("\n".join(sections))


if __name__ == "__main__":
  main()
