"""``scale_by_lr``: the descent step, by a constant or a scheduled rate."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import optax

from adam_optax._numerics import scalar
from adam_optax._scaling import scale_tree, schedule_state, step_value
from adam_optax._validation import check_rate


class ScaleByLrState(NamedTuple):
  """State of :func:`scale_by_lr` when the rate is a schedule.

  Attributes:
    count: number of updates applied so far (int32, saturating); the
      schedule is evaluated at it, so the first update uses ``schedule(0)``.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax


def scale_by_lr(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  r"""Multiplies updates by :math:`-\eta_t`, turning a direction into a descent step.

  .. math::

    u_t \mapsto -\eta_t\, u_t, \qquad
    \eta_t = \text{learning\_rate} \text{ or } \text{learning\_rate}(t - 1).

  Args:
    learning_rate: a number ``>= 0``, a scalar array (possibly traced, as
      under :func:`optax.inject_hyperparams`), or an optax schedule mapping the
      step count (starting at 0) to the rate.

  Returns:
    An :class:`optax.GradientTransformation`; its state is
    :class:`optax.EmptyState` for a constant rate and :class:`ScaleByLrState`
    for a schedule.

  Raises:
    ValueError: ``learning_rate`` negative, not finite, or neither a number
      nor a callable.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> lr = adam_optax.scale_by_lr(optax.linear_schedule(1.0, 0.0, 10))
    >>> state = lr.init(jnp.zeros(2))
    >>> updates, state = lr.update(jnp.array([1.0, -2.0]), state)
    >>> updates  # -schedule(0) * u
    Array([-1.,  2.], dtype=float32)
    >>> lr.update(jnp.array([1.0, -2.0]), state)[0]  # -schedule(1) * u
    Array([-0.9,  1.8], dtype=float32)
  """
  owner = "scale_by_lr"
  learning_rate = check_rate(owner, "learning_rate", learning_rate)

  def init_fn(params: optax.Params) -> ScaleByLrState | optax.EmptyState:
    return schedule_state(learning_rate, ScaleByLrState, params)

  def update_fn(
    updates: optax.Updates,
    state: ScaleByLrState | optax.EmptyState,
    params: optax.Params | None = None,
  ) -> tuple[optax.Updates, ScaleByLrState | optax.EmptyState]:
    del params
    rate, state = step_value(owner, "learning_rate", learning_rate, state)
    return scale_tree(owner, updates, functools.partial(descent_factor, rate)), state

  return optax.GradientTransformation(init_fn, update_fn)


def descent_factor(rate: jax.Array, dtype: Any) -> jax.Array:
  r""":math:`-\eta_t` in ``dtype``: what :func:`scale_by_lr` (and the fused kernel) multiply by."""
  return -scalar(rate, dtype)
