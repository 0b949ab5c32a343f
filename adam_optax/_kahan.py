r"""``kahan_summation``: low-precision params that keep what rounding drops.

Rounding :math:`p + u` to bfloat16 drops the part of the update below half a
unit in the last place of :math:`p`. Kahan summation keeps that part in a
compensation buffer :math:`c` of the params' dtype and adds it back at the next
step (Kahan, 1965; Zamirai et al., 2020, for bfloat16 training):

.. math::

  x = p + u + c, \qquad p' = \operatorname{rn}(x), \qquad c' = x - p',

all in float32, with :math:`p'` and :math:`c'` stored in the params' dtype.
Deterministic, unlike :func:`adam_optax.stochastic_rounding`, at the cost of
one more param-shaped buffer (2 bytes a bfloat16 parameter).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._stochastic_rounding import check_optimizer, check_params, landing_update
from adam_optax._trees import check_state_type


class KahanSummationState(NamedTuple):
  """State of :func:`kahan_summation`.

  Attributes:
    compensation: the params' tree; for each bfloat16/float16 param, what
      rounding has dropped so far (in the param's dtype); ``None`` for the
      float32 and wider params, which pass through.
  """

  compensation: Any


def _is_low_precision(param: Any) -> bool:
  dtype = jnp.result_type(param)
  return num.compute_dtype(dtype) != dtype


def kahan_summation(
  optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps ``optimizer`` so that bfloat16/float16 params keep what rounding drops.

  For each low-precision param :math:`p`, update :math:`u` of ``optimizer``
  and compensation :math:`c` it computes :math:`x = p + u + c` in float32 and
  returns the update that lands ``optax.apply_updates`` on
  :math:`p' = \operatorname{rn}(x)`, the nearest value of the param's dtype;
  the new compensation is :math:`x - p'` (measured against the value
  ``apply_updates`` actually produces, so the books stay exact even where
  :math:`p' - p` is not representable). Updates far below the param's
  resolution then accumulate in :math:`c` until they move :math:`p`. float32
  and wider params pass through untouched; a non-finite sum resets the
  compensation to zero.

  The compensation needs the final updates, so it wraps the optimizer rather
  than being a link of a chain (placed first in a chain, it would compensate
  the gradients and the weights would never move). Apply the updates it
  returns as they are: a transform chained after it changes them and the
  books no longer balance. Wrap :func:`quantized` (``kahan_summation(
  quantized(...))``), not the other way round: inside it, the
  parameter-shaped compensation would be quantized too.

  Args:
    optimizer: the optimizer whose updates to compensate (any optax
      ``GradientTransformation``).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is
    ``(optimizer's state, KahanSummationState)``; its ``update`` needs
    ``params``.

  Raises:
    TypeError: ``optimizer`` is not an :class:`optax.GradientTransformation`;
      the state is not this wrapper's.
    ValueError: ``params`` is not given to ``update``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.kahan_summation(optax.sgd(1e-3))
    >>> params = jnp.ones(4, jnp.bfloat16)
    >>> state = optimizer.init(params)
    >>> for _ in range(10):  # each step alone is below half an ulp of 1.0 in bfloat16
    ...   updates, state = optimizer.update(jnp.ones(4, jnp.bfloat16), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params  # 1 - 10 * 1e-3, to bfloat16's resolution; nearest rounding stays at 1
    Array([0.988281, 0.988281, 0.988281, 0.988281], dtype=bfloat16)

  References:
    Kahan, *Further remarks on reducing truncation errors*, Communications of
    the ACM 8(1), 1965. Zamirai, Zhang, Aberger & De Sa, *Revisiting BFloat16
    Training*, 2020, https://arxiv.org/abs/2010.06192.
  """
  owner = "kahan_summation"
  check_optimizer(owner, optimizer, "kahan_summation(adam_optax.adam(1e-3))")
  return optax.chain(optimizer, _compensated(owner))


def _compensated(owner: str) -> optax.GradientTransformation:
  """The last link of :func:`kahan_summation`: adds the compensation, keeps the residual."""

  def init_fn(params: optax.Params) -> KahanSummationState:
    compensation = jax.tree.map(
      lambda p: jnp.zeros_like(p) if _is_low_precision(p) else None, params
    )
    return KahanSummationState(compensation=compensation)

  def update_fn(
    updates: optax.Updates, state: KahanSummationState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, KahanSummationState]:
    check_params(owner, params)
    check_state_type(owner, state, KahanSummationState)
    params_def: Any = jax.tree.structure(params)  # PyTreeDef: jaxlib ships no stub for it
    flat_params = jax.tree.leaves(params)
    flat_updates = params_def.flatten_up_to(updates)
    flat_compensation = params_def.flatten_up_to(state.compensation)
    new_updates: list[Any] = []
    new_compensation: list[Any] = []
    for param, update, compensation in zip(
      flat_params, flat_updates, flat_compensation, strict=True
    ):
      if compensation is None:
        new_updates.append(update)
        new_compensation.append(None)
        continue
      wide = jnp.float32
      exact = param.astype(wide) + update.astype(wide) + compensation.astype(wide)
      landing = landing_update(
        param, update, num.rounded_to(exact, param.dtype).astype(param.dtype)
      )
      # Where optax.apply_updates lands: param + landing, rounded to the param's dtype.
      landed = num.rounded_to(param.astype(wide) + landing.astype(wide), param.dtype)
      residual = jnp.where(jnp.isfinite(exact), exact - landed, 0.0)
      new_updates.append(landing)
      new_compensation.append(residual.astype(param.dtype))
    return (
      params_def.unflatten(new_updates),
      KahanSummationState(compensation=params_def.unflatten(new_compensation)),
    )

  return optax.GradientTransformation(init_fn, update_fn)
