"""Per-step scalars: constants or schedules, and multiplying a tree by one."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_optax._numerics import compute_dtype, real_dtype, saturating_increment, zero_count
from adam_optax._trees import check_inexact_leaves, colocate


def schedule_state(value: optax.ScalarOrSchedule, state_type: Any, params: optax.Params) -> Any:
  """The initial state for ``value``: ``state_type(count=0)`` for a schedule, else empty."""
  if not callable(value):
    return optax.EmptyState()
  return colocate(state_type(count=zero_count()), params)


def check_schedule_state(owner: str, value: optax.ScalarOrSchedule, state: Any) -> None:
  """Raises if ``state`` was made for a constant where ``value`` is a schedule, or vice versa."""
  scheduled = callable(value)
  if scheduled and "count" not in getattr(state, "_fields", ()):
    raise TypeError(
      f"{owner}.update: the rate is a schedule, which needs the state with a step count "
      f"that this transform's init makes; got {type(state).__name__}, the state of a "
      "constant rate. Initialise the state with this optimizer's init."
    )
  if not scheduled and not isinstance(state, optax.EmptyState):
    raise TypeError(
      f"{owner}.update: the rate is a constant, whose state is optax.EmptyState(); got "
      f"{type(state).__name__}, the state of a schedule. Initialise the state with this "
      "optimizer's init."
    )


def step_value(
  owner: str, name: str, value: optax.ScalarOrSchedule, state: Any
) -> tuple[jax.Array, Any]:
  """This step's ``value`` (a schedule is evaluated at ``state.count``) and the next state.

  Raises:
    TypeError: ``state`` belongs to the other kind of rate, or the value (what
      a schedule returned, or an injected hyperparameter) is not real.
    ValueError: the value is not a scalar; it would broadcast every update to
      its shape.
  """
  check_schedule_state(owner, value, state)
  if callable(value):
    try:
      returned = value(state.count)
    except TypeError as error:  # most often a schedule that takes no step count
      raise TypeError(
        f"{owner}({name}=...): calling the schedule with the step count failed: {error}. "
        "A schedule is a function step -> value, such as optax.linear_schedule(...)."
      ) from error
    result, source = jnp.asarray(returned), f"the {name} schedule returned"
    state = state._replace(count=saturating_increment(state.count))
  else:
    result, source = jnp.asarray(value), f"{name} is"
  if result.ndim != 0:
    raise ValueError(
      f"{owner}: {source} an array of shape {result.shape}; expected a scalar (it would "
      "broadcast every update to that shape)."
    )
  # A complex constant can only be optax.inject_hyperparams' copy of a real
  # number (construction rejected the others); its real part is used.
  complex_schedule = callable(value) and jnp.iscomplexobj(result)
  if not jnp.issubdtype(result.dtype, jnp.number) or complex_schedule:
    raise TypeError(f"{owner}: {source} a {result.dtype} value; expected a real number.")
  return result, state


def scale_tree(
  owner: str, updates: optax.Updates, factor: Callable[[np.dtype], jax.Array]
) -> optax.Updates:
  """Returns ``updates`` with each leaf multiplied by ``factor(real dtype)``.

  The product is formed in the leaf's compute dtype (float32 at least) and cast
  back to the leaf's dtype, so half-precision updates are scaled without an
  intermediate overflow and the tree keeps its dtypes. ``factor`` is evaluated
  once per dtype, not once per leaf.

  Raises:
    TypeError: an update leaf is not floating or complex (named by its path).
  """
  check_inexact_leaves(owner, updates, "update")
  factor = functools.cache(factor)

  def scale(update: Any) -> jax.Array:
    update = jnp.asarray(update)
    return scale_leaf(update, factor(real_dtype(compute_dtype(update.dtype))))

  return jax.tree.map(scale, updates)


def scale_leaf(update: Any, scalar: jax.Array) -> jax.Array:
  """``update * scalar`` in the leaf's compute dtype, cast back to the leaf's dtype.

  :func:`scale_tree` and the fused kernel's XLA twin (:mod:`adam_optax._fused`)
  scale each leaf with it.
  """
  update = jnp.asarray(update)
  dtype = compute_dtype(update.dtype)
  return (update.astype(dtype) * scalar.astype(dtype)).astype(update.dtype)
