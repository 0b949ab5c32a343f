"""A Flax NNX MLP on scikit-learn's bundled digits, trained with adam_optax.adam.

The same model, seed and batches are trained twice, with ``adam_optax.adam``
and with ``optax.adam``; the script prints the test accuracy of each and writes
both loss curves into one PNG. No download: the digits ship with scikit-learn.

Run: ``python examples/flax_mlp.py [--steps 400] [--out examples/out/flax_mlp_loss.png]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import adam_optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs, hidden: int = 128):
    self.hidden = nnx.Linear(64, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(nnx.relu(self.hidden(x)))


def load_data(seed: int = 0):
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  return train_test_split(x, digits.target, test_size=0.25, random_state=seed)


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
  def loss_fn(model: MLP) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def accuracy(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def train(name: str, tx: optax.GradientTransformation, data, steps: int, batch: int = 128):
  """Trains a fresh MLP (seed 0); returns the per-step losses and the test accuracy."""
  x_train, x_test, y_train, y_test = data
  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  order = np.random.default_rng(0)
  losses = []
  for _ in tqdm(range(steps), desc=name, unit="step"):
    index = order.integers(0, len(x_train), batch)
    losses.append(float(train_step(model, optimizer, x_train[index], y_train[index])))
  return np.array(losses), float(accuracy(model, x_test, y_test))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--learning-rate", type=float, default=3e-3)
  parser.add_argument("--out", type=Path, default=Path("examples/out/flax_mlp_loss.png"))
  args = parser.parse_args()

  data = load_data()
  runs = {
    "adam_optax.adam": adam_optax.adam(args.learning_rate),
    "optax.adam": optax.adam(args.learning_rate),
  }
  results = {name: train(name, tx, data, args.steps) for name, tx in runs.items()}
  for name, (losses, test_accuracy) in results.items():
    print(f"{name:16s} final train loss {losses[-1]:.4f}  test accuracy {test_accuracy:.4f}")

  args.out.parent.mkdir(parents=True, exist_ok=True)
  figure, axes = plt.subplots(figsize=(7, 4))
  for (name, (losses, _)), style in zip(results.items(), ["-", "--"], strict=True):
    axes.plot(losses, style, label=name)
  axes.set(xlabel="step", ylabel="cross-entropy (train batch)", yscale="log")
  axes.set_title(f"Flax NNX MLP on digits, lr {args.learning_rate}, same seed and batches")
  axes.legend()
  figure.tight_layout()
  figure.savefig(args.out, dpi=120)
  print(f"loss curves written to {args.out}")


if __name__ == "__main__":
  main()
