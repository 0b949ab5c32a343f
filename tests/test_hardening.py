"""Regressions for the outside attack (issue 8): each case gave a silent wrong result or an
error that did not name the problem, before the fix. Numbers refer to the issue's items.
"""

from __future__ import annotations

import fractions
import os
import re
import subprocess
import sys
import textwrap
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_optax

FAMILY = {
  "adam": adam_optax.adam,
  "adamw": adam_optax.adamw,
  "nadam": adam_optax.nadam,
  "nadamw": adam_optax.nadamw,
  "amsgrad": adam_optax.amsgrad,
  "adamax": adam_optax.adamax,
}


def _step(optimizer, params, state, grads):
  updates, state = optimizer.update(grads, state, params)
  return optax.apply_updates(params, updates), updates, state


# 1. Explicit-mesh sharding is kept by init, so the state's type is stable.


@pytest.mark.devices(8)
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_1_init_keeps_the_params_sharding_like_optax(name, axis_type):
  mesh = jax.make_mesh((8,), ("x",), axis_types=(axis_type,))
  params = {"w": jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, P("x"))), "b": 1.0}
  optimizer = FAMILY[name](1e-3)
  state = optimizer.init(params)
  moments = state[0]
  for tree in (moments.mu, moments.nu):
    assert tree["w"].sharding == params["w"].sharding
    assert jax.typeof(tree["w"]) == jax.typeof(optax.adam(1e-3).init(params)[0].mu["w"])
  # The state after a step has the type it had after init: scan and jit accept it.
  grads = jax.tree.map(jnp.ones_like, params)
  _, new_state = jax.jit(optimizer.update)(grads, state, params)
  assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(jax.typeof, state)

  def body(carry, _):
    _, carry = optimizer.update(grads, carry, params)
    return carry, None

  jax.lax.scan(body, state, length=2)


@pytest.mark.devices(8)
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_1_jitted_step_on_a_mesh_compiles_once(axis_type):
  """The counts are born replicated on the params' mesh, where the step leaves them.

  (optax.adam's eagerly built count is an uncommitted single-device array, so its
  jitted step compiles a second time once the count comes back on the mesh.)
  """
  mesh = jax.make_mesh((8,), ("x",), axis_types=(axis_type,))
  params = {"w": jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, P("x"))), "b": 1.0}
  schedule = optax.linear_schedule(1e-3, 0.0, 10)
  optimizer = adam_optax.skip_nonfinite(adam_optax.adamw(schedule, weight_decay=schedule))
  step = jax.jit(chex.assert_max_traces(optimizer.update, n=1))
  state = optimizer.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):
    _, new_state = step(grads, state, params)
    assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(jax.typeof, state)
    state = new_state
  chex.clear_trace_counter()
  traces = []  # the anchor, for the README's claim: optax.adam's step compiles twice

  def optax_update(grads, state, params):
    traces.append(1)
    return optax.adam(1e-3).update(grads, state, params)

  optax_step, optax_state = jax.jit(optax_update), optax.adam(1e-3).init(params)
  for _ in range(3):
    _, optax_state = optax_step(grads, optax_state, params)
  assert len(traces) == 2


# 2. Half-precision params: the second moment is float32 by default.


def _float16_run(optimizer, scale, steps):
  params = jnp.zeros(8, jnp.float16)
  state = optimizer.init(params)

  def body(carry, _):
    params, state = carry
    grads = jnp.full(8, scale, jnp.float16)
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.lax.scan(body, (params, state), length=steps)
  return np.asarray(params, np.float32), state


