"""Moving a run in progress: torch.optim <-> the family, and optax -> the family.

The parity tests train a small MLP (torch's layout: ``x @ W.T + b``) for
``STOP`` steps in one library, convert the optimizer state, and continue for
``MORE`` steps in the other; the result must match the run continued in the
first library: float32 within 1e-5 and float64 within 1e-12, normwise over the
params (max |difference| / max |param|).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import adam_optax

STOP, MORE = 6, 6
LR, B1, B2, EPS, WD, PSI = 3e-2, 0.8, 0.99, 1e-6, 0.1, 4e-3
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


@dataclass(frozen=True)
class Member:
  """A family member and the torch optimizer that runs the same steps."""

  ours: Callable[[], Any]
  torch: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def _torch(cls: Any, **options: Any) -> Callable[[Any], Any]:
  return lambda p: cls(p, lr=LR, betas=(B1, B2), eps=EPS, **options)


MEMBERS = {
  "adam": Member(lambda: adam_optax.adam(LR, B1, B2, EPS), _torch(torch.optim.Adam)),
  "adam_coupled_l2": Member(
    lambda: optax.chain(adam_optax.add_decayed_weights(WD), adam_optax.adam(LR, B1, B2, EPS)),
    _torch(torch.optim.Adam, weight_decay=WD),
  ),
  "amsgrad": Member(
    lambda: adam_optax.amsgrad(LR, B1, B2, EPS), _torch(torch.optim.Adam, amsgrad=True)
  ),
  "adamw": Member(
    lambda: adam_optax.adamw(LR, B1, B2, EPS, weight_decay=WD),
    _torch(torch.optim.AdamW, weight_decay=WD),
  ),
  "nadam": Member(
    lambda: adam_optax.nadam(LR, B1, B2, EPS, momentum_decay=PSI),
    _torch(torch.optim.NAdam, momentum_decay=PSI),
  ),
  "nadam_optax_convention": Member(
    lambda: adam_optax.nadam(LR, B1, B2, EPS),
    _torch(torch.optim.NAdam, momentum_decay=float("inf")),
  ),
  "nadamw": Member(
    lambda: adam_optax.nadamw(LR, B1, B2, EPS, weight_decay=WD, momentum_decay=PSI),
    _torch(torch.optim.NAdam, momentum_decay=PSI, weight_decay=WD, decoupled_weight_decay=True),
  ),
  "adamax": Member(lambda: adam_optax.adamax(LR, B1, B2, EPS), _torch(torch.optim.Adamax)),
}


def _data(dtype: Any) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 5)).astype(dtype)
  return x, np.sin(x.sum(axis=1, keepdims=True)).astype(dtype)


def _torch_model(dtype: Any) -> torch.nn.Module:
  torch.manual_seed(0)
  model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
  return model.to(torch.float64 if dtype == np.float64 else torch.float32)


def _loss(params: list[jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  w1, b1, w2, b2 = params
  hidden = jnp.tanh(x @ w1.T + b1)
  return jnp.mean(jnp.square(hidden @ w2.T + b2 - y))


def _torch_steps(model: torch.nn.Module, optimizer: Any, data: Any, steps: int) -> None:
  x, y = (torch.from_numpy(a) for a in data)
  for _ in range(steps):
    optimizer.zero_grad()
    torch.mean(torch.square(model(x) - y)).backward()
    optimizer.step()


def _jax_steps(optimizer: Any, params: list, state: Any, data: Any, steps: int):
  x, y = (jnp.asarray(a) for a in data)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params, x, y)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def _jax_params(model: torch.nn.Module) -> list[jax.Array]:
  return [jnp.asarray(p.detach().numpy()) for p in model.parameters()]


def _error(actual: list, expected: list) -> float:
  a = np.concatenate([np.ravel(np.asarray(p, np.float64)) for p in actual])
  e = np.concatenate([np.ravel(np.asarray(p, np.float64)) for p in expected])
  return float(np.max(np.abs(a - e)) / np.max(np.abs(e)))


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
  """float32, and float64 with x64 and torch's default dtype float64."""
  if request.param == np.float32:
    yield np.float32
    return
  previous = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64)
  try:
    with jax.enable_x64(True):
      yield np.float64
  finally:
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("name", MEMBERS)
def test_from_torch_continues_as_torch_would(name, dtype):
  member, data = MEMBERS[name], _data(dtype)
  model = _torch_model(dtype)
  torch_optimizer = member.torch(list(model.parameters()))
  _torch_steps(model, torch_optimizer, data, STOP)
  params = _jax_params(model)
  optimizer = member.ours()
  state = adam_optax.state_from_torch(optimizer, params, torch_optimizer.state_dict())
  ours, _ = _jax_steps(optimizer, params, state, data, MORE)
  _torch_steps(model, torch_optimizer, data, MORE)
  assert _error(ours, _jax_params(model)) < TOLERANCE[dtype]
  restarted, _ = _jax_steps(optimizer, params, optimizer.init(params), data, MORE)
  assert _error(restarted, _jax_params(model)) > 100 * TOLERANCE[dtype]  # the state mattered


