r"""``add_decayed_weights``: decoupled weight decay (Loshchilov & Hutter, 2019)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._recipes import DecayRecipe, recorded
from adam_optax._scaling import schedule_state, step_value
from adam_optax._trees import check_fits_params, where
from adam_optax._validation import check_rate


class AddDecayedWeightsState(NamedTuple):
  """State of :func:`add_decayed_weights` when the decay is a schedule.

  Attributes:
    count: number of updates applied so far (int32, saturating); the
      schedule is evaluated at it, so the first update uses ``schedule(0)``.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax


def add_decayed_weights(
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
  r"""Adds :math:`\lambda_t \theta_{t-1}` to the updates.

  .. math::

    u_t \mapsto u_t + \lambda_t\, \theta_{t-1}, \qquad
    \lambda_t = \text{weight\_decay} \text{ or } \text{weight\_decay}(t - 1).

  Placed before :func:`adam_optax.scale_by_lr` in a chain, the decay is
  multiplied by the learning rate, as in ``optax.adamw`` and
  ``torch.optim.AdamW``. Unlike ``optax.add_decayed_weights`` the sum is
  formed in the leaf's compute dtype with explicit casts, so it runs under
  ``jax_numpy_dtype_promotion="strict"`` with a schedule of any dtype.

  Args:
    weight_decay: :math:`\lambda`, a number ``>= 0``, a scalar array (possibly
      traced) or an optax schedule of the step count (starting at 0).
    mask: ``None`` (decay every leaf), a pytree of booleans shaped like (a
      prefix of) the params, or a callable mapping the params to such a
      pytree; ``False`` leaves pass through undecayed (:func:`optax.masked`).

  Returns:
    An :class:`optax.GradientTransformation` that needs ``params`` in
    ``update``; its state is :class:`optax.EmptyState` for a constant decay and
    :class:`AddDecayedWeightsState` for a schedule (inside
    :class:`optax.MaskedState` with a mask).

  Raises:
    ValueError: ``weight_decay`` negative, not finite, or neither a number
      nor a callable; at ``init``, a ``mask`` that does not fit the params.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> params = jnp.array([1.0, -2.0])
    >>> decay = adam_optax.add_decayed_weights(0.1)
    >>> updates, _ = decay.update(jnp.zeros(2), decay.init(params), params)
    >>> updates  # u + 0.1 * params
    Array([ 0.1, -0.2], dtype=float32)
    >>> coupled_l2 = optax.chain(decay, adam_optax.adam(1e-3))  # torch Adam's weight_decay

  References:
    Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019,
    https://arxiv.org/abs/1711.05101.
  """
  return decayed_weights("add_decayed_weights", weight_decay, mask)


def decayed_weights(
  owner: str,
  weight_decay: optax.ScalarOrSchedule,
  mask: Any | Callable[[optax.Params], Any] | None,
) -> optax.GradientTransformation:
  """:func:`add_decayed_weights`, validated and reporting errors in ``owner``'s name."""
  weight_decay = check_rate(owner, "weight_decay", weight_decay)

  def decay_tree(updates: optax.Updates, params: optax.Params, rate: jax.Array) -> optax.Updates:
    return jax.tree.map(functools.partial(decay_leaf, rate), updates, params)

  return decay_transform(owner, weight_decay, mask, decay_tree)


def decay_blocks(
  owner: str, weight_decay: optax.ScalarOrSchedule, mask: Any
) -> list[optax.GradientTransformation]:
  """``[add_decayed_weights(weight_decay, mask)]``, or ``[]`` for a constant decay of 0.

  A zero decay adds no block, so the chain (and its state) is the plain one;
  a schedule or a traced decay always gets its block.
  """
  weight_decay = check_rate(owner, "weight_decay", weight_decay)
  if isinstance(weight_decay, (int, float)) and weight_decay == 0.0:
    return []
  return [decayed_weights(owner, weight_decay, mask)]


def decay_transform(
  owner: str,
  weight_decay: optax.ScalarOrSchedule,
  mask: Any,
  apply: Callable[[optax.Updates, optax.Params, jax.Array], optax.Updates],
) -> optax.GradientTransformation:
  """The decay's state, schedule, checks and mask around ``apply(updates, params, rate)``.

  The fused kernel (:mod:`adam_optax._fused`) runs it with an ``apply`` that
  only records which leaves are decayed and at what rate.
  """

  def init_fn(params: optax.Params) -> AddDecayedWeightsState | optax.EmptyState:
    return schedule_state(weight_decay, AddDecayedWeightsState, params)

  def update_fn(
    updates: optax.Updates,
    state: AddDecayedWeightsState | optax.EmptyState,
    params: optax.Params | None = None,
  ) -> tuple[optax.Updates, AddDecayedWeightsState | optax.EmptyState]:
    if params is None:
      raise ValueError(f"{owner}: update needs the params (update(grads, state, params)).")
    check_fits_params(owner, updates, params)
    rate, state = step_value(owner, "weight_decay", weight_decay, state)
    return apply(updates, params, rate), state

  transform = recorded(DecayRecipe(weight_decay), optax.GradientTransformation(init_fn, update_fn))
  if mask is None:
    return transform
  masked = optax.masked(transform, mask)

  def masked_init(params: optax.Params) -> Any:
    _check_mask(owner, mask, params)
    return masked.init(params)

  def masked_update(
    updates: optax.Updates, state: Any, params: optax.Params | None = None
  ) -> tuple[optax.Updates, Any]:
    if params is not None:
      _check_mask(owner, mask, params)
    return masked.update(updates, state, params)

  return optax.GradientTransformation(masked_init, masked_update)


def decay_leaf(rate: jax.Array, update: Any, param: Any) -> jax.Array:
  """``update + rate * param`` in the leaf's compute dtype (the fused kernel's too)."""
  update = jnp.asarray(update)
  dtype = num.compute_dtype(update.dtype)
  decay = num.scalar(rate, num.real_dtype(dtype)).astype(dtype)
  return (update.astype(dtype) + decay * jnp.asarray(param).astype(dtype)).astype(update.dtype)


def _check_mask(owner: str, mask: Any, params: optax.Params) -> None:
  """Raises unless ``mask`` (or ``mask(params)``) is a tree of bools over (a prefix of) params."""
  tree = mask(params) if callable(mask) else mask
  try:
    jax.tree.map(lambda flag, _: flag, tree, params)
  except (ValueError, TypeError):
    raise ValueError(
      f"{owner}(mask=...): the mask must be a tree of booleans with the structure of the "
      "params (or of a prefix of it, one boolean for a whole subtree); got "
      f"{jax.tree.structure(tree)} for params {jax.tree.structure(params)}."
    ) from None
  for path, flag in jax.tree_util.tree_flatten_with_path(tree)[0]:
    concrete_bool = not isinstance(flag, jax.core.Tracer) and jnp.ndim(flag) == 0
    if not (concrete_bool and jnp.result_type(flag) == jnp.bool_):
      raise TypeError(
        f"{owner}(mask=...): the mask at {where(path)} is {flag!r}; expected True or False."
      )
