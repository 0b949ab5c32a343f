r"""AdEMAMix (Pagliardini et al., 2024): Adam plus a slow, uncorrected EMA of the gradients.

``scale_by_ademamix`` keeps Adam's two moments and a third, slow one, with the
paper's warm-ups of its weight :math:`\alpha` and decay :math:`\beta_3`;
:func:`ademamix` chains it with an optional
:func:`adam_optax.add_decayed_weights` and :func:`adam_optax.scale_by_lr`.
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
from adam_optax._validation import (
  check_decay,
  check_moment_hyperparameters,
  check_nonnegative,
  check_rate,
)
from adam_optax._weight_decay import decay_blocks


class ScaleByAdemamixState(NamedTuple):
  r"""State of :func:`scale_by_ademamix`.

  Attributes:
    count: number of updates applied so far (int32, saturating).
    mu: the fast EMA :math:`m^{(1)}_t` of the gradients, shaped like the
      params (signed).
    nu: the second-moment EMA :math:`v_t`, shaped like the params
      (nonnegative, real).
    mu_slow: the slow EMA :math:`m^{(2)}_t` of the gradients, shaped like the
      params (signed).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  mu: optax.Updates
  nu: optax.Updates
  mu_slow: optax.Updates


def _check_warmup(owner: str, name: str, value: Any) -> int | None:
  if value is None:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{owner}({name}={value!r}): {name} must be None or a number of steps >= 1")
  return int(value)


