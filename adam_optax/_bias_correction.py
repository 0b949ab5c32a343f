r"""``bias_correction``: undoes the zero-initialisation bias of Adam's EMAs."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._scaling import scale_tree
from adam_optax._validation import check_decay


class BiasCorrectionState(NamedTuple):
  """State of :func:`bias_correction`.

  Attributes:
    count: number of updates applied so far (int32, saturating).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax


def bias_correction(b1: Any = 0.9, b2: Any = 0.999) -> optax.GradientTransformation:
  r"""Multiplies updates by Adam's bias-correction factor for step :math:`t`.

  .. math::

    u_t \mapsto \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}\, u_t .

  ``None`` for a decay leaves that moment uncorrected (its factor is 1):
  ``bias_correction(b1, None)`` multiplies by :math:`1 / (1 - \beta_1^t)` only,
  for a second moment that is unbiased (AdaMax's infinity norm) or corrected
  before it reaches here (AMSGrad, optax's convention).

  After :func:`scale_by_moments` with the same :math:`\beta_1, \beta_2` this
  turns its ratio into Kingma & Ba's bias-corrected step
  :math:`\hat m_t / (\sqrt{\hat v_t} + \epsilon)` exactly (end of their
  Section 2). :math:`1 - \beta^t` is evaluated as
  :math:`-\operatorname{expm1}(t\log\beta)`, accurate to a few ulps for every
  :math:`t`, and the factor tends to 1 as :math:`t` grows.

  Args:
    b1: decay of the first-moment EMA being corrected, in ``[0, 1)``, or
      ``None`` to leave the first moment uncorrected.
    b2: decay of the second-moment EMA being corrected, in ``[0, 1)``, or
      ``None`` to leave the second moment uncorrected.

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`BiasCorrectionState`.

  References:
    Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015,
    https://arxiv.org/abs/1412.6980, Section 3.
  """
  owner = "bias_correction"
  for name, decay in (("b1", b1), ("b2", b2)):
    if decay is not None:
      check_decay(owner, name, decay)

  def init_fn(params: optax.Params) -> BiasCorrectionState:
    del params
    return BiasCorrectionState(count=num.zero_count())

  def update_fn(
    updates: optax.Updates, state: BiasCorrectionState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, BiasCorrectionState]:
    del params
    count = num.saturating_increment(state.count)
    factor = functools.partial(correction_factor, b1, b2, count)
    return scale_tree(updates, factor), BiasCorrectionState(count=count)

  return optax.GradientTransformation(init_fn, update_fn)


def correction_factor(b1: Any, b2: Any, count: jax.Array, dtype: Any) -> jax.Array:
  r""":math:`\sqrt{1 - \beta_2^t} / (1 - \beta_1^t)` in ``dtype`` (a ``None`` decay: factor 1).

  :func:`bias_correction` and the fused kernel (:mod:`adam_optax._fused`) both
  take the factor from here.
  """
  one = jnp.ones([], dtype)
  bias1 = one if b1 is None else num.one_minus_power(b1, count, dtype)
  bias2 = one if b2 is None else num.one_minus_power(b2, count, dtype)
  return jnp.sqrt(bias2) / bias1