@pytest.mark.parametrize("scale", [1e-3, 1e-4, 300.0, 6e4])
def test_2_float16_params_follow_float32_adam_at_small_and_large_gradients(scale):
  """Oracle: the same run in float32. float16 nu underflowed below ~1e-3, overflowed above 256."""
  steps, lr = 1500, 2.0**-10  # float16 holds multiples of 2^-10 exactly up to 2
  ours, state = _float16_run(adam_optax.adam(lr), scale, steps)
  assert state[0].nu.dtype == jnp.float32 and state[0].mu.dtype == jnp.float16
  params = jnp.zeros(8, jnp.float32)
  reference = optax.adam(lr)
  ref_state = reference.init(params)
  for _ in range(steps):
    params, _, ref_state = _step(reference, params, ref_state, jnp.full(8, scale, jnp.float32))
  # float16 params move in steps of their own rounding: compare at float16's resolution.
  np.testing.assert_allclose(ours, np.asarray(params), rtol=2e-2)
  # What the old default (a float16 second moment) gives: far away, or frozen where nu
  # overflowed (at 0 for 6e4, at -1.30 for 300, whose nu passes 65504 after ~1300 steps).
  old, _ = _float16_run(adam_optax.adam(lr, nu_dtype=jnp.float16), scale, steps)
  assert not np.allclose(old, np.asarray(params), rtol=0.1)


def test_2_bfloat16_params_get_a_float32_second_moment_and_an_explicit_override():
  params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
  moments = adam_optax.adam(1e-3).init(params)[0]
  assert moments.mu["a"].dtype == jnp.bfloat16 and moments.nu["a"].dtype == jnp.float32
  assert moments.nu["b"].dtype == jnp.float32
  moments = adam_optax.adam(1e-3, nu_dtype=jnp.bfloat16).init(params)[0]
  assert moments.nu["a"].dtype == jnp.bfloat16


# 3. Hyperparameters are checked as the float32 arithmetic will use them.


@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("beta", ["b1", "b2"])
def test_3_betas_that_round_to_one_in_float32_are_rejected(name, beta):
  with pytest.raises(ValueError, match=rf"{name}\({beta}=0.99999999\): {beta} rounds to 1.0 in"):
    FAMILY[name](1e-3, **{beta: 0.99999999})


def test_3_what_optax_adam_does_with_betas_that_round_to_one():
  """The anchor, for the README: optax.adam steps by -inf (b1) or never moves (b2)."""
  params = jnp.ones(2)
  for beta, expected in (("b1", -np.inf), ("b2", 0.0)):
    reference = optax.adam(1e-3, **{beta: 0.99999999})
    updates, _ = reference.update(jnp.ones(2), reference.init(params), params)
    np.testing.assert_array_equal(updates, expected)


def test_3_betas_that_round_to_one_pass_with_float64_but_not_with_float32_params(x64):
  """With x64 on, float64 params can use them; float32 params fail at trace time."""
  optimizer = adam_optax.adam(1e-3, b2=0.99999999)
  params64 = jnp.zeros(3, jnp.float64)
  updates, _ = optimizer.update(jnp.ones(3), optimizer.init(params64), params64)
  assert np.isfinite(np.asarray(updates)).all()
  params32 = jnp.zeros(3, jnp.float32)
  with pytest.raises(ValueError, match=r"b2 rounds to 1.0 in float32"):
    optimizer.update(jnp.ones(3, jnp.float32), optimizer.init(params32), params32)


def test_3_values_that_overflow_float32_are_rejected():
  with pytest.raises(ValueError, match=r"adam\(learning_rate=1e\+39\): learning_rate overflows"):
    adam_optax.adam(1e39)
  with pytest.raises(ValueError, match=r"eps overflows to inf in float32"):
    adam_optax.adam(1e-3, eps=1e300)


# 4. eps = 0: a zero (or underflowing) second moment gives a zero step, not NaN or inf.


@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("lr", [0.0, 1e-3])
def test_4_eps_zero_with_zero_and_tiny_gradients_stays_finite(name, lr):
  optimizer = FAMILY[name](lr, eps=0.0)
  params = jnp.ones(4)
  state = optimizer.init(params)
  for grads in (jnp.array([0.0, 1.0, 0.0, 1e-20]), jnp.array([0.0, 1.0, 1e-30, 0.0])):
    params, updates, state = _step(optimizer, params, state, grads)
    assert np.isfinite(np.asarray(updates)).all(), (name, updates)
    assert np.isfinite(np.asarray(jax.tree.leaves(state[0])[1:], np.float32)).all()
  if name not in ("adamw", "nadamw"):  # (their weight decay moves every entry)
    assert float(updates[0]) == 0.0  # never a gradient there: no step
  if lr:
    assert float(updates[1]) != 0.0


