"""How ``quantized`` scales: init and compile time against the leaf count, and a step's memory.

Two measurements, side by side with the unquantized optimizer in one process:

- ``leaves``: ``n`` leaves of 64x64 (n = 128, 512, 1024): wall time of ``init``
  (eager, as a user calls it), of ``jax.eval_shape(init)`` (what ``restore_target``
  pays) and of lowering plus compiling a donated jitted step; ratios to
  ``adam_optax.adam``.
- ``peak``: one leaf of ``--size`` elements (50M by default): the compiled
  donated step's ``memory_analysis()`` (temp bytes) and, in a fresh subprocess
  each, the peak RSS growth over the state's own bytes while running 3 steps;
  fp32 Adam, 8-bit and 4-bit.

Usage::

    python benchmarks/quantized_scale.py [leaves] [peak] [--counts 128 512 1024] [--size N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import optax

import adam_optax


def _optimizers():
  return {
    "fp32 adam": adam_optax.adam(1e-3),
    "8-bit": adam_optax.quantized(adam_optax.adam(1e-3), 8),
    "4-bit": adam_optax.quantized(adam_optax.adam(1e-3), 4),
  }


def _step(optimizer):
  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def _seconds(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _timings(optimizer, params, grads) -> tuple[float, float, float]:
  """Seconds of an eager ``init``, of ``eval_shape(init)`` and of compiling a donated step."""
  init = _seconds(lambda: optimizer.init(params))
  abstract = _seconds(lambda: jax.eval_shape(lambda p: optimizer.init(p), params) and 0)
  state = optimizer.init(params)
  compile_s = _seconds(lambda: _step(optimizer).lower(params, state, grads).compile() and 0)
  return init, abstract, compile_s


def leaves(counts: list[int]) -> None:
  _timings(adam_optax.adam(1e-3), {"w": jnp.ones(3)}, {"w": jnp.ones(3)})  # jax's warm-up
  print("| leaves | optimizer | init s | eval_shape(init) s | compile s | init x | compile x |")
  print("|---:|---|---:|---:|---:|---:|---:|")
  for n in counts:
    params = {f"w{i:04d}": jnp.full((64, 64), 0.01 * (i + 1)) for i in range(n)}
    grads = jax.tree.map(jnp.ones_like, params)
    base = None
    for name, optimizer in _optimizers().items():
      init, abstract, compile_s = _timings(optimizer, params, grads)
      if base is None:
        base = (init, compile_s)
      print(
        f"| {n} | {name} | {init:.3f} | {abstract:.3f} | {compile_s:.2f} | "
        f"{init / base[0]:.2f} | {compile_s / base[1]:.2f} |",
        flush=True,
      )


def _peak_child(name: str, size: int) -> dict[str, float]:
  optimizer = _optimizers()[name]
  params = {"w": jnp.linspace(-1.0, 1.0, size, dtype=jnp.float32)}
  grads = {"w": jnp.cos(params["w"] * 7.0)}
  state = optimizer.init(params)
  step = _step(optimizer)
  compiled = step.lower(params, state, grads).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  jax.block_until_ready((params, state, grads))
  before = _rss()
  highest = [before]
  done = threading.Event()

  def sample() -> None:  # ru_maxrss cannot be reset after init's own peak: sample instead
    while not done.is_set():
      highest[0] = max(highest[0], _rss())
      time.sleep(0.0005)

  sampler = threading.Thread(target=sample)
  sampler.start()
  for _ in range(3):
    params, state = step(params, state, grads)
  jax.block_until_ready(params)
  done.set()
  sampler.join()
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  return {"temp": temp, "growth": highest[0] - before, "state": state_bytes}


def _rss() -> int:
  with open("/proc/self/statm") as statm:
    return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak(size: int) -> None:
  print(f"one leaf of {size} float32 elements; MiB")
  print("| optimizer | state | step temp (memory_analysis) | peak RSS growth during 3 steps |")
  print("|---|---:|---:|---:|")
  for name in _optimizers():
    out = subprocess.run(
      [sys.executable, __file__, "--child", name, "--size", str(size)],
      capture_output=True,
      text=True,
      check=True,
      env=dict(os.environ),
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2.0**20
    print(
      f"| {name} | {got['state'] / mib:.1f} | {got['temp'] / mib:.1f} | "
      f"{got['growth'] / mib:.1f} |",
      flush=True,
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("what", nargs="*", default=["leaves", "peak"])
  parser.add_argument("--size", type=int, default=50_000_000)
  parser.add_argument("--counts", type=int, nargs="+", default=[128, 512, 1024])
  parser.add_argument("--child", default=None)
  args = parser.parse_args()
  if args.child is not None:
    print(json.dumps(_peak_child(args.child, args.size)))
    return
  print(f"load average {os.getloadavg()[0]:.2f}; jax {jax.__version__}; {os.cpu_count()} cores")
  if "leaves" in args.what:
    leaves(args.counts)
  if "peak" in args.what:
    peak(args.size)


if __name__ == "__main__":
  main()
