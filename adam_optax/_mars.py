r"""MARS-AdamW (Yuan et al., 2024): AdamW on a variance-reduced, per-tensor clipped gradient."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._bias_correction import bias_correction
from adam_optax._learning_rate import scale_by_lr
from adam_optax._moments import scale_by_moments
from adam_optax._trees import check_fits_state, check_inexact_leaves, check_state_type, colocate
from adam_optax._validation import (
  check_choice,
  check_decay,
  check_in_dtype,
  check_moment_hyperparameters,
  check_nonnegative,
  check_rate,
)
from adam_optax._weight_decay import decay_blocks

_OWNER = "scale_by_mars_correction"
PrevGradInit = Literal["current", "zeros"]


class ScaleByMarsCorrectionState(NamedTuple):
  """State of :func:`scale_by_mars_correction`.

  Attributes:
    count: number of updates applied so far (int32, saturating).
    prev_grad: the previous step's gradient :math:`g_{t-1}`, shaped and typed
      like the params (zeros before the first step).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  prev_grad: optax.Updates


def scale_by_mars_correction(
  b1: Any = 0.95,
  gamma: Any = 0.025,
  *,
  prev_grad_init: PrevGradInit = "current",
) -> optax.GradientTransformation:
  r"""MARS's variance-reduced gradient, clipped to norm 1 per leaf.

  .. math::

    c_t = g_t + \gamma \frac{\beta_1}{1 - \beta_1} (g_t - g_{t-1}), \qquad
    \tilde c_t = \frac{c_t}{\max(1, \lVert c_t \rVert_2)} \quad \text{(per leaf)}.

  Chained before :func:`adam_optax.scale_by_moments` (same :math:`\beta_1`) it
  makes MARS-AdamW. ``prev_grad_init`` says what :math:`g_0` is at the first
  step: ``"current"`` (default) takes :math:`g_0 = g_1`, so the first
  correction is 0, as in the paper's Algorithm 1 (which starts from
  :math:`x_1 = x_0`); ``"zeros"`` takes :math:`g_0 = 0`, so
  :math:`c_1 = (1 + \gamma\beta_1/(1 - \beta_1))\, g_1`, as in
  ``pytorch_optimizer.MARS``.

  Args:
    b1: :math:`\beta_1` of the momentum that follows, in ``[0, 1)``.
    gamma: :math:`\gamma \ge 0`, the strength of the correction (0: the
      gradient, clipped).
    prev_grad_init: ``"current"`` or ``"zeros"``, see above.

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByMarsCorrectionState`.

  Raises:
    ValueError: a hyperparameter outside its range, or an unknown
      ``prev_grad_init``, named in the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> correct = adam_optax.scale_by_mars_correction(b1=0.5, gamma=1.0)
    >>> state = correct.init(jnp.zeros(2))
    >>> c, state = correct.update(jnp.array([0.3, 0.4]), state)
    >>> c  # first step: no correction; norm 0.5, not clipped
    Array([0.3, 0.4], dtype=float32)
    >>> c, state = correct.update(jnp.array([0.6, 0.8]), state)
    >>> c.round(6)  # g + (g - g_prev) = (0.9, 1.2), of norm 1.5: clipped to norm 1
    Array([0.6, 0.8], dtype=float32)

  References:
    Yuan, Liu, Wu, Zhou & Gu, *MARS: Unleashing the Power of Variance
    Reduction for Training Large Models*, ICML 2025,
    https://arxiv.org/abs/2411.10438.
  """
  owner = _OWNER
  b1 = check_decay(owner, "b1", b1)
  gamma = check_nonnegative(owner, "gamma", gamma)
  check_choice(owner, "prev_grad_init", prev_grad_init, ("current", "zeros"))

  def init_fn(params: optax.Params) -> ScaleByMarsCorrectionState:
    check_inexact_leaves(f"{owner}.init", params, "param")
    state = ScaleByMarsCorrectionState(
      count=num.zero_count(), prev_grad=jax.tree.map(jnp.zeros_like, params)
    )
    return colocate(state, params)

  def update_fn(
    updates: optax.Updates, state: ScaleByMarsCorrectionState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScaleByMarsCorrectionState]:
    check_state_type(owner, state, ScaleByMarsCorrectionState)
    check_fits_state(owner, updates, state.prev_grad, params)
    first = state.count == 0

    def leaf(grad: Any, prev: jax.Array) -> jax.Array:
      grad = jnp.asarray(grad)
      dtype = num.compute_dtype(grad.dtype)
      real = num.real_dtype(dtype)
      check_in_dtype(owner, "b1", b1, real, decay=True)
      keep = num.scalar(b1, real)
      weight = (num.scalar(gamma, real) * keep / (1 - keep)).astype(dtype)
      g, before = grad.astype(dtype), prev.astype(dtype)
      if prev_grad_init == "current":
        before = jnp.where(first, g, before)
      c = g + weight * (g - before)
      norm = jnp.sqrt(jnp.sum(num.squared_magnitude(c)))
      return (c / jnp.maximum(norm, jnp.ones([], real)).astype(dtype)).astype(grad.dtype)

    corrected = jax.tree.map(leaf, updates, state.prev_grad)
    prev_grad = jax.tree.map(lambda g, p: jnp.asarray(g).astype(p.dtype), updates, state.prev_grad)
    return corrected, ScaleByMarsCorrectionState(
      count=num.saturating_increment(state.count), prev_grad=prev_grad
    )

  return optax.GradientTransformation(init_fn, update_fn)