def test_4_eps_zero_steps_are_exact_where_the_second_moment_is_representable():
  """Kingma & Ba 2.1: with eps = 0 the first step is exactly -lr sign(g), down to |g| = 1e-17."""
  grads = jnp.array([1e-17, -1e-10, 3.0, 0.0])
  optimizer = adam_optax.adam(0.1, eps=0.0)
  updates, _ = optimizer.update(grads, optimizer.init(grads), grads)
  np.testing.assert_allclose(updates, [-0.1, 0.1, -0.1, 0.0], rtol=1e-6)


# 5. Schedules must return scalars.


def test_5_a_schedule_returning_an_array_is_rejected_instead_of_broadcasting():
  optimizer = adam_optax.adam(lambda count: jnp.full(3, 1e-3))
  params = jnp.asarray(1.0)
  with pytest.raises(ValueError, match=r"the learning_rate schedule returned an array of shape"):
    optimizer.update(jnp.asarray(1.0), optimizer.init(params), params)
  optimizer = adam_optax.adamw(1e-3, weight_decay=lambda count: jnp.ones(2))
  with pytest.raises(ValueError, match=r"adamw: the weight_decay schedule returned an array"):
    optimizer.update(jnp.asarray(1.0), optimizer.init(params), params)


def test_5_a_schedule_returning_a_complex_or_bool_is_rejected():
  params = jnp.ones(2)
  for schedule in (lambda c: jnp.asarray(1e-3 + 1j), lambda c: jnp.asarray(True)):
    optimizer = adam_optax.adam(schedule)
    with pytest.raises(TypeError, match=r"learning_rate schedule returned a .* expected a real"):
      optimizer.update(params, optimizer.init(params), params)


def test_5_a_schedule_that_takes_no_step_count_is_named():
  params = jnp.ones(2)
  for optimizer, name in (
    (adam_optax.adam(lambda: 1e-3), "learning_rate"),
    (adam_optax.adamw(1e-3, weight_decay=lambda: 0.1), "weight_decay"),
  ):
    with pytest.raises(TypeError, match=rf"\w+\({name}=\.\.\.\): calling the schedule with the"):
      optimizer.update(params, optimizer.init(params), params)


# 6. params are checked against the state in update.


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_6_params_of_the_wrong_shape_are_rejected(name):
  optimizer = FAMILY[name](1e-3)
  state = optimizer.init(jnp.ones(3))
  with pytest.raises(ValueError, match=re.escape("the param at <root> has shape (3, 1)")):
    jax.jit(optimizer.update)(jnp.ones(3), state, jnp.ones((3, 1)))
  with pytest.raises(ValueError, match="the param tree's structure differs"):
    optimizer.update(jnp.ones(3), state, {"w": jnp.ones(3)})


def test_6_add_decayed_weights_alone_checks_params_against_updates():
  transform = adam_optax.add_decayed_weights(0.1)
  with pytest.raises(ValueError, match=re.escape("the update at <root> has shape (3,)")):
    transform.update(jnp.ones(3), transform.init(None), jnp.ones((3, 1)))


# 7. Integer params and complex gradients on real params.


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_7_integer_params_are_rejected_at_init_naming_the_leaf(name):
  params = {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)}
  with pytest.raises(TypeError, match=re.escape("the param at ['step'] has dtype int32")):
    FAMILY[name](1e-3).init(params)
  with pytest.raises(TypeError, match=re.escape("the param at ['flag'] has dtype bool")):
    FAMILY[name](1e-3).init({"flag": np.array([True])})


