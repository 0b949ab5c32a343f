"""Bad input fails at construction (or at trace time for trees) with a clear message."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_optax

BAD_HYPERPARAMETERS = [
  ("b1", 1.0, "b1 must be a number in [0, 1)"),
  ("b1", -0.1, "b1 must be a number in [0, 1)"),
  ("b2", 1.2, "b2 must be a number in [0, 1)"),
  ("b2", float("nan"), "b2 must be a number in [0, 1)"),
  ("b1", "0.9", "b1 must be a number in [0, 1)"),
  ("b1", True, "b1 must be a number in [0, 1)"),
  ("eps", -1e-8, "eps must be a finite number >= 0"),
  ("eps", float("inf"), "eps must be a finite number >= 0"),
  ("eps_root", -1.0, "eps_root must be a finite number >= 0"),
  ("eps", jnp.array([1e-8, 1e-8]), "eps must be a finite number >= 0"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_HYPERPARAMETERS)
def test_adam_rejects_bad_hyperparameters_naming_them(name, value, message):
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    adam_optax.adam(1e-3, **{name: value})
  assert str(error.value).startswith(f"adam({name}=")


@pytest.mark.parametrize(("name", "value", "message"), BAD_HYPERPARAMETERS)
def test_scale_by_moments_rejects_bad_hyperparameters(name, value, message):
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    adam_optax.scale_by_moments(**{name: value})
  assert str(error.value).startswith("scale_by_moments(")


@pytest.mark.parametrize("value", [-1e-3, "fast", None, [1e-3], float("nan"), 1j])
def test_bad_learning_rates_are_rejected(value):
  expected = "learning_rate must be a finite number >= 0 or a schedule"
  with pytest.raises(ValueError, match=re.escape(expected)):
    adam_optax.adam(value)
  with pytest.raises(ValueError, match=re.escape(expected)):
    adam_optax.scale_by_lr(value)


def test_bias_correction_and_dtypes_are_validated():
  with pytest.raises(ValueError, match=r"bias_correction\(b2=1\): b2 must be"):
    adam_optax.bias_correction(b2=1)
  with pytest.raises(ValueError, match=r"mu_dtype must be None or a floating or complex dtype"):
    adam_optax.scale_by_moments(mu_dtype=jnp.int32)
  with pytest.raises(ValueError, match=r"nu_dtype must be None or a floating"):
    adam_optax.adam(1e-3, nu_dtype="not a dtype")


def test_valid_edge_values_and_numpy_or_jax_scalars_are_accepted():
  adam_optax.adam(0.0, b1=0.0, b2=0.0, eps=0.0, eps_root=0.0)
  adam_optax.adam(np.float32(1e-3), b1=np.float64(0.9), b2=jnp.asarray(0.99))


def test_bfloat16_dtypes_and_scalars_are_accepted():
  """NumPy does not count bfloat16 as inexact; the checks must not copy that."""
  optimizer = adam_optax.adam(
    jnp.asarray(1e-3, jnp.bfloat16), mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16
  )
  moments = optimizer.init(jnp.ones(2))[0]
  assert moments.mu.dtype == jnp.bfloat16 and moments.nu.dtype == jnp.bfloat16


def test_traced_hyperparameters_pass_through():
  """inject_hyperparams builds the optimizer inside jit, with tracers."""
  optimizer = optax.inject_hyperparams(adam_optax.adam)(learning_rate=1e-2, b1=0.9)
  params = jnp.zeros(3)
  state = jax.jit(optimizer.init)(params)
  updates, _ = jax.jit(optimizer.update)(jnp.ones(3), state, params)
  np.testing.assert_allclose(updates, -1e-2, rtol=1e-6)


def test_gradient_tree_structure_mismatch_shows_both_structures():
  optimizer = adam_optax.adam(1e-3)
  params = {"w": jnp.ones(3), "b": jnp.ones(2)}
  state = optimizer.init(params)
  with pytest.raises(ValueError, match="structure differs") as error:
    optimizer.update({"w": jnp.ones(3)}, state, params)
  message = str(error.value)
  assert "gradients: PyTreeDef({'w': *})" in message
  assert "state:     PyTreeDef({'b': *, 'w': *})" in message


def test_gradient_shape_mismatch_names_the_leaf_instead_of_broadcasting():
  optimizer = adam_optax.adam(1e-3)
  params = {"w": jnp.ones(3)}
  state = optimizer.init(params)
  with pytest.raises(ValueError, match=re.escape("gradient at ['w'] has shape (1,)")):
    jax.jit(optimizer.update)({"w": jnp.ones(1)}, state, params)


def test_integer_gradients_are_rejected():
  optimizer = adam_optax.adam(1e-3)
  state = optimizer.init(jnp.ones(3))
  with pytest.raises(TypeError, match="has dtype int32; expected a floating or complex"):
    optimizer.update(jnp.ones(3, jnp.int32), state)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_a_decay_that_inject_hyperparams_cast_to_one_names_the_cast_and_its_fix(dtype):
  """Issue 17: on half-precision params inject_hyperparams makes b2 (0.999 by default,
  0.9999 here so that float16 rounds it to 1 too) an array of the params' dtype; the user
  never wrote the 1 the message quoted. The message says where it came from and the fix."""
  params = jnp.ones(3, dtype)
  casting = optax.inject_hyperparams(adam_optax.adamw)(learning_rate=1e-2, b2=0.9999)
  with pytest.raises(ValueError, match=r"adamw\(b2=Array\(1") as error:
    casting.init(params)
  message = str(error.value)
  assert "optax.inject_hyperparams casts" in message
  assert "hyperparam_dtype=jnp.float32" in message
  assert f"This b2 is a {jnp.dtype(dtype).name} array" in message
  # The fix it names works: the same optimizer steps like the plain one.
  fixed = optax.inject_hyperparams(adam_optax.adamw, hyperparam_dtype=jnp.float32)(
    learning_rate=1e-2, b2=0.9999
  )
  plain = adam_optax.adamw(1e-2, b2=0.9999)
  grads = jnp.full(3, 0.5, dtype)
  got, _ = fixed.update(grads, fixed.init(params), params)
  expected, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_array_equal(got, expected)
  # A float32 or Python decay of 1 keeps the short message: no cast to explain.
  with pytest.raises(ValueError, match=r"b2 must be a number in \[0, 1\)$"):
    adam_optax.adamw(1e-2, b2=jnp.asarray(1.0, jnp.float32))
