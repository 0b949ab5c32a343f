"""Can XLA:CPU do an Adam step in one pass over memory? Experiments, measured.

A single-pass fp32 Adam step moves 28 bytes per parameter (read p, g, m, v;
write p, m, v). XLA:CPU has no multi-output loop fusion (this jaxlib rejects
``--xla_cpu_use_multi_output_fusion``), so the plain step compiles to three
loops (new m; new v; new p from the new m and v), about 40 bytes per parameter
by the compiled program's own count. Each variant below is one attempt to get
one pass out of XLA; the table gives the compiled program's loop fusions,
its bytes accessed per parameter (``compiled.cost_analysis()``), and the
median time against an in-place ``x + 1`` over the same 28 bytes per param.

The maths is Adam with a constant step size (no bias correction): the
question is memory traffic, and every variant computes the same values.

Run: ``python benchmarks/single_pass.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

B1, B2, LR, EPS = 0.9, 0.999, 1e-3, 1e-8


def _adam(p: Any, m: Any, v: Any, g: Any) -> tuple[Any, Any, Any]:
  m = B1 * m + (1 - B1) * g
  v = B2 * v + (1 - B2) * g * g
  return p - LR * m / (jnp.sqrt(v) + EPS), m, v


def three_arrays(p, m, v, g):
  """The baseline: separate p, m, v, as adam_optax and optax hold them."""
  return _adam(p, m, v, g)


def p_from_old_moments(p, m, v, g):
  """New p recomputed from the old m, v and g (a barrier stops CSE sharing m, v)."""
  old = jax.lax.optimization_barrier((m, v, g))
  new_p, _, _ = _adam(p, *old)
  _, new_m, new_v = _adam(p, m, v, g)
  return new_p, new_m, new_v


def interleaved_stack(block: int) -> Callable:
  """p, m, v interleaved in one (n / block, 3, block) buffer: one output array."""

  def step(pmv, g):
    g = g.reshape(-1, block)
    return jnp.stack(_adam(pmv[:, 0], pmv[:, 1], pmv[:, 2], g), axis=1)

  return step


def interleaved_weights(block: int) -> Callable:
  """As above, the output written as one broadcasting expression (no concat)."""
  keep = jnp.array([1, B1, B2], jnp.float32)[None, :, None]
  g_weight = jnp.array([0, 1 - B1, 0], jnp.float32)[None, :, None]
  g2_weight = jnp.array([0, 0, 1 - B2], jnp.float32)[None, :, None]
  ratio_weight = jnp.array([-LR, 0, 0], jnp.float32)[None, :, None]

  def step(pmv, g):
    g = g.reshape(-1, 1, block)
    m = B1 * pmv[:, 1:2] + (1 - B1) * g
    v = B2 * pmv[:, 2:3] + (1 - B2) * g * g
    ratio = m / (jnp.sqrt(v) + EPS)
    return pmv * keep + g * g_weight + g * g * g2_weight + ratio * ratio_weight

  return step


def interleaved_moments(block: int) -> Callable:
  """m and v interleaved in one (n / block, 2, block) buffer: two loops, 36 B/param."""
  keep = jnp.array([B1, B2], jnp.float32)[None, :, None]
  g_weight = jnp.array([1 - B1, 0], jnp.float32)[None, :, None]
  g2_weight = jnp.array([0, 1 - B2], jnp.float32)[None, :, None]

  def step(p, mv, g):
    g = g.reshape(-1, 1, block)
    mv = mv * keep + g * g_weight + g * g * g2_weight
    m, v = mv[:, 0].reshape(-1), mv[:, 1].reshape(-1)
    return p - LR * m / (jnp.sqrt(v) + EPS), mv

  return step


def chunked_loop(chunk: int) -> Callable:
  """A fori_loop over cache-sized chunks, updated in place with dynamic_update_slice."""

  def step(p, m, v, g):
    rows = p.shape[0] // chunk

    def body(i, carry):
      def take(x):
        return jax.lax.dynamic_slice_in_dim(x.reshape(rows, chunk), i, 1)

      new = _adam(*(take(x) for x in (*carry, g)))
      return tuple(
        jax.lax.dynamic_update_slice_in_dim(x.reshape(rows, chunk), y, i, 0).reshape(-1)
        for x, y in zip(carry, new, strict=True)
      )

    return jax.lax.fori_loop(0, rows, body, (p, m, v))

  return step


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="4M params instead of 32M")
  args = parser.parse_args()
  n = (4 if args.quick else 32) << 20
  g = jnp.full((n,), 1e-2, jnp.float32)
  variants: list[tuple[str, Callable, list[tuple[int, ...]]]] = [
    ("three arrays (baseline)", three_arrays, [(n,)] * 3),
    ("p from the old m, v, g", p_from_old_moments, [(n,)] * 3),
    ("p,m,v interleaved, stack, block 1024", interleaved_stack(1024), [(n // 1024, 3, 1024)]),
    ("p,m,v interleaved, weights, block 1024", interleaved_weights(1024), [(n // 1024, 3, 1024)]),
    (
      "m,v interleaved, weights, block 4096",
      interleaved_moments(4096),
      [(n,), (n // 4096, 2, 4096)],
    ),
    ("fori_loop over 1M chunks", chunked_loop(1 << 20), [(n,)] * 3),
  ]
  runners: dict[str, Callable[[], None]] = {}
  print("| variant | loop fusions | bytes/param (XLA) | step | % probe |")
  print("|---|---:|---:|---:|---:|")
  facts = {}
  for name, fn, shapes in variants:
    box = [jnp.ones(s, jnp.float32) for s in shapes]
    compiled = jax.jit(fn, donate_argnums=tuple(range(len(shapes)))).lower(*box, g).compile()
    cost = compiled.cost_analysis() or {}
    loops = compiled.as_text().count("kind=kLoop")
    facts[name] = (loops, cost.get("bytes accessed", float("nan")) / n)

    def run(compiled=compiled, box=box) -> None:
      out = compiled(*box, g)
      box[:] = out if isinstance(out, tuple) else (out,)
      box[0].block_until_ready()

    runners[name] = run
  probe_box = [jnp.zeros((n * 28 // 8,), jnp.float32)]
  add_one = jax.jit(lambda x: x + jnp.float32(1), donate_argnums=0)

  def probe() -> None:
    probe_box[0] = add_one(probe_box[0])
    probe_box[0].block_until_ready()

  runners["probe"] = probe
  times: dict[str, list[float]] = {name: [] for name in runners}
  for run in runners.values():
    run()
  for _ in range(3 if args.quick else 7):
    for name, run in runners.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  probe_s = statistics.median(times["probe"])
  for name, (loops, per_param) in facts.items():
    t = statistics.median(times[name])
    print(f"| {name} | {loops} | {per_param:.1f} | {t * 1e3:.1f} ms | {100 * probe_s / t:.0f} % |")
  print(f"| probe: jit(x + 1), donated | 1 | 28.0 | {probe_s * 1e3:.1f} ms | 100 % |")


if __name__ == "__main__":
  main()
