"""A donated, jitted Adam step on bucketed parameters.

The parameters of a deep MLP (2 arrays per layer) live in one contiguous
float32 buffer across steps. The loss sees the usual tree through
``layout.unbucket``; ``jax.grad`` with respect to the buffer gives a
buffer-shaped gradient; ``adam_optax.adam`` updates one big leaf instead of
hundreds of small ones. Donating params and optimizer state lets XLA write the
new values over the old ones: the step allocates nothing parameter-sized.

Run: ``python examples/donated_step.py`` (a few seconds on a laptop CPU).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import optax

import adam_optax

LAYERS, WIDTH, STEPS = 48, 32, 200


def init_params(key: jax.Array) -> list[dict[str, jax.Array]]:
  """A list of dense layers, each ``{"w": (WIDTH, WIDTH), "b": (WIDTH,)}``."""
  keys = jax.random.split(key, LAYERS)
  scale = jnp.float32(WIDTH**-0.5)
  return [
    {"w": scale * jax.random.normal(k, (WIDTH, WIDTH), jnp.float32), "b": jnp.zeros(WIDTH)}
    for k in keys
  ]


def predict(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  for layer in params:
    x = x + jnp.tanh(x @ layer["w"] + layer["b"])  # residual, so depth trains
  return x


def main() -> None:
  data_key, param_key = jax.random.split(jax.random.key(0))
  x = jax.random.normal(data_key, (256, WIDTH), jnp.float32)
  y = jnp.sin(x)

  # One float32 buffer holds all 2 * LAYERS arrays; `layout` maps it back.
  buckets, layout = adam_optax.bucket(init_params(param_key))
  optimizer = adam_optax.adam(learning_rate=1e-3)
  state = optimizer.init(buckets)  # the moments are bucketed too

  def loss(buckets: dict[str, jax.Array]) -> jax.Array:
    return jnp.mean((predict(layout.unbucket(buckets), x) - y) ** 2)

  # donate_argnums=(0, 1): the old params and state buffers are reused for the
  # new ones. Do not touch the arrays you passed in after the call.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(buckets, state):
    value, grads = jax.value_and_grad(loss)(buckets)  # grads: bucket-shaped
    updates, state = optimizer.update(grads, state, buckets)
    return optax.apply_updates(buckets, updates), state, value

  compiled = step.lower(buckets, state).compile()
  memory = compiled.memory_analysis()
  print(
    f"{len(layout.slots)} arrays in buckets {[(k, n) for k, n in layout.sizes]}; "
    f"the step aliases {memory.alias_size_in_bytes / 2**10:.0f} KiB of its "
    f"{memory.output_size_in_bytes / 2**10:.0f} KiB of outputs to donated inputs"
  )

  start = time.perf_counter()
  first = None
  for _ in range(STEPS):
    old = buckets
    buckets, state, value = step(buckets, state)
    first = float(value) if first is None else first
  assert old["float32"].is_deleted()  # donated: its memory now holds the new params
  elapsed = time.perf_counter() - start
  print(f"loss {first:.4f} -> {float(value):.4f} in {STEPS} steps ({elapsed:.2f} s)")

  final = layout.unbucket(buckets)  # the usual tree, e.g. to save or inspect
  print("first layer bias, first 3:", final[0]["b"][:3])


if __name__ == "__main__":
  main()
