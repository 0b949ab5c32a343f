"""The family beyond step-by-step parity: masks, schedules, conventions, dtypes, jit.

Each test would fail if the variant were a different one: the AMSGrad
conventions are checked to differ from one another and from Adam on the same
gradients, masked-out leaves to follow plain Adam exactly, and torch's NAdam to
differ from optax's formula unless its momentum schedule is switched off.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import adam_optax
from tests.references import algorithm1, normwise_error, run_optax, run_torch
from tests.test_family_parity import SIZE, TORCH_NADAM_WITHOUT_SCHEDULE, family_gradients

LR, WD = 1e-2, 0.5
HALF = SIZE // 2


def _tree(vector: np.ndarray) -> dict[str, np.ndarray]:
  return {"bias": vector[:HALF], "kernel": vector[HALF:]}  # leaves sorted as raveled


def _masked_problem(dtype):
  grads = family_gradients(3, dtype, 1.0, steps=100)
  params = np.linspace(-1, 1, SIZE).astype(dtype)
  decayed = np.arange(SIZE) >= HALF  # the kernel is decayed, the bias is not
  return grads, params, decayed


@pytest.mark.parametrize(
  "mask",
  [
    {"bias": False, "kernel": True},
    lambda params: {name: name != "bias" for name in params},  # no decay on biases
  ],
  ids=["pytree", "callable"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_mask(request, dtype, mask):
  if dtype == np.float64:
    request.getfixturevalue("x64")
  grads, params, decayed = _masked_problem(dtype)
  tree_grads = [_tree(g) for g in grads]
  ours = run_optax(adam_optax.adamw(LR, weight_decay=WD, mask=mask), tree_grads, _tree(params))
  theirs = run_optax(optax.adamw(LR, weight_decay=WD, mask=mask), tree_grads, _tree(params))
  reference = algorithm1(grads, params, LR, weight_decay=WD, decay_mask=decayed)
  plain = run_optax(adam_optax.adam(LR), grads, params)
  tolerance = {np.float32: 2e-6, np.float64: 1e-11}[dtype]
  assert normwise_error(ours, reference) < tolerance
  assert normwise_error(ours, theirs) < tolerance
  # Masked-out leaves get no decay at all: bit for bit plain Adam there.
  np.testing.assert_array_equal(ours[:, :HALF], plain[:, :HALF])
  assert normwise_error(ours[:, HALF:], plain[:, HALF:]) > 1e-3  # the decay acts
  # torch: a param group without decay is plain Adam on those leaves.
  kernel = run_torch(
    lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=WD), grads_half(grads, HALF), params[HALF:]
  )
  bias = run_torch(
    lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=0.0), grads_half(grads, 0), params[:HALF]
  )
  assert normwise_error(ours, np.concatenate([bias, kernel], axis=1)) < 4 * tolerance


def grads_half(grads, begin):
  return [g[begin : begin + HALF] for g in grads]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_schedules(request, dtype):
  """Scheduled learning rate and scheduled weight decay, as optax evaluates them."""
  if dtype == np.float64:
    request.getfixturevalue("x64")
  lr = optax.cosine_decay_schedule(LR, 100)
  wd = optax.linear_schedule(0.0, WD, 100)
  grads, params, _ = _masked_problem(dtype)
  ours = run_optax(adam_optax.adamw(lr, weight_decay=wd), grads, params)
  theirs = run_optax(optax.adamw(lr, weight_decay=wd), grads, params)

  # Schedules as optax (and so ours) evaluates them: jitted, at an int32 count.
  # (linear_schedule then computes in float32, and eagerly it rounds otherwise.)
  def lr_at(count):
    return float(jax.jit(lr)(jnp.asarray(count, jnp.int32)))

  def wd_at(count):
    return float(jax.jit(wd)(jnp.asarray(count, jnp.int32)))

  reference = algorithm1(grads, params, lr_at, weight_decay=wd_at)

  def set_schedules(optimizer, count):
    optimizer.param_groups[0]["lr"] = lr_at(count)
    optimizer.param_groups[0]["weight_decay"] = wd_at(count)

  torch_ = run_torch(
    lambda p: torch.optim.AdamW(p, lr=LR), grads, params, before_step=set_schedules
  )
  tolerance = {np.float32: 2e-6, np.float64: 1e-11}[dtype]
  assert normwise_error(ours, reference) < tolerance
  assert normwise_error(ours, theirs) < tolerance
  assert normwise_error(ours, torch_) < 4 * tolerance
  constant = run_optax(adam_optax.adamw(lr, weight_decay=WD), grads, params)
  assert normwise_error(ours, constant) > 1e-3  # the decay schedule is really used


def test_amsgrad_conventions_differ(x64):
  """The three conventions and Adam are four different optimizers here."""
  grads = family_gradients(5, np.float64, 1.0)
  params = np.zeros(SIZE)
  runs = {
    name: run_optax(adam_optax.amsgrad(1e-3, b2=0.99, convention=name), grads, params)
    for name in ("torch", "optax", "paper")
  }
  runs["adam"] = run_optax(adam_optax.adam(1e-3, b2=0.99), grads, params)
  names = sorted(runs)
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      assert normwise_error(runs[a], runs[b]) > 5e-2, (a, b)
  # and the default is torch's
  default = run_optax(adam_optax.amsgrad(1e-3, b2=0.99), grads, params)
  np.testing.assert_array_equal(default, runs["torch"])


def test_torch_nadam_differs_by_its_momentum_schedule(x64):
  """torch.optim.NAdam's default psi = 0.004 is another optimizer; psi -> inf is optax's."""
  grads = family_gradients(9, np.float64, 1.0)
  params = np.zeros(SIZE)
  ours = run_optax(adam_optax.nadam(1e-3), grads, params)
  ours_torch = run_optax(adam_optax.nadam(1e-3, momentum_decay=4e-3), grads, params)
  default = run_torch(lambda p: torch.optim.NAdam(p, lr=1e-3), grads, params)
  limit = run_torch(
    lambda p: torch.optim.NAdam(p, lr=1e-3, momentum_decay=TORCH_NADAM_WITHOUT_SCHEDULE),
    grads,
    params,
  )
  assert normwise_error(ours, limit) < 1e-11
  assert normwise_error(ours_torch, default) < 1e-11
  assert normwise_error(ours, default) > 1e-2
  # psi = 0 (a constant momentum b1 / 2) is valid in torch and here
  zero = run_torch(lambda p: torch.optim.NAdam(p, lr=1e-3, momentum_decay=0.0), grads, params)
  ours_zero = run_optax(adam_optax.nadam(1e-3, momentum_decay=0.0), grads, params)
  assert normwise_error(ours_zero, zero) < 1e-11


FAMILY = {
  "adam": lambda **k: adam_optax.adam(1e-3, **k),
  "adamw": lambda **k: adam_optax.adamw(1e-3, **k),
  "nadam": lambda **k: adam_optax.nadam(1e-3, **k),
  "nadamw": lambda **k: adam_optax.nadamw(1e-3, **k),
  "nadam-torch": lambda **k: adam_optax.nadam(1e-3, momentum_decay=4e-3, **k),
  "amsgrad-torch": lambda **k: adam_optax.amsgrad(1e-3, convention="torch", **k),
  "amsgrad-optax": lambda **k: adam_optax.amsgrad(1e-3, convention="optax", **k),
  "amsgrad-paper": lambda **k: adam_optax.amsgrad(1e-3, convention="paper", **k),
  "adamax": lambda **k: adam_optax.adamax(1e-3, **k),
}


@pytest.mark.parametrize("name", list(FAMILY))
def test_dtypes_are_kept_under_strict_promotion(strict_promotion, name):
  params = {
    "bf16": jnp.linspace(-1, 1, 8, dtype=jnp.bfloat16),
    "f16": jnp.linspace(-1, 1, 8, dtype=jnp.float16),
    "f32": jnp.linspace(-1, 1, 8, dtype=jnp.float32),
  }
  optimizer = FAMILY[name](mu_dtype=jnp.float32, nu_dtype=jnp.float32)
  state = optimizer.init(params)
  grads = jax.tree.map(jnp.zeros_like, params)  # all-zero: must stay finite
  updates, new_state = jax.jit(optimizer.update)(grads, state, params)
  assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
  assert jax.tree.map(lambda x: x.dtype, updates) == jax.tree.map(lambda x: x.dtype, params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", list(FAMILY))
def test_nu_max_only_when_amsgrad(name):
  state = FAMILY[name]().init(jnp.zeros(4))
  moments = state[0]
  assert isinstance(moments, adam_optax.ScaleByMomentsState)
  assert (moments.nu_max is not None) == name.startswith("amsgrad")


@pytest.mark.parametrize(
  "factory, extra",
  [
    (adam_optax.adamw, {"weight_decay": 0.1}),
    (adam_optax.nadamw, {"weight_decay": 0.1}),
    (adam_optax.nadam, {}),
    (adam_optax.nadam, {"momentum_decay": 4e-3}),
    (adam_optax.amsgrad, {}),
    (adam_optax.adamax, {}),
  ],
)
def test_inject_hyperparams_does_not_drift_or_retrace(factory, extra):
  grads = family_gradients(2, np.float32, 1.0, steps=20)
  params = np.linspace(-1, 1, SIZE).astype(np.float32)
  plain = run_optax(factory(1e-3, b1=0.9, b2=0.99, **extra), grads, params)
  injected_factory = optax.inject_hyperparams(factory)
  injected = run_optax(
    injected_factory(learning_rate=1e-3, b1=0.9, b2=0.99, **extra), grads, params
  )
  np.testing.assert_array_equal(injected, plain)

  optimizer = factory(1e-3, **extra)
  state = optimizer.init(params)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grad):
    updates, state = optimizer.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  p = jnp.asarray(params)
  for g in grads[:3]:
    p, state = step(p, state, jnp.asarray(g))


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: adam_optax.adamw(1e-3, weight_decay=-1.0), r"adamw\(weight_decay=-1.0\)"),
    (lambda: adam_optax.nadamw(1e-3, b2=1.0), r"nadamw\(b2=1.0\)"),
    (lambda: adam_optax.nadam(1e-3, momentum_decay=-1.0), r"nadam\(momentum_decay=-1.0\)"),
    (lambda: adam_optax.scale_by_moments(momentum_decay=4e-3), r"pass nesterov=True"),
    (lambda: adam_optax.amsgrad(1e-3, convention="keras"), r"amsgrad\(convention='keras'\)"),
    (lambda: adam_optax.adamax(-1.0), r"adamax\(learning_rate=-1.0\)"),
    (
      lambda: adam_optax.scale_by_moments(infinity_norm=True, nu_correction="downstream"),
      r"nu_correction must be 'none'",
    ),
    (
      lambda: adam_optax.scale_by_moments(eps_root=1e-8, infinity_norm=True),
      r"scale_by_moments\(eps_root=1e-08\)",
    ),
    (lambda: adam_optax.add_decayed_weights(float("nan")), r"add_decayed_weights\(weight_decay"),
  ],
)
def test_invalid_arguments_are_named(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_decay_needs_params():
  optimizer = adam_optax.adamw(1e-3)
  state = optimizer.init(jnp.zeros(3))
  with pytest.raises(ValueError, match="needs the params"):
    optimizer.update(jnp.zeros(3), state)


def _chain(*parts):
  return optax.chain(*parts, adam_optax.scale_by_lr(1e-3))


M, BC, WDECAY = (
  adam_optax.scale_by_moments,
  adam_optax.bias_correction,
  adam_optax.add_decayed_weights,
)
DOCUMENTED_CHAINS = {  # the chains the docstrings and the README show
  "adamw": (adam_optax.adamw(1e-3, weight_decay=0.1), _chain(M(), BC(), WDECAY(0.1))),
  "nadam": (adam_optax.nadam(1e-3), _chain(M(nesterov=True), BC())),
  "nadam-torch": (
    adam_optax.nadam(1e-3, momentum_decay=4e-3),
    _chain(M(nesterov=True, momentum_decay=4e-3), BC()),
  ),
  "nadamw": (
    adam_optax.nadamw(1e-3, weight_decay=0.1),
    _chain(M(nesterov=True), BC(), WDECAY(0.1)),
  ),
  "amsgrad-torch": (adam_optax.amsgrad(1e-3), _chain(M(amsgrad=True), BC())),
  "amsgrad-optax": (
    adam_optax.amsgrad(1e-3, convention="optax"),
    _chain(M(amsgrad=True, nu_correction="inside"), BC(0.9, None)),
  ),
  "amsgrad-paper": (
    adam_optax.amsgrad(1e-3, convention="paper"),
    _chain(M(amsgrad=True, nu_correction="none")),
  ),
  "adamax": (adam_optax.adamax(1e-3), _chain(M(infinity_norm=True), BC(0.9, None))),
}


@pytest.mark.parametrize("name", list(DOCUMENTED_CHAINS))
def test_each_variant_is_its_documented_chain(name):
  alias, chain = DOCUMENTED_CHAINS[name]
  grads = family_gradients(4, np.float32, 1.0, steps=30)
  params = np.linspace(-1, 1, SIZE).astype(np.float32)
  np.testing.assert_array_equal(run_optax(alias, grads, params), run_optax(chain, grads, params))
  state = alias.init(jnp.zeros(3))
  assert jax.tree.structure(state) == jax.tree.structure(chain.init(jnp.zeros(3)))