def test_7_complex_gradients_on_real_params_are_rejected_naming_the_leaf():
  optimizer = adam_optax.adam(1e-3)
  params = {"w": jnp.ones(2)}
  with pytest.raises(TypeError, match=re.escape("the gradient at ['w'] is complex64 but the")):
    optimizer.update({"w": jnp.ones(2, jnp.complex64)}, optimizer.init(params), params)
  # Real gradients on complex params are complex gradients with no imaginary part:
  # the momentum's imaginary part is kept and the update is complex.
  complex_params = {"w": jnp.ones(2, jnp.complex64)}
  state = optimizer.init(complex_params)
  _, state = optimizer.update({"w": jnp.array([1j, 1j], jnp.complex64)}, state, complex_params)
  updates, state = optimizer.update({"w": jnp.ones(2)}, state, complex_params)
  reference = optax.adam(1e-3)
  ref_state = reference.init(complex_params)
  _, ref_state = reference.update({"w": jnp.array([1j, 1j])}, ref_state, complex_params)
  expected, _ = reference.update({"w": jnp.ones(2, jnp.complex64)}, ref_state, complex_params)
  assert updates["w"].dtype == jnp.complex64 and state[0].mu["w"].dtype == jnp.complex64
  np.testing.assert_allclose(updates["w"], expected["w"], rtol=3e-5)  # optax rounds 1 - b2 apart


# 8. Python float leaves and NumPy float64 leaves.


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_8_python_float_leaves_work_like_optax(name):
  params = {"a": 1.0, "b": jnp.ones(2)}
  grads = {"a": 0.5, "b": jnp.ones(2)}
  optimizer = FAMILY[name](0.1)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  reference = getattr(optax, name)(0.1)
  expected, _ = reference.update(grads, reference.init(params), params)
  chex.assert_trees_all_close(updates, expected, rtol=1e-5)
  assert jnp.result_type(updates["a"]) == jnp.float32


