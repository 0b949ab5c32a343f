"""Data-parallel training with a ZeRO-1 Adam state, on one process or several.

The params are replicated on every device, each device takes 1/N of every
batch, and the Adam moments are partitioned over the same "data" axis (ZeRO
stage 1), so each device keeps about 1/N of the optimizer state. JAX's SPMD
partitioner inserts the collectives; `jax.distributed` joins the processes.

One process, 8 simulated CPU devices::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/data_parallel.py

Two cooperating processes with 4 CPU devices each (run both, e.g. in two
shells; they wait for each other at start-up)::

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/data_parallel.py \\
    --num-processes 2 --process-id 0 --coordinator localhost:12355
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/data_parallel.py \\
    --num-processes 2 --process-id 1 --coordinator localhost:12355

Both runs compute the same numbers: the data and the initial params are
generated identically in every process, and each process only materialises the
shards that its own devices hold.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

# Without XLA_FLAGS a CPU has one device and there is nothing to shard; simulate
# 8 unless the caller chose (the multi-process commands above set 4 each).
# Only the CPU platform reads this flag, so GPU or TPU runs are unaffected.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_optax

FEATURES, HIDDEN, BATCH = 32, 256, 256
LAYERS = {"w1": (FEATURES, HIDDEN), "b1": (HIDDEN,), "w2": (HIDDEN, HIDDEN), "b2": (HIDDEN,)}
LAYERS |= {"w3": (HIDDEN, 1), "b3": (1,)}


def loss_fn(params: dict[str, jax.Array], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Mean squared error of a 3-layer tanh MLP over the (global) batch."""
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  h = jnp.tanh(h @ params["w2"] + params["b2"])
  return jnp.mean(jnp.square(h @ params["w3"] + params["b3"] - y))


def host_params(seed: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """The initial params, as host arrays: identical in every process."""
  rng = np.random.default_rng(seed)
  return {
    name: (
      rng.normal(size=shape) / np.sqrt(shape[0]) if len(shape) == 2 else np.zeros(shape)
    ).astype(dtype)
    for name, shape in LAYERS.items()
  }


def host_batch(step: int, seed: int, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
  """The global batch of ``step``: ``y = sin(x . a)`` plus noise, identical in every process."""
  rng = np.random.default_rng([seed, step])
  x = rng.normal(size=(BATCH, FEATURES))
  direction = np.random.default_rng(seed).normal(size=(FEATURES, 1)) / np.sqrt(FEATURES)
  y = np.sin(x @ direction) + 0.01 * rng.normal(size=(BATCH, 1))
  return x.astype(dtype), y.astype(dtype)


def global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array of which this process builds only the shards its devices hold."""
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def train(
  steps: int, seed: int = 0, zero1: bool = True, log_every: int = 0, dtype: Any = np.float32
) -> dict[str, Any]:
  """Trains over all devices of all processes; returns host copies of the results.

  Args:
    steps: number of optimizer steps.
    seed: seed of the params and of the data.
    zero1: partition the Adam state over the data axis (else replicate it).
    log_every: print the loss every this many steps on process 0 (0: never).
    dtype: dtype of the params and data (``np.float64`` needs ``jax_enable_x64``).

  Returns:
    ``{"params": ..., "mu": ..., "losses": ..., "memory": {...}}`` as numpy
    arrays, gathered from every process.
  """
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  optimizer = adam_optax.adam(learning_rate=3e-3)

  params = {k: global_array(v, replicated) for k, v in host_params(seed, dtype).items()}
  abstract_state = jax.eval_shape(optimizer.init, params)
  shardings = adam_optax.state_shardings(
    optimizer, params, mesh, zero1_axis="data" if zero1 else None
  )
  state = adam_optax.init_sharded(optimizer, params, shardings)
  step_fn = adam_optax.sharded_train_step(loss_fn, optimizer, mesh, shardings, batch_sharding)

  ours = adam_optax.state_memory(abstract_state, shardings)
  full = adam_optax.state_memory(abstract_state, jax.tree.map(lambda _: replicated, shardings))

  losses = []
  for step in range(steps):
    batch = tuple(global_array(a, batch_sharding) for a in host_batch(step, seed, dtype))
    params, state, loss = step_fn(params, state, batch)
    if jax.process_count() > 1:
      # One step in flight at a time: with several processes on CPU (gloo),
      # letting steps queue up asynchronously has deadlocked (jax 0.10.2).
      jax.block_until_ready((params, state))
    losses.append(loss)
    if log_every and (step % log_every == 0 or step == steps - 1) and jax.process_index() == 0:
      print(f"step {step:4d}  loss {float(loss):.6f}", flush=True)
  kept = jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim), state, shardings)
  assert all(jax.tree.leaves(kept)), "the state lost its sharding"
  gathered = multihost_utils.process_allgather((params, state[0].mu), tiled=True)
  return {
    "params": gathered[0],
    "mu": gathered[1],
    "losses": np.asarray([float(loss) for loss in losses]),
    "memory": {"zero1": ours, "replicated": full},
  }


def _report(result: dict[str, Any], seconds: float, zero1: bool) -> None:
  ours, full = result["memory"]["zero1"], result["memory"]["replicated"]
  n = sum(int(np.prod(s)) for s in LAYERS.values())
  devices, processes = jax.device_count(), jax.process_count()
  mode = "ZeRO-1 (over 'data')" if zero1 else "replicated"
  print(f"{processes} process(es), {devices} devices; {n} params; Adam state {ours.total_bytes} B")
  if devices == 1:
    print("(one device: set XLA_FLAGS=--xla_force_host_platform_device_count=8 to simulate 8)")
  print(f"state bytes per device, replicated:  {full.max_device_bytes:>9,d}")
  print(
    f"state bytes per device, {mode}: {ours.max_device_bytes:>9,d}  "
    f"({full.max_device_bytes / ours.max_device_bytes:.2f}x less)"
  )
  if ours.whole_leaves and devices > 1:
    print(
      f"  held whole on every device (no dimension divides by {devices}): "
      + ", ".join(ours.whole_leaves)
    )
  losses = result["losses"]
  print(f"loss {losses[0]:.5f} -> {losses[-1]:.5f} in {len(losses)} steps, {seconds:.1f} s")


def main(argv: list[str] | None = None) -> None:
  """Parses the flags, joins the other processes if any, trains and reports."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--replicated", action="store_true", help="do not shard the state")
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--coordinator", default="localhost:12355", help="host:port of process 0")
  parser.add_argument("--out", default=None, help="save final params and losses (.npz)")
  parser.add_argument("--float64", action="store_true", help="train in float64 (enables x64)")
  args = parser.parse_args(argv)
  if args.float64:
    jax.config.update("jax_enable_x64", True)

  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU cross-process
    jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=60,
    )
  start = time.perf_counter()
  result = train(
    args.steps,
    args.seed,
    zero1=not args.replicated,
    log_every=max(args.steps // 5, 1),
    dtype=np.float64 if args.float64 else np.float32,
  )
  seconds = time.perf_counter() - start
  if jax.process_index() == 0:
    _report(result, seconds, zero1=not args.replicated)
    if args.out:
      flat = {f"params_{k}": v for k, v in result["params"].items()}
      flat |= {f"mu_{k}": v for k, v in result["mu"].items()}
      np.savez(args.out, losses=result["losses"], **flat)
  if args.num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
