"""The modern members compose like the rest of the family.

One table of members, one small test per composition: jit with donation,
``optax.chain``, ``inject_hyperparams`` (no recompile, same numbers),
``optax.MultiSteps``, weight-decay masks, ``skip_nonfinite``, ZeRO-1 state
shardings on the simulated 8-device mesh, ``bucket()`` layouts, bfloat16
params (float32 second moments) and strict dtype promotion. Every member is
built with a weight decay, so its decay block (and mask) is part of the chain.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_optax

MEMBERS = {
  "adopt": adam_optax.adopt,
  "radam": adam_optax.radam,
  "adabelief": adam_optax.adabelief,
  "laprop": adam_optax.laprop,
  "ademamix": adam_optax.ademamix,
  "simplified_ademamix": adam_optax.simplified_ademamix,
}
PARAMS = {"w": jnp.linspace(-1.0, 1.0, 16).reshape(8, 2), "b": jnp.linspace(0.5, -0.5, 8)}


def build(name, learning_rate=1e-2, **options):
  return MEMBERS[name](learning_rate, weight_decay=0.1, **options)


def grads_at(params, t):
  """Deterministic gradients that differ from step to step."""
  return jax.tree.map(lambda p: jnp.sin(3.0 * p + jnp.asarray(t, p.dtype)) + 0.1 * p, params)


def run(optimizer, params, steps=4, *, max_traces=None):
  def step(params, state, t):
    updates, state = optimizer.update(grads_at(params, t), state, params)
    return optax.apply_updates(params, updates), state

  if max_traces is not None:
    step = chex.assert_max_traces(step, n=max_traces)
  step = jax.jit(step, donate_argnums=(0, 1))
  params = jax.tree.map(jnp.copy, params)
  state = optimizer.init(params)
  for t in range(steps):
    params, state = step(params, state, jnp.float32(t))
  return params, state


def dtypes(tree):
  return jax.tree.map(lambda x: jnp.result_type(x), tree)


@pytest.mark.parametrize("name", MEMBERS)
def test_donated_jit_keeps_state_dtypes_and_does_not_retrace(name):
  optimizer = build(name)
  fresh = optimizer.init(PARAMS)
  params, state = run(optimizer, PARAMS, max_traces=1)
  chex.clear_trace_counter()
  assert dtypes(state) == dtypes(fresh)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))
  assert not np.allclose(params["w"], PARAMS["w"])


@pytest.mark.parametrize("name", MEMBERS)
def test_inject_hyperparams_matches_plain_and_changes_lr_without_recompiling(name):
  injected = optax.inject_hyperparams(MEMBERS[name])(learning_rate=1e-2, weight_decay=0.1)
  plain_params, _ = run(build(name), PARAMS)
  params, state = run(injected, PARAMS, max_traces=1)
  chex.clear_trace_counter()
  chex.assert_trees_all_close(params, plain_params, rtol=1e-6, atol=1e-7)
  assert set(state.hyperparams) >= {"learning_rate", "weight_decay"}


@pytest.mark.parametrize("name", MEMBERS)
def test_chain_and_multisteps(name):
  """Two accumulated micro-steps of MultiSteps are one step on their mean gradient."""
  optimizer = optax.chain(optax.clip_by_global_norm(10.0), build(name))
  accumulated = optax.MultiSteps(optimizer, every_k_schedule=2)
  state, micro = optimizer.init(PARAMS), accumulated.init(PARAMS)
  g0, g1 = grads_at(PARAMS, 0.0), grads_at(PARAMS, 1.0)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g0, g1)
  expected, _ = optimizer.update(mean, state, PARAMS)
  zeros, micro = accumulated.update(g0, micro, PARAMS)
  updates, micro = accumulated.update(g1, micro, PARAMS)
  chex.assert_trees_all_equal(zeros, jax.tree.map(jnp.zeros_like, PARAMS))
  chex.assert_trees_all_close(updates, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", MEMBERS)
def test_weight_decay_mask(name):
  """An undecayed leaf moves exactly as without any decay."""
  masked = build(name, mask={"w": True, "b": False})
  undecayed = MEMBERS[name](1e-2)
  params, _ = run(masked, PARAMS)
  reference, _ = run(undecayed, PARAMS)
  np.testing.assert_array_equal(params["b"], reference["b"])
  assert not np.array_equal(params["w"], reference["w"])


@pytest.mark.parametrize("name", MEMBERS)
def test_skip_nonfinite_leaves_params_and_state_unchanged(name):
  optimizer = adam_optax.skip_nonfinite(build(name))
  state = optimizer.init(PARAMS)
  updates, state = optimizer.update(grads_at(PARAMS, 0.0), state, PARAMS)
  params = optax.apply_updates(PARAMS, updates)
  poisoned = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads_at(params, 1.0))
  skipped, after = optimizer.update(poisoned, state, params)
  chex.assert_trees_all_equal(skipped, jax.tree.map(jnp.zeros_like, params))
  chex.assert_trees_all_equal(after.inner_state, state.inner_state)


@pytest.mark.devices(8)
@pytest.mark.parametrize("name", MEMBERS)
def test_zero1_state_shardings(name):
  optimizer = build(name)
  mesh = jax.make_mesh((8,), ("data",))
  shardings = adam_optax.state_shardings(optimizer, PARAMS, mesh, zero1_axis="data")
  state = adam_optax.init_sharded(optimizer, PARAMS, shardings)
  moments = [leaf for leaf in jax.tree.leaves(state) if jnp.shape(leaf) == (8, 2)]
  assert moments and all(leaf.sharding.spec[0] == "data" for leaf in moments)
  updates, _ = jax.jit(optimizer.update)(grads_at(PARAMS, 0.0), state, PARAMS)
  expected, _ = optimizer.update(grads_at(PARAMS, 0.0), optimizer.init(PARAMS), PARAMS)
  chex.assert_trees_all_close(updates, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", MEMBERS)
def test_bucketed_params_follow_the_tree(name):
  buckets, layout = adam_optax.bucket(PARAMS)
  optimizer = MEMBERS[name](1e-2)  # elementwise: a bucket is just a longer leaf
  tree, _ = run(optimizer, PARAMS)
  packed, _ = run(optimizer, buckets)
  chex.assert_trees_all_close(layout.unbucket(packed), tree, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", MEMBERS)
def test_bfloat16_params_keep_float32_second_moments(name, strict_promotion):
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  optimizer = build(name)
  fresh = optimizer.init(params)
  nu = [leaf for leaf in jax.tree.leaves(fresh) if jnp.result_type(leaf) == jnp.float32]
  assert len(nu) >= 2  # a float32 second moment per leaf
  params, state = run(optimizer, params)
  assert dtypes(state) == dtypes(fresh)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))
  assert all(np.all(np.isfinite(np.asarray(leaf, np.float32))) for leaf in jax.tree.leaves(params))
