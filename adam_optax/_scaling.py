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


def schedule_state(value: optax.ScalarOrSchedule, state_type: Any) -> Any:
  """The initial state for ``value``: ``state_type(count=0)`` for a schedule, else empty."""
  return state_type(count=zero_count()) if callable(value) else optax.EmptyState()


def step_value(value: optax.ScalarOrSchedule, state: Any) -> tuple[jax.Array, Any]:
  """This step's ``value`` (a schedule is evaluated at ``state.count``) and the next state."""
  if callable(value):
    return jnp.asarray(value(state.count)), state._replace(count=saturating_increment(state.count))
  return jnp.asarray(value), state


def scale_tree(updates: optax.Updates, factor: Callable[[np.dtype], jax.Array]) -> optax.Updates:
  """Returns ``updates`` with each leaf multiplied by ``factor(real dtype)``.

  The product is formed in the leaf's compute dtype (float32 at least) and cast
  back to the leaf's dtype, so half-precision updates are scaled without an
  intermediate overflow and the tree keeps its dtypes. ``factor`` is evaluated
  once per dtype, not once per leaf.
  """
  factor = functools.cache(factor)
  return jax.tree.map(lambda u: scale_leaf(u, factor(real_dtype(compute_dtype(u.dtype)))), updates)


def scale_leaf(update: jax.Array, scalar: jax.Array) -> jax.Array:
  """``update * scalar`` in the leaf's compute dtype, cast back to the leaf's dtype."""
  dtype = compute_dtype(update.dtype)
  return (update.astype(dtype) * scalar.astype(dtype)).astype(update.dtype)
