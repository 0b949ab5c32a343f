"""adam_optax in real Flax training steps (NNX and Linen) that reduce a loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen, nnx
from flax.training import train_state

import adam_optax


def _data():
  x = jax.random.normal(jax.random.key(0), (64, 3))
  y = x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3
  return x, y


def _nnx_run(tx, steps=100):
  model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x, y = _data()

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer, x, y)) for _ in range(steps)]
  return np.array(losses), model


def test_nnx_optimizer_reduces_the_loss_like_optax_adam():
  ours, model = _nnx_run(adam_optax.adam(0.05))
  theirs, _ = _nnx_run(optax.adam(0.05))
  assert ours[-1] < 0.01 * ours[0]
  np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(model.kernel[...][:, 0], [1.0, -2.0, 0.5], atol=0.1)


class _MLP(linen.Module):
  @linen.compact
  def __call__(self, x):
    return linen.Dense(1)(linen.tanh(linen.Dense(16)(x)))


def _linen_run(tx, steps=150):
  x, y = _data()
  model = _MLP()
  state = train_state.TrainState.create(
    apply_fn=model.apply, params=model.init(jax.random.key(1), x), tx=tx
  )

  @jax.jit
  def train_step(state, x, y):
    def loss_fn(params):
      return jnp.mean((state.apply_fn(params, x) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  losses = []
  for _ in range(steps):
    state, loss = train_step(state, x, y)
    losses.append(float(loss))
  return np.array(losses)


def test_linen_train_state_reduces_the_loss_like_optax_adam():
  ours = _linen_run(adam_optax.adam(1e-2))
  theirs = _linen_run(optax.adam(1e-2))
  assert ours[-1] < 0.05 * ours[0]
  np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-6)
