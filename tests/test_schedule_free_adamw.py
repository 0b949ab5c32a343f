"""schedule_free_adamw against schedulefree 1.4.1, optax.contrib and Algorithm 1 in float64.

``bias_correction="learning_rate"`` is the paper's Algorithm 1 (and
``schedulefree.AdamWScheduleFreePaper``); ``"second_moment"`` is
``schedulefree.AdamWScheduleFreeReference`` (and ``AdamWScheduleFree``).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import schedulefree

import adam_optax
from tests.closed_loop import (
  PROBLEMS,
  all_problems,
  assert_injected_rate_matches_schedule,
  run_numpy,
  run_ours,
  run_torch,
)
from tests.references import normwise_error

TORCH_CLASS = {
  "learning_rate": schedulefree.AdamWScheduleFreePaper,
  "second_moment": schedulefree.AdamWScheduleFreeReference,
}
CONFIGS = {  # (lr, b1, b2, eps, warmup_steps, weight_decay)
  "plain": (1e-2, 0.9, 0.999, 1e-8, 0, 0.0),
  "warmup_decay": (3e-2, 0.95, 0.99, 1e-8, 10, 0.1),
  "eps_dominates": (1e-2, 0.9, 0.999, 1e-3, 5, 0.0),
}


def paper_step(lr, b1, b2, eps, warmup, weight_decay, bias_correction, power=2.0):
  """Algorithm 1 of Defazio et al. (2024) in float64, x, y, z kept explicitly; y returned."""
  memory: dict = {}

  def step(y, g, t):
    if not memory:
      memory.update(z=y.copy(), x=y.copy(), v=np.zeros_like(y), lr_max=0.0, weight_sum=0.0)
    rate = (lr(t - 1) if callable(lr) else lr) * (min(1.0, t / warmup) if warmup else 1.0)
    bias = -math.expm1(t * math.log(b2))
    memory["v"] = b2 * memory["v"] + (1 - b2) * g * g
    if bias_correction == "learning_rate":
      rate *= math.sqrt(bias)
      direction = g / (np.sqrt(memory["v"]) + eps)
    else:
      direction = g / (np.sqrt(memory["v"] / bias) + eps)
    memory["z"] = memory["z"] - rate * (direction + weight_decay * y)
    memory["lr_max"] = max(memory["lr_max"], rate)
    weight = memory["lr_max"] ** power
    memory["weight_sum"] += weight
    c = weight / memory["weight_sum"] if memory["weight_sum"] else 0.0
    memory["x"] = (1 - c) * memory["x"] + c * memory["z"]
    return b1 * memory["x"] + (1 - b1) * memory["z"]

  return step, memory


def torch_factory(bias_correction, lr, b1, b2, eps, warmup, weight_decay):
  def make(params):
    optimizer = TORCH_CLASS[bias_correction](
      params, lr=lr, betas=(b1, b2), eps=eps, warmup_steps=warmup, weight_decay=weight_decay
    )
    optimizer.train()
    return optimizer

  return make


def ours(bias_correction, lr, b1, b2, eps, warmup, weight_decay):
  return adam_optax.schedule_free_adamw(
    lr,
    b1,
    b2,
    eps,
    warmup_steps=warmup,
    weight_decay=weight_decay,
    bias_correction=bias_correction,
  )


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("bias_correction", ["learning_rate", "second_moment"])
def test_float32_matches_schedulefree(bias_correction, config):
  params, grad = all_problems()  # the quadratic, the MLP and the ill-scaled gradients
  hyper = CONFIGS[config]
  expected, reference = run_torch(torch_factory(bias_correction, *hyper), params, grad)
  actual, state = run_ours(ours(bias_correction, *hyper), params, grad)
  assert normwise_error(actual, expected) < 1e-5
  # The point to evaluate: the reference's x (its eval() mode) is ours, recovered from y and z.
  (torch_param,) = reference.param_groups[0]["params"]
  reference.eval()
  x = adam_optax.schedule_free_eval_params(state, jnp.asarray(actual[-1]))
  assert normwise_error(np.asarray(x)[None], torch_param.detach().numpy()[None]) < 1e-5


@pytest.mark.parametrize("bias_correction", ["learning_rate", "second_moment"])
def test_float64_matches_algorithm_1(x64, bias_correction):
  params, grad = all_problems()
  hyper = CONFIGS["warmup_decay"]
  step, memory = paper_step(*hyper, bias_correction)
  expected = run_numpy(step, params, grad)
  actual, state = run_ours(ours(bias_correction, *hyper), params, grad, np.float64)
  assert normwise_error(actual, expected) < 1e-12
  x = adam_optax.schedule_free_eval_params(state, jnp.asarray(actual[-1]))
  assert normwise_error(np.asarray(x)[None], memory["x"][None]) < 1e-12


def test_a_learning_rate_schedule_matches_the_reference_given_the_same_rates():
  params, grad = PROBLEMS["mlp"]()
  schedule = optax.linear_schedule(3e-2, 1e-3, 80)
  hyper = (3e-2, 0.9, 0.999, 1e-8, 10, 0.05)

  def set_lr(optimizer, step):
    optimizer.param_groups[0]["lr"] = float(schedule(step))

  make = torch_factory("second_moment", *hyper)
  expected, _ = run_torch(make, params, grad, before_step=set_lr)
  actual, _ = run_ours(ours("second_moment", schedule, *hyper[1:]), params, grad)
  assert normwise_error(actual, expected) < 1e-5


def test_the_two_bias_corrections_differ_and_each_matches_only_its_reference():
  """The paper puts sqrt(1 - b2^t) into the rate, hence into the averaging weights."""
  params, grad = PROBLEMS["ill_scaled"]()
  hyper = CONFIGS["eps_dominates"]
  paper, _ = run_ours(ours("learning_rate", *hyper), params, grad)
  reference, _ = run_ours(ours("second_moment", *hyper), params, grad)
  torch_reference, _ = run_torch(torch_factory("second_moment", *hyper), params, grad)
  assert normwise_error(paper, torch_reference) > 1e-2
  assert normwise_error(reference, torch_reference) < 1e-5


def test_optax_contrib_matches_without_warmup_and_lags_one_step_with_it():
  params, grad = PROBLEMS["quadratic"]()
  plain = run_ours(ours("second_moment", 1e-2, 0.9, 0.999, 1e-8, 0, 0.1), params, grad)[0]
  theirs = optax.contrib.schedule_free_adamw(1e-2, b1=0.9, weight_decay=0.1)
  with jax.numpy_dtype_promotion("standard"):
    assert normwise_error(run_ours(theirs, params, grad)[0], plain) < 1e-5
    # With a warm-up, optax's inner optimizer reads the schedule at step 0, where it is 0:
    # its first step leaves z, hence y, where it was; the reference moves by lr / warmup.
    warm = optax.contrib.schedule_free_adamw(1e-2, warmup_steps=10, weight_decay=0.1)
    optax_first = run_ours(warm, params, grad, steps=1)[0][0]
  ours_first = run_ours(ours("second_moment", 1e-2, 0.9, 0.999, 1e-8, 10, 0.1), params, grad)[0][0]
  torch_first = run_torch(
    torch_factory("second_moment", 1e-2, 0.9, 0.999, 1e-8, 10, 0.1), params, grad
  )[0][0]
  np.testing.assert_array_equal(optax_first, params.astype(np.float32))
  np.testing.assert_allclose(ours_first, torch_first, rtol=1e-6)
  assert np.abs(ours_first - params).max() > 1e-4


# ---------------------------------------------------------------- composition


def _tree():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.5, -0.5])}


def _loss(params):
  return jnp.sum(jnp.sin(params["w"]) ** 2) + jnp.sum((params["b"] - 1.0) ** 2)


def _train(optimizer, params, steps=5, jit=True, donate=True):
  state = optimizer.init(params)

  def step(params, state):
    updates, state = optimizer.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  if jit:
    step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def test_jit_with_donation_equals_eager_and_keeps_state_dtypes(strict_promotion):
  optimizer = adam_optax.schedule_free_adamw(1e-2, warmup_steps=3, weight_decay=0.1)
  eager = _train(optimizer, _tree(), steps=3, jit=False)
  jitted = _train(optimizer, _tree(), steps=3)
  chex.assert_trees_all_close(jitted, eager, rtol=1e-6)
  initial = optimizer.init(_tree())
  chex.assert_trees_all_equal_dtypes(jitted[1], initial)
  chex.assert_trees_all_equal_shapes(jitted[1], initial)


def test_inject_hyperparams_does_not_recompile_and_matches_plain():
  # An injected int (warmup_steps) is weakly typed at init and not after a MultiSteps update
  # (optax's inject_hyperparams), which would compile the step twice: keep it static.
  state = assert_injected_rate_matches_schedule(
    adam_optax.schedule_free_adamw,
    _tree(),
    _loss,
    static_args=("warmup_steps",),
    b1=0.9,
    weight_decay=0.1,
  )
  eval_params = adam_optax.schedule_free_eval_params(state, _tree())
  chex.assert_trees_all_equal_shapes(eval_params, _tree())


def test_chain_mask_multisteps_and_skip_nonfinite():
  mask = {"w": True, "b": False}
  optimizer = optax.chain(
    optax.clip_by_global_norm(1.0),
    adam_optax.schedule_free_adamw(1e-2, weight_decay=0.5, mask=mask),
  )
  wrapped = adam_optax.skip_nonfinite(optax.MultiSteps(optimizer, 2).gradient_transformation())
  params, state = _train(wrapped, _tree(), 6, donate=False)  # MultiSteps' state shares buffers
  # MultiSteps keeps the params between micro-steps, so both micro-gradients are the same:
  # 6 micro-steps with k = 2 are 3 plain steps.
  reference, _ = _train(optimizer, _tree(), 3)
  chex.assert_trees_all_close(params, reference, rtol=1e-6)
  x = adam_optax.schedule_free_eval_params(state, params)
  assert jax.tree.structure(x) == jax.tree.structure(params)
  # The mask: without decay on b, b's trajectory equals an undecayed run's.
  undecayed, _ = _train(adam_optax.schedule_free_adamw(1e-2), _tree(), 3)
  no_clip, _ = _train(adam_optax.schedule_free_adamw(1e-2, weight_decay=0.5, mask=mask), _tree(), 3)
  chex.assert_trees_all_close(no_clip["b"], undecayed["b"], rtol=1e-6)
  assert not np.allclose(no_clip["w"], undecayed["w"])


def test_skip_nonfinite_skips_a_nan_gradient_and_leaves_z_alone():
  optimizer = adam_optax.skip_nonfinite(adam_optax.schedule_free_adamw(1e-2))
  params = _tree()
  state = optimizer.init(params)
  nan = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  updates, new_state = jax.jit(optimizer.update)(nan, state, params)
  assert all(not np.any(u) for u in jax.tree.leaves(updates))
  chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)


@pytest.mark.devices(8)
def test_zero1_state_shardings_follow_the_params():
  mesh = jax.make_mesh((8,), ("data",))
  params = {"w": jnp.ones((16, 4)), "b": jnp.ones(8)}
  optimizer = adam_optax.schedule_free_adamw(1e-2, weight_decay=0.1)
  shardings = adam_optax.state_shardings(optimizer, params, mesh, zero1_axis="data")
  average = next(
    s
    for s in jax.tree.leaves(
      shardings, is_leaf=lambda n: isinstance(n, adam_optax.ScheduleFreeAverageState)
    )
    if isinstance(s, adam_optax.ScheduleFreeAverageState)
  )
  assert average.z["w"].spec == jax.sharding.PartitionSpec("data")
  assert average.lr_max.spec == jax.sharding.PartitionSpec()
  state = adam_optax.init_sharded(optimizer, params, shardings)
  chex.assert_trees_all_equal(state, optimizer.init(params))


def test_bucketed_params_give_the_same_trajectory():
  tree = _tree()
  buckets, layout = adam_optax.bucket(tree)
  optimizer = adam_optax.schedule_free_adamw(1e-2, warmup_steps=2, weight_decay=0.1)
  on_tree, _ = _train(optimizer, tree, 4)
  state = optimizer.init(buckets)

  @jax.jit
  def step(buckets, state):
    grads = jax.grad(lambda b: _loss(layout.unbucket(b)))(buckets)
    updates, state = optimizer.update(grads, state, buckets)
    return optax.apply_updates(buckets, updates), state

  for _ in range(4):
    buckets, state = step(buckets, state)
  chex.assert_trees_all_close(layout.unbucket(buckets), on_tree, rtol=1e-6, atol=1e-7)


def test_bfloat16_params_keep_a_float32_second_moment_and_train():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _tree())
  optimizer = adam_optax.schedule_free_adamw(3e-2)
  trained, state = _train(optimizer, params, 20)
  moments = state[0]
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(moments.nu))
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(trained))
  x = adam_optax.schedule_free_eval_params(state, trained)
  assert float(_loss(jax.tree.map(lambda p: p.astype(jnp.float32), x))) < float(_loss(_tree()))


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"b1": 0.0}, r"schedule_free_adamw\(b1=0.0\): b1 must be in \(0, 1\)"),
    ({"b1": 1.0}, r"b1 must be a number in \[0, 1\)"),
    ({"b2": -0.1}, r"b2 must be"),
    ({"eps": -1.0}, r"eps must be"),
    ({"warmup_steps": 2.5}, r"warmup_steps must be an int >= 0"),
    ({"warmup_steps": -1}, r"warmup_steps must be an int >= 0"),
    ({"weight_lr_power": -2.0}, r"weight_lr_power must be"),
    ({"weight_decay": -0.1}, r"weight_decay must be"),
    ({"bias_correction": "torch"}, r"bias_correction must be one of"),
  ],
)
def test_bad_hyperparameters_are_named_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    adam_optax.schedule_free_adamw(1e-2, **kwargs)


def test_eval_params_needs_a_schedule_free_state():
  with pytest.raises(ValueError, match="found 0"):
    adam_optax.schedule_free_eval_params(adam_optax.adam(1e-2).init(_tree()), _tree())
  with pytest.raises(ValueError, match="update needs the params"):
    optimizer = adam_optax.schedule_free_adamw(1e-2)
    optimizer.update(_tree(), optimizer.init(_tree()))