def test_8_numpy_float64_leaves_with_x64_off_give_no_warnings():
  params = np.ones(3)
  optimizer = adam_optax.adamw(0.1)
  state = optimizer.init(params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    updates, state = optimizer.update(np.ones(3), state, params)
    updates, state = optimizer.update(np.ones(3), state, params)
  assert updates.dtype == jnp.float32


# 9. Flags are real bools; adamw(weight_decay=None) is an error.


@pytest.mark.parametrize(
  ("make", "flag"),
  [
    (lambda v: adam_optax.adam(1e-3, nesterov=v), "nesterov"),
    (lambda v: adam_optax.adamw(1e-3, nesterov=v), "nesterov"),
    (lambda v: adam_optax.scale_by_moments(amsgrad=v), "amsgrad"),
    (lambda v: adam_optax.scale_by_moments(infinity_norm=v), "infinity_norm"),
    (lambda v: adam_optax.skip_nonfinite(adam_optax.adam(1e-3), check=v), "check"),
  ],
)
@pytest.mark.parametrize("value", ["False", 1, None])
def test_9_flags_must_be_bools(make, flag, value):
  with pytest.raises((TypeError, ValueError), match=rf"\({flag}=.*\): {flag} must be"):
    make(value)


@pytest.mark.parametrize("name", ["adamw", "nadamw"])
def test_9_weight_decay_none_is_an_error_as_in_optax(name):
  with pytest.raises(ValueError, match=rf"{name}\(weight_decay=...\): weight_decay must be"):
    FAMILY[name](1e-3, weight_decay=None)


# 10. Errors that name the problem.


def test_10_an_adam_state_given_to_amsgrad_names_nu_max():
  params = jnp.ones(3)
  state = adam_optax.adam(1e-3).init(params)
  with pytest.raises(TypeError, match=r"made by an optimizer without amsgrad .* nu_max"):
    adam_optax.amsgrad(1e-3).update(params, state, params)
  ams_state = adam_optax.amsgrad(1e-3).init(params)
  with pytest.raises(TypeError, match=r"made by an optimizer with amsgrad=True"):
    adam_optax.adam(1e-3).update(params, ams_state, params)


def test_10_a_constant_lr_state_given_to_a_scheduled_optimizer_says_so():
  params = jnp.ones(3)
  state = adam_optax.adam(1e-3).init(params)
  scheduled = adam_optax.adam(optax.linear_schedule(1e-3, 0.0, 10))
  with pytest.raises(TypeError, match=r"scale_by_lr.update: the rate is a schedule"):
    scheduled.update(params, state, params)
  with pytest.raises(TypeError, match=r"scale_by_lr.update: the rate is a constant"):
    adam_optax.adam(1e-3).update(params, scheduled.init(params), params)


def test_10_a_bare_state_given_to_skip_nonfinite_names_its_state_type():
  params = jnp.ones(3)
  state = adam_optax.adam(1e-3).init(params)
  with pytest.raises(TypeError, match=r"skip_nonfinite.update: expected the SkipNonfiniteState"):
    adam_optax.skip_nonfinite(adam_optax.adam(1e-3)).update(params, state, params)


def test_10_state_of_another_type_in_the_building_blocks():
  with pytest.raises(TypeError, match=r"expected the ScaleByMomentsState"):
    adam_optax.scale_by_moments().update(jnp.ones(2), optax.EmptyState())
  with pytest.raises(TypeError, match=r"expected the BiasCorrectionState"):
    adam_optax.bias_correction().update(jnp.ones(2), optax.EmptyState())


@pytest.mark.parametrize(
  "mask",
  [{"w": True}, {"w": True, "b": {"x": False}}, lambda p: {"w": True}, {"w": 1, "b": False}],
  ids=["missing-key", "too-deep", "callable-wrong", "not-bool"],
)
def test_10_a_mask_of_the_wrong_structure_is_named(mask):
  params = {"w": jnp.ones(2), "b": jnp.ones(1)}
  with pytest.raises((ValueError, TypeError), match=r"adamw\(mask=...\): the mask"):
    adam_optax.adamw(1e-3, mask=mask).init(params)


def test_10_a_prefix_mask_is_still_accepted():
  params = {"layer": {"w": jnp.ones(2), "b": jnp.ones(1)}, "out": jnp.ones(1)}
  optimizer = adam_optax.adamw(0.1, weight_decay=1.0, mask={"layer": True, "out": False})
  updates, _ = optimizer.update(params, optimizer.init(params), params)
  np.testing.assert_allclose(updates["out"], -0.1)
  np.testing.assert_allclose(updates["layer"]["w"], -0.2)


@pytest.mark.parametrize(
  ("axis", "error", "message"),
  [
    (1, TypeError, "zero1_axis must be a mesh axis name or a tuple of distinct names"),
    (("data", "data"), ValueError, "zero1_axis must be a mesh axis name or a tuple of distinct"),
    ("model", ValueError, "'model' is not an axis of the params' mesh"),
  ],
)
@pytest.mark.devices(8)
def test_10_zero1_axis_is_validated(axis, error, message):
  mesh = jax.make_mesh((8,), ("data",))
  with pytest.raises(error, match=re.escape(message)):
    adam_optax.state_shardings(adam_optax.adam(1e-3), {"w": jnp.ones(8)}, mesh, zero1_axis=axis)


def test_10_huge_and_exotic_numbers():
  with pytest.raises(ValueError, match=r"adam\(learning_rate=.*\): learning_rate must be a finite"):
    adam_optax.adam(10**400)
  with pytest.raises(ValueError, match=r"adam\(b1=.*\): b1 must be a number in \[0, 1\)"):
    adam_optax.adam(1e-3, b1=10**400)
  # A Fraction is a real number: accepted, and it works at the first update.
  optimizer = adam_optax.adam(fractions.Fraction(1, 10), b1=fractions.Fraction(9, 10))
  updates, _ = optimizer.update(jnp.ones(2), optimizer.init(jnp.ones(2)))
  np.testing.assert_allclose(updates, -0.1, rtol=1e-6)


@pytest.mark.parametrize(
  "transform", [adam_optax.bias_correction(), adam_optax.scale_by_lr(1e-3)], ids=["bias", "lr"]
)
def test_10_integer_updates_into_a_building_block_name_it(transform):
  params = {"w": jnp.ones(2)}
  state = transform.init(params)
  with pytest.raises(TypeError, match=r"(bias_correction|scale_by_lr): the update at \['w'\]"):
    transform.update({"w": jnp.ones(2, jnp.int32)}, state, params)


# 11. inject_hyperparams with a complex first param.


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_11_inject_hyperparams_with_complex_params_matches_the_plain_optimizer(name):
  params = {"a": jnp.array([1.0 + 2.0j, -1.0j], jnp.complex64), "b": jnp.ones(2)}
  grads = {"a": jnp.array([0.5 - 1.0j, 2.0 + 0.0j], jnp.complex64), "b": jnp.full(2, 0.5)}
  injected = optax.inject_hyperparams(FAMILY[name])(learning_rate=0.1)
  plain = FAMILY[name](0.1)
  state = injected.init(params)
  plain_state = plain.init(params)
  for _ in range(3):
    updates, state = jax.jit(injected.update)(grads, state, params)
    expected, plain_state = plain.update(grads, plain_state, params)
    chex.assert_trees_all_close(updates, expected, rtol=1e-6)


# 12. Donated inputs reused after sharded_train_step: an error, not a segfault.


@pytest.mark.devices(8)
def test_12_reusing_donated_inputs_raises_instead_of_crashing():
  """Run in a subprocess: before the fix this killed the interpreter (SIGSEGV)."""
  script = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    import adam_optax
    mesh = jax.make_mesh((8,), ("data",))
    optimizer = adam_optax.adam(1e-3)
    params = jax.device_put({"w": jnp.ones((16, 4))}, NamedSharding(mesh, P()))
    shardings = adam_optax.state_shardings(optimizer, params, mesh, zero1_axis="data")
    state = adam_optax.init_sharded(optimizer, params, shardings)
    step = adam_optax.sharded_train_step(
      lambda p, b: jnp.sum((b @ p["w"]) ** 2), optimizer, mesh, shardings,
      NamedSharding(mesh, P("data")))
    batch = jnp.ones((8, 16))
    new_params, new_state, _ = step(params, state, batch)
    new_params, new_state, _ = step(new_params, new_state, batch)  # the right way
    try:
      step(params, state, batch)
    except ValueError as error:
      print(error)
    """
  )
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, **env},
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "params['w'] was donated to an earlier step" in result.stdout


# Found by the second round of attacks.


def test_a_state_restored_from_another_mu_or_nu_dtype_is_named():
  params = {"w": jnp.ones(3)}
  state = adam_optax.adam(1e-3).init(params)
  with pytest.raises(TypeError, match=re.escape("the state's mu at ['w'] is float32, but")):
    adam_optax.adam(1e-3, mu_dtype=jnp.bfloat16).update(params, state, params)
  half = {"w": jnp.ones(3, jnp.bfloat16)}
  old_layout = adam_optax.adam(1e-3, nu_dtype=jnp.bfloat16).init(half)  # optax's layout
  with pytest.raises(TypeError, match=re.escape("the state's nu at ['w'] is bfloat16, but")):
    adam_optax.adam(1e-3).update(half, old_layout, half)


def test_a_mask_of_concrete_boolean_arrays_is_accepted():
  params = {"w": jnp.ones(2), "b": jnp.ones(1)}
  mask = {"w": jnp.asarray(True), "b": np.bool_(False)}
  optimizer = adam_optax.adamw(0.1, weight_decay=1.0, mask=mask)
  updates, _ = optimizer.update(params, optimizer.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.2)
  np.testing.assert_allclose(updates["b"], -0.1)
