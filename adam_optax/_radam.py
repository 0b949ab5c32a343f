r"""RAdam (Liu et al., 2020): Adam whose adaptive step is rectified, or skipped while untrusted.

``scale_by_radam`` keeps Adam's moments (it is :func:`adam_optax.scale_by_moments`
inside, with the same state) and rectifies their ratio; :func:`radam` chains
it with the first moment's bias correction, an optional weight decay and
:func:`adam_optax.scale_by_lr`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._bias_correction import bias_correction
from adam_optax._learning_rate import scale_by_lr
from adam_optax._moments import ScaleByMomentsState, scale_by_moments
from adam_optax._recipes import modern_recipe, recorded
from adam_optax._trees import check_state_type
from adam_optax._validation import (
  check_flag,
  check_moment_hyperparameters,
  check_nonnegative,
  check_rate,
)
from adam_optax._weight_decay import decay_blocks

# B_2n / (2n)!, n = 1..10: the Taylor coefficients of (x/2) coth(x/2) - 1 in x^2,
# enough for float64 rounding at |x| <= 1.
_BERNOULLI = (
  1 / 12,
  -1 / 720,
  1 / 30240,
  -1 / 1209600,
  1 / 47900160,
  -691 / 1307674368000,
  1 / 74724249600,
  -3617 / 10670622842880000,
  43867 / 5109094217170944000,
  -174611 / 802857662698291200000,
)


def _series(x: jax.Array) -> jax.Array:
  r""":math:`\tfrac{x}{2}\coth\tfrac{x}{2} - 1` for :math:`|x| \le 1`, by its Taylor series."""
  square = x * x
  total = jnp.zeros_like(x)
  for coefficient in reversed(_BERNOULLI):
    total = (total + jnp.asarray(coefficient, x.dtype)) * square
  return total


def sma_length(b2: Any, count: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
  r"""RAdam's :math:`(\rho_\infty, \rho_t)`, the lengths of the simple moving average.

  .. math::

    \rho_\infty = \frac{2}{1 - \beta_2} - 1, \qquad
    \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t}.

  Written so, :math:`\rho_t` cancels catastrophically for small :math:`t`
  (:math:`\rho_\infty \approx 2 \cdot 10^4` minus nearly as much at
  :math:`\beta_2 = 0.9999`, losing 4 digits of float32 exactly where the
  rectification switches on). With :math:`L = -\log\beta_2`, :math:`s = tL`
  and :math:`B(x) = \tfrac{x}{2}\coth\tfrac{x}{2} - 1` it equals
  :math:`t - 2 (B(s) - B(L)) / L`, evaluated by :math:`B`'s series while
  :math:`s \le 1`; beyond, the second term of the first form is small and
  that form is accurate.
  """
  b = num.scalar(b2, dtype)
  t = count.astype(dtype)
  rate = -jnp.log(b)
  s = t * rate
  one_minus_b = -jnp.expm1(-rate)
  rho_inf = 2 / one_minus_b - 1
  near = t - 2 * (_series(jnp.minimum(s, 1)) - _series(jnp.minimum(rate, 1))) / rate
  far = rho_inf - 2 * t * jnp.exp(-s) / -jnp.expm1(-s)
  return rho_inf, jnp.where(s <= 1, near, far)


def rectification(
  b2: Any, threshold: Any, count: jax.Array, dtype: Any
) -> tuple[jax.Array, jax.Array]:
  r"""Whether :math:`\rho_t` exceeds ``threshold``, and the factor :math:`r_t \sqrt{1 - \beta_2^t}`.

  .. math::

    r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\,\rho_\infty}
      {(\rho_\infty - 4)(\rho_\infty - 2)\,\rho_t}}.
  """
  rho_inf, rho = sma_length(b2, count, dtype)
  rectified = rho > num.scalar(threshold, dtype)
  ratio = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
  root = jnp.sqrt(jnp.where(rectified, ratio, jnp.ones([], dtype)))
  return rectified, root * jnp.sqrt(num.one_minus_power(b2, count, dtype))


def scale_by_radam(
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  *,
  threshold: Any = 5.0,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""Adam's moments, their ratio rectified, or the bare first moment while :math:`\rho_t \le 5`.

  .. math::

    u_t = \begin{cases}
      r_t \sqrt{1 - \beta_2^t}\; \dfrac{m_t}{\sqrt{v_t} + \epsilon}
        & \rho_t > \text{threshold}, \\
      m_t & \text{otherwise,}
    \end{cases}

  with :math:`m_t, v_t` Adam's EMAs, :math:`\rho_t, r_t` as in
  :func:`adam_optax._radam.sma_length` and
  :func:`adam_optax._radam.rectification`. Chain
  ``bias_correction(b1, None)`` after it for :math:`\hat m_t`. :math:`\epsilon`
  is added to :math:`\sqrt{v_t}`, not to :math:`\sqrt{\hat v_t}`, as in
  ``torch.optim.RAdam`` (the paper has no :math:`\epsilon`; ``optax.radam``
  adds it to :math:`\sqrt{\hat v_t}`). The threshold is torch's and the
  authors' code's 5; the paper's Algorithm 2 says 4.

  The state is :class:`adam_optax.ScaleByMomentsState`: RAdam keeps exactly
  Adam's moments (``torch.optim.RAdam``'s ``exp_avg``, ``exp_avg_sq``).

  Args:
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{v_t}`, ``>= 0``.
    threshold: the adaptive step is taken once :math:`\rho_t` exceeds it,
      ``>= 4``.
    mu_dtype: dtype of ``mu`` in the state (default: the params').
    nu_dtype: dtype of ``nu`` in the state (default: the params', float32 for
      half-precision params).

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`adam_optax.ScaleByMomentsState`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> radam = adam_optax.scale_by_radam()
    >>> state = radam.init(jnp.zeros(2))
    >>> updates, state = radam.update(jnp.array([2.0, -1.0]), state)
    >>> updates  # rho_1 = 1: not rectified: the first moment (1 - b1) g
    Array([ 0.20000005, -0.10000002], dtype=float32)

  References:
    Liu et al., *On the Variance of the Adaptive Learning Rate and Beyond*,
    ICLR 2020, https://arxiv.org/abs/1908.03265.
  """
  return _radam_moments("scale_by_radam", b1, b2, eps, threshold, mu_dtype, nu_dtype)


