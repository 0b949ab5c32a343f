r"""AdEMAMix (Pagliardini et al., 2024) and Simplified AdEMAMix (Morwani et al., 2025).

``scale_by_ademamix`` keeps Adam's two moments and a third, slow one, with the
paper's warm-ups of its weight :math:`\alpha` and decay :math:`\beta_3`;
:func:`ademamix` chains it with an optional
:func:`adam_optax.add_decayed_weights` and :func:`adam_optax.scale_by_lr`.
``scale_by_simplified_ademamix`` keeps one undamped momentum instead of the
two EMAs, with the same half-life warm-up for its :math:`\beta_1`, and
:func:`simplified_ademamix` chains it the same way.
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
  concrete_scalar,
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

    \alpha_t = \min\left(\frac{t}{T_\alpha}\alpha, \alpha\right),

  and :math:`\beta_{3,t}` from :func:`half_life_warmup` of :math:`\beta_1`
  to :math:`\beta_3` over :math:`T_{\beta_3}` steps (``t`` from 1, in
  ``dtype``). A warm-up of ``None`` keeps the final value from the start.
  """
  alpha = num.scalar(alpha, dtype)
  if alpha_warmup is not None:
    alpha = jnp.minimum(t * alpha / alpha_warmup, alpha)
  return (alpha, *half_life_warmup(b1, b3, b3_warmup, t, dtype))


def half_life_warmup(
  start: Any, end: Any, warmup: int | None, t: jax.Array, dtype: Any
) -> tuple[jax.Array, jax.Array]:
  r"""Step :math:`t`'s EMA weights :math:`(\beta_t, 1 - \beta_t)`, warmed up in half-life space.

  .. math::

    \beta_t = \min\left(f^{-1}\left((1 - \tfrac{t}{T}) f(\beta_{start})
      + \tfrac{t}{T} f(\beta_{end})\right), \beta_{end}\right),

  with :math:`f(\beta) = \ln 0.5 / \ln\beta - 1` the half-life of an EMA of
  decay :math:`\beta` (``t`` from 1, in ``dtype``): the EMA's memory grows
  linearly from :math:`\beta_{start}`'s to :math:`\beta_{end}`'s over
  :math:`T` = ``warmup`` steps (AdEMAMix's :math:`\beta_3`, Simplified
  AdEMAMix's :math:`\beta_1`). :math:`1 - \beta_t` is formed as
  ``-expm1(...)``, not by subtracting a rounded :math:`\beta_t` near 1 (which
  would cost 6e-4 of it in float32 at :math:`\beta = 0.9999`). ``warmup=None``
  keeps :math:`\beta_{end}` from the start.
  """
  keep, mix = num.uncorrected_decay_weights(end, dtype)
  if warmup is not None:
    s = t / warmup
    # ln(beta) as log1p(-(1 - beta)): exact to rounding for beta near 1, where
    # ln(float32(beta)) is off by (beta - float32(beta)) / (1 - beta) relative.
    log_start = jnp.log1p(-num.uncorrected_decay_weights(start, dtype)[1])
    log_end = jnp.log1p(-mix)
    exponent = 1 / ((1 - s) / log_start + s / log_end)
    warming = exponent < log_end  # beta_t < beta_end
    keep = jnp.where(warming, jnp.exp(exponent), keep)
    mix = jnp.where(warming, -jnp.expm1(exponent), mix)
  return keep, mix


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
    return _normalised(numerator, new_nu, root_bias2, floor, g.dtype), new_mu, new_nu, new_slow

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


