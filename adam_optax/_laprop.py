r"""LaProp (Ziyin et al., 2020): momentum of the normalised gradient.

``scale_by_laprop`` normalises each gradient by its bias-corrected RMS first
and averages afterwards (Adam does the reverse); :func:`laprop` chains it with
an optional :func:`adam_optax.add_decayed_weights` and
:func:`adam_optax.scale_by_lr`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_optax import _numerics as num
from adam_optax._elementwise import Moment, check_in_dtypes, moment_transform
from adam_optax._learning_rate import scale_by_lr
from adam_optax._validation import check_moment_hyperparameters, check_rate
from adam_optax._weight_decay import decay_blocks


class ScaleByLapropState(NamedTuple):
  r"""State of :func:`scale_by_laprop`.

  Attributes:
    count: number of updates applied so far (int32, saturating).
    mu: the momentum :math:`m_t` of the rate-weighted normalised gradients,
      shaped like the params (signed).
    nu: the second-moment EMA :math:`v_t`, shaped like the params
      (nonnegative, real).
    weight: the EMA :math:`c_t` of the rates that weighted the momentum, a
      scalar (:math:`1 - \beta_1^t` for a constant rate of 1).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  mu: optax.Updates
  nu: optax.Updates
  weight: jax.Array


def scale_by_laprop(
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-15,
  *,
  learning_rate: optax.ScalarOrSchedule = 1.0,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""LaProp's momentum of normalised gradients, bias-corrected.

  .. math::

    v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
    m_t = \beta_1 m_{t-1} + (1 - \beta_1)\, \eta_t
      \frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}, \\
    c_t &= \beta_1 c_{t-1} + (1 - \beta_1)\, \eta_t, \qquad u_t = m_t / c_t .

  The rate :math:`\eta_t` weights the momentum, as in the paper's Algorithm 1
  and ``pytorch_optimizer.LaProp`` (whose step is :math:`\eta_t u_t`, with
  :math:`c_t` its ``exp_avg_lr_1``): under a schedule, a gradient counts in
  proportion to the rate it arrived with. With a constant rate
  :math:`c_t = \eta (1 - \beta_1^t)` and :math:`u_t` is the bias-corrected
  momentum of :math:`g_t / (\sqrt{\hat v_t} + \epsilon)`. Pass the
  ``learning_rate`` of the :func:`adam_optax.scale_by_lr` that follows; the
  default weighs every step alike.

  Args:
    b1: :math:`\beta_1`, decay of the momentum, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_t}`, ``>= 0``.
    learning_rate: :math:`\eta_t`, a number ``>= 0`` or an optax schedule of
      the step count (from 0), weighting the momentum.
    mu_dtype: dtype of ``mu`` in the state (default: the params').
    nu_dtype: dtype of ``nu`` in the state (default: the params', float32 for
      half-precision params).

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByLapropState`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> laprop = adam_optax.scale_by_laprop(eps=0.0)
    >>> state = laprop.init(jnp.zeros(2))
    >>> laprop.update(jnp.array([2.0, -1e-3]), state)[0]  # step 1: sign(g), to rounding
    Array([ 0.9999999, -0.9999999], dtype=float32)

  References:
    Ziyin, Wang & Ueda, *LaProp: Separating Momentum and Adaptivity in Adam*,
    2020, https://arxiv.org/abs/2002.04839.
  """
  return _laprop_moments("scale_by_laprop", b1, b2, eps, learning_rate, mu_dtype, nu_dtype)


def _laprop_moments(
  owner: str,
  b1: Any,
  b2: Any,
  eps: Any,
  learning_rate: Any,
  mu_dtype: Any,
  nu_dtype: Any,
) -> optax.GradientTransformation:
  """:func:`scale_by_laprop`, validated and reporting errors in ``owner``'s name."""
  b1, b2, eps, _, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, 0.0, mu_dtype, nu_dtype
  )
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  weight_dtype = jnp.result_type(float)  # float64 with x64 on: the weight is one scalar

  def rate(state: Any, dtype: Any) -> jax.Array:
    value = learning_rate(state.count) if callable(learning_rate) else learning_rate
    return num.scalar(value, dtype)

  def next_weight(state: Any, dtype: Any = weight_dtype) -> jax.Array:
    keep, mix = num.decay_weights(b1, dtype)
    return keep * state.weight.astype(dtype) + mix * rate(state, dtype)

  def scalars(state: Any, dtype: np.dtype) -> tuple[jax.Array, ...]:
    real = num.real_dtype(dtype)
    check_in_dtypes(owner, real, decays={"b1": b1, "b2": b2}, constants={"eps": eps})
    keep1, mix1 = num.decay_weights(b1, dtype)
    keep2, mix2 = num.decay_weights(b2, real)
    root_bias2 = jnp.sqrt(num.one_minus_power(b2, num.saturating_increment(state.count), real))
    weighted_mix1 = mix1 * rate(state, real).astype(dtype)
    weight = next_weight(state, real)
    return keep1, weighted_mix1, keep2, mix2, root_bias2, num.scalar(eps, real), weight

  def leaf(k: tuple[jax.Array, ...], g: jax.Array, mu: jax.Array, nu: jax.Array):
    keep1, weighted_mix1, keep2, mix2, root_bias2, floor, weight = k
    new_nu = keep2 * nu + mix2 * num.squared_magnitude(g)
    normed = num.safe_ratio(g, (jnp.sqrt(new_nu) / root_bias2 + floor).astype(g.dtype))
    new_mu = keep1 * mu + weighted_mix1 * normed
    return num.safe_ratio(new_mu, weight.astype(g.dtype)), new_mu, new_nu

  moments = (Moment("mu", mu_dtype, real=False), Moment("nu", nu_dtype, real=True))
  weight_field: Any = {"weight": (lambda: jnp.zeros([], weight_dtype), next_weight)}
  return moment_transform(owner, ScaleByLapropState, moments, scalars, leaf, weight_field)


