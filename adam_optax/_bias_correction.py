r"""``bias_correction``: undoes the zero-initialisation bias of Adam's EMAs."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._scaling import scale_tree
from adam_optax._trees import check_state_type, colocate
from adam_optax._validation import check_decay, check_in_dtype

_OWNER = "bias_correction"


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

  Raises:
    ValueError: ``b1`` or ``b2`` outside ``[0, 1)``, or neither a number nor
      ``None``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> correct = adam_optax.bias_correction(b1=0.9, b2=0.999)
    >>> updates, state = correct.update(jnp.ones(1), correct.init(jnp.zeros(1)))
    >>> updates  # step 1: sqrt(1 - b2) / (1 - b1), with b2 = 0.999 as float32 holds it
    Array([0.31622565], dtype=float32)

  References:
    Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015,
    https://arxiv.org/abs/1412.6980, Section 3.
  """
  owner = _OWNER
  b1 = None if b1 is None else check_decay(owner, "b1", b1)
  b2 = None if b2 is None else check_decay(owner, "b2", b2)

  def init_fn(params: optax.Params) -> BiasCorrectionState:
    return colocate(BiasCorrectionState(count=num.zero_count()), params)

  def update_fn(
    updates: optax.Updates, state: BiasCorrectionState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, BiasCorrectionState]:
    del params
    count = next_count(state)
    factor = functools.partial(correction_factor, b1, b2, count)
    return scale_tree(owner, updates, factor), BiasCorrectionState(count=count)

  return optax.GradientTransformation(init_fn, update_fn)


def next_count(state: Any) -> jax.Array:
  """The checked state's next step count (the fused kernel's update takes it from here too)."""
  check_state_type(_OWNER, state, BiasCorrectionState)
  return num.saturating_increment(state.count)


def correction_factor(b1: Any, b2: Any, count: jax.Array, dtype: Any) -> jax.Array:
  r""":math:`\sqrt{1 - \beta_2^t} / (1 - \beta_1^t)` in ``dtype`` (a ``None`` decay: factor 1).

  :func:`bias_correction` and the fused kernel (:mod:`adam_optax._fused`) both
  take the factor from here.
  """

  def bias(decay: Any, name: str) -> jax.Array:
    if decay is None:
      return jnp.ones([], dtype)
    check_in_dtype(_OWNER, name, decay, dtype, decay=True)
    return num.one_minus_power(decay, count, dtype)

  return jnp.sqrt(bias(b2, "b2")) / bias(b1, "b1")
