"""adam is the chain of its parts; it composes with jit, optax and schedules."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_optax
from tests.references import algorithm1, gradient_sequence, normwise_error, run_optax

B1, B2, EPS = 0.85, 0.995, 1e-6
GRADS = gradient_sequence(11, 50, 16, 1e-2)
PARAMS = np.zeros(16, np.float32)


def _parts():
  return (
    adam_optax.scale_by_moments(b1=B1, b2=B2, eps=EPS),
    adam_optax.bias_correction(b1=B1, b2=B2),
    adam_optax.scale_by_lr(3e-3),
  )


def test_chain_of_parts_equals_adam_bit_for_bit():
  chained = run_optax(optax.chain(*_parts()), GRADS, PARAMS)
  alias = run_optax(adam_optax.adam(3e-3, b1=B1, b2=B2, eps=EPS), GRADS, PARAMS)
  np.testing.assert_array_equal(chained, alias)


def test_hand_applied_parts_equal_chain_and_optax():
  """Applying the three transforms one after another by hand, eagerly."""
  parts = _parts()
  states = [part.init(PARAMS) for part in parts]
  params = jnp.asarray(PARAMS)
  for grad in GRADS:
    updates = jnp.asarray(grad)
    for i, part in enumerate(parts):
      updates, states[i] = part.update(updates, states[i], params)
    params = optax.apply_updates(params, updates)
  reference = algorithm1(GRADS, PARAMS, 3e-3, B1, B2, EPS)
  optax_run = run_optax(optax.adam(3e-3, b1=B1, b2=B2, eps=EPS), GRADS, PARAMS)
  assert normwise_error(np.asarray(params)[None], reference[-1:]) < 2e-6
  assert normwise_error(np.asarray(params)[None], optax_run[-1:]) < 2e-5


def test_jit_equals_eager():
  optimizer = adam_optax.adam(3e-3, b1=B1, b2=B2, eps=EPS)
  jitted = run_optax(optimizer, GRADS, PARAMS, jit=True)
  eager = run_optax(optimizer, GRADS, PARAMS, jit=False)
  assert normwise_error(jitted, eager) < 1e-6  # XLA may fuse differently: rounding only


def _jitted_step(optimizer, max_traces=None):
  def step(params, state, grad):
    updates, state = optimizer.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  if max_traces is not None:
    step = chex.assert_max_traces(step, n=max_traces)
  return jax.jit(step)


def test_second_jitted_step_does_not_retrace():
  optimizer = adam_optax.adam(1e-3)
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  state = optimizer.init(params)
  step = _jitted_step(optimizer, max_traces=1)
  for _ in range(3):
    params, state = step(params, state, jax.tree.map(jnp.ones_like, params))
  chex.clear_trace_counter()


def test_inject_hyperparams_changes_lr_without_recompiling_and_matches_plain():
  optimizer = optax.inject_hyperparams(adam_optax.adam)(learning_rate=1e-2)
  plain = adam_optax.adam(1e-2)
  step, plain_step = _jitted_step(optimizer, max_traces=1), _jitted_step(plain)
  params = plain_params = jnp.zeros(16)
  state, plain_state = optimizer.init(params), plain.init(params)
  for grad in GRADS[:10]:
    params, state = step(params, state, jnp.asarray(grad))
    plain_params, plain_state = plain_step(plain_params, plain_state, jnp.asarray(grad))
  # Same code path for traced and concrete hyperparameters: no drift at all
  # (optax.inject_hyperparams(optax.adam) drifts by ~6e-7 from optax.adam here).
  np.testing.assert_array_equal(params, plain_params)

  state.hyperparams["learning_rate"] = jnp.zeros_like(state.hyperparams["learning_rate"])
  frozen, state = step(params, state, jnp.asarray(GRADS[10]))
  np.testing.assert_array_equal(frozen, params)  # lr 0: no move, no retrace
  chex.clear_trace_counter()


def test_schedule_matches_optax_adam_with_the_same_schedule():
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 50, 1e-4)
  ours = run_optax(adam_optax.adam(schedule), GRADS, PARAMS)
  theirs = run_optax(optax.adam(schedule), GRADS, PARAMS)
  assert normwise_error(ours, theirs) < 2e-5
  # The first update uses schedule(0) = 0: params do not move.
  np.testing.assert_array_equal(ours[0], PARAMS)


def test_meta_gradient_through_updates_is_finite_and_correct():
  """d(loss after 3 steps)/d(lr) with eps_root > 0, checked by finite differences."""
  target = jnp.array([1.0, -2.0, 0.5])

  def loss_after_steps(lr):
    optimizer = adam_optax.adam(lr, eps_root=1e-8)
    params = jnp.zeros(3)
    state = optimizer.init(params)
    for _ in range(3):
      grads = jax.grad(lambda p: jnp.sum((p - target) ** 2))(params)
      updates, state = optimizer.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    return jnp.sum((params - target) ** 2)

  with jax.enable_x64(True):
    lr = jnp.asarray(0.1, jnp.float64)
    grad = jax.jit(jax.grad(loss_after_steps))(lr)
    h = 1e-6
    finite_difference = (loss_after_steps(lr + h) - loss_after_steps(lr - h)) / (2 * h)
  assert np.isfinite(grad)
  np.testing.assert_allclose(grad, finite_difference, rtol=1e-6)


@pytest.mark.parametrize("transform", ["scale_by_moments", "bias_correction"])
def test_count_saturates_instead_of_overflowing(transform):
  part = getattr(adam_optax, transform)()
  state = part.init(jnp.zeros(2))
  state = state._replace(count=jnp.asarray(jnp.iinfo(jnp.int32).max, jnp.int32))
  updates, state = part.update(jnp.ones(2), state)
  assert state.count == jnp.iinfo(jnp.int32).max
  assert np.all(np.isfinite(updates))


def test_works_inside_optax_chain_with_clipping_and_masking():
  params = {"w": jnp.ones(4), "frozen": jnp.ones(2)}
  optimizer = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.masked(adam_optax.adam(0.1), {"w": True, "frozen": False}),
    optax.masked(optax.set_to_zero(), {"w": False, "frozen": True}),
  )
  state = optimizer.init(params)
  grads = {"w": jnp.full(4, 10.0), "frozen": jnp.full(2, 10.0)}
  updates, _ = jax.jit(optimizer.update)(grads, state, params)
  np.testing.assert_allclose(updates["w"], -0.1 * np.ones(4), rtol=1e-6)
  np.testing.assert_array_equal(updates["frozen"], np.zeros(2))


@pytest.mark.parametrize(
  "optimizer",
  [adam_optax.adam(1e-3), adam_optax.nadam(1e-3, momentum_decay=4e-3), adam_optax.amsgrad(1e-3)],
  ids=["adam", "nadam-torch", "amsgrad"],
)
def test_per_step_scalars_are_traced_once_per_dtype_not_once_per_leaf(optimizer):
  """Bias corrections and NAdam's series cost the same for 1 leaf or 64 (compile time)."""

  def scalar_work(n_leaves):
    params = {f"p{i}": jnp.zeros(3) for i in range(n_leaves)}
    state = optimizer.init(params)
    jaxpr = jax.make_jaxpr(optimizer.update)(params, state, params)
    return sum(eqn.primitive.name in ("log", "expm1") for eqn in jaxpr.jaxpr.eqns)

  assert scalar_work(1) > 0
  assert scalar_work(64) == scalar_work(1)