def laprop(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-15,
  *,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""LaProp (Ziyin et al., 2020): Adam with momentum and adaptivity decoupled.

  .. math::

    m_t = \beta_1 m_{t-1} + (1 - \beta_1)\,
      \frac{g_t}{\sqrt{\hat v_t} + \epsilon}, \qquad
    \theta_t = \theta_{t-1} - \eta \left(\frac{m_t}{1 - \beta_1^t}
      + \lambda_t \theta_{t-1}\right),

  with :math:`\hat v_t` Adam's bias-corrected second moment (under a schedule
  the momentum is weighted by the rates, see :func:`scale_by_laprop`).
  Normalising before averaging bounds every step by :math:`\eta` whatever
  :math:`\beta_1, \beta_2` are, so LaProp stays stable where Adam does not
  (:math:`\beta_1 > \beta_2`; see ``docs/modern/laprop.md`` for the
  measurement). It is ``optax.chain(scale_by_laprop(b1, b2, eps,
  learning_rate=learning_rate), add_decayed_weights(weight_decay, mask),
  scale_by_lr(learning_rate))``, the decay left out when it is 0. Defaults are
  the paper's and ``pytorch_optimizer.LaProp``'s (which uses lr ``4e-4``).

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the momentum, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_t}`, ``>= 0``.
    weight_decay: :math:`\lambda`, a number ``>= 0`` or an optax schedule;
      decoupled, applied to :math:`\theta_{t-1}`.
    mask: which leaves are decayed, as in :func:`adam_optax.adamw`.
    mu_dtype: dtype of the momentum in the state (default: the params').
    nu_dtype: dtype of the second moment in the state (default: the params',
      float32 for half-precision params).

  Returns:
    An :class:`optax.GradientTransformation`; with a weight decay, ``update``
    needs ``params``.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.laprop(learning_rate=0.1, b1=0.99, b2=0.9)  # b1 > b2 is fine
    >>> params = jnp.array([1.0, -2.0])
    >>> state = optimizer.init(params)
    >>> updates, state = optimizer.update(jnp.array([0.5, -3.0]), state, params)
    >>> optax.apply_updates(params, updates)  # the first step is -lr sign(g)
    Array([ 0.9, -1.9], dtype=float32)

  References:
    Ziyin, Wang & Ueda, *LaProp: Separating Momentum and Adaptivity in Adam*,
    2020, https://arxiv.org/abs/2002.04839.
  """
  owner = "laprop"
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  moments = _laprop_moments(owner, b1, b2, eps, learning_rate, mu_dtype, nu_dtype)
  decay = decay_blocks(owner, weight_decay, mask)
  return optax.chain(moments, *decay, scale_by_lr(learning_rate))
