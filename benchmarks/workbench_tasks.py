r"""The tasks of the "Which Adam?" workbench: data made here or shipped by a package.

Each task is pure JAX from the params on: ``loss(params, data, batch)`` is the
training loss of one step (the minibatches of a run are drawn from its seed beforehand),
``val_loss(params, data)`` the validation loss, so a whole training run is one
``lax.scan`` and the runs of a sweep are one ``vmap``. Losses are >= 0 with
optimum 0 where the problem has one (least squares, the online problem).

- ``lm``: the byte-level transformer of ``benchmarks/lm.py`` on the standard
  library's source (every tenth file held out), small.
- ``digits``: a one-hidden-layer MLP (ReLU) on scikit-learn's 8x8 digits
  (shipped with the package), 1397 train / 400 validation images.
- ``lstsq``: least squares :math:`\tfrac12 (a^\top x - b)^2` with rows drawn so
  that the Hessian :math:`E[a a^\top]` has condition number :math:`10^4` (its
  eigenvectors a random rotation, so no coordinate-wise rescaling undoes it);
  consistent (:math:`b = a^\top x^\star`), minibatches of 32 rows.
- ``reddi``: Reddi, Kale & Kumar's online problem (ICLR 2018, Section 5) on
  :math:`x \in [-1, 1]`: gradient 1010 every 101st step, else -10, so the
  average loss is :math:`\tfrac{10}{101} x` and the optimum :math:`x = -1`;
  the loss reported is :math:`\tfrac{10}{101}(x + 1)`, its target that of
  :math:`x = -0.8`. Run at the paper's
  ``b2 = 0.99`` (the member's other defaults kept), with the paper's
  :math:`\alpha / \sqrt t` schedule; each seed shifts the phase of the big
  gradient.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclasses.dataclass(frozen=True)
class Task:
  """One problem, its data and its run length.

  Attributes:
    name: the key used in tables and file names.
    title: one line for the docs page.
    steps: training steps per run.
    eval_every: validation every this many steps (``steps`` is a multiple).
    lr_scale: multiplies each member's default learning rate (the sweep's centre).
    schedule: ``"warmup_cosine"`` or ``"inverse_sqrt"`` (for scheduled members).
    options: keyword arguments given to every member on this task.
    data: arrays passed to ``loss`` and ``val_loss`` (not batched over runs).
    init: seed -> initial params.
    batches: seed -> what each step's loss is given, stacked over the steps (numpy:
      drawn before the run, so the compiled program holds no random-number generator).
    loss: (params, data, batch) -> training loss of one step's batch.
    val_loss: (params, data) -> validation loss.
    project: applied to the params after each step (the online problem's box).
    log_scale: plot the loss on a log scale (its optimum is 0 and it spans decades).
    target: the loss "steps to target" counts to; ``None``: 1.05 x the median over the
      members of their best final loss (a level about half of them reach).
    n_params: the number of parameters.
  """

  name: str
  title: str
  steps: int
  eval_every: int
  lr_scale: float
  schedule: str
  options: dict[str, Any]
  data: Any
  init: Callable[[int], Any]
  batches: Callable[[int], np.ndarray]
  loss: Callable[[Any, Any, jax.Array], jax.Array]
  val_loss: Callable[[Any, Any], jax.Array]
  project: Callable[[Any], Any] = lambda params: params
  log_scale: bool = False
  target: float | None = None
  n_params: int = 0


def _count(params: Any) -> int:
  return sum(int(np.size(p)) for p in jax.tree.leaves(params))


def _with_count(task: Task) -> Task:
  return dataclasses.replace(task, n_params=_count(task.init(0)))


# ------------------------------------------------------------------------- lm


def lm_task(d_model: int, layers: int, context: int, batch: int, steps: int, evals: int) -> Task:
  """The character LM of ``benchmarks/lm.py`` at the given size (2 heads)."""
  import lm
  from flax import nnx

  setup = lm.Setup(d_model=d_model, layers=layers, heads=2, context=context, batch=batch)
  train, val, _ = lm.load_text()
  rng = np.random.default_rng(1234)
  val_batches = np.stack([lm.sample(val, setup, rng) for _ in range(4)])
  graphdef, _ = nnx.split(lm.Transformer(setup, nnx.Rngs(0)), nnx.Param)

  def init(seed: int) -> Any:
    return nnx.split(lm.Transformer(setup, nnx.Rngs(seed)), nnx.Param)[1]

  def batch_loss(params: Any, tokens: jax.Array) -> jax.Array:
    return lm.cross_entropy(nnx.merge(graphdef, params)(tokens[:, :-1]), tokens[:, 1:])

  def batches(seed: int) -> np.ndarray:
    """Each step's window starts, int32[steps, batch]."""
    rng = np.random.default_rng([seed, 1])
    return rng.integers(0, len(train) - context - 1, (steps, batch)).astype(np.int32)

  def loss(params: Any, data: Any, starts: jax.Array) -> jax.Array:
    window = lambda s: jax.lax.dynamic_slice(data["train"], (s,), (context + 1,))  # noqa: E731
    return batch_loss(params, jax.vmap(window)(starts).astype(jnp.int32))

  def val_loss(params: Any, data: Any) -> jax.Array:
    return jnp.mean(jax.vmap(lambda tokens: batch_loss(params, tokens))(data["val"]))

  return _with_count(
    Task(
      name="lm",
      title=f"byte-level transformer (d {d_model}, {layers} layers, context {context}, "
      f"batch {batch}) on the stdlib's source",
      steps=steps,
      eval_every=steps // evals,
      lr_scale=6.0,
      schedule="warmup_cosine",
      options={},
      data={"train": jnp.asarray(train), "val": jnp.asarray(val_batches)},
      init=init,
      batches=batches,
      loss=loss,
      val_loss=val_loss,
    )
  )


# --------------------------------------------------------------------- digits


def digits_task(hidden: int, batch: int, steps: int, evals: int) -> Task:
  """A ReLU MLP 64 -> ``hidden`` -> 10 on scikit-learn's digits; cross-entropy."""
  from sklearn.datasets import load_digits

  images, labels = load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(labels))
  images = (images[order] / 16.0 - 0.5).astype(np.float32)
  labels = labels[order].astype(np.int32)
  n_val = 400

  def init(seed: int) -> Any:
    rng = np.random.default_rng(seed)
    he = lambda fan_in, shape: (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)  # noqa: E731
    return {
      "w1": he(64, (64, hidden)),
      "b1": np.zeros(hidden, np.float32),
      "w2": he(hidden, (hidden, 10)),
      "b2": np.zeros(10, np.float32),
    }

  def cross_entropy(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  def batches(seed: int) -> np.ndarray:
    """Each step's training rows, int32[steps, batch]."""
    rng = np.random.default_rng([seed, 1])
    return rng.integers(0, len(labels) - n_val, (steps, batch)).astype(np.int32)

  def loss(params: Any, data: Any, rows: jax.Array) -> jax.Array:
    return cross_entropy(params, data["x"][rows], data["y"][rows])

  def val_loss(params: Any, data: Any) -> jax.Array:
    return cross_entropy(params, data["x_val"], data["y_val"])

  data = {
    "x": jnp.asarray(images[n_val:]),
    "y": jnp.asarray(labels[n_val:]),
    "x_val": jnp.asarray(images[:n_val]),
    "y_val": jnp.asarray(labels[:n_val]),
  }
  return _with_count(
    Task(
      name="digits",
      title=f"MLP 64-{hidden}-10 on scikit-learn's digits, batch {batch}",
      steps=steps,
      eval_every=steps // evals,
      lr_scale=10.0,
      schedule="warmup_cosine",
      options={},
      data=data,
      init=init,
      batches=batches,
      loss=loss,
      val_loss=val_loss,
    )
  )


# ---------------------------------------------------------------------- lstsq

CONDITION = 1e4


def lstsq_task(dim: int, rows: int, batch: int, steps: int, evals: int) -> Task:
  """Least squares in ``dim`` unknowns, Hessian condition number 1e4, consistent."""
  rng = np.random.default_rng(0)
  rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  scales = np.sqrt(np.logspace(0.0, -np.log10(CONDITION), dim))  # E[a a^T] = R diag(s^2) R^T
  solution = rng.standard_normal(dim)

  def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
    a = (rng.standard_normal((n, dim)) * scales) @ rotation.T
    return a.astype(np.float32), (a @ solution).astype(np.float32)

  (a, b), (a_val, b_val) = draw(rows), draw(rows)

  def init(seed: int) -> Any:
    return (np.random.default_rng(seed).standard_normal(dim) * 0.1).astype(np.float32)

  def squares(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return 0.5 * jnp.mean((a @ x - b) ** 2)

  def batches(seed: int) -> np.ndarray:
    """Each step's rows, int32[steps, batch]."""
    return np.random.default_rng([seed, 1]).integers(0, rows, (steps, batch)).astype(np.int32)

  def loss(x: Any, data: Any, picked: jax.Array) -> jax.Array:
    return squares(x, data["a"][picked], data["b"][picked])

  data = {
    "a": jnp.asarray(a),
    "b": jnp.asarray(b),
    "a_val": jnp.asarray(a_val),
    "b_val": jnp.asarray(b_val),
  }
  return _with_count(
    Task(
      name="lstsq",
      title=f"least squares, {dim} unknowns, condition number 1e4, batch {batch} of {rows} rows",
      steps=steps,
      eval_every=steps // evals,
      lr_scale=100.0,
      schedule="warmup_cosine",
      options={},
      data=data,
      init=init,
      batches=batches,
      loss=loss,
      val_loss=lambda x, data: squares(x, data["a_val"], data["b_val"]),
      log_scale=True,
    )
  )


# ---------------------------------------------------------------------- reddi

PERIOD, BIG, SMALL = 101, 1010.0, -10.0
MEAN_GRADIENT = (BIG + (PERIOD - 1) * SMALL) / PERIOD  # 10/101: the optimum is x = -1


def reddi_task(periods: int, evals: int) -> Task:
  """Reddi et al.'s Section 5 problem for ``periods`` periods of 101 steps."""

  steps = periods * PERIOD

  def batches(seed: int) -> np.ndarray:
    """Each step's slope, float32[steps]: the seed shifts the phase of the big one."""
    t = np.arange(1, steps + 1) + np.random.default_rng([seed, 1]).integers(PERIOD)
    return np.where(t % PERIOD == 1, BIG, SMALL).astype(np.float32)

  return _with_count(
    Task(
      name="reddi",
      title="Reddi et al.'s online problem (1010 x every 101st step, else -10 x, on [-1, 1])",
      steps=steps,
      eval_every=steps // evals,
      lr_scale=300.0,
      schedule="inverse_sqrt",
      options={"b2": 0.99},
      data={},
      init=lambda seed: np.zeros((), np.float32),
      batches=batches,
      loss=lambda x, data, slope: slope * x,
      val_loss=lambda x, data: jnp.float32(MEAN_GRADIENT) * (x + 1.0),
      project=lambda x: jnp.clip(x, -1.0, 1.0),
      log_scale=True,
      target=MEAN_GRADIENT * 0.2,  # x <= -0.8
    )
  )


# ---------------------------------------------------------------------- sizes


def tasks(size: str) -> dict[str, Callable[[], Task]]:
  """The tasks at ``size`` ("smoke", "quick" or "full"), built lazily (name -> maker)."""
  if size == "smoke":
    return {
      "lm": lambda: lm_task(d_model=16, layers=1, context=16, batch=4, steps=30, evals=3),
      "digits": lambda: digits_task(hidden=16, batch=32, steps=60, evals=3),
      "lstsq": lambda: lstsq_task(dim=16, rows=64, batch=16, steps=60, evals=3),
      "reddi": lambda: reddi_task(periods=20, evals=5),
    }
  if size == "quick":
    return {
      "lm": lambda: lm_task(d_model=32, layers=1, context=32, batch=8, steps=120, evals=6),
      "digits": lambda: digits_task(hidden=32, batch=64, steps=200, evals=8),
      "lstsq": lambda: lstsq_task(dim=32, rows=256, batch=32, steps=300, evals=10),
      "reddi": lambda: reddi_task(periods=400, evals=8),
    }
  if size == "full":
    return {
      "lm": lambda: lm_task(d_model=48, layers=2, context=32, batch=8, steps=300, evals=10),
      "digits": lambda: digits_task(hidden=64, batch=64, steps=600, evals=12),
      "lstsq": lambda: lstsq_task(dim=64, rows=512, batch=32, steps=1000, evals=20),
      "reddi": lambda: reddi_task(periods=400, evals=10),
    }
  raise ValueError(f"tasks(size={size!r}): size must be 'smoke', 'quick' or 'full'")
