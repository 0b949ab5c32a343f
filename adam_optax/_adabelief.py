r"""AdaBelief (Zhuang et al., 2020): Adam normalised by the gradient's deviation from its EMA.

``scale_by_belief`` replaces :func:`adam_optax.scale_by_moments`; the rest of
:func:`adabelief` is Adam's chain: :func:`adam_optax.bias_correction`, an
optional :func:`adam_optax.add_decayed_weights`, :func:`adam_optax.scale_by_lr`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_optax import _numerics as num
from adam_optax._bias_correction import bias_correction
from adam_optax._elementwise import Moment, check_in_dtypes, moment_transform
from adam_optax._learning_rate import scale_by_lr
from adam_optax._validation import check_moment_hyperparameters, check_rate
from adam_optax._weight_decay import decay_blocks


class ScaleByBeliefState(NamedTuple):
  r"""State of :func:`scale_by_belief`.

  Attributes:
    count: number of updates applied so far (int32, saturating).
    mu: the gradient's EMA :math:`m_t`, shaped like the params (signed).
    nu: the EMA :math:`s_t` of the squared deviation :math:`(g_t - m_t)^2`,
      :math:`\epsilon_{root}` included, shaped like the params (nonnegative,
      real).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  mu: optax.Updates
  nu: optax.Updates


def scale_by_belief(
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-16,
  eps_root: Any = 1e-16,
  *,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""AdaBelief's moments and their ratio, to be bias-corrected like Adam's.

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    s_t = \beta_2 s_{t-1} + (1 - \beta_2) (g_t - m_t)^2 + \epsilon_{root}, \\
    r_t &= \frac{m_t}{\sqrt{s_t} + \epsilon \sqrt{1 - \beta_2^t}}.

  Chained with ``bias_correction(b1, b2)`` this is the paper's
  :math:`\hat m_t / (\sqrt{\hat s_t} + \epsilon)` exactly (the same
  construction as :func:`adam_optax.scale_by_moments`). :math:`\epsilon_{root}`
  is added to :math:`s_t` every step and stays in the state, as in the paper
  (Algorithm 2, where it is the same :math:`\epsilon`), ``optax.adabelief``
  and ``pytorch_optimizer.AdaBelief``.

  Args:
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the deviation's EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat s_t}`, ``>= 0``.
    eps_root: :math:`\epsilon_{root}`, added to :math:`s_t` each step, ``>= 0``.
    mu_dtype: dtype of ``mu`` in the state (default: the params').
    nu_dtype: dtype of ``nu`` in the state (default: the params', float32 for
      half-precision params).

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByBeliefState`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> belief = adam_optax.scale_by_belief(b1=0.5, b2=0.5, eps=0.0, eps_root=0.0)
    >>> state = belief.init(jnp.zeros(2))
    >>> ratio, state = belief.update(jnp.array([2.0, -1.0]), state)
    >>> state.nu  # (1 - b2) (g - m_1)^2 with m_1 = g / 2
    Array([0.5  , 0.125], dtype=float32)

  References:
    Zhuang et al., *AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients*, NeurIPS 2020, https://arxiv.org/abs/2010.07468.
  """
  return _belief_moments("scale_by_belief", b1, b2, eps, eps_root, mu_dtype, nu_dtype)


def _belief_moments(
  owner: str, b1: Any, b2: Any, eps: Any, eps_root: Any, mu_dtype: Any, nu_dtype: Any
) -> optax.GradientTransformation:
  """:func:`scale_by_belief`, validated and reporting errors in ``owner``'s name."""
  b1, b2, eps, eps_root, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, eps_root, mu_dtype, nu_dtype
  )

  def scalars(state: Any, dtype: np.dtype) -> tuple[jax.Array, ...]:
    count = state.count
    real = num.real_dtype(dtype)
    constants = {"eps": eps, "eps_root": eps_root}
    check_in_dtypes(owner, real, decays={"b1": b1, "b2": b2}, constants=constants)
    keep1, mix1 = num.decay_weights(b1, dtype)
    keep2, mix2 = num.decay_weights(b2, real)
    bias2 = num.one_minus_power(b2, num.saturating_increment(count), real)
    scaled_eps = num.scalar(eps, real) * jnp.sqrt(bias2)
    return keep1, mix1, keep2, mix2, scaled_eps, num.scalar(eps_root, real)

  def leaf(k: tuple[jax.Array, ...], g: jax.Array, mu: jax.Array, nu: jax.Array):
    keep1, mix1, keep2, mix2, scaled_eps, root = k
    new_mu = keep1 * mu + mix1 * g
    new_nu = keep2 * nu + mix2 * num.squared_magnitude(g - new_mu) + root
    ratio = num.safe_ratio(new_mu, (jnp.sqrt(new_nu) + scaled_eps).astype(g.dtype))
    return ratio, new_mu, new_nu

  moments = (Moment("mu", mu_dtype, real=False), Moment("nu", nu_dtype, real=True))
  return moment_transform(owner, ScaleByBeliefState, moments, scalars, leaf)


def adabelief(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-16,
  eps_root: Any = 1e-16,
  *,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""AdaBelief (Zhuang et al., 2020), a drop-in replacement for :func:`optax.adabelief`.

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    s_t = \beta_2 s_{t-1} + (1 - \beta_2) (g_t - m_t)^2 + \epsilon_{root}, \\
    \theta_t &= \theta_{t-1} - \eta_t \left(
      \frac{\hat m_t}{\sqrt{\hat s_t} + \epsilon} + \lambda_t \theta_{t-1} \right),

  with :math:`\hat m_t = m_t / (1 - \beta_1^t)`, :math:`\hat s_t = s_t / (1 -
  \beta_2^t)`: Adam with the gradient's deviation from its EMA (the "belief")
  in place of its square. It is ``optax.chain(scale_by_belief(b1, b2, eps,
  eps_root), bias_correction(b1, b2), add_decayed_weights(weight_decay, mask),
  scale_by_lr(learning_rate))``, the decay left out when it is 0. Defaults
  are the paper's and optax's (:math:`\epsilon = \epsilon_{root} = 10^{-16}`;
  ``pytorch_optimizer.AdaBelief`` uses one ``eps`` for both). The weight decay
  is decoupled (``pytorch_optimizer.AdaBelief``'s default
  ``weight_decouple=True``; optax's alias has none).

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the deviation's EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat s_t}`, ``>= 0``.
    eps_root: :math:`\epsilon_{root}`, added to :math:`s_t` each step, ``>= 0``.
    weight_decay: :math:`\lambda`, a number ``>= 0`` or an optax schedule.
    mask: which leaves are decayed, as in :func:`adam_optax.adamw`.
    mu_dtype: dtype of the first moment in the state (default: the params').
    nu_dtype: dtype of :math:`s_t` in the state (default: the params',
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
    >>> params, grads = jnp.array([1.0, -2.0]), jnp.array([0.5, -3.0])
    >>> ours, theirs = adam_optax.adabelief(0.1), optax.adabelief(0.1)
    >>> a, _ = ours.update(grads, ours.init(params))
    >>> b, _ = theirs.update(grads, theirs.init(params))
    >>> bool(jnp.allclose(a, b))
    True

  References:
    Zhuang et al., *AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients*, NeurIPS 2020, https://arxiv.org/abs/2010.07468.
  """
  owner = "adabelief"
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  moments = _belief_moments(owner, b1, b2, eps, eps_root, mu_dtype, nu_dtype)
  decay = decay_blocks(owner, weight_decay, mask)
  return optax.chain(moments, bias_correction(b1, b2), *decay, scale_by_lr(learning_rate))
