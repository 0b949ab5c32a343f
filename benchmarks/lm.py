"""Low-memory Adam on a real workload: a character-level transformer language model.

A small GPT (Flax NNX, ~2.5M params) learns the bytes of the Python standard
library's own source files (every machine has them): nine files in ten train,
every tenth file is held out for validation. In one run, on the same initial
weights and the same batches, it trains:

- JAX: fp32 AdamW (adam_optax), ``quantized`` 8-bit and 4-bit, and pure
  bfloat16 (params and moments in bfloat16, no float32 master copy) with
  stochastic rounding and with round-to-nearest;
- torch (the same model, weights copied): ``torch.optim.AdamW``, torchao's
  ``AdamW8bit`` and ``AdamW4bit``.

The configurations take their steps in turns (one step each, round after
round), so a change of machine load touches them all alike and step-time
ratios are measured side by side. Reported: validation-loss curves (PNG),
final validation loss, optimizer-state bytes per parameter, median step time
and, for JAX, the memory XLA plans for a donated optimizer step.

    python benchmarks/lm.py            # full run: writes benchmarks/lm_loss.png,
                                       # benchmarks/out/lm.json and QUANTIZED.md's table
    python benchmarks/lm.py --quick    # a tiny model for a few steps; writes only out/
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import math
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

import adam_optax

HERE = Path(__file__).resolve().parent
VOCAB = 256  # bytes


@dataclasses.dataclass(frozen=True)
class Setup:
  """The model and training sizes."""

  d_model: int = 256
  layers: int = 3
  heads: int = 4
  context: int = 64
  batch: int = 8
  steps: int = 300
  lr: float = 1e-3
  weight_decay: float = 0.01
  eval_every: int = 50
  eval_batches: int = 4
  seed: int = 0


QUICK = Setup(
  d_model=64, layers=2, heads=2, context=64, batch=8, steps=24, eval_every=8, eval_batches=2
)


def load_text() -> tuple[np.ndarray, np.ndarray, list[str]]:
  """The stdlib's top-level ``*.py`` files as bytes: (train, validation, file names)."""
  files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
  train, val = [], []
  for i, name in enumerate(files):
    (val if i % 10 == 9 else train).append(Path(name).read_bytes())
  as_array = lambda parts: np.frombuffer(b"".join(parts), np.uint8)  # noqa: E731
  return as_array(train), as_array(val), [os.path.basename(f) for f in files]


def sample(data: np.ndarray, setup: Setup, rng: np.random.Generator) -> np.ndarray:
  """A batch of windows of ``context + 1`` bytes, int32[batch, context + 1]."""
  starts = rng.integers(0, len(data) - setup.context - 1, setup.batch)
  return np.stack([data[s : s + setup.context + 1] for s in starts]).astype(np.int32)


# ---------------------------------------------------------------- the JAX model