class ScaleBySimplifiedAdemamixState(NamedTuple):
  r"""State of :func:`scale_by_simplified_ademamix`.

  Attributes:
    count: number of updates applied so far (int32, saturating).
    mu: the undamped momentum :math:`m_t` (a sum of past gradients, not an
      average), shaped like the params (signed).
    nu: the second-moment EMA :math:`v_t`, shaped like the params
      (nonnegative, real).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  mu: optax.Updates
  nu: optax.Updates


def scale_by_simplified_ademamix(
  b1: Any = 0.99,
  b2: Any = 0.95,
  alpha: Any = 0.0,
  eps: Any = 1e-8,
  *,
  b1_warmup: int | None = None,
  min_b1: Any = 0.9,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""Simplified AdEMAMix's undamped momentum plus the gradient, normalised as Adam's.

  .. math::

    m_t &= \beta_{1,t} m_{t-1} + g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \\
    u_t &= \frac{\alpha g_t + m_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}.

  :math:`m_t` is not an EMA (no :math:`1 - \beta_1` factor) and not
  bias-corrected: it weighs the gradients as the slow EMA of AdEMAMix does at
  :math:`\alpha / (1 - \beta_3)`. :math:`\beta_{1,t}` is warmed up from
  ``min_b1`` to ``b1`` over ``b1_warmup`` steps in half-life space
  (:func:`adam_optax._ademamix.half_life_warmup`, AdEMAMix's :math:`\beta_3`
  scheduler), or is ``b1`` throughout.

  Args:
    b1: :math:`\beta_1`, decay of the momentum, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    alpha: :math:`\alpha`, the weight of the current gradient, ``>= 0``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_t}`, ``>= 0``.
    b1_warmup: steps of the half-life warm-up of :math:`\beta_1`, or ``None``.
    min_b1: :math:`\beta_1`'s value at the start of the warm-up, in
      ``[0, b1]`` (unused without a warm-up).
    mu_dtype: dtype of ``mu`` in the state (default: the params').
    nu_dtype: dtype of ``nu`` in the state (default: the params', float32 for
      half-precision params).

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleBySimplifiedAdemamixState`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> simple = adam_optax.scale_by_simplified_ademamix(b1=0.5, eps=0.0)
    >>> state = simple.init(jnp.zeros(2))
    >>> for _ in range(2):
    ...   _, state = simple.update(jnp.array([2.0, -1.0]), state)
    >>> state.mu  # (1 + b1) g: a sum, not an average
    Array([ 3. , -1.5], dtype=float32)

  References:
    Morwani, Shapira, Vyas, Malach, Kakade & Janson, *Connections between
    Schedule-Free Optimizers, AdEMAMix, and Accelerated SGD Variants*, 2025,
    https://arxiv.org/abs/2502.02431.
  """
  return _simplified_moments(
    "scale_by_simplified_ademamix", b1, b2, alpha, eps, b1_warmup, min_b1, mu_dtype, nu_dtype
  )


def _simplified_moments(
  owner: str,
  b1: Any,
  b2: Any,
  alpha: Any,
  eps: Any,
  b1_warmup: Any,
  min_b1: Any,
  mu_dtype: Any,
  nu_dtype: Any,
) -> optax.GradientTransformation:
  """:func:`scale_by_simplified_ademamix`, validated and reporting errors in ``owner``'s name."""
  b1, b2, eps, _, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, 0.0, mu_dtype, nu_dtype
  )
  alpha = check_nonnegative(owner, "alpha", alpha)
  b1_warmup = _check_warmup(owner, "b1_warmup", b1_warmup)
  min_b1 = check_decay(owner, "min_b1", min_b1)
  start, end = concrete_scalar(min_b1), concrete_scalar(b1)
  if b1_warmup is not None and start is not None and end is not None and start > end:
    raise ValueError(f"{owner}(min_b1={min_b1!r}): min_b1 must be <= b1 = {b1!r}")

  def scalars(state: Any, dtype: np.dtype) -> tuple[jax.Array, ...]:
    real = num.real_dtype(dtype)
    decays = {"b1": b1, "b2": b2, "min_b1": min_b1}
    check_in_dtypes(owner, real, decays=decays, constants={"eps": eps, "alpha": alpha})
    t = num.saturating_increment(state.count)
    keep1, _ = half_life_warmup(min_b1, b1, b1_warmup, t.astype(real), real)
    keep2, mix2 = num.decay_weights(b2, real)
    root_bias2 = jnp.sqrt(num.one_minus_power(b2, t, real))
    return keep1, keep2, mix2, num.scalar(alpha, real), root_bias2, num.scalar(eps, real)

  def leaf(k: tuple[jax.Array, ...], g: jax.Array, mu: jax.Array, nu: jax.Array):
    keep1, keep2, mix2, alpha_, root_bias2, floor = k
    new_mu = keep1.astype(g.dtype) * mu + g
    new_nu = keep2 * nu + mix2 * num.squared_magnitude(g)
    numerator = alpha_.astype(g.dtype) * g + new_mu
    return _normalised(numerator, new_nu, root_bias2, floor, g.dtype), new_mu, new_nu

  moments = (Moment("mu", mu_dtype, real=False), Moment("nu", nu_dtype, real=True))
  return moment_transform(owner, ScaleBySimplifiedAdemamixState, moments, scalars, leaf)