@pytest.mark.parametrize("name", MEMBERS)
def test_to_torch_continues_as_jax_would(name, dtype):
  member, data = MEMBERS[name], _data(dtype)
  model = _torch_model(dtype)
  optimizer = member.ours()
  params = _jax_params(model)
  params, state = _jax_steps(optimizer, params, optimizer.init(params), data, STOP)
  with torch.no_grad():
    for p, value in zip(model.parameters(), params, strict=True):
      p.copy_(torch.from_numpy(np.array(value)))
  torch_optimizer = member.torch(list(model.parameters()))
  torch_optimizer.load_state_dict(adam_optax.state_to_torch(optimizer, state, params))
  _torch_steps(model, torch_optimizer, data, MORE)
  ours, _ = _jax_steps(optimizer, params, state, data, MORE)
  assert _error(_jax_params(model), ours) < TOLERANCE[dtype]
  fresh = member.torch(list(_torch_model(dtype).parameters()))
  assert torch_optimizer.state_dict()["param_groups"][0].keys() == (
    fresh.state_dict()["param_groups"][0].keys()
  )


OPTAX = {  # optax optimizer, ours
  "adam": (optax.adam(LR, B1, B2, EPS), adam_optax.adam(LR, B1, B2, EPS)),
  "adamw": (
    optax.adamw(LR, B1, B2, EPS, weight_decay=WD),
    adam_optax.adamw(LR, B1, B2, EPS, weight_decay=WD),
  ),
  "nadam": (optax.nadam(LR, B1, B2, EPS), adam_optax.nadam(LR, B1, B2, EPS)),
  "nadamw": (
    optax.nadamw(LR, B1, B2, EPS, weight_decay=WD),
    adam_optax.nadamw(LR, B1, B2, EPS, weight_decay=WD),
  ),
  "amsgrad": (
    optax.amsgrad(LR, B1, B2, EPS),
    adam_optax.amsgrad(LR, B1, B2, EPS, convention="optax"),
  ),
  "adamax": (optax.adamax(LR, B1, B2, EPS), adam_optax.adamax(LR, B1, B2, EPS)),
  "chain_clip_schedule": (
    optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.linear_schedule(LR, 0.0, 20))),
    optax.chain(
      optax.clip_by_global_norm(1.0), adam_optax.adam(optax.linear_schedule(LR, 0.0, 20))
    ),
  ),
  "inject_hyperparams": (
    optax.inject_hyperparams(optax.adamw)(learning_rate=LR, b1=B1, weight_decay=WD),
    optax.inject_hyperparams(adam_optax.adamw)(learning_rate=1.0, b1=B1, weight_decay=WD),
  ),
  "multi_steps": (
    optax.MultiSteps(optax.adam(LR, B1, B2, EPS), every_k_schedule=4),
    optax.MultiSteps(adam_optax.adam(LR, B1, B2, EPS), every_k_schedule=4),
  ),
}


@pytest.mark.parametrize("name", OPTAX)
def test_from_optax_continues_as_optax_would(name, dtype):
  theirs, ours = OPTAX[name]
  data = _data(dtype)
  params = _jax_params(_torch_model(dtype))
  params, state = _jax_steps(theirs, params, theirs.init(params), data, STOP + 1)  # MultiSteps: mid
  converted = adam_optax.state_from_optax(ours, params, state)
  expected, _ = _jax_steps(theirs, params, state, data, MORE)
  continued, _ = _jax_steps(ours, params, converted, data, MORE)
  # optax rounds its bias corrections in float32 (README, "Family"): 1e-5 holds anyway.
  assert _error(continued, expected) < TOLERANCE[dtype]
  dtypes = jax.tree.map(lambda a: a.dtype, converted)
  assert dtypes == jax.tree.map(lambda a: a.dtype, ours.init(params))
