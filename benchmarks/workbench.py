"""Which Adam? Every member of the family on the same tasks, each with its learning rate swept.

For each member (``workbench_members.py``) and task (``workbench_tasks.py``)
it trains one run per (learning rate, seed): the learning rates are log-spaced
around the member's default (scaled per task), the seeds change the initial
params and the minibatches. All runs of a member on a task are ONE compiled
program: the learning rate is a traced argument (the member is built inside
the traced function, its peak learning rate a tracer of a ``jax.vmap`` over
runs), and each run is a ``lax.scan`` over its steps. So each member x task
compiles once, and a sweep costs about what one batched run costs.

Recorded per member x task: the validation-loss curve of every run, the
compile and run time (the time per step of the batched sweep, relative to
AdamW's on the same task, is a cost ratio, not a single-run latency), the
optimizer state's bytes per parameter (also under ``adam_optax.quantized(...,
bits=8)`` on the LM), and for the online problem the final x.

    python benchmarks/workbench.py            # full: ~15 min on 2 cores; writes
                                              # benchmarks/out/workbench.json, the figures
                                              # in docs/_static/workbench/, docs/which_adam.md
    python benchmarks/workbench.py --quick    # small, < 3 min; benchmarks/out/ only
    python benchmarks/workbench.py --smoke    # tiny, seconds (the test suite's size)
    python benchmarks/workbench.py --members adam,adamw --tasks lstsq,digits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workbench_members
import workbench_tasks

import adam_optax

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SEEDS = (0, 1, 2)
WARMUP_FRACTION = 20  # warm-up over steps // 20 (5 % of the run)
FINAL_FRACTION = 0.1  # the cosine ends at 10 % of the peak
TIMING_ROUNDS = 5  # at most, in all (the first gives the results)
TIMING_BUDGET_S = 20.0  # a task's further timing rounds stop once they would exceed this


@dataclasses.dataclass(frozen=True)
class Size:
  """How much to sweep: learning rates (log-spaced over ``decades`` around the default), seeds."""

  name: str
  n_lrs: int
  decades: float
  seeds: tuple[int, ...] = SEEDS


SIZES = {
  "smoke": Size("smoke", 5, 2.0),
  "quick": Size("quick", 5, 2.0),
  "full": Size("full", 6, 2.5),
}


def learning_rates(centre: float, size: Size) -> np.ndarray:
  """``size.n_lrs`` values, log-spaced over ``size.decades`` decades centred on ``centre``."""
  half = size.decades / 2
  return (centre * np.logspace(-half, half, size.n_lrs)).astype(np.float32)


def schedule(peak: jax.Array, task: workbench_tasks.Task, scheduled: bool) -> Any:
  """The learning rate a scheduled member gets on ``task``, or the constant ``peak``."""
  if not scheduled:
    return peak
  if task.schedule == "inverse_sqrt":  # Reddi et al.'s alpha / sqrt(t)
    return lambda count: peak * jax.lax.rsqrt((count + 1).astype(jnp.float32))
  shape = optax.warmup_cosine_decay_schedule(  # peak 1, concrete: optax's branches on values
    0.0,
    1.0,
    warmup_steps=max(1, task.steps // WARMUP_FRACTION),
    decay_steps=task.steps,
    end_value=FINAL_FRACTION,
  )
  return lambda count: peak * shape(count)


def sweep_function(member: workbench_members.Member, task: workbench_tasks.Task) -> Any:
  """``(lrs[R], params[R, ...], batches[R, steps, ...], data) -> curves``: R runs, vmapped, one jit.

  The curves hold the validation loss after each ``task.eval_every`` steps (the
  loss at the initial params, the same for every member, is computed once per task).
  """
  assert member.build is not None
  n_evals = task.steps // task.eval_every

  def run(peak: jax.Array, params: Any, batches: jax.Array, data: Any) -> dict[str, jax.Array]:
    optimizer = member.build(schedule(peak, task, member.scheduled), task.steps, task.options)

    def evaluated(params: Any, state: Any) -> Any:
      """The point to evaluate (Schedule-Free's x), in the task's box: x is an average the
      step's projection of the params (y) does not reach."""
      return task.project(member.eval_params(state, params)) if member.eval_params else params

    def step(carry: Any, batch: jax.Array) -> tuple[Any, jax.Array]:
      params, state = carry
      loss, grads = jax.value_and_grad(task.loss)(params, data, batch)
      updates, state = optimizer.update(grads, state, params)
      return (task.project(optax.apply_updates(params, updates)), state), loss

    def chunk(carry: Any, chunk_batches: jax.Array) -> tuple[Any, tuple[jax.Array, jax.Array]]:
      carry, losses = jax.lax.scan(step, carry, chunk_batches)
      return carry, (task.val_loss(evaluated(*carry), data), jnp.mean(losses))

    chunks = batches.reshape(n_evals, task.eval_every, *batches.shape[1:])
    carry, (val, train) = jax.lax.scan(chunk, (params, optimizer.init(params)), chunks)
    final = evaluated(*carry)
    return {"val": val, "train": train, "first_param": jnp.ravel(jax.tree.leaves(final)[0])[0]}

  return jax.jit(jax.vmap(run, in_axes=(0, 0, 0, None)))


def state_bytes(optimizer: optax.GradientTransformation, params: Any, n_params: int) -> float:
  """Bytes of ``optimizer.init(params)`` per parameter (shapes only: nothing is allocated)."""
  shapes = jax.eval_shape(lambda p: optimizer.init(p), params)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes)) / n_params