class Block(nnx.Module):
  """Pre-LayerNorm transformer block: causal self-attention, then a GELU MLP."""

  def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
    self.heads = heads
    self.ln1 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
    self.proj = nnx.Linear(d, d, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.fc = nnx.Linear(d, 4 * d, rngs=rngs)
    self.out = nnx.Linear(4 * d, d, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
    q, k, v = (z.reshape(b, t, self.heads, d // self.heads) for z in (q, k, v))
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(d // self.heads)
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.where(causal, scores.astype(jnp.float32), -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    y = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, d)
    x = x + self.proj(y)
    return x + self.out(jax.nn.gelu(self.fc(self.ln2(x)), approximate=False))


class Transformer(nnx.Module):
  """A GPT over bytes: token and position embeddings, blocks, LayerNorm, linear head."""

  def __init__(self, setup: Setup, rngs: nnx.Rngs):
    d = setup.d_model
    self.embed = nnx.Embed(VOCAB, d, rngs=rngs)
    self.position = nnx.Embed(setup.context, d, rngs=rngs)
    self.blocks = nnx.List([Block(d, setup.heads, rngs) for _ in range(setup.layers)])
    self.ln = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.head = nnx.Linear(d, VOCAB, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.position(jnp.arange(tokens.shape[1]))
    for block in self.blocks:
      x = block(x)
    return self.head(self.ln(x))


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  logits = logits.astype(jnp.float32)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


class JaxRun:
  """One JAX configuration: params, optimizer state, a donated jitted step."""

  def __init__(self, name: str, graphdef: Any, params: Any, optimizer: Any, dtype: Any):
    self.name, self.optimizer = name, optimizer
    self.params = jax.tree.map(lambda p: jnp.array(p, dtype, copy=True), params)
    self.state = optimizer.init(self.params)
    self.n_params = sum(int(p.size) for p in jax.tree.leaves(self.params))

    def loss(params: Any, batch: jax.Array) -> jax.Array:
      return cross_entropy(nnx.merge(graphdef, params)(batch[:, :-1]), batch[:, 1:])

    def step(params: Any, state: Any, batch: jax.Array):
      value, grads = jax.value_and_grad(loss)(params, batch)
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state, value

    def optimizer_step(params: Any, state: Any, grads: Any):
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    self._step = jax.jit(step, donate_argnums=(0, 1))
    self._loss = jax.jit(loss)
    self._optimizer_step = jax.jit(optimizer_step, donate_argnums=(0, 1))

  def step(self, batch: np.ndarray) -> float:
    self.params, self.state, value = self._step(self.params, self.state, batch)
    return float(value)

  def evaluate(self, batches: list[np.ndarray]) -> float:
    return float(np.mean([float(self._loss(self.params, b)) for b in batches]))

  def state_bytes(self) -> dict[str, float]:
    """State bytes per param: all of it, and over the quantized (or >= 4096-element) leaves."""
    total = sum(x.nbytes for x in jax.tree.leaves(self.state))
    if isinstance(self.state, adam_optax.QuantizedState):
      described = adam_optax.describe_quantized(self.optimizer, self.params)
      kept = [x for x in described.leaves if x.map is not None or math.prod(x.shape) >= 4096]
      big_bytes = sum(described.stored_bytes(x) for x in kept)
      big_params = sum(math.prod(x.shape) for x in kept)
    else:
      big = [x for x in jax.tree.leaves(self.state) if x.size >= 4096]
      big_bytes, big_params = sum(x.nbytes for x in big), sum(x.size for x in big)
    moments = 2  # Adam's m and v: bytes per param of the large leaves, both moments together
    return {"total": total / self.n_params, "large_leaves": moments * big_bytes / big_params}

  def memory(self) -> dict[str, int]:
    """What XLA plans for one donated optimizer step (gradients as an input)."""
    grads = jax.tree.map(jnp.zeros_like, self.params)
    compiled = self._optimizer_step.lower(self.params, self.state, grads).compile()
    analysis = compiled.memory_analysis()
    largest = max(p.size for p in jax.tree.leaves(self.params))
    return {
      "params": sum(p.nbytes for p in jax.tree.leaves(self.params)),
      "state": sum(x.nbytes for x in jax.tree.leaves(self.state)),
      "temp": int(analysis.temp_size_in_bytes),
      "largest_leaf_f32": 4 * int(largest),
    }


# -------------------------------------------------------------- the torch model


class TorchBlock(torch.nn.Module):
  def __init__(self, d: int, heads: int):
    super().__init__()
    self.heads = heads
    self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
    self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
    self.fc, self.out = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, t, d = x.shape
    q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
    q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
    return x + self.out(torch.nn.functional.gelu(self.fc(self.ln2(x))))


class TorchTransformer(torch.nn.Module):
  def __init__(self, setup: Setup):
    super().__init__()
    d = setup.d_model
    self.embed = torch.nn.Embedding(VOCAB, d)
    self.position = torch.nn.Embedding(setup.context, d)
    self.blocks = torch.nn.ModuleList([TorchBlock(d, setup.heads) for _ in range(setup.layers)])
    self.ln = torch.nn.LayerNorm(d)
    self.head = torch.nn.Linear(d, VOCAB)

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1])
    x = self.embed(tokens) + self.position(positions)
    for block in self.blocks:
      x = block(x)
    return self.head(self.ln(x))


def torch_copy(setup: Setup, params: Any) -> TorchTransformer:
  """The torch model with the JAX model's weights (Linear kernels transposed)."""
  model = TorchTransformer(setup)
  pure = nnx.to_pure_dict(params)
  named = dict(model.named_parameters())
  for path, value in jax.tree_util.tree_flatten_with_path(pure)[0]:
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    leaf = keys[-1]
    name = (
      ".".join(keys[:-1])
      + "."
      + {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(leaf, leaf)
    )
    array = np.array(value)
    if leaf == "kernel":
      array = array.T
    named[name].data.copy_(torch.from_numpy(np.ascontiguousarray(array)))
  assert len(named) == len(jax.tree.leaves(pure)), "every torch parameter must be copied"
  return model


class TorchRun:
  """One torch configuration."""

  def __init__(self, name: str, model: TorchTransformer, make_optimizer: Callable[[Any], Any]):
    self.name, self.model = name, model
    self.optimizer = make_optimizer(model.parameters())
    self.n_params = sum(p.numel() for p in model.parameters())

  def _loss(self, batch: np.ndarray) -> torch.Tensor:
    tokens = torch.from_numpy(batch).long()
    logits = self.model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))

  def step(self, batch: np.ndarray) -> float:
    loss = self._loss(batch)
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss.item()

  def evaluate(self, batches: list[np.ndarray]) -> float:
    with torch.no_grad():
      return float(np.mean([float(self._loss(b)) for b in batches]))

  def state_bytes(self) -> dict[str, float]:
    def nbytes(t: Any) -> int:
      if hasattr(t, "__tensor_flatten__"):  # torchao's quantized state: codes, scale, qmap
        return sum(getattr(t, n).nbytes for n in t.__tensor_flatten__()[0])
      return t.nbytes if isinstance(t, torch.Tensor) else 0

    total, big_bytes, big_params = 0, 0, 0
    for param, state in self.optimizer.state.items():
      size = sum(nbytes(t) for t in state.values())
      total += size
      if param.numel() >= 4096:
        big_bytes += sum(nbytes(state[k]) for k in ("exp_avg", "exp_avg_sq"))
        big_params += param.numel()
    return {"total": total / self.n_params, "large_leaves": big_bytes / big_params}


# ------------------------------------------------------------------ the run


def jax_optimizers(setup: Setup) -> dict[str, tuple[optax.GradientTransformation, Any]]:
  """name -> (optimizer, params dtype)."""
  lr, wd, seed = setup.lr, setup.weight_decay, setup.seed

  def bf16_adamw(rounding_seed: int | None) -> optax.GradientTransformation:
    adamw = optax.chain(
      adam_optax.scale_by_moments(nu_dtype=jnp.bfloat16, rounding_seed=rounding_seed),
      adam_optax.bias_correction(0.9, 0.999),
      adam_optax.add_decayed_weights(wd),
      adam_optax.scale_by_lr(lr),
    )
    if rounding_seed is None:
      return adamw
    return adam_optax.stochastic_rounding(adamw, rounding_seed)

  fp32 = functools.partial(adam_optax.adamw, lr, weight_decay=wd)
  return {
    "jax fp32 AdamW": (fp32(), jnp.float32),
    "jax quantized 8-bit": (adam_optax.quantized(fp32(), 8), jnp.float32),
    "jax quantized 4-bit": (adam_optax.quantized(fp32(), 4), jnp.float32),
    "jax bf16 stochastic rounding": (bf16_adamw(seed + 1), jnp.bfloat16),
    "jax bf16 round-to-nearest": (bf16_adamw(None), jnp.bfloat16),
  }


def torch_optimizers(setup: Setup) -> dict[str, Callable[[Any], Any]]:
  from torchao.optim import AdamW4bit, AdamW8bit

  kwargs = {"lr": setup.lr, "weight_decay": setup.weight_decay}
  return {
    "torch AdamW": lambda p: torch.optim.AdamW(p, **kwargs),
    "torchao AdamW8bit": lambda p: AdamW8bit(p, **kwargs),
    "torchao AdamW4bit": lambda p: AdamW4bit(p, **kwargs),
  }


def machine() -> str:
  load = os.getloadavg()[0]
  return (
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
    f"Python {platform.python_version()}, jax {jax.__version__}, optax {optax.__version__}, "
    f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
    f"load average {load:.2f} at start; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
  )


def run(setup: Setup, *, log: Callable[[str], None] = print) -> dict[str, Any]:
  train, val, files = load_text()
  rng = np.random.default_rng(setup.seed)
  val_batches = [sample(val, setup, rng) for _ in range(setup.eval_batches)]
  model = Transformer(setup, nnx.Rngs(setup.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  runs: list[Any] = [
    JaxRun(name, graphdef, params, optimizer, dtype)
    for name, (optimizer, dtype) in jax_optimizers(setup).items()
  ]
  torch.manual_seed(setup.seed)
  runs += [
    TorchRun(name, torch_copy(setup, params), make)
    for name, make in torch_optimizers(setup).items()
  ]
  log(f"{runs[0].n_params:,} params; train {len(train):,} bytes, validation {len(val):,} bytes")
  curves: dict[str, list[tuple[int, float]]] = {r.name: [] for r in runs}
  times: dict[str, list[float]] = {r.name: [] for r in runs}
  train_loss: dict[str, float] = {}
  began = time.perf_counter()
  for step in range(setup.steps + 1):
    if step % setup.eval_every == 0 or step == setup.steps:
      for r in runs:
        curves[r.name].append((step, r.evaluate(val_batches)))
      log(
        f"step {step} ({time.perf_counter() - began:.0f} s): "
        + ", ".join(f"{n} {c[-1][1]:.4f}" for n, c in curves.items())
      )
      log(
        "  median step ms: "
        + ", ".join(f"{n} {1e3 * np.median(t):.0f}" for n, t in times.items() if t)
      )
    if step == setup.steps:
      break
    batch = sample(train, setup, rng)
    order = runs[step % len(runs) :] + runs[: step % len(runs)]  # rotate who goes first
    for r in order:
      start = time.perf_counter()
      train_loss[r.name] = r.step(batch)
      times[r.name].append(time.perf_counter() - start)
  results: dict[str, Any] = {
    "setup": dataclasses.asdict(setup),
    "machine": machine(),
    "n_params": runs[0].n_params,
    "data": {"train_bytes": len(train), "val_bytes": len(val), "files": len(files)},
    "runs": {},
  }
  for r in runs:
    warm = times[r.name][min(5, len(times[r.name]) - 1) :]
    entry = {
      "final_val_loss": curves[r.name][-1][1],
      "final_train_loss": train_loss[r.name],
      "curve": curves[r.name],
      "step_ms_median": 1e3 * float(np.median(warm)),
      "state_bytes_per_param": r.state_bytes(),
    }
    if isinstance(r, JaxRun):
      entry["memory"] = r.memory()
    results["runs"][r.name] = entry
  return results


def plot(results: dict[str, Any], path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  for name, entry in results["runs"].items():
    steps, losses = zip(*entry["curve"], strict=True)
    ax.plot(steps, losses, label=name, linestyle="--" if name.startswith("torch") else "-")
  ax.set_xlabel("step")
  ax.set_ylabel("validation loss (nats per byte)")
  ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
  ax.set_title(f"byte-level transformer, {results['n_params']:,} params, stdlib source")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def table(results: dict[str, Any]) -> str:
  runs = results["runs"]
  base = {"jax": runs["jax fp32 AdamW"]["final_val_loss"], "torch": runs["torch AdamW"]}
  base["torch"] = base["torch"]["final_val_loss"]
  fp32_ms = {"jax": runs["jax fp32 AdamW"]["step_ms_median"]}
  fp32_ms["torch"] = runs["torch AdamW"]["step_ms_median"]
  lines = [
    f"Machine: {results['machine']}.",
    "",
    "| configuration | final val loss | vs own fp32 | state B/param (all) | B/param (large leaves) "
    "| step (median) | x own fp32 step | XLA temp of optimizer step |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, e in runs.items():
    family = "torch" if name.startswith("torch") else "jax"
    loss = e["final_val_loss"]
    memory = e.get("memory")
    temp = f"{memory['temp'] / 2**20:.2f} MiB" if memory else ""
    lines.append(
      f"| {name} | {loss:.4f} | {100 * (loss / base[family] - 1):+.2f} % "
      f"| {e['state_bytes_per_param']['total']:.3f} "
      f"| {e['state_bytes_per_param']['large_leaves']:.3f} "
      f"| {e['step_ms_median']:.1f} ms | {e['step_ms_median'] / fp32_ms[family]:.2f} | {temp} |"
    )
  return "\n".join(lines)


def write_results(results: dict[str, Any], path: Path) -> None:
  """Replaces the generated block of ``path`` with this run's table."""
  text = path.read_text()
  begin, end = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
  head, rest = text.split(begin)
  _, tail = rest.split(end)
  path.write_text(f"{head}{begin}\n{table(results)}\n{end}{tail}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--quick", action="store_true", help="a tiny model for a few steps")
  parser.add_argument("--steps", type=int, help="override the number of steps")
  args = parser.parse_args(argv)
  setup = QUICK if args.quick else Setup()
  if args.steps is not None:
    setup = dataclasses.replace(setup, steps=args.steps)
  torch.set_num_threads(os.cpu_count() or 1)
  results = run(setup, log=lambda line: print(line, flush=True))
  out = HERE / "out"
  out.mkdir(exist_ok=True)
  (out / ("lm_quick.json" if args.quick else "lm.json")).write_text(json.dumps(results, indent=1))
  print(table(results))
  if not args.quick:
    plot(results, HERE / "lm_loss.png")
    write_results(results, HERE / "QUANTIZED.md")


if __name__ == "__main__":
  sys.exit(main())
