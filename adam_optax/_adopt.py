r"""ADOPT (Taniguchi et al., 2024): normalise by the previous second moment, then average.

``scale_by_adopt`` is the one block in which ADOPT differs from Adam;
:func:`adopt` chains it with :func:`adam_optax.add_decayed_weights` and
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
from adam_optax._recipes import modern_recipe, recorded
from adam_optax._validation import (
  check_moment_hyperparameters,
  check_nonnegative,
  check_rate,
)
from adam_optax._weight_decay import decay_blocks

ClipBound = Callable[[jax.Array], Any] | float


def quarter_power(t: jax.Array) -> jax.Array:
  r"""The paper's clipping bound :math:`c_t = t^{1/4}` (:func:`scale_by_adopt`'s default)."""
  return t**0.25


class ScaleByAdoptState(NamedTuple):
  r"""State of :func:`scale_by_adopt`.

  Attributes:
    count: number of updates applied so far (int32, saturating); the first
      update (count 0) only initialises ``nu``.
    mu: the momentum :math:`m_t` of the normalised, clipped gradients, shaped
      like the params (signed).
    nu: the second-moment EMA :math:`v_t`, shaped like the params
      (nonnegative, real).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  mu: optax.Updates
  nu: optax.Updates


def scale_by_adopt(
  b1: Any = 0.9,
  b2: Any = 0.9999,
  eps: Any = 1e-6,
  *,
  clip: ClipBound | None = quarter_power,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""ADOPT's moments: the gradient is normalised by :math:`v_{t-1}`, then averaged.

  With :math:`v_0 = g_0^2` (the first update emits 0 and only sets
  :math:`v_0`), for :math:`t \ge 1`:

  .. math::

    \tilde g_t &= \operatorname{clip}\left(
      \frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)}, -c_t, c_t\right), \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, \tilde g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2,

  and the output is :math:`m_t`. Because :math:`v_{t-1}` does not contain
  :math:`g_t`, the normalised gradient is an unbiased direction, which is what
  lets ADOPT converge for every :math:`\beta_2`; no bias correction is needed.

  ``clip`` maps :math:`t` (1 at the first update that moves the params) to
  :math:`c_t`, as in the paper (:math:`c_t = t^{1/4}`) and
  ``optax.contrib.adopt``. The authors' code and ``pytorch_optimizer.ADOPT``
  count the initialising call as step 1, so they clip step :math:`t` at
  :math:`(t + 1)^{1/4}`: pass ``clip=lambda t: (t + 1) ** 0.25`` to match
  them exactly (the tests check both).

  Args:
    b1: :math:`\beta_1`, decay of the momentum, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, the floor of :math:`\sqrt{v_{t-1}}`, ``>= 0``.
    clip: a function of :math:`t` (a float array) returning the bound
      :math:`c_t`, a constant bound ``>= 0``, or ``None`` for the unclipped
      ADOPT of the paper's first version. Under :func:`optax.inject_hyperparams`
      a function is evaluated by the wrapper at its step count, which is
      :math:`t`, and arrives here as that step's constant: the same optimizer.
    mu_dtype: dtype of ``mu`` in the state (default: the params').
    nu_dtype: dtype of ``nu`` in the state (default: the params', float32 for
      half-precision params, as in :func:`adam_optax.scale_by_moments`).

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByAdoptState`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number (``clip``:
      neither ``None``, a number ``>= 0`` nor callable), named in the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> adopt = adam_optax.scale_by_adopt(b1=0.5)
    >>> state = adopt.init(jnp.zeros(2))
    >>> updates, state = adopt.update(jnp.array([2.0, -1.0]), state)
    >>> updates, state.nu  # the first call only sets v_0 = g_0^2
    (Array([0., 0.], dtype=float32), Array([4., 1.], dtype=float32))
    >>> adopt.update(jnp.array([1.0, -5.0]), state)[0]  # (1 - b1) clip(g / |g_0|, 1)
    Array([ 0.25, -0.5 ], dtype=float32)

  References:
    Taniguchi et al., *ADOPT: Modified Adam Can Converge with Any* :math:`\beta_2`
    *with the Optimal Rate*, NeurIPS 2024, https://arxiv.org/abs/2411.02853.
  """
  return _adopt_moments("scale_by_adopt", b1, b2, eps, clip, mu_dtype, nu_dtype)


def _adopt_moments(
  owner: str, b1: Any, b2: Any, eps: Any, clip: Any, mu_dtype: Any, nu_dtype: Any
) -> optax.GradientTransformation:
  """:func:`scale_by_adopt`, validated and reporting errors in ``owner``'s name."""
  b1, b2, eps, _, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, 0.0, mu_dtype, nu_dtype
  )
  if clip is not None and not callable(clip):
    try:
      clip = check_nonnegative(owner, "clip", clip)
    except ValueError:
      raise ValueError(
        f"{owner}(clip={clip!r}): clip must be None, a number >= 0 or a function of the "
        "step t returning the clipping bound, such as lambda t: t ** 0.25"
      ) from None

  def scalars(state: Any, dtype: np.dtype) -> tuple[jax.Array, ...]:
    count = state.count
    real = num.real_dtype(dtype)
    check_in_dtypes(owner, real, decays={"b1": b1, "b2": b2}, constants={"eps": eps})
    keep1, mix1 = num.uncorrected_decay_weights(b1, dtype)
    keep2, mix2 = num.uncorrected_decay_weights(b2, real)
    if clip is None:
      bound = jnp.full([], jnp.inf, real)
    else:
      bound = num.scalar(clip(count.astype(real)) if callable(clip) else clip, real)
    return count == 0, keep1, mix1, keep2, mix2, num.scalar(eps, real), bound

  def leaf(k: tuple[jax.Array, ...], g: jax.Array, mu: jax.Array, nu: jax.Array):
    first, keep1, mix1, keep2, mix2, floor, bound = k
    square = num.squared_magnitude(g)
    normed = clip_parts(num.safe_ratio(g, jnp.maximum(jnp.sqrt(nu), floor)), bound)
    new_mu = jnp.where(first, mu, keep1 * mu + mix1 * normed)
    new_nu = jnp.where(first, square, keep2 * nu + mix2 * square)
    return jnp.where(first, jnp.zeros([], g.dtype), new_mu), new_mu, new_nu

  moments = (Moment("mu", mu_dtype, real=False), Moment("nu", nu_dtype, real=True))
  return moment_transform(owner, ScaleByAdoptState, moments, scalars, leaf)


def clip_parts(x: jax.Array, bound: jax.Array) -> jax.Array:
  """``x`` clipped to ``[-bound, bound]``; a complex ``x`` part by part (as torch's real view)."""
  if jnp.iscomplexobj(x):
    return jax.lax.complex(clip_parts(x.real, bound), clip_parts(x.imag, bound))
  return jnp.clip(x, -bound.astype(x.dtype), bound.astype(x.dtype))


def adopt(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.9999,
  eps: Any = 1e-6,
  *,
  clip: ClipBound | None = quarter_power,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""ADOPT (Taniguchi et al., 2024): Adam that converges for every :math:`\beta_2`.

  .. math::

    v_0 &= g_0^2, \quad \theta_0 \text{ unchanged by the first update}, \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, \operatorname{clip}\left(
      \frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)}, -c_t, c_t\right), \\
    \theta_t &= \theta_{t-1} - \eta_t \left(m_t + \lambda_t \theta_{t-1}\right), \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2,

  with :math:`c_t = t^{1/4}` by default. It is ``optax.chain(scale_by_adopt(b1,
  b2, eps, clip=clip), add_decayed_weights(weight_decay, mask),
  scale_by_lr(learning_rate))`` (the decay left out when it is 0). Defaults
  are the paper's and the authors' (lr ``1e-3``, :math:`\beta = (0.9,
  0.9999)`, :math:`\epsilon = 10^{-6}`).

  The weight decay is decoupled, as in :func:`adam_optax.adamw` (the authors'
  ``decouple=True``, ``pytorch_optimizer.ADOPT(weight_decouple=True)``); like
  those, it already acts on the first, initialising update. For the
  references' default L2 penalty chain ``add_decayed_weights`` before this
  optimizer instead. The clipping bound follows the paper's step count, one
  behind the authors' code; see :func:`scale_by_adopt`.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the momentum, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, the floor of :math:`\sqrt{v_{t-1}}`, ``>= 0``.
    clip: :math:`t \mapsto c_t`, a constant bound, or ``None`` for no
      clipping (see :func:`scale_by_adopt`).
    weight_decay: :math:`\lambda`, a number ``>= 0`` or an optax schedule.
    mask: which leaves are decayed, as in :func:`adam_optax.adamw`.
    mu_dtype: dtype of the momentum in the state (default: the params').
    nu_dtype: dtype of the second moment in the state (default: the params',
      float32 for half-precision params).

  Returns:
    An :class:`optax.GradientTransformation`; with a weight decay, ``update``
    needs ``params``.

  Raises:
    ValueError: as :func:`scale_by_adopt`, or a ``learning_rate`` or
      ``weight_decay`` that is negative or neither a number nor a schedule.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.adopt(learning_rate=0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = optimizer.init(params)
    >>> for grad in ([0.5, -3.0], [0.5, -3.0]):
    ...   updates, state = optimizer.update(jnp.array(grad), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params  # step 1 only sets v_0; step 2 moves by lr (1 - b1) g_1 / |g_0|
    Array([ 0.99, -1.99], dtype=float32)

  References:
    Taniguchi et al., *ADOPT: Modified Adam Can Converge with Any* :math:`\beta_2`
    *with the Optimal Rate*, NeurIPS 2024, https://arxiv.org/abs/2411.02853;
    the authors' code: https://github.com/iShohei220/adopt.
  """
  owner = "adopt"
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  decay = decay_blocks(owner, weight_decay, mask)
  recipe = modern_recipe(
    owner, learning_rate, b1, b2, eps, weight_decay if decay else None, clip=clip
  )
  moments = _adopt_moments(owner, b1, b2, eps, clip, mu_dtype, nu_dtype)
  return recorded(recipe, optax.chain(moments, *decay, scale_by_lr(learning_rate)))