def warmed_up(
  alpha: Any,
  b1: Any,
  b3: Any,
  alpha_warmup: int | None,
  b3_warmup: int | None,
  t: jax.Array,
  dtype: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Step :math:`t`'s :math:`\alpha_t` and EMA weights :math:`(\beta_{3,t}, 1 - \beta_{3,t})`.

  .. math::

    \alpha_t = \min\left(\frac{t}{T_\alpha}\alpha, \alpha\right), \qquad
    \beta_{3,t} = \min\left(f^{-1}\left((1 - \tfrac{t}{T_{\beta_3}}) f(\beta_1)
      + \tfrac{t}{T_{\beta_3}} f(\beta_3)\right), \beta_3\right),

  with :math:`f(\beta) = \ln 0.5 / \ln\beta - 1` the half-life of an EMA of
  decay :math:`\beta` (``t`` from 1, in ``dtype``): the slow EMA's memory
  grows linearly from the fast one's. :math:`1 - \beta_{3,t}` is formed as
  ``-expm1(...)``, not by subtracting a rounded :math:`\beta_{3,t}` near 1
  (which would cost 6e-4 of it in float32 at :math:`\beta_3 = 0.9999`). A
  warm-up of ``None`` keeps the final value from the start.
  """
  alpha = num.scalar(alpha, dtype)
  if alpha_warmup is not None:
    alpha = jnp.minimum(t * alpha / alpha_warmup, alpha)
  keep, mix = num.uncorrected_decay_weights(b3, dtype)
  if b3_warmup is not None:
    s = t / b3_warmup
    # ln(beta) as log1p(-(1 - beta)): exact to rounding for beta near 1, where
    # ln(float32(beta)) is off by (beta - float32(beta)) / (1 - beta) relative.
    log_b1 = jnp.log1p(-num.uncorrected_decay_weights(b1, dtype)[1])
    log_b3 = jnp.log1p(-mix)
    exponent = 1 / ((1 - s) / log_b1 + s / log_b3)
    warming = exponent < log_b3  # beta_{3,t} < beta_3
    keep = jnp.where(warming, jnp.exp(exponent), keep)
    mix = jnp.where(warming, -jnp.expm1(exponent), mix)
  return alpha, keep, mix


def scale_by_ademamix(
  b1: Any = 0.9,
  b2: Any = 0.999,
  b3: Any = 0.9999,
  alpha: Any = 5.0,
  eps: Any = 1e-8,
  *,
  alpha_warmup: int | None = None,
  b3_warmup: int | None = None,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""AdEMAMix's three moments and their mixed, normalised ratio.

  .. math::

    m^{(1)}_t &= \beta_1 m^{(1)}_{t-1} + (1 - \beta_1) g_t, \quad
    m^{(2)}_t = \beta_{3,t} m^{(2)}_{t-1} + (1 - \beta_{3,t}) g_t, \quad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \\
    u_t &= \frac{\hat m^{(1)}_t + \alpha_t m^{(2)}_t}{\sqrt{\hat v_t} + \epsilon},

  with :math:`\hat m^{(1)}_t, \hat v_t` bias-corrected as Adam's and the slow
  :math:`m^{(2)}_t` not corrected (its bias is what the warm-ups of
  :func:`adam_optax._ademamix.warmed_up` temper).

  Args:
    b1: :math:`\beta_1`, decay of the fast EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    b3: :math:`\beta_3`, decay of the slow EMA, in ``[0, 1)``.
    alpha: :math:`\alpha`, the slow EMA's weight, ``>= 0``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_t}`, ``>= 0``.
    alpha_warmup: :math:`T_\alpha`, steps of the linear warm-up of
      :math:`\alpha`, or ``None``.
    b3_warmup: :math:`T_{\beta_3}`, steps of the half-life warm-up of
      :math:`\beta_3`, or ``None``.
    mu_dtype: dtype of ``mu`` and ``mu_slow`` in the state (default: the
      params').
    nu_dtype: dtype of ``nu`` in the state (default: the params', float32 for
      half-precision params).

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByAdemamixState`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> mix = adam_optax.scale_by_ademamix(alpha=2.0, eps=0.0)
    >>> state = mix.init(jnp.zeros(2))
    >>> mix.update(jnp.array([2.0, -1.0]), state)[0]  # (1 + alpha (1 - b3)) sign(g)
    Array([ 1.0001999, -1.0001999], dtype=float32)

  References:
    Pagliardini, Ablin & Grangier, *The AdEMAMix Optimizer: Better, Faster,
    Older*, 2024, https://arxiv.org/abs/2409.03137.
  """
  return _ademamix_moments(
    "scale_by_ademamix", b1, b2, b3, alpha, eps, alpha_warmup, b3_warmup, mu_dtype, nu_dtype
  )


def _ademamix_moments(
  owner: str,
  b1: Any,
  b2: Any,
  b3: Any,
  alpha: Any,
  eps: Any,
  alpha_warmup: Any,
  b3_warmup: Any,
  mu_dtype: Any,
  nu_dtype: Any,
) -> optax.GradientTransformation:
  """:func:`scale_by_ademamix`, validated and reporting errors in ``owner``'s name."""
  b1, b2, eps, _, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, 0.0, mu_dtype, nu_dtype
  )
  b3 = check_decay(owner, "b3", b3)
  alpha = check_nonnegative(owner, "alpha", alpha)
  alpha_warmup = _check_warmup(owner, "alpha_warmup", alpha_warmup)
  b3_warmup = _check_warmup(owner, "b3_warmup", b3_warmup)

  def scalars(state: Any, dtype: np.dtype) -> tuple[jax.Array, ...]:
    real = num.real_dtype(dtype)
    decays = {"b1": b1, "b2": b2, "b3": b3}
    check_in_dtypes(owner, real, decays=decays, constants={"eps": eps, "alpha": alpha})
    t = num.saturating_increment(state.count)
    keep1, mix1 = num.decay_weights(b1, dtype)
    keep2, mix2 = num.decay_weights(b2, real)
    alpha_t, keep3, mix3 = warmed_up(alpha, b1, b3, alpha_warmup, b3_warmup, t.astype(real), real)
    bias1 = num.one_minus_power(b1, t, real)
    root_bias2 = jnp.sqrt(num.one_minus_power(b2, t, real))
    floor = num.scalar(eps, real)
    return keep1, mix1, keep2, mix2, keep3, mix3, alpha_t, bias1, root_bias2, floor

  def leaf(k: tuple[jax.Array, ...], g: jax.Array, mu: jax.Array, nu: jax.Array, slow: jax.Array):
    keep1, mix1, keep2, mix2, keep3, mix3, alpha_t, bias1, root_bias2, floor = k
    new_mu = keep1 * mu + mix1 * g
    new_nu = keep2 * nu + mix2 * num.squared_magnitude(g)
    new_slow = keep3.astype(g.dtype) * slow + mix3.astype(g.dtype) * g
    numerator = new_mu / bias1.astype(g.dtype) + alpha_t.astype(g.dtype) * new_slow
    denominator = (jnp.sqrt(new_nu) / root_bias2 + floor).astype(g.dtype)
    return num.safe_ratio(numerator, denominator), new_mu, new_nu, new_slow

  moments = (
    Moment("mu", mu_dtype, real=False),
    Moment("nu", nu_dtype, real=True),
    Moment("mu_slow", mu_dtype, real=False),
  )
  return moment_transform(owner, ScaleByAdemamixState, moments, scalars, leaf)


