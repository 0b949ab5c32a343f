"""Moving a run in progress: torch.optim <-> the family, and optax -> the family.

The parity tests train a small MLP (torch's layout: ``x @ W.T + b``) for
``STOP`` steps in one library, convert the optimizer state, and continue for
``MORE`` steps in the other; the result must match the run continued in the
first library: float32 within 1e-5 and float64 within 1e-12, normwise over the
params (max |difference| / max |param|).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import pytorch_optimizer
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adam_optax
from adam_optax._quantized import dequantized

STOP, MORE = 6, 6
LR, B1, B2, EPS, WD, PSI = 3e-2, 0.8, 0.99, 1e-6, 0.1, 4e-3
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


@dataclass(frozen=True)
class Member:
  """A family member and the torch optimizer that runs the same steps."""

  ours: Callable[[], Any]
  torch: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def _code_clip(t: jax.Array) -> jax.Array:
  return (t + 1) ** 0.25


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
  # STOP = 6 steps at B2 = 0.99: torch's RAdam rectifies from step 6 (rho_6 = 5.9 > 5) on.
  "radam": Member(lambda: adam_optax.radam(LR, B1, B2, EPS), _torch(torch.optim.RAdam)),
  "radam_coupled_l2": Member(
    lambda: adam_optax.radam(LR, B1, B2, EPS, weight_decay=WD),
    _torch(torch.optim.RAdam, weight_decay=WD),
  ),
  "radam_decoupled": Member(
    lambda: adam_optax.radam(LR, B1, B2, EPS, weight_decay=WD, decoupled_weight_decay=True),
    _torch(torch.optim.RAdam, weight_decay=WD, decoupled_weight_decay=True),
  ),
  # pytorch_optimizer clips step t at (t + 1)^(1/4) where adopt follows the paper's t^(1/4)
  # (tests/test_adopt.py); its clip_lambda is not in its state_dict.
  "adopt": Member(
    lambda: adam_optax.adopt(LR, B1, B2, EPS, clip=_code_clip),
    _torch(pytorch_optimizer.ADOPT, foreach=False),
  ),
  "adopt_coupled_l2": Member(
    lambda: optax.chain(
      adam_optax.add_decayed_weights(WD), adam_optax.adopt(LR, B1, B2, EPS, clip=_code_clip)
    ),
    _torch(pytorch_optimizer.ADOPT, weight_decay=WD, foreach=False),
  ),
  "adopt_decoupled": Member(
    lambda: adam_optax.adopt(LR, B1, B2, EPS, clip=_code_clip, weight_decay=WD),
    _torch(pytorch_optimizer.ADOPT, weight_decay=WD, weight_decouple=True, foreach=False),
  ),
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
  assert torch_optimizer.state_dict()["param_groups"][0].keys() - {"step"} == (
    fresh.state_dict()["param_groups"][0].keys()  # pytorch_optimizer adds its step when stepping
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


def _trained_torch(member: str = "adamw", steps: int = 2, dtype: Any = np.float32):
  model = _torch_model(dtype)
  torch_optimizer = MEMBERS[member].torch(list(model.parameters()))
  _torch_steps(model, torch_optimizer, _data(dtype), steps)
  return _jax_params(model), torch_optimizer


def _raises(match: str, convert: Callable[[], Any]) -> None:
  with pytest.raises(ValueError, match=match):
    convert()


def test_errors_name_the_problem():
  params, torch_optimizer = _trained_torch("adamw")
  sd = torch_optimizer.state_dict()
  adamw = MEMBERS["adamw"].ours()
  convert = adam_optax.state_from_torch
  _raises(
    r"torch.optim.AdamW; that is adam_optax.adamw", lambda: convert(adam_optax.adam(LR), params, sd)
  )
  _raises(
    r"learning_rate 0.001 \(torch: 0.03\)",
    lambda: convert(adam_optax.adamw(1e-3, B1, B2, EPS, weight_decay=WD), params, sd),
  )
  relaxed = convert(
    adam_optax.adamw(1e-3, B1, B2, EPS, weight_decay=WD), params, sd, check_hyperparameters=False
  )
  assert int(relaxed[0].count) == 2
  with pytest.raises(TypeError, match="the factory"):
    convert(adam_optax.adamw, params, sd)
  _raises(r"builds no member", lambda: convert(optax.adamw(LR), params, sd))
  swapped = [params[1], params[0], *params[2:]]
  _raises(
    r"torch parameter 0 \(param leaf \[0\]\)'s exp_avg has shape \(16, 5\), "
    r"but the param leaf has shape \(16,\)",
    lambda: convert(adamw, swapped, sd),
  )
  transposed = [params[0].T, *params[1:]]
  _raises(r"pass axes=\(1, 0\) for this leaf", lambda: convert(adamw, transposed, sd))
  converted = convert(
    adamw, transposed, sd, axes=lambda path, p: (1, 0) if path[0].idx == 0 else None
  )
  np.testing.assert_array_equal(converted[0].mu[0], sd["state"][0]["exp_avg"].numpy().T)
  _raises(
    r"4 leaves but torch's optimizer has 3",
    lambda: convert(
      adamw,
      params,
      {
        **sd,
        "param_groups": [{**sd["param_groups"][0], "params": [0, 1, 2]}],
        "state": {i: sd["state"][i] for i in range(3)},
      },
    ),
  )
  _raises(
    r"expected a torch optimizer or its state_dict", lambda: convert(adamw, params, sd["state"])
  )
  broken = {
    **sd,
    "state": {
      **sd["state"],
      2: {"step": sd["state"][2]["step"], "exp_avg": sd["state"][2]["exp_avg"]},
    },
  }
  _raises(
    r"torch parameter 2 \(param leaf \[2\]\) lacks \['exp_avg_sq'\]",
    lambda: convert(adamw, params, broken),
  )
  stepped = {**sd, "state": {**sd["state"], 1: {**sd["state"][1], "step": torch.tensor(7.0)}}}
  _raises(r"has taken 2 steps and .* 7", lambda: convert(adamw, params, stepped))
  half = {**sd, "state": {**sd["state"], 1: {**sd["state"][1], "step": torch.tensor(2.5)}}}
  _raises(
    r"\(param leaf \[1\]\)'s step is 2.5; expected a whole number",
    lambda: convert(adamw, params, half),
  )
  _raises(
    r"both map to torch parameter 0", lambda: convert(adamw, params, sd, indices=[0, 0, 1, 2])
  )
  _raises(
    r"expected a torch parameter index in \[0, 4\)",
    lambda: convert(adamw, params, sd, indices=[0, 1, 2, 9]),
  )
  _raises(
    r"its parameters have no names",
    lambda: convert(adamw, params, sd, indices=["a", "b", "c", "d"]),
  )
  _raises(
    r"not a permutation of its 2 axes",
    lambda: convert(adamw, params, sd, axes=[(0, 0), None, None, None]),
  )
  _raises(
    r"expected a tree with the params' structure",
    lambda: convert(adamw, params, sd, axes={"w": None}),
  )
  sgd = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
  _raises(
    r"not the state of torch.optim.Adam, AdamW, NAdam, Adamax, RAdam or pytorch_optimizer.ADOPT",
    lambda: convert(adamw, params[:2], sd_of(sgd)),
  )


def sd_of(torch_optimizer: Any) -> dict:
  return torch_optimizer.state_dict()


def test_errors_for_what_torch_cannot_hold():
  params, torch_optimizer = _trained_torch("amsgrad")
  sd = torch_optimizer.state_dict()
  for convention in ("optax", "paper"):
    optimizer = adam_optax.amsgrad(LR, B1, B2, EPS, convention=convention)
    _raises(r"convention='torch'", lambda o=optimizer: adam_optax.state_from_torch(o, params, sd))
    _raises(
      r"convention='torch'",
      lambda o=optimizer: adam_optax.state_to_torch(o, o.init(params), params),
    )
  _raises(
    r"eps_root",
    lambda: adam_optax.state_from_torch(
      adam_optax.amsgrad(LR, B1, B2, EPS, eps_root=1e-9), params, sd
    ),
  )
  adam = adam_optax.adam(LR)
  _raises(
    r"eps_root=1e-09\) has no torch",
    lambda: adam_optax.state_to_torch(
      adam_optax.adam(LR, eps_root=1e-9), adam.init(params), params
    ),
  )
  _raises(
    r"structure differs", lambda: adam_optax.state_to_torch(adam, adam.init(params[:2]), params)
  )
  _raises(
    r"give torch parameter indices, not names",
    lambda: adam_optax.state_to_torch(
      adam, adam.init(params), params, indices=["a", "b", "c", "d"]
    ),
  )
  multi = optax.MultiSteps(adam, every_k_schedule=2)
  state = multi.init(params)
  _, state = multi.update(params, state, params)
  _raises(r"middle of accumulating", lambda: adam_optax.state_to_torch(multi, state, params))
  complex_params = [jnp.ones(2, jnp.complex64)]
  _raises(
    r"complex", lambda: adam_optax.state_to_torch(adam, adam.init(complex_params), complex_params)
  )
  weight = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
  complex_optimizer = torch.optim.Adam([weight])
  weight.grad = torch.ones(2, dtype=torch.complex64)
  complex_optimizer.step()
  _raises(
    r"view_as_real",
    lambda: adam_optax.state_from_torch(adam_optax.adam(1e-3), complex_params, complex_optimizer),
  )


def test_radam_errors_name_the_difference_from_torch():
  params, torch_optimizer = _trained_torch("radam_decoupled")
  sd = torch_optimizer.state_dict()
  convert = adam_optax.state_from_torch
  _raises(
    r"continues a run of torch.optim.RAdam, but torch's state is that of "
    r"torch.optim.RAdam\(decoupled_weight_decay=True\)",
    lambda: convert(adam_optax.radam(LR, B1, B2, EPS, weight_decay=WD), params, sd),
  )
  _raises(
    r"torch.optim.RAdam\(decoupled_weight_decay=True\)",
    lambda: convert(adam_optax.adamw(LR, B1, B2, EPS, weight_decay=WD), params, sd),
  )
  threshold = adam_optax.radam(
    LR, B1, B2, EPS, weight_decay=WD, decoupled_weight_decay=True, threshold=6.0
  )
  _raises(r"threshold 6.0 \(torch.optim.RAdam's is 5.0\)", lambda: convert(threshold, params, sd))
  _raises(
    r"radam\(threshold=6.0\) has no torch equivalent",
    lambda: adam_optax.state_to_torch(threshold, threshold.init(params), params),
  )
  injected = optax.inject_hyperparams(adam_optax.radam)(LR, B1, B2, EPS, threshold=5.0)
  state = injected.init(params)
  exported = adam_optax.state_to_torch(injected, state, params)
  assert exported["param_groups"][0]["lr"] == pytest.approx(LR)
  state.hyperparams["threshold"] = jnp.asarray(6.0)
  _raises(
    r"radam\(threshold=6.0\) has no torch equivalent",
    lambda: adam_optax.state_to_torch(injected, state, params),
  )


def test_adopt_is_told_from_pytorch_optimizers_other_states():
  params, torch_optimizer = _trained_torch("adopt_decoupled")
  sd = copy.deepcopy(torch_optimizer.state_dict())
  adopt = MEMBERS["adopt_decoupled"].ours()
  assert int(adam_optax.state_from_torch(adopt, params, sd)[0].count) == 2  # the group's step
  sd["param_groups"][0]["fixed_decay"] = True
  _raises(r"fixed_decay \(torch: True\)", lambda: adam_optax.state_from_torch(adopt, params, sd))
  model = _torch_model(np.float32)
  laprop = pytorch_optimizer.LaProp(model.parameters(), lr=LR)
  _torch_steps(model, laprop, _data(np.float32), 2)
  _raises(
    r"not the state of .* pytorch_optimizer.ADOPT: a param_group has the keys \['ams_bound'",
    lambda: adam_optax.state_from_torch(adopt, params, laprop),
  )
  _raises(
    r"continues a run of pytorch_optimizer.ADOPT\(weight_decouple=True\), but torch's state "
    r"is that of pytorch_optimizer.ADOPT;",
    lambda: adam_optax.state_from_torch(adopt, params, _trained_torch("adopt_coupled_l2")[1]),
  )


def test_nadam_mu_product_must_match_the_step():
  params, torch_optimizer = _trained_torch("nadam", steps=3)
  sd = copy.deepcopy(torch_optimizer.state_dict())  # state_dict() shares the live tensors
  sd["state"][0]["mu_product"] = sd["state"][0]["mu_product"] * 0.9
  _raises(
    r"mu_product .* 3 steps of NAdam",
    lambda: adam_optax.state_from_torch(MEMBERS["nadam"].ours(), params, sd),
  )
  _raises(
    r"momentum_decay None \(torch: 0.004\)",
    lambda: adam_optax.state_from_torch(adam_optax.nadam(LR, B1, B2, EPS), params, torch_optimizer),
  )


def _damage(tensor: torch.Tensor, value: float) -> torch.Tensor:
  """A copy of ``tensor`` with ``value`` at its last entry."""
  damaged = tensor.clone()
  damaged.view(-1)[-1] = value
  return damaged


# (member, key, damaged value, what the message must say). Issue 17: a negative exp_avg_sq
# was accepted and the next update made the params NaN; a step of shape (1,) raised a bare
# TypeError.
NAN, INF = float("nan"), float("inf")
DAMAGED_TORCH = [
  (
    "adam",
    "exp_avg_sq",
    lambda t: -t,
    r"exp_avg_sq has 80 of 80 values that are not finite and >= 0, as a second moment is, "
    r"the first -",
  ),
  (
    "adam",
    "exp_avg_sq",
    lambda t: _damage(t, NAN),
    r"exp_avg_sq has 1 of 80 .* the first nan at index \(15, 4\)",
  ),
  ("adam", "exp_avg_sq", lambda t: _damage(t, INF), r"exp_avg_sq has 1 of 80 .* the first inf"),
  (
    "adam",
    "exp_avg",
    lambda t: _damage(t, -INF),
    r"exp_avg has 1 of 80 values that are not finite, the first -inf",
  ),
  (
    "amsgrad",
    "max_exp_avg_sq",
    lambda t: _damage(t, -1e-9),
    r"max_exp_avg_sq has 1 of 80 .* -1e-09",
  ),
  ("adamax", "exp_inf", lambda t: _damage(t, -0.5), r"exp_inf has 1 of 80 .* >= 0"),
  ("radam", "exp_avg_sq", lambda t: _damage(t, -0.5), r"exp_avg_sq has 1 of 80 .* >= 0"),
  ("radam_decoupled", "exp_avg", lambda t: _damage(t, NAN), r"exp_avg has 1 of 80 .* nan"),
  ("radam", "step", lambda t: t + 0.5, r"'s step is 2.5; expected a whole number"),
  ("adopt", "exp_avg_sq", lambda t: _damage(t, -2.0), r"exp_avg_sq has 1 of 80 .* >= 0"),
  (
    "adam",
    "step",
    lambda t: t.reshape(1),
    r"'s step is an array of shape \(1,\) \(float32\); expected a single",
  ),
  (
    "adam",
    "step",
    lambda t: -t,
    r"'s step is -2.0; expected a whole number of steps in \[0, 2147483647\]",
  ),
  ("adam", "step", lambda t: t * NAN, r"'s step is nan; expected a whole number"),
  ("adam", "step", lambda t: t * 2**31, r"'s step is 4294967296.0; expected a whole number"),
  (
    "nadam",
    "mu_product",
    lambda t: t.reshape(1, 1),
    r"parameter 0's mu_product is an array of shape \(1, 1\)",
  ),
]


@pytest.mark.parametrize(
  ("member", "key", "damage", "message"),
  DAMAGED_TORCH,
  ids=[f"{member}-{key}-{i}" for i, (member, key, *_) in enumerate(DAMAGED_TORCH)],
)
def test_a_damaged_torch_state_is_refused_naming_the_parameter_and_the_key(
  member, key, damage, message
):
  params, torch_optimizer = _trained_torch(member)
  sd = copy.deepcopy(torch_optimizer.state_dict())
  sd["state"][0][key] = damage(sd["state"][0][key])
  where = r"state_from_torch\(torch_state=...\): torch parameter 0"
  with pytest.raises(ValueError, match=where) as error:
    adam_optax.state_from_torch(MEMBERS[member].ours(), params, sd)
  assert re.search(message, str(error.value)), str(error.value)


@pytest.mark.parametrize(
  ("field", "damage", "message"),
  [
    (
      "nu",
      lambda a: a.at[0].set(-1.0),
      r"the state leaf at \[0\]\.nu\[1\] has 1 of 16 .* >= 0, .* the first -1.0 at index \(0,\)",
    ),
    (
      "mu",
      lambda a: a.at[3].set(jnp.nan),
      r"the state leaf at \[0\]\.mu\[1\] has 1 of 16 values that are not finite",
    ),
    (
      "count",
      lambda a: jnp.asarray(-3, jnp.int32),
      r"the step count at \[0\]\.count is -3.0; expected a whole",
    ),
  ],
)
def test_a_damaged_state_is_not_exported_to_torch(field, damage, message):
  params, torch_optimizer = _trained_torch("adam")
  optimizer = MEMBERS["adam"].ours()
  state = adam_optax.state_from_torch(optimizer, params, torch_optimizer)
  moments = state[0]
  value = getattr(moments, field)
  damaged = damage(value) if field == "count" else [*value[:1], damage(value[1]), *value[2:]]
  state = (moments._replace(**{field: damaged}), *state[1:])
  with pytest.raises(ValueError, match=r"state_to_torch\(state=...\): " + message):
    adam_optax.state_to_torch(optimizer, state, params)


@pytest.mark.parametrize(
  ("field", "damage", "message"),
  [
    (
      "nu",
      lambda a: -a,
      r"nu at \[0\] \(param leaf \['w'\]\) has 6 of 6 values that are not finite and >= 0",
    ),
    (
      "mu",
      lambda a: a.at[1, 2].set(jnp.inf),
      r"mu at \[0\] \(param leaf \['w'\]\) has 1 of 6 .* at index \(1, 2\)",
    ),
    ("count", lambda a: jnp.reshape(a, (1,)), r"the count at \[0\] is an array of shape \(1,\)"),
    ("count", lambda a: -a, r"the count at \[0\] is -1.0; expected a whole number"),
  ],
)
def test_a_damaged_optax_state_is_refused_naming_the_leaf(field, damage, message):
  params = {"w": jnp.ones((2, 3))}
  adam = optax.adam(LR)
  _, state = adam.update({"w": jnp.full((2, 3), 0.5)}, adam.init(params))
  value = getattr(state[0], field)
  damaged = damage(value) if field == "count" else {"w": damage(value["w"])}
  state = (state[0]._replace(**{field: damaged}), *state[1:])
  with pytest.raises(ValueError, match=r"state_from_optax\(optax_state=...\): " + message):
    adam_optax.state_from_optax(adam_optax.adam(LR), params, state)


def test_a_non_finite_injected_hyperparameter_is_refused_naming_it():
  injected = optax.inject_hyperparams(adam_optax.adam)(learning_rate=LR, b1=B1, b2=B2, eps=EPS)
  params, torch_optimizer = _trained_torch("adam")
  sd = copy.deepcopy(torch_optimizer.state_dict())
  sd["param_groups"][0]["lr"] = float("nan")
  with pytest.raises(ValueError, match=r"param_groups\[0\]'s learning_rate is nan; expected a"):
    adam_optax.state_from_torch(injected, params, sd)
  source = optax.inject_hyperparams(optax.adam)(learning_rate=LR)
  small = {"w": jnp.ones(3)}
  state = source.init(small)
  state.hyperparams["learning_rate"] = jnp.asarray(jnp.inf)
  with pytest.raises(ValueError, match=r"hyperparameter learning_rate at <root> is inf; expected"):
    adam_optax.state_from_optax(injected, small, state)
  state = adam_optax.state_from_torch(injected, params, torch_optimizer)
  state.hyperparams["b2"] = jnp.asarray(jnp.nan)
  with pytest.raises(ValueError, match=r"injected hyperparameter b2 of adam\(...\) is nan"):
    adam_optax.state_to_torch(injected, state, params)


def test_errors_from_optax():
  params = {"w": jnp.ones((2, 3))}
  grads = {"w": jnp.full((2, 3), 0.5)}
  amsgrad = optax.amsgrad(LR)
  state = amsgrad.init(params)
  _, state = amsgrad.update(grads, state)
  _raises(
    r"continues as adam_optax.amsgrad\(..., convention='optax'\), "
    r"not amsgrad\(convention='torch'\)",
    lambda: adam_optax.state_from_optax(adam_optax.amsgrad(LR), params, state),
  )
  _raises(
    r"keeps no running maximum",
    lambda: adam_optax.state_from_optax(
      adam_optax.amsgrad(LR), params, optax.adam(LR).init(params)
    ),
  )
  _raises(
    r"holds 2 Adam states .* 1 members",
    lambda: adam_optax.state_from_optax(adam_optax.adam(LR), params, (state, state)),
  )
  _raises(
    r"does not mirror the params",
    lambda: adam_optax.state_from_optax(
      adam_optax.adam(LR), params, optax.adam(LR).init({"v": jnp.ones(3)})
    ),
  )
  _raises(
    r"has shape \(3,\), but the param leaf has shape \(2, 3\)",
    lambda: adam_optax.state_from_optax(
      adam_optax.adam(LR), params, optax.adam(LR).init({"w": jnp.ones(3)})
    ),
  )
  multi = optax.MultiSteps(optax.adam(LR), every_k_schedule=3)
  state = multi.init(params)
  _, state = multi.update(grads, state, params)
  _raises(
    r"mini_step=1\) and the optimizer does not accumulate",
    lambda: adam_optax.state_from_optax(adam_optax.adam(LR), params, state),
  )
  big = optax.adam(LR).init(params)[0]._replace(nu={"w": jnp.full((2, 3), 1e6)})
  f16 = {"w": jnp.ones((2, 3), jnp.float16)}
  _raises(
    r"overflow the target state's dtype float16",
    lambda: adam_optax.state_from_optax(
      adam_optax.adam(LR, nu_dtype=jnp.float16), f16, (big, optax.EmptyState())
    ),
  )


def test_wrapped_states_convert_through_their_wrappers():
  params, torch_optimizer = _trained_torch("adamw", steps=3)
  member = adam_optax.adamw(optax.linear_schedule(LR, 0.0, 100), B1, B2, EPS, weight_decay=WD)
  with pytest.raises(ValueError, match=r"learning_rate 0\.0291"):  # the schedule at step 3
    adam_optax.state_from_torch(member, params, torch_optimizer)
  constant = adam_optax.adamw(LR, B1, B2, EPS, weight_decay=WD)
  optimizer = adam_optax.skip_nonfinite(
    optax.MultiSteps(
      optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(adam_optax.adamw)(
          learning_rate=1.0, b1=B1, b2=B2, eps=EPS, weight_decay=0.0
        ),
      ),
      every_k_schedule=2,
    ).gradient_transformation()
  )
  state = adam_optax.state_from_torch(optimizer, params, torch_optimizer)
  injected = state.inner_state.inner_opt_state[1]
  assert float(injected.hyperparams["learning_rate"]) == pytest.approx(LR)  # set from torch
  assert float(injected.hyperparams["weight_decay"]) == pytest.approx(WD)
  assert int(injected.count) == 3 and int(state.inner_state.gradient_step) == 3
  assert int(state.inner_state.mini_step) == 0 and int(state.skipped) == 0
  plain = adam_optax.state_from_torch(constant, params, torch_optimizer)
  chex_equal = jax.tree.map(np.testing.assert_array_equal, injected.inner_state[0], plain[0])
  assert chex_equal == jax.tree.map(lambda _: None, plain[0])
  back = adam_optax.state_to_torch(optimizer, state, params)
  assert back["param_groups"][0]["lr"] == pytest.approx(LR)
  assert back["param_groups"][0]["weight_decay"] == pytest.approx(WD)


def test_param_groups_with_different_hyperparameters():
  model = _torch_model(np.float32)
  weights, biases = [model[0].weight, model[2].weight], [model[0].bias, model[2].bias]
  torch_optimizer = torch.optim.AdamW(
    [{"params": weights}, {"params": biases, "weight_decay": 0.0, "lr": 1e-2}],
    lr=LR,
    betas=(B1, B2),
    eps=EPS,
    weight_decay=WD,
  )
  data = _data(np.float32)
  _torch_steps(model, torch_optimizer, data, STOP)
  params = _jax_params(model)  # [w1, b1, w2, b2]; torch's order is [w1, w2, b1, b2]
  indices = [0, 2, 1, 3]
  single = adam_optax.adamw(LR, B1, B2, EPS, weight_decay=WD)
  _raises(
    r"param_groups\[1\]: learning_rate 0.03 \(torch: 0.01\)",
    lambda: adam_optax.state_from_torch(single, params, torch_optimizer, indices=indices),
  )
  labels = ["weights", "biases", "weights", "biases"]
  optimizer = optax.multi_transform(
    {
      "weights": adam_optax.adamw(LR, B1, B2, EPS, weight_decay=WD),
      "biases": adam_optax.adamw(1e-2, B1, B2, EPS, weight_decay=0.0),
    },
    labels,
  )
  state = adam_optax.state_from_torch(optimizer, params, torch_optimizer, indices=indices)
  ours, _ = _jax_steps(optimizer, params, state, data, MORE)
  back = adam_optax.state_to_torch(optimizer, state, params, indices=indices)
  assert [g["params"] for g in back["param_groups"]] == [[0, 1], [2, 3]]
  _torch_steps(model, torch_optimizer, data, MORE)
  assert _error(ours, _jax_params(model)) < 1e-5
  # One AdamW whose decayed and undecayed params are two torch groups is adamw(mask=...).
  split = torch.optim.AdamW(
    [{"params": weights}, {"params": biases, "weight_decay": 0.0}],
    lr=LR,
    betas=(B1, B2),
    eps=EPS,
    weight_decay=WD,
  )
  _torch_steps(model, split, data, 2)
  masked = adam_optax.adamw(LR, B1, B2, EPS, weight_decay=WD, mask=[True, False, True, False])
  state = adam_optax.state_from_torch(masked, _jax_params(model), split, indices=indices)
  assert int(state[0].count) == 2
  _raises(
    r"param_groups\[1\]: weight_decay 0.1 \(torch: 0.0\)",
    lambda: adam_optax.state_from_torch(single, _jax_params(model), split, indices=indices),
  )


def test_names_map_leaves_to_torch_parameters():
  model = _torch_model(np.float32)
  torch_optimizer = torch.optim.Adam(model.named_parameters(), lr=LR, betas=(B1, B2), eps=EPS)
  _torch_steps(model, torch_optimizer, _data(np.float32), 2)
  params = {
    name.replace(".", "_"): jnp.asarray(p.detach().numpy()) for name, p in model.named_parameters()
  }
  indices = {key: key.replace("_", ".") for key in params}
  state = adam_optax.state_from_torch(
    adam_optax.adam(LR, B1, B2, EPS), params, torch_optimizer, indices=indices
  )
  np.testing.assert_array_equal(
    state[0].mu["2_weight"], torch_optimizer.state_dict()["state"][2]["exp_avg"]
  )


@pytest.mark.devices(8)
def test_sharded_targets_keep_their_shardings():
  mesh = jax.make_mesh((8,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  torch_params = [torch.nn.Parameter(torch.randn(16, 4)), torch.nn.Parameter(torch.randn(8))]
  torch_optimizer = torch.optim.Adam(torch_params, lr=LR)
  for p in torch_params:
    p.grad = torch.ones_like(p)
  torch_optimizer.step()
  params = [jax.device_put(np.asarray(p.detach()), sharding) for p in torch_params]
  optimizer = adam_optax.skip_nonfinite(adam_optax.adam(LR))
  state = adam_optax.state_from_torch(optimizer, params, torch_optimizer)
  assert state.inner_state[0].mu[0].sharding == sharding  # the params' own
  zero1 = adam_optax.state_shardings(optimizer, params, mesh, zero1_axis="data")
  replicated = [
    jax.device_put(p, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    for p in params
  ]
  state = adam_optax.state_from_torch(optimizer, replicated, torch_optimizer, shardings=zero1)
  assert jax.tree.map(lambda a: a.sharding, state) == zero1
  np.testing.assert_array_equal(
    state.inner_state[0].nu[0], torch_optimizer.state_dict()["state"][0]["exp_avg_sq"]
  )
  _raises(
    r"one jax.sharding.Sharding per leaf",
    lambda: adam_optax.state_from_torch(optimizer, params, torch_optimizer, shardings=[sharding]),
  )


def test_target_dtypes_are_kept():
  params, torch_optimizer = _trained_torch("adam")
  half = [p.astype(jnp.bfloat16) for p in params]
  optimizer = adam_optax.adam(LR, B1, B2, EPS, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32)
  state = adam_optax.state_from_torch(optimizer, half, torch_optimizer)
  assert jax.tree.map(lambda a: a.dtype, state) == jax.tree.map(
    lambda a: a.dtype, optimizer.init(half)
  )
  np.testing.assert_array_equal(
    state[0].nu[1], torch_optimizer.state_dict()["state"][1]["exp_avg_sq"]
  )


def test_steps_beyond_float32():
  params = [jnp.ones(3)]
  weight = torch.nn.Parameter(torch.ones(3))
  torch_optimizer = torch.optim.Adam([weight], lr=LR)
  weight.grad = torch.ones(3)
  torch_optimizer.step()
  sd = copy.deepcopy(torch_optimizer.state_dict())
  sd["state"][0]["step"] = torch.tensor(2.0**24)  # where torch's float32 count stops
  state = adam_optax.state_from_torch(adam_optax.adam(LR), params, sd)
  assert int(state[0].count) == 2**24
  later = tuple(part._replace(count=jnp.asarray(2**24 + 5, jnp.int32)) for part in state[:2])
  later = (*later, *state[2:])
  back = adam_optax.state_to_torch(adam_optax.adam(LR), later, params)
  assert (
    back["state"][0]["step"].dtype == torch.float64 and back["state"][0]["step"].item() == 2**24 + 5
  )


ROUND_TRIP = {  # member: (ours, torch class), all in torch's convention
  "adam": (lambda: adam_optax.adam(LR, B1, B2, EPS), torch.optim.Adam),
  "amsgrad": (lambda: adam_optax.amsgrad(LR, B1, B2, EPS), torch.optim.Adam),
  "adamw": (lambda: adam_optax.adamw(LR, B1, B2, EPS, weight_decay=WD), torch.optim.AdamW),
  "nadamw": (
    lambda: adam_optax.nadamw(LR, B1, B2, EPS, weight_decay=WD, momentum_decay=PSI),
    torch.optim.NAdam,
  ),
  "adamax": (lambda: adam_optax.adamax(LR, B1, B2, EPS), torch.optim.Adamax),
}


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
  name=st.sampled_from(sorted(ROUND_TRIP)),
  shapes=st.lists(st.lists(st.integers(1, 3), max_size=3).map(tuple), min_size=1, max_size=3),
  count=st.integers(0, 2**31 - 1),
  seed=st.integers(0, 2**16),
)
def test_round_trip_is_the_identity(name, shapes, count, seed):
  make, torch_class = ROUND_TRIP[name]
  optimizer = make()
  rng = np.random.default_rng(seed)
  params = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
  state = optimizer.init(params)
  moments = state[0]._replace(
    count=jnp.asarray(count, jnp.int32),
    mu=[jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes],
    nu=[jnp.asarray(rng.exponential(size=s), jnp.float32) for s in shapes],
  )
  if moments.nu_max is not None:
    moments = moments._replace(nu_max=[v * 2 for v in moments.nu])
  counts = [
    leaf._replace(count=jnp.asarray(count, jnp.int32)) if "count" in leaf._fields else leaf
    for leaf in state[1:]
  ]
  state = (moments, *counts)
  exported = adam_optax.state_to_torch(optimizer, state, params)
  torch_params = [torch.nn.Parameter(torch.from_numpy(np.array(p))) for p in params]
  torch_optimizer = torch_class(torch_params)
  torch_optimizer.load_state_dict(exported)  # torch accepts it as it is
  back = adam_optax.state_from_torch(optimizer, params, torch_optimizer)
  jax.tree.map(np.testing.assert_array_equal, back, state)
  again = adam_optax.state_to_torch(optimizer, back, params)
  assert again["param_groups"] == exported["param_groups"]
  for index, entry in exported["state"].items():
    for key, value in entry.items():
      torch.testing.assert_close(again["state"][index][key], value, rtol=0, atol=0)


@pytest.mark.parametrize(("alias", "member"), [("adam", "nadam"), ("adamw", "nadamw")])
def test_nesterov_aliases_convert_as_the_nadam_they_are(alias, member):
  """adam(nesterov=True) is NAdam: it must not be exported as torch's Adam."""
  params = {"w": jnp.ones(3)}
  aliased = getattr(adam_optax, alias)(1e-3, nesterov=True)
  named = getattr(adam_optax, member)(1e-3)
  exported = adam_optax.state_to_torch(aliased, aliased.init(params), params)
  expected = adam_optax.state_to_torch(named, named.init(params), params)
  assert exported["param_groups"] == expected["param_groups"]
  assert "momentum_decay" in exported["param_groups"][0]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_states_convert_through_the_quantization(bits):
  """quantized(member): the converted state is init's quantization of the exact one."""
  torch.manual_seed(1)
  torch_params = [torch.nn.Parameter(torch.randn(64, 80)), torch.nn.Parameter(torch.randn(16))]
  torch_optimizer = torch.optim.AdamW(torch_params, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
  for _ in range(3):
    for p in torch_params:
      p.grad = torch.randn_like(p)
    torch_optimizer.step()
  params = [jnp.asarray(p.detach().numpy()) for p in torch_params]
  member = adam_optax.adamw(LR, B1, B2, EPS, weight_decay=WD)
  optimizer = adam_optax.quantized(member, bits)
  state = adam_optax.state_from_torch(optimizer, params, torch_optimizer)
  exact = adam_optax.state_from_torch(member, params, torch_optimizer)
  expected = adam_optax.quantized(member, bits).init(params)  # the layout init makes
  assert jax.tree.structure(state) == jax.tree.structure(expected)
  moments = state.inner_state[0]
  assert moments.mu[0].dtype == jnp.int8 and int(moments.count) == 3  # a placeholder: signed
  plain = dequantized(state, params).inner_state[0]
  np.testing.assert_array_equal(moments.mu[1], exact[0].mu[1])  # under min_size: exact
  for field in ("mu", "nu"):
    decoded = np.asarray(getattr(plain, field)[0])
    reference = np.asarray(getattr(exact[0], field)[0])
    assert np.max(np.abs(decoded - reference)) <= 0.1 * np.max(np.abs(reference))
    assert np.max(np.abs(decoded - reference)) > 0  # it was quantized
  # Back to torch: the dequantized moments, which torch then continues from.
  back = adam_optax.state_to_torch(optimizer, state, params)
  np.testing.assert_array_equal(back["state"][0]["exp_avg"], plain.mu[0])
  assert float(back["state"][0]["step"]) == 3
  # From optax: optax.adamw's state converts the same way.
  old = optax.adamw(LR, B1, B2, EPS, weight_decay=WD)
  old_state = old.init(params)
  grads = [jnp.ones_like(p) for p in params]
  _, old_state = old.update(grads, old_state, params)
  from_optax = adam_optax.state_from_optax(optimizer, params, old_state)
  assert jax.tree.structure(from_optax) == jax.tree.structure(expected)
  np.testing.assert_allclose(
    dequantized(from_optax, params).inner_state[0].mu[0], old_state[0].mu[0], rtol=0.02
  )
  # A quantized source (optax's own adamw wrapped) is dequantized first.
  wrapped = adam_optax.quantized(old, bits)
  _, wrapped_state = wrapped.update(grads, wrapped.init(params), params)
  again = adam_optax.state_from_optax(member, params, wrapped_state)
  np.testing.assert_array_equal(
    again[0].mu[0], dequantized(wrapped_state, params).inner_state[0].mu[0]
  )
  for wrapped in (  # quantized inside or outside other wrappers
    adam_optax.quantized(adam_optax.skip_nonfinite(member), bits),
    adam_optax.skip_nonfinite(optax.chain(optax.clip(1.0), optimizer)),
  ):
    converted = adam_optax.state_from_torch(wrapped, params, torch_optimizer)
    assert jax.tree.structure(converted) == jax.tree.structure(wrapped.init(params))
    is_moments = lambda x: isinstance(x, adam_optax.ScaleByMomentsState)  # noqa: E731
    moments = [x for x in jax.tree.leaves(converted, is_leaf=is_moments) if is_moments(x)]
    assert len(moments) == 1 and int(moments[0].count) == 3
    is_quantized = lambda x: isinstance(x, adam_optax.QuantizedState)  # noqa: E731
    (node,) = [x for x in jax.tree.leaves(converted, is_leaf=is_quantized) if is_quantized(x)]
    for name in ("signed", "unsigned"):
      np.testing.assert_array_equal(node.codes[name], state.codes[name])
    back = adam_optax.state_to_torch(wrapped, converted, params)
    np.testing.assert_array_equal(back["state"][0]["exp_avg"], plain.mu[0])


@pytest.mark.devices(8)
def test_quantized_states_keep_sharded_params_placement():
  mesh = jax.make_mesh((8,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  torch_params = [torch.nn.Parameter(torch.randn(64, 96))]
  torch_optimizer = torch.optim.Adam(torch_params, lr=LR)
  torch_params[0].grad = torch.ones_like(torch_params[0])
  torch_optimizer.step()
  params = [jax.device_put(np.asarray(torch_params[0].detach()), sharding)]
  optimizer = adam_optax.quantized(adam_optax.adam(LR))
  state = adam_optax.state_from_torch(optimizer, params, torch_optimizer)
  expected = adam_optax.state_shardings(optimizer, params)
  assert jax.tree.map(lambda a: a.sharding, state) == expected
  zero1 = adam_optax.state_shardings(optimizer, params, mesh, zero1_axis="data")
  state = adam_optax.state_from_torch(optimizer, params, torch_optimizer, shardings=zero1)
  assert jax.tree.map(lambda a: a.sharding, state) == zero1
  # The conversions leave init and state_shardings quantizing (no stale trace of init).
  assert adam_optax.state_shardings(optimizer, params) == expected
  assert jax.tree.structure(jax.eval_shape(optimizer.init, params)) == jax.tree.structure(state)
  _raises(
    r"state_from_torch\(shardings=...\): expected the shardings of optimizer.init",
    lambda: adam_optax.state_from_torch(optimizer, params, torch_optimizer, shardings=[sharding]),
  )