def mars_adamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.95,
  b2: Any = 0.99,
  gamma: Any = 0.025,
  eps: Any = 1e-8,
  *,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any = None,
  prev_grad_init: PrevGradInit = "current",
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""MARS-AdamW (Yuan et al., 2024): AdamW on MARS's corrected gradient.

  .. math::

    c_t &= g_t + \gamma \frac{\beta_1}{1 - \beta_1} (g_t - g_{t-1}), \qquad
    \tilde c_t = c_t / \max(1, \lVert c_t \rVert_2) \ \text{(per leaf)}, \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) \tilde c_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) \tilde c_t^2, \\
    \theta_t &= \theta_{t-1} - \eta_t \left(
      \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda_t \theta_{t-1}\right).

  It is ``optax.chain(scale_by_mars_correction(b1, gamma),
  scale_by_moments(b1, b2, eps), bias_correction(b1, b2),
  add_decayed_weights(weight_decay, mask), scale_by_lr(learning_rate))``:
  :func:`adam_optax.adamw`'s chain after one more block (the decay is left
  out when ``weight_decay`` is 0 and no ``mask`` is given).

  Where ``pytorch_optimizer.MARS(mars_type="adamw")`` 4.1.0 differs:

  * its first correction uses :math:`g_0 = 0`; the paper's, none
    (``prev_grad_init="zeros"`` gives its choice);
  * it adds :math:`\epsilon` to :math:`\sqrt{v_t}` before the bias correction,
    i.e. :math:`\epsilon / \sqrt{1 - \beta_2^t}` next to
    :math:`\sqrt{\hat v_t}` (TensorFlow's :math:`\hat\epsilon`); here it is
    Adam's :math:`\epsilon`, as in the paper's AdamW step. The two agree
    where :math:`\epsilon` is negligible;
  * by default (``optimize_1d=False``) it trains leaves of fewer than two
    dimensions with plain AdamW of its own ``betas_1d=(0.9, 0.95)``,
    ``lr_1d=3e-3`` and ``weight_decay_1d=0.1``; here every leaf given gets
    MARS, and that split is an ``optax.multi_transform`` away (the docs and
    tests/test_mars_adamw.py show it).

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1` (momentum and correction weight), in ``[0, 1)``.
    b2: :math:`\beta_2`, in ``[0, 1)``.
    gamma: :math:`\gamma \ge 0`, the strength of the correction.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_t}`, ``>= 0``.
    weight_decay: :math:`\lambda`, a number ``>= 0`` or a schedule.
    mask: which leaves are decayed, as in :func:`adam_optax.adamw`.
    prev_grad_init: ``"current"`` (the paper) or ``"zeros"``
      (``pytorch_optimizer``), see :func:`scale_by_mars_correction`.
    mu_dtype: dtype of the first moment (default: the params').
    nu_dtype: dtype of the second moment (default: the params', float32 for
      half-precision params).

  Returns:
    An :class:`optax.GradientTransformation`.

  Raises:
    ValueError: a hyperparameter outside its range, named in the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> optimizer = adam_optax.mars_adamw(1e-2)
    >>> params = jnp.array([1.0, -2.0])
    >>> updates, state = optimizer.update(jnp.array([0.5, -3.0]), optimizer.init(params))
    >>> updates  # the first step is Adam's: -lr * sign(g)
    Array([-0.01,  0.01], dtype=float32)

  References:
    Yuan, Liu, Wu, Zhou & Gu, *MARS: Unleashing the Power of Variance
    Reduction for Training Large Models*, ICML 2025,
    https://arxiv.org/abs/2411.10438.
  """
  owner = "mars_adamw"
  b1 = check_decay(owner, "b1", b1)
  gamma = check_nonnegative(owner, "gamma", gamma)
  check_choice(owner, "prev_grad_init", prev_grad_init, ("current", "zeros"))
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  b1, b2, eps, _, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, 0.0, mu_dtype, nu_dtype
  )
  return optax.chain(
    scale_by_mars_correction(b1, gamma, prev_grad_init=prev_grad_init),
    scale_by_moments(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    bias_correction(b1, b2),
    *decay_blocks(owner, weight_decay, mask),
    scale_by_lr(learning_rate),
  )
