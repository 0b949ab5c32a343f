"""What a freshly allocated parameter-sized buffer costs on this CPU, and the cure.

Run from the repository root (about two minutes; ``make bench-buffers``)::

  python benchmarks/fresh_buffers.py            # prints, and updates benchmarks/RESULTS.md
  python benchmarks/fresh_buffers.py --no-write

XLA:CPU allocates its output and scratch buffers with the C library's ``malloc``;
glibc serves a request above its mmap threshold (at most 32 MiB) with a new
``mmap`` and returns it with ``munmap``, so every step that produces a new
parameter-sized array touches fresh pages, one minor page fault per 4 KiB. The
same rows run twice, each set in a fresh process: with the default allocator
settings, and with ``MALLOC_MMAP_THRESHOLD_`` raised above the buffers' size
(and ``MALLOC_TRIM_THRESHOLD_`` with it), so that a freed buffer stays in the
heap and the next step reuses its pages.

Rows (one float32 array of ``--size`` elements, default 8M = 32 MiB):

- ``jit(x + 1)``, donated (the output reuses the input's buffer) and not
  donated (a new output every call);
- one Adam step ``(params, state, grads) -> (params, state)``, params and state
  donated, gradients an argument that is kept: ``optax.adam``, ``adam_optax.adam``
  (XLA), ``adam_optax.adam(fused=True)`` + ``optax.apply_updates`` (the kernel
  writes the updates into a buffer of their own) and ``update_and_apply``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- BEGIN FRESH BUFFERS -->", "<!-- END FRESH BUFFERS -->"
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**34)}
ROWS = [
  "x + 1, donated",
  "x + 1, new output",
  "optax.adam",
  "adam_optax.adam (XLA)",
  "adam_optax.adam(fused=True) + apply_updates",
  "adam_optax update_and_apply",
]


def measure(size: int, rounds: int) -> dict[str, tuple[float, float]]:
  """Each row's median step time (ms) and minor page faults per step, in this process."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import adam_optax

  params = jnp.asarray(np.random.default_rng(0).normal(size=size), jnp.float32)
  grads = params * 0.1

  def adam_step(optimizer, fused_apply=False):
    def step(p, s, g):
      if fused_apply:
        return adam_optax.update_and_apply(optimizer, g, s, p)
      updates, s = optimizer.update(g, s, p)
      return optax.apply_updates(p, updates), s

    compiled = jax.jit(step, donate_argnums=(0, 1))
    return (
      compiled,
      lambda out: (
        (jnp.copy(params), optimizer.init(params), grads) if out is None else (*out, grads)
      ),
    )

  x_plus_one = lambda x: x + 1  # noqa: E731
  cases = {
    ROWS[0]: (
      jax.jit(x_plus_one, donate_argnums=0),
      lambda out: (jnp.copy(params),) if out is None else (out,),
    ),
    ROWS[1]: (jax.jit(x_plus_one), lambda out: (params,)),
    ROWS[2]: adam_step(optax.adam(1e-3)),
    ROWS[3]: adam_step(adam_optax.adam(1e-3)),
    ROWS[4]: adam_step(adam_optax.adam(1e-3, fused=True)),
    ROWS[5]: adam_step(adam_optax.adam(1e-3, fused=True), fused_apply=True),
  }
  times: dict[str, list[float]] = {name: [] for name in cases}
  faults = dict.fromkeys(cases, 0)
  outs: dict[str, object] = dict.fromkeys(cases)
  for _ in range(rounds):  # interleaved: every row once per round
    for name, (function, arguments) in cases.items():
      args = arguments(outs[name])
      jax.block_until_ready(args)
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      start = time.perf_counter()
      outs[name] = jax.block_until_ready(function(*args))
      times[name].append(time.perf_counter() - start)
      faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  skip = 2  # the first rounds compile and warm up
  return {
    name: (
      float(np.median(times[name][skip:]) * 1e3),
      faults[name] / rounds,
    )
    for name in cases
  }


def run_in_fresh_process(size: int, rounds: int, keep_freed: bool) -> dict[str, list[float]]:
  env = dict(os.environ, **(KEEP_FREED if keep_freed else {}))
  if not keep_freed:
    for name in KEEP_FREED:
      env.pop(name, None)
  command = [sys.executable, __file__, "--child", str(size), str(rounds)]
  output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(output.strip().splitlines()[-1])


def report(size: int, rounds: int) -> str:
  from benchmarks.run import machine

  default = run_in_fresh_process(size, rounds, keep_freed=False)
  kept = run_in_fresh_process(size, rounds, keep_freed=True)
  lines = [
    f"Machine: {machine()}",
    "",
    f"### One float32 array of {size:,} elements ({size * 4 / 2**20:.0f} MiB), median of "
    f"{rounds - 2} interleaved rounds",
    "",
    "| step | default allocator | page faults / step | freed buffers kept | page faults / step "
    "| speed-up |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for name in ROWS:
    (t0, f0), (t1, f1) = default[name], kept[name]
    lines.append(f"| {name} | {t0:.2f} ms | {f0:,.0f} | {t1:.2f} ms | {f1:,.0f} | {t0 / t1:.2f}x |")
  return "\n".join(lines)


def main() -> None:
  if sys.argv[1:2] == ["--child"]:
    size, rounds = int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(measure(size, rounds)))
    return
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
  parser.add_argument("--size", type=int, default=8 * 2**20)
  parser.add_argument("--rounds", type=int, default=23)
  args = parser.parse_args()
  text = report(args.size, args.rounds)
  print(text)
  if not args.no_write:
    old = RESULTS.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    head, rest = old.split(BEGIN, 1)
    RESULTS.write_text(head + block + rest.split(END, 1)[1])


if __name__ == "__main__":
  main()
