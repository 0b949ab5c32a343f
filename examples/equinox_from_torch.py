"""Train an Equinox MLP with adam_optax, continuing a torch.optim.AdamW run mid-way.

A torch MLP trains for ``--torch-steps`` steps; its weights and AdamW state
move to an ``eqx.nn.MLP`` (whose Linear layers store weights as torch does, so
nothing is transposed) with :func:`adam_optax.state_from_torch`, and training
goes on in JAX. The same torch run, continued in torch, is the reference: the
two must agree to float32 rounding. A restart with a fresh Adam state is shown
for contrast.

Run: ``python examples/equinox_from_torch.py``.
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import adam_optax

LR, WEIGHT_DECAY, WIDTH = 1e-2, 1e-2, 32


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A smooth 3-D regression problem."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-2, 2, size=(256, 3)).astype(np.float32)
  y = np.sin(x[:, :1]) * np.cos(x[:, 1:2]) + 0.5 * x[:, 2:]
  return x, y.astype(np.float32)


def torch_run(steps: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch):
  x, y = (torch.from_numpy(a) for a in batch)
  for _ in range(steps):
    optimizer.zero_grad()
    loss = torch.mean(torch.square(model(x) - y))
    loss.backward()
    optimizer.step()
  return float(loss.detach())


def equinox_model(model: torch.nn.Module) -> eqx.nn.MLP:
  """An ``eqx.nn.MLP`` holding the torch model's weights (same layout, same leaf order)."""
  mlp = eqx.nn.MLP(3, 1, WIDTH, depth=2, activation=jnp.tanh, key=jax.random.key(0))
  weights = [jnp.asarray(p.detach().numpy()) for p in model.parameters()]
  arrays, static = eqx.partition(mlp, eqx.is_array)
  arrays = jax.tree.unflatten(jax.tree.structure(arrays), weights)
  return eqx.combine(arrays, static)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--torch-steps", type=int, default=200)
  parser.add_argument("--jax-steps", type=int, default=50)
  args = parser.parse_args()
  batch = data()
  torch.manual_seed(0)
  model = torch.nn.Sequential(
    torch.nn.Linear(3, WIDTH),
    torch.nn.Tanh(),
    torch.nn.Linear(WIDTH, WIDTH),
    torch.nn.Tanh(),
    torch.nn.Linear(WIDTH, 1),
  )
  torch_optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  loss = torch_run(args.torch_steps, model, torch_optimizer, batch)
  print(f"torch: {args.torch_steps} steps of AdamW, loss {loss:.6f}")

  mlp = equinox_model(model)
  params = eqx.filter(mlp, eqx.is_array)
  optimizer = adam_optax.adamw(LR, weight_decay=WEIGHT_DECAY)
  state = adam_optax.state_from_torch(optimizer, params, torch_optimizer)
  x, y = (jnp.asarray(a) for a in batch)

  @eqx.filter_jit
  def step(mlp: eqx.nn.MLP, state: optax.OptState):
    def loss_fn(mlp):
      return jnp.mean(jnp.square(jax.vmap(mlp)(x) - y))

    loss, grads = eqx.filter_value_and_grad(loss_fn)(mlp)
    updates, state = optimizer.update(grads, state, eqx.filter(mlp, eqx.is_array))
    return eqx.apply_updates(mlp, updates), state, loss

  def run(mlp: eqx.nn.MLP, state: optax.OptState) -> tuple[eqx.nn.MLP, float]:
    for _ in range(args.jax_steps):
      mlp, state, loss = step(mlp, state)
    return mlp, float(loss)

  continued, loss = run(mlp, state)
  print(f"equinox: {args.jax_steps} more steps with the converted state, loss {loss:.6f}")
  _, restarted = run(mlp, optimizer.init(params))
  print(f"equinox: {args.jax_steps} more steps with a fresh state, loss {restarted:.6f}")
  loss = torch_run(args.jax_steps, model, torch_optimizer, batch)
  print(f"torch: {args.jax_steps} more steps, loss {loss:.6f}")
  ours = np.concatenate([np.ravel(a) for a in jax.tree.leaves(eqx.filter(continued, eqx.is_array))])
  theirs = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
  difference = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
  print(f"equinox vs torch after the move: max relative difference {difference:.2e}")


if __name__ == "__main__":
  main()