def ademamix(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  b3: Any = 0.9999,
  alpha: Any = 5.0,
  eps: Any = 1e-8,
  *,
  alpha_warmup: int | None = None,
  b3_warmup: int | None = None,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""AdEMAMix (Pagliardini et al., 2024): Adam mixed with a slow EMA that remembers old gradients.

  .. math::

    \theta_t = \theta_{t-1} - \eta_t \left(
      \frac{\hat m^{(1)}_t + \alpha_t m^{(2)}_t}{\sqrt{\hat v_t} + \epsilon}
      + \lambda_t \theta_{t-1}\right),

  with the moments of :func:`scale_by_ademamix`. It is
  ``optax.chain(scale_by_ademamix(...), add_decayed_weights(weight_decay,
  mask), scale_by_lr(learning_rate))``, the decay left out when it is 0.
  Defaults: :math:`\beta = (0.9, 0.999, 0.9999)` (paper), :math:`\alpha = 5`
  (``pytorch_optimizer.AdEMAMix``, bitsandbytes and ``optax.contrib.ademamix``;
  the authors' code uses 2 in its examples; optax's ``scale_by_ademamix``
  defaults to 6), no warm-ups (the paper recommends
  :math:`T_\alpha = T_{\beta_3}` = the run's length). The weight decay is
  decoupled (the paper's AdamW form).

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the fast EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    b3: :math:`\beta_3`, decay of the slow EMA, in ``[0, 1)``.
    alpha: :math:`\alpha`, the slow EMA's weight, ``>= 0``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_t}`, ``>= 0``.
    alpha_warmup: :math:`T_\alpha` (steps), or ``None``.
    b3_warmup: :math:`T_{\beta_3}` (steps), or ``None``.
    weight_decay: :math:`\lambda`, a number ``>= 0`` or an optax schedule.
    mask: which leaves are decayed, as in :func:`adam_optax.adamw`.
    mu_dtype: dtype of both first moments in the state (default: the params').
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
    >>> optimizer = adam_optax.ademamix(learning_rate=0.1, alpha=0.0)  # alpha 0: Adam
    >>> params = jnp.array([1.0, -2.0])
    >>> updates, _ = optimizer.update(jnp.array([0.5, -3.0]), optimizer.init(params))
    >>> optax.apply_updates(params, updates)  # Adam's first step: -lr sign(g)
    Array([ 0.90000004, -1.9       ], dtype=float32)

  References:
    Pagliardini, Ablin & Grangier, *The AdEMAMix Optimizer: Better, Faster,
    Older*, 2024, https://arxiv.org/abs/2409.03137.
  """
  owner = "ademamix"
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  moments = _ademamix_moments(
    owner, b1, b2, b3, alpha, eps, alpha_warmup, b3_warmup, mu_dtype, nu_dtype
  )
  return optax.chain(moments, *decay_blocks(owner, weight_decay, mask), scale_by_lr(learning_rate))
