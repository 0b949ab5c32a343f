"""skip_nonfinite: a NaN/inf step changes nothing, is counted, and is named."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_optax
from tests.references import gradient_sequence, normwise_error, run_optax

BAD_STEPS = {3: np.nan, 7: np.inf, 8: -np.inf}


def _poisoned(grads):
  grads = [g.copy() for g in grads]
  for step, value in BAD_STEPS.items():
    grads[step][5] = value
  return grads


def test_skipped_steps_leave_the_trajectory_of_the_clean_sequence():
  """Oracle: optax.adam on the same gradients with the bad steps left out."""
  grads = gradient_sequence(2, 40, 16, 1e-2)
  poisoned = _poisoned(grads)
  params = np.zeros(16, np.float32)
  guarded = run_optax(adam_optax.skip_nonfinite(adam_optax.adam(1e-2)), poisoned, params)
  clean = [g for step, g in enumerate(poisoned) if step not in BAD_STEPS]
  expected = run_optax(optax.adam(1e-2), clean, params)
  kept = [step for step in range(len(grads)) if step not in BAD_STEPS]
  assert normwise_error(guarded[kept], expected) < 2e-5
  np.testing.assert_array_equal(guarded[3], guarded[2])  # a skipped step moves nothing
  assert np.isnan(run_optax(adam_optax.adam(1e-2), poisoned, params)[-1, 5])  # unguarded: for good


def test_state_counts_and_report_name_the_leaf():
  optimizer = adam_optax.skip_nonfinite(adam_optax.adamw(1e-2, weight_decay=0.1))
  params = {"layer1": {"b": jnp.zeros(2), "w": jnp.ones((2, 2))}, "out": jnp.ones(3)}
  state = optimizer.init(params)
  assert adam_optax.nonfinite_report(state, params) == ("no step skipped: nothing went NaN/inf")
  step = jax.jit(optimizer.update)
  good = jax.tree.map(jnp.ones_like, params)
  bad = {"layer1": {"b": jnp.ones(2), "w": jnp.full((2, 2), jnp.inf)}, "out": jnp.full(3, jnp.nan)}
  _, state = step(good, state, params)
  inner_after_good = state.inner_state
  updates, state = step(bad, state, params)
  assert all(not np.any(u) for u in jax.tree.leaves(updates))
  kept = jax.tree.map(np.array_equal, state.inner_state, inner_after_good)
  assert all(jax.tree.leaves(kept))  # the inner state (counts, moments) is kept
  assert int(state.skipped) == 1
  assert adam_optax.nonfinite_report(state, params) == (
    "1 step skipped for NaN/inf gradients; in the last, 2 of 3 leaves, the first at ['layer1']['w']"
  )
  _, state = step(good, state, params)
  assert int(state.skipped) == 1 and int(state.inner_state[0].count) == 2


def test_dtypes_are_stable_and_the_step_compiles_once(strict_promotion):
  optimizer = adam_optax.skip_nonfinite(adam_optax.adam(1e-3))
  params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2, jnp.float32), "c": None}
  state = optimizer.init(params)
  step = jax.jit(chex.assert_max_traces(optimizer.update, n=1))
  for value in (1.0, np.nan, 1.0):
    grads = jax.tree.map(lambda p, v=value: jnp.full(p.shape, v, p.dtype), params)
    _, new_state = step(grads, state, params)
    assert jax.tree.map(jnp.result_type, new_state) == jax.tree.map(jnp.result_type, state)
    state = new_state
  assert int(state.skipped) == 1
  chex.clear_trace_counter()


def test_trees_without_leaves_and_bad_arguments():
  optimizer = adam_optax.skip_nonfinite(adam_optax.adam(1e-3))
  updates, state = optimizer.update({}, optimizer.init({}), {})
  assert updates == {} and int(state.skipped) == 0
  with pytest.raises(TypeError, match=r"skip_nonfinite\(inner=...\): expected an optax"):
    adam_optax.skip_nonfinite(adam_optax.adam)


def test_a_finite_gradient_that_overflows_the_second_moment_is_caught_and_named():
  """|g| = 1e20 is finite, but g^2 is not (float32): Adam's nu would turn inf for good and the
  param freeze. The default check looks at the new state and skips the step."""
  params = {"a": jnp.zeros(2), "w": jnp.zeros(3)}
  grads = {"a": jnp.ones(2), "w": jnp.array([1.0, 1e20, 1.0])}
  optimizer = adam_optax.skip_nonfinite(adam_optax.adam(1e-2))
  state = optimizer.init(params)
  updates, state = optimizer.update(grads, state, params)
  assert all(not np.any(u) for u in jax.tree.leaves(updates))
  assert int(state.skipped) == 1 and int(state.inner_state[0].count) == 0
  assert adam_optax.nonfinite_report(state, params) == (
    "1 step skipped for a NaN/inf optimizer state (the gradients were finite); "
    "in the last, 1 of 4 leaves, the first at [0].nu['w']"
  )
  # Checking the gradients alone (optax.apply_if_finite's rule) lets the overflow through.
  unguarded = adam_optax.skip_nonfinite(adam_optax.adam(1e-2), check="gradients")
  _, inner = unguarded.update(grads, unguarded.init(params), params)
  assert int(inner.skipped) == 0 and np.isinf(np.asarray(inner.inner_state[0].nu["w"][1]))


def test_nonfinite_updates_from_a_schedule_are_caught():
  # A skipped step keeps the inner state, the schedule's count included: once it
  # returns NaN at count 1, every later step is skipped too.
  schedule = lambda count: jnp.where(count == 1, jnp.nan, 1e-2)  # noqa: E731
  params = jnp.zeros(3)
  for check, skipped in (("updates", 2), ("all", 2), ("gradients", 0)):
    optimizer = adam_optax.skip_nonfinite(adam_optax.adam(schedule), check=check)
    state = optimizer.init(params)
    for _ in range(3):
      updates, state = optimizer.update(jnp.ones(3), state, params)
      params = optax.apply_updates(params, updates)
    assert int(state.skipped) == skipped, check
    assert np.isfinite(np.asarray(params)).all() == bool(skipped), check
    params = jnp.zeros(3)
  optimizer = adam_optax.skip_nonfinite(adam_optax.adam(schedule), check="updates")
  state = optimizer.init(params)
  for _ in range(2):
    _, state = optimizer.update(jnp.ones(3), state, params)
  assert adam_optax.nonfinite_report(state, params) == (
    "1 step skipped for NaN/inf updates (the gradients were finite); "
    "in the last, 1 of 1 leaves, the first at <root>"
  )