def _radam_moments(
  owner: str, b1: Any, b2: Any, eps: Any, threshold: Any, mu_dtype: Any, nu_dtype: Any
) -> optax.GradientTransformation:
  """:func:`scale_by_radam`, validated and reporting errors in ``owner``'s name."""
  b1, b2, eps, _, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, 0.0, mu_dtype, nu_dtype
  )
  threshold = check_nonnegative(owner, "threshold", threshold)
  if isinstance(threshold, float) and threshold < 4.0:
    raise ValueError(
      f"{owner}(threshold={threshold!r}): threshold must be >= 4; below, the rectification "
      "r_t is the root of a negative number"
    )
  moments = scale_by_moments(
    b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nu_correction="none"
  )

  def update_fn(
    updates: optax.Updates, state: ScaleByMomentsState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScaleByMomentsState]:
    check_state_type(owner, state, ScaleByMomentsState)
    ratio, state = moments.update(updates, state, params)
    factor = functools.cache(functools.partial(rectification, b2, threshold, state.count))

    def leaf(ratio: jax.Array, mu: jax.Array) -> jax.Array:
      dtype = num.compute_dtype(ratio.dtype)
      rectified, scale = factor(num.real_dtype(dtype))
      step = jnp.where(rectified, scale.astype(dtype) * ratio.astype(dtype), mu.astype(dtype))
      return step.astype(ratio.dtype)

    return jax.tree.map(leaf, ratio, state.mu), state

  return optax.GradientTransformation(moments.init, update_fn)


def radam(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  *,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  decoupled_weight_decay: bool = False,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  threshold: Any = 5.0,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""RAdam (Liu et al., 2020) as ``torch.optim.RAdam``.

  .. math::

    \theta_t = \theta_{t-1} - \eta_t \begin{cases}
      r_t\, \hat m_t \dfrac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon}
        & \rho_t > 5, \\
      \hat m_t & \text{otherwise,}
    \end{cases}
    \qquad
    \rho_t = \frac{2}{1 - \beta_2} - 1 - \frac{2 t \beta_2^t}{1 - \beta_2^t},

  with :math:`r_t` the variance rectification of
  :func:`adam_optax._radam.rectification`: the adaptive step is used only
  once the second moment averages enough gradients (the first 5 steps at
  :math:`\beta_2 = 0.999` are SGD with momentum). It is
  ``optax.chain(scale_by_radam(b1, b2, eps), bias_correction(b1, None),
  scale_by_lr(learning_rate))``, with ``add_decayed_weights(weight_decay,
  mask)`` chained before it (torch's default: an L2 penalty added to the
  gradient) or, with ``decoupled_weight_decay=True``, before ``scale_by_lr``
  (torch's decoupled decay, AdamW's). :math:`\epsilon` sits where torch puts it, on
  :math:`\sqrt{v_t}`; see :func:`scale_by_radam` for ``optax.radam``'s choice
  and the paper's.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{v_t}`, ``>= 0``.
    weight_decay: :math:`\lambda`, a number ``>= 0`` or an optax schedule.
    decoupled_weight_decay: decay the params directly (``True``) instead of
      adding :math:`\lambda\theta` to the gradient (``False``, torch's default).
    mask: which leaves are decayed, as in :func:`adam_optax.adamw`.
    threshold: :math:`\rho_t` above which the step is adaptive (torch: 5).
    mu_dtype: dtype of the first moment in the state (default: the params').
    nu_dtype: dtype of the second moment in the state (default: the params',
      float32 for half-precision params).

  Returns:
    An :class:`optax.GradientTransformation`; with a weight decay, ``update``
    needs ``params``.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message.
    TypeError: ``decoupled_weight_decay`` that is not a bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.radam(learning_rate=0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = optimizer.init(params)
    >>> updates, state = optimizer.update(jnp.array([0.5, -3.0]), state, params)
    >>> optax.apply_updates(params, updates)  # step 1: -lr m_hat = -lr g
    Array([ 0.95     , -1.6999999], dtype=float32)

  References:
    Liu et al., *On the Variance of the Adaptive Learning Rate and Beyond*,
    ICLR 2020, https://arxiv.org/abs/1908.03265.
  """
  owner = "radam"
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  decoupled = check_flag(owner, "decoupled_weight_decay", decoupled_weight_decay)
  decay = decay_blocks(owner, weight_decay, mask)
  moments = _radam_moments(owner, b1, b2, eps, threshold, mu_dtype, nu_dtype)
  recipe = modern_recipe(
    owner, learning_rate, b1, b2, eps, weight_decay if decoupled else None, threshold=threshold
  )
  inner = decay if decoupled else []
  member = recorded(
    recipe, optax.chain(moments, bias_correction(b1, None), *inner, scale_by_lr(learning_rate))
  )
  return member if decoupled or not decay else optax.chain(*decay, member)