def memory(member: workbench_members.Member, task: workbench_tasks.Task) -> dict[str, Any]:
  """State bytes per param of the member at its default lr; on the LM also at 8 bits."""
  assert member.build is not None
  params = task.init(0)
  lr = member.lr * task.lr_scale
  optimizer = member.build(lr, task.steps, task.options)
  entry: dict[str, Any] = {"state_bytes_per_param": state_bytes(optimizer, params, task.n_params)}
  if task.name == "lm":
    try:
      quantized = adam_optax.quantized(member.build(lr, task.steps, task.options), bits=8)
      entry["state_bytes_per_param_8bit"] = state_bytes(quantized, params, task.n_params)
    except Exception as error:  # the quantized API is being redesigned: report, go on
      entry["state_bytes_per_param_8bit"] = f"failed: {type(error).__name__}: {error}"
  return entry


@dataclasses.dataclass
class Lanes:
  """The runs of a sweep, learning rate major: run ``i`` has lr ``i // S`` and seed ``i % S``."""

  seeds: np.ndarray
  params: Any
  batches: np.ndarray
  initial: np.ndarray  # validation loss at each seed's initial params

  @classmethod
  def of(cls, task: workbench_tasks.Task, size: Size) -> Lanes:
    seeds = np.asarray(size.seeds, np.int32)
    lane_seeds = np.tile(seeds, size.n_lrs)
    inits = [task.init(int(s)) for s in seeds]
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *inits)
    initial = jax.jit(jax.vmap(task.val_loss, in_axes=(0, None)))(stacked, task.data)
    return cls(
      seeds=seeds,
      params=jax.tree.map(
        lambda *p: jnp.stack(p), *[inits[i % len(seeds)] for i in range(len(lane_seeds))]
      ),
      batches=np.stack([task.batches(int(s)) for s in lane_seeds]),
      initial=np.asarray(initial, np.float64),
    )


def compile_cell(
  member: workbench_members.Member, task: workbench_tasks.Task, size: Size, lanes: Lanes
) -> dict[str, Any]:
  """Builds and compiles one member's sweep on ``task``; failures are recorded, not raised."""
  lrs = learning_rates(member.lr * task.lr_scale, size)
  lane_lrs = np.repeat(lrs, len(lanes.seeds))
  entry: dict[str, Any] = {"lrs": lrs.tolist(), "seeds": lanes.seeds.tolist()}
  try:
    began = time.perf_counter()
    arguments = (lane_lrs, lanes.params, lanes.batches, task.data)
    entry["compiled"] = sweep_function(member, task).lower(*arguments).compile()
    entry["arguments"] = arguments
    entry["compile_s"] = time.perf_counter() - began
    entry.update(memory(member, task))
  except Exception as error:  # a member that cannot run here is reported, the rest go on
    return {**entry, "status": f"failed: {type(error).__name__}: {str(error)[:300]}"}
  entry["status"] = "ok"
  return entry


def timed_run(entry: dict[str, Any]) -> tuple[Any, float]:
  began = time.perf_counter()
  out = jax.block_until_ready(entry["compiled"](*entry["arguments"]))
  return out, time.perf_counter() - began


