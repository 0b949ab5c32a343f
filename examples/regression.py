"""The seed tutorial's example, in JAX: fit y = 2x + 1 with adam_optax.adam.

100 points, a linear model, mean squared error, ``adam(0.001)`` for 1000 steps;
the whole training loop is one ``jax.jit``-compiled ``lax.scan``. With that
learning rate each step moves a parameter by at most ~0.001, so after 1000
steps the weight and bias are still well short of 2 and 1: the script prints
what it really gets, then shows a learning rate that does converge.

Run: ``python examples/regression.py`` (or ``make example``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import adam_optax


def make_data(key: jax.Array, n: int = 100) -> tuple[jax.Array, jax.Array]:
  """``n`` points of ``y = 2x + 1`` with ``x`` standard normal."""
  x = jax.random.normal(key, (n, 1))
  return x, 2.0 * x + 1.0


def mse(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  prediction = x @ params["w"] + params["b"]
  return jnp.mean((prediction - y) ** 2)


def train(learning_rate: float, steps: int, x: jax.Array, y: jax.Array):
  """Trains from w = b = 0; returns the final params and the loss at each step."""
  optimizer = adam_optax.adam(learning_rate)
  params = {"w": jnp.zeros((1, 1)), "b": jnp.zeros((1,))}

  def step(carry, _):
    params, state = carry
    loss, grads = jax.value_and_grad(mse)(params, x, y)
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  @jax.jit
  def run(params):
    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
    return params, losses

  return run(params)


def report(learning_rate: float, steps: int, x: jax.Array, y: jax.Array) -> dict[str, float]:
  params, losses = train(learning_rate, steps, x, y)
  print(f"adam_optax.adam({learning_rate}), {steps} steps, whole loop under jax.jit")
  for epoch in range(0, steps, steps // 10):
    print(f"  step {epoch + 1:5d}  loss {float(losses[epoch]):.6f}")
  w, b = float(params["w"][0, 0]), float(params["b"][0])
  final_loss = float(mse(params, x, y))
  print(f"  learned w = {w:.4f}, b = {b:.4f} (true: 2, 1); final loss {final_loss:.6f}")
  return {"w": w, "b": b, "loss": final_loss}


def main() -> None:
  x, y = make_data(jax.random.key(0))
  report(0.001, 1000, x, y)
  print("lr 0.001 moves each parameter by at most ~0.001 per step: not there yet.\n")
  report(0.1, 1000, x, y)


if __name__ == "__main__":
  main()
