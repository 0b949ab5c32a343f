"""cautious: the paper's cautious AdamW in float64, pytorch_optimizer 4.1.0's cautious Lion,
and the claim that every step opposes the gradient.

timm's ``cadamw`` (the issue's reference) cannot be imported here (it needs torchvision), so
its convention, which is the paper's, is checked against the equations written below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from pytorch_optimizer import Lion

import adam_optax
from tests.modern_checks import (
  check_composes,
  check_zero1,
  corrected_moments,
  linear_decay,
  problems,
  run_problems,
  start,
)
from tests.references import normwise_error, run_optax, run_torch


def paper(grads, params, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, *, mask_decay=False):
  """Cautious AdamW (Liang et al. 2024, Algorithm 2; timm's cadamw) in float64.

  The mask compares the sign of Adam's direction with the gradient's and the kept
  entries are scaled by 1 / max(mean(mask), 1e-3). timm decays every entry; with
  ``mask_decay`` the decay is part of the masked direction instead.
  """
  theta = np.asarray(params, np.float64)
  trajectory = []
  for t, g, m_hat, v_hat in corrected_moments(grads, b1, b2):
    direction = m_hat / (np.sqrt(v_hat) + eps)
    decay = weight_decay * theta
    if mask_decay:
      direction, decay = direction + decay, 0.0
    phi = (direction * g > 0).astype(np.float64)
    direction = direction * phi / max(phi.mean(), 1e-3)
    rate = lr(t - 1) if callable(lr) else lr
    theta = theta - rate * (direction + decay)
    trajectory.append(theta)
  return np.stack(trajectory)


def cautious_adamw_as_timm(lr, b1, b2, eps, weight_decay):
  """The direction masked, the decay not: timm's cadamw, pytorch_optimizer's convention."""
  direction = optax.chain(
    adam_optax.scale_by_moments(b1, b2, eps), adam_optax.bias_correction(b1, b2)
  )
  return optax.chain(
    adam_optax.cautious(direction, descent=False),
    adam_optax.add_decayed_weights(weight_decay),
    adam_optax.scale_by_lr(lr),
  )


CASES = {  # (learning rate, b1, b2, eps, weight decay)
  "plain": (1e-2, 0.9, 0.999, 1e-8, 0.0),
  "decay-schedule": (linear_decay, 0.8, 0.99, 1e-6, 0.1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cautious_adamw_matches_the_paper_in_float64(x64, case):
  lr, b1, b2, eps, wd = CASES[case]
  as_timm = run_problems(cautious_adamw_as_timm(lr, b1, b2, eps, wd), np.float64)
  whole = run_problems(
    adam_optax.cautious(adam_optax.adamw(lr, b1, b2, eps, weight_decay=wd)), np.float64
  )
  for problem, grads in problems(np.float64).items():
    params = start(np.float64)
    expected = paper(grads, params, lr, b1, b2, eps, wd)
    assert normwise_error(as_timm[problem], expected) < 1e-12, problem
    masked_decay = paper(grads, params, lr, b1, b2, eps, wd, mask_decay=True)
    assert normwise_error(whole[problem], masked_decay) < 1e-12, problem
    if wd:  # masking the decay too is a different optimizer
      assert normwise_error(masked_decay, expected) > 1e-4, problem


def _lion_runs(dtype, size, lr, wd, steps=100):
  """(params, ours, theirs): cautious Lion here and in pytorch_optimizer."""
  rng = np.random.default_rng(3)
  grads = [rng.standard_normal(size).astype(dtype) for _ in range(steps)]
  params = np.linspace(-0.5, 0.5, size).astype(dtype)

  def schedule(optimizer, count):
    optimizer.param_groups[0]["lr"] = float(lr(count))

  scheduled = callable(lr)
  theirs = run_torch(
    lambda p: Lion(
      p, lr=1.0 if scheduled else lr, betas=(0.9, 0.99), weight_decay=wd, cautious=True
    ),
    grads,
    params,
    before_step=schedule if scheduled else None,
  )
  direction = adam_optax.cautious(optax.scale_by_lion(0.9, 0.99), descent=False)
  ours = optax.chain(direction, optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))
  return params, run_optax(ours, grads, params), theirs


@pytest.mark.parametrize(("lr", "wd"), [(1e-2, 0.0), (linear_decay, 0.1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_pytorch_optimizer_cautious_lion_but_for_its_plus_one(request, dtype, lr, wd):
  """The same masks, and kept entries (k of n) scaled by n / k here, n / (k + 1) there.

  With fixed gradients Lion's masks do not depend on the params, so each step's
  direction, recovered from the trajectory, can be compared exactly.
  """
  if dtype == np.float64:
    request.getfixturevalue("x64")
  params, ours, theirs = _lion_runs(dtype, 64, lr, wd)
  rates = np.array([lr(t) if callable(lr) else lr for t in range(len(ours))], np.float64)

  def directions(trajectory):
    previous = np.vstack([params, trajectory[:-1]]).astype(np.float64)
    return -(trajectory - previous) / rates[:, None] - wd * previous

  tolerance = {np.float32: 1e-5, np.float64: 1e-12}[dtype]
  for mine, other in zip(directions(ours), directions(theirs), strict=True):
    kept = np.abs(mine) > 0.5  # entries are 0 or n / k (rounding aside)
    assert np.array_equal(kept, np.abs(other) > 0.5)  # the same mask
    k = kept.sum()
    np.testing.assert_allclose(mine[kept], other[kept] * (k + 1) / k, rtol=tolerance * 10)
    np.testing.assert_allclose(mine[~kept], 0.0, atol=tolerance * 10)
  assert normwise_error(ours, theirs) > 1e-4  # the +1 is not nothing at n = 64


MEMBERS = {
  "adamw": lambda: adam_optax.adamw(1e-2, weight_decay=0.1),
  "lion": lambda: optax.lion(1e-3, weight_decay=0.1),
  "adam_atan2": lambda: adam_optax.adam_atan2(1e-2),
  "sgd-momentum": lambda: optax.sgd(1e-2, momentum=0.9),
}


@pytest.mark.parametrize("member", list(MEMBERS))
def test_every_step_opposes_the_gradient(member):
  grads = {name: [jnp.asarray(g) for g in seq] for name, seq in problems(np.float32).items()}
  params = {name: jnp.asarray(start(np.float32)) for name in grads}

  def worst(optimizer):
    @jax.jit
    def step(params, state, g):
      updates, state = optimizer.update(g, state, params)
      products = jax.tree.map(lambda u, g: jnp.max(u * g), updates, g)
      return (
        optax.apply_updates(params, updates),
        state,
        jnp.max(jnp.stack(jax.tree.leaves(products))),
      )

    p, s, found = params, optimizer.init(params), []
    for t in range(len(grads["mlp"])):
      p, s, most = step(p, s, {name: seq[t] for name, seq in grads.items()})
      found.append(float(most))
    return max(found)

  assert worst(adam_optax.cautious(MEMBERS[member]())) <= 0.0  # every entry, every step
  assert worst(MEMBERS[member]()) > 0.0  # the base optimizer does step against the gradient


def test_state_is_the_inner_state_and_empty_leaves_pass():
  params = {"a": jnp.ones(3), "b": jnp.ones(2), "none": None}
  inner = adam_optax.adamw(0.1)
  optimizer = adam_optax.cautious(inner)
  state = optimizer.init(params)
  assert jax.tree.structure(state) == jax.tree.structure(inner.init(params))
  grads = {"a": jnp.array([1.0, -1.0, 2.0]), "b": jnp.ones(2), "none": None}
  updates, _ = optimizer.update(grads, state, params)
  assert updates["none"] is None
  outer = optax.masked(optimizer, {"a": True, "b": False, "none": False})
  updates, _ = outer.update(grads, outer.init(params), params)
  np.testing.assert_array_equal(updates["b"], grads["b"])
  assert np.all(np.asarray(updates["a"]) * np.asarray(grads["a"]) <= 0)


def test_bad_arguments_are_named():
  with pytest.raises(TypeError, match=r"cautious\(optimizer=...\).*function"):
    adam_optax.cautious(adam_optax.adamw)
  with pytest.raises(TypeError, match=r"cautious\(descent=...\)"):
    adam_optax.cautious(adam_optax.adamw(0.1), descent="yes")
  with pytest.raises(TypeError, match=r"cautious: .*\['a'\]"):
    optimizer = adam_optax.cautious(optax.sgd(0.1))
    optimizer.update({"a": jnp.ones(2, jnp.int32)}, optimizer.init({"a": jnp.ones(2)}))


def test_composes(strict_promotion):
  check_composes(lambda learning_rate: adam_optax.cautious(adam_optax.adamw(learning_rate)))


@pytest.mark.devices(8)
def test_zero1_state_shardings():
  check_zero1(lambda learning_rate: adam_optax.cautious(adam_optax.adamw(learning_rate)))