def record(entry: dict[str, Any], out: Any, task: workbench_tasks.Task, lanes: Lanes) -> None:
  """Stores the curves of one sweep in ``entry`` (JSON-ready), with the initial loss first."""
  shape = (len(entry["lrs"]), len(lanes.seeds), -1)
  val = np.asarray(out["val"], np.float64).reshape(shape)
  initial = np.broadcast_to(lanes.initial[None, :, None], (shape[0], shape[1], 1))
  entry.update(
    eval_steps=[task.eval_every * i for i in range(task.steps // task.eval_every + 1)],
    val=np.concatenate([initial, val], axis=2).tolist(),
    train=np.asarray(out["train"], np.float64).reshape(shape).tolist(),
  )
  if task.n_params == 1:  # the online problem: where x ended
    entry["final_x"] = np.asarray(out["first_param"], np.float64).reshape(shape[:2]).tolist()


def run_task(
  members: Sequence[workbench_members.Member], task: workbench_tasks.Task, size: Size, bar: Any
) -> dict[str, Any]:
  """Every member's sweep on ``task``: all compiled first, then run in rounds.

  The first round gives the results. Further rounds (in rotated order, at most
  ``TIMING_ROUNDS`` in all, while they fit in ``TIMING_BUDGET_S``) only time the
  sweeps again, so that the members' times come from the same minutes of the
  machine; the time per step is the median over rounds.
  """
  lanes = Lanes.of(task, size)
  cells = {}
  for member in members:
    bar.set_description(f"{task.name}: compiling {member.name}")
    cells[member.name] = compile_cell(member, task, size, lanes)
    bar.update()
  ready = [name for name, entry in cells.items() if entry["status"] == "ok"]
  bar.update(len(cells) - len(ready))  # the failed ones have no run
  times: dict[str, list[float]] = {name: [] for name in ready}
  began = time.perf_counter()
  for round_index in range(TIMING_ROUNDS):
    order = ready[round_index % len(ready) :] + ready[: round_index % len(ready)] if ready else []
    for name in order:
      bar.set_description(f"{task.name}: running {name}")
      try:
        out, seconds = timed_run(cells[name])
      except Exception as error:  # a run-time failure (e.g. out of memory): reported
        cells[name]["status"] = f"failed: {type(error).__name__}: {str(error)[:300]}"
        continue
      times[name].append(seconds)
      if round_index == 0:
        record(cells[name], out, task, lanes)
        bar.update()
    spent = time.perf_counter() - began
    if spent * (round_index + 2) / (round_index + 1) > TIMING_BUDGET_S:
      break
  for name, entry in cells.items():
    entry.pop("compiled", None)
    entry.pop("arguments", None)
    if entry["status"] == "ok":
      entry["run_s"] = times[name]
      entry["step_ms"] = 1e3 * float(np.median(times[name])) / task.steps
  return cells


def machine() -> dict[str, Any]:
  return {
    "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    "versions": f"Python {platform.python_version()}, jax {jax.__version__}, "
    f"optax {optax.__version__}, adam_optax {adam_optax.__version__}",
    "load_at_start": os.getloadavg()[0],
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
  }


def run(
  size: Size,
  member_names: Sequence[str] | None = None,
  task_names: Sequence[str] | None = None,
  *,
  progress: bool = True,
) -> dict[str, Any]:
  """Every available member on every task at ``size``: the results as a JSON-ready dict."""
  from tqdm import tqdm

  registry = workbench_members.members()
  unknown = set(member_names or ()) - set(registry)
  if unknown:
    raise ValueError(
      f"run(member_names=...): unknown members {sorted(unknown)}; known: {list(registry)}"
    )
  makers = workbench_tasks.tasks(size.name)
  unknown = set(task_names or ()) - set(makers)
  if unknown:
    raise ValueError(f"run(task_names=...): unknown tasks {sorted(unknown)}; known: {list(makers)}")
  chosen = [registry[n] for n in (member_names or registry)]
  available = [m for m in chosen if m.build is not None]
  results: dict[str, Any] = {
    "size": dataclasses.asdict(size),
    "machine": machine(),
    "schedule": {"warmup_fraction": 1 / WARMUP_FRACTION, "final_fraction": FINAL_FRACTION},
    "timing": {"rounds_at_most": TIMING_ROUNDS, "budget_s": TIMING_BUDGET_S},
    "members": {m.name: {"lr": m.lr, "note": m.note, "scheduled": m.scheduled} for m in available},
    "not_available": [m.name for m in chosen if m.build is None],
    "tasks": {},
  }
  began = time.perf_counter()
  tasks = [makers[n]() for n in (task_names or makers)]
  bar = tqdm(total=2 * len(tasks) * len(available), disable=not progress, unit="step")
  for task in tasks:
    cells = run_task(available, task, size, bar)
    results["tasks"][task.name] = {
      "title": task.title,
      "steps": task.steps,
      "n_params": task.n_params,
      "lr_scale": task.lr_scale,
      "schedule": task.schedule,
      "options": task.options,
      "log_scale": task.log_scale,
      "target": task.target,
      "cells": cells,
    }
  bar.close()
  results["machine"]["load_at_end"] = os.getloadavg()[0]
  results["wall_s"] = time.perf_counter() - began
  return results


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--quick", action="store_true", help="small tasks, under 3 minutes")
  mode.add_argument("--smoke", action="store_true", help="tiny tasks, seconds")
  parser.add_argument("--members", help="comma-separated names (default: every available one)")
  parser.add_argument("--tasks", help="comma-separated names (default: all)")
  args = parser.parse_args(argv)
  size = SIZES["quick" if args.quick else "smoke" if args.smoke else "full"]
  split = lambda text: text.split(",") if text else None  # noqa: E731
  results = run(size, split(args.members), split(args.tasks))
  import workbench_report

  OUT.mkdir(exist_ok=True)
  suffix = "" if size.name == "full" else f"_{size.name}"
  path = OUT / f"workbench{suffix}.json"
  path.write_text(json.dumps(results, indent=1))
  print(workbench_report.markdown(results))
  figures = workbench_report.STATIC if size.name == "full" else OUT / f"workbench{suffix}"
  workbench_report.figures(results, figures)
  print(f"results: {path}; figures: {figures}; {results['wall_s']:.0f} s in all")
  if size.name == "full":
    workbench_report.write_page(results, workbench_report.PAGE)
    print(f"page: {workbench_report.PAGE}")


if __name__ == "__main__":
  main()