def simplified_ademamix(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.99,
  b2: Any = 0.95,
  alpha: Any = 0.0,
  eps: Any = 1e-8,
  *,
  b1_warmup: int | None = None,
  min_b1: Any = 0.9,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""Simplified AdEMAMix (Morwani et al., 2025): one undamped momentum plus the gradient.

  .. math::

    \theta_t = \theta_{t-1} - \eta_t \left(
      \frac{\alpha g_t + m_t}{\sqrt{\hat v_t} + \epsilon}
      + \lambda_t \theta_{t-1}\right), \qquad
    m_t = \beta_{1,t} m_{t-1} + g_t,

  with the moments of :func:`scale_by_simplified_ademamix`. It is
  ``optax.chain(scale_by_simplified_ademamix(...),
  add_decayed_weights(weight_decay, mask), scale_by_lr(learning_rate))``, the
  decay left out when it is 0. Defaults :math:`\beta = (0.99, 0.95)`,
  :math:`\alpha = 0`, :math:`\epsilon = 10^{-8}`, ``min_b1=0.9`` as the
  authors' code and ``pytorch_optimizer.SimplifiedAdEMAMix``; the authors run
  the warm-up over the whole run (``b1_warmup`` = its length). As the momentum
  sums about :math:`1 / (1 - \beta_1)` gradients, the learning rate is about
  :math:`1 - \beta_1` times Adam's.

  Follows the paper and the authors' code, as ``optax.contrib.simplified_ademamix``
  does (which has no warm-up). ``pytorch_optimizer.SimplifiedAdEMAMix`` 4.1.0
  differs twice: it keeps an EMA (:math:`m_t = \beta_1 m_{t-1} + (1 -
  \beta_1) g_t`), a convention undone by ``learning_rate / (1 - b1)``,
  ``alpha * (1 - b1)`` and ``weight_decay * (1 - b1)`` given to it when
  :math:`\beta_1` is constant; and it divides its step by :math:`1 -
  \beta_2^t` once more (its first step is :math:`1 / (1 - \beta_2) = 20`
  times the paper's at the default :math:`\beta_2`), a bug shown in the tests
  against the paper's equations in float64.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the momentum, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    alpha: :math:`\alpha`, the weight of the current gradient, ``>= 0``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_t}`, ``>= 0``.
    b1_warmup: steps of the half-life warm-up of :math:`\beta_1`, or ``None``.
    min_b1: :math:`\beta_1` at the start of the warm-up, in ``[0, b1]``.
    weight_decay: :math:`\lambda`, a number ``>= 0`` or an optax schedule.
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
    >>> optimizer = adam_optax.simplified_ademamix(learning_rate=0.1, alpha=1.0)
    >>> params = jnp.array([1.0, -2.0])
    >>> updates, _ = optimizer.update(jnp.array([0.5, -3.0]), optimizer.init(params))
    >>> optax.apply_updates(params, updates)  # first step: -lr (alpha + 1) sign(g)
    Array([ 0.8, -1.8], dtype=float32)

  References:
    Morwani, Shapira, Vyas, Malach, Kakade & Janson, *Connections between
    Schedule-Free Optimizers, AdEMAMix, and Accelerated SGD Variants*, 2025,
    https://arxiv.org/abs/2502.02431.
  """
  owner = "simplified_ademamix"
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  moments = _simplified_moments(owner, b1, b2, alpha, eps, b1_warmup, min_b1, mu_dtype, nu_dtype)
  return optax.chain(moments, *decay_blocks(owner, weight_decay, mask), scale_by_lr(learning_rate))


def _normalised(
  numerator: jax.Array, nu: jax.Array, root_bias2: jax.Array, floor: jax.Array, dtype: Any
) -> jax.Array:
  r"""``numerator`` over :math:`\sqrt{v / (1 - \beta_2^t)} + \epsilon`, 0 where that is 0."""
  return num.safe_ratio(numerator, (jnp.sqrt(nu) / root_bias2 + floor).astype(dtype))
