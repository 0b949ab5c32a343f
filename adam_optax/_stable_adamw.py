r"""StableAdamW (Wortsman et al., 2023): AdamW with per-tensor update clipping.

:func:`clip_by_update_rms` is the block: a wrapper of any optimizer that keeps
Adam's moments, which scales each tensor's update down when the gradient is
large for its second moment. :func:`stable_adamw` is AdamW wrapped in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._moment_chain import moment_chain
from adam_optax._moments import ScaleByMomentsState
from adam_optax._validation import check_decay, check_in_dtype, check_nonnegative

_OWNER = "clip_by_update_rms"


def clip_by_update_rms(
  optimizer: optax.GradientTransformation, b2: Any = 0.99, eps: Any = 1e-6
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each tensor's update by :math:`1 / \max(1, \mathrm{RMS}_t)` (update clipping).

  .. math::

    \mathrm{RMS}_t = \sqrt{\operatorname{mean}\!\left(
      \frac{g_t^2}{\max(\hat v_t, \epsilon^2)}\right)}, \qquad
    u_t \mapsto \frac{u_t}{\max(1, \mathrm{RMS}_t)},

  per tensor, where :math:`g_t` is the gradient ``optimizer`` was given and
  :math:`\hat v_t = v_t / (1 - \beta_2^t)` its bias-corrected second moment
  after this step. When the gradient is in line with :math:`\hat v_t`,
  :math:`\mathrm{RMS}_t \approx 1` and nothing changes; when it jumps (the
  second moment is out of date), the whole step of that tensor, learning rate
  and weight decay included, shrinks in proportion: AdaFactor's update
  clipping, as StableAdamW uses it.

  The rule that finds :math:`v_t`: ``optimizer``'s state must hold exactly one
  :class:`adam_optax.ScaleByMomentsState` (from
  :func:`adam_optax.scale_by_moments`, e.g. inside :func:`adam_optax.adamw`);
  its ``nu`` is :math:`v_t` and its ``count`` is :math:`t`. ``b2`` must be
  that block's :math:`\beta_2`. Leaves where ``nu`` has no array (``None``, or
  :class:`optax.MaskedNode` under ``optax.masked``) pass through unchanged. The
  wrapper keeps no state of its own: its state is ``optimizer``'s. On
  :func:`adam_optax.bucket` layouts a bucket is one tensor.

  Args:
    optimizer: the optimizer whose updates are clipped.
    b2: :math:`\beta_2` of the wrapped optimizer's second moment, in ``[0, 1)``.
    eps: :math:`\epsilon`, the floor :math:`\epsilon^2` of :math:`\hat v_t`
      in the ratio, ``>= 0`` (an entry with :math:`g = \hat v = 0` counts 0).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with ``optimizer``'s state.

  Raises:
    TypeError: ``optimizer`` is not an :class:`optax.GradientTransformation`;
      at ``init``, its state holds no :class:`adam_optax.ScaleByMomentsState`
      or more than one.
    ValueError: ``b2`` outside ``[0, 1)`` or ``eps`` negative.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> optimizer = adam_optax.clip_by_update_rms(adam_optax.adam(0.1, b2=0.99), b2=0.99)
    >>> params = jnp.zeros(2)
    >>> state = optimizer.init(params)
    >>> updates, state = optimizer.update(jnp.array([1.0, -1.0]), state)
    >>> updates  # RMS(g^2 / v_hat) = 1 at the first step: no clipping
    Array([-0.1,  0.1], dtype=float32)
    >>> updates, state = optimizer.update(jnp.array([1000.0, -1000.0]), state)
    >>> updates  # a 1000x jump: RMS(g^2 / v_hat) = 1.41, Adam's 0.0743 shrinks 1.41x
    Array([-0.05267895,  0.05267895], dtype=float32)

  References:
    Wortsman et al., *Stable and low-precision training for large-scale
    vision-language models*, NeurIPS 2023, https://arxiv.org/abs/2304.13013,
    Algorithm 2. Shazeer & Stern, *Adafactor*, ICML 2018,
    https://arxiv.org/abs/1804.04235, Section 5.
  """
  return update_clipping(_OWNER, optimizer, b2, eps)


def update_clipping(
  owner: str, optimizer: optax.GradientTransformation, b2: Any, eps: Any
) -> optax.GradientTransformationExtraArgs:
  """:func:`clip_by_update_rms`, validated and reporting errors in ``owner``'s name."""
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(
      f"{owner}(optimizer=...): expected an optax.GradientTransformation, got "
      f"{type(optimizer).__name__}"
    )
  b2 = check_decay(owner, "b2", b2)
  eps = check_nonnegative(owner, "eps", eps)
  inner = optax.with_extra_args_support(optimizer)

  def init_fn(params: optax.Params) -> optax.OptState:
    state = inner.init(params)
    _moments(owner, state)
    return state

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    new_updates, new_state = inner.update(updates, state, params, **extra_args)
    moments = _moments(owner, new_state)

    def clip(nu: Any, update: Any, grad: Any) -> Any:
      if nu is None or isinstance(nu, optax.MaskedNode) or jnp.size(update) == 0:
        return update
      update = jnp.asarray(update)
      dtype = num.compute_dtype(update.dtype)
      real = num.real_dtype(dtype)
      check_in_dtype(owner, "b2", b2, real, decay=True)
      v_hat = nu.astype(real) / num.one_minus_power(b2, moments.count, real)
      floor = jnp.square(num.scalar(eps, real))
      ratio = num.safe_ratio(
        num.squared_magnitude(jnp.asarray(grad).astype(dtype)), jnp.maximum(v_hat, floor)
      )
      factor = 1 / jnp.maximum(jnp.ones([], real), jnp.sqrt(jnp.mean(ratio)))
      return (update.astype(dtype) * factor.astype(dtype)).astype(update.dtype)

    def masked(x: Any) -> bool:
      return x is None or isinstance(x, optax.MaskedNode)

    return jax.tree.map(clip, moments.nu, new_updates, updates, is_leaf=masked), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _moments(owner: str, state: Any) -> ScaleByMomentsState:
  """The one :class:`ScaleByMomentsState` in ``state`` (the rule of :func:`clip_by_update_rms`)."""

  def is_moments(x: Any) -> bool:
    return isinstance(x, ScaleByMomentsState)

  found = [x for x in jax.tree.leaves(state, is_leaf=is_moments) if is_moments(x)]
  if len(found) != 1:
    raise TypeError(
      f"{owner}: the wrapped optimizer's state holds {len(found)} ScaleByMomentsState; "
      "update clipping reads the second moment nu of exactly one (wrap an optimizer built "
      "from adam_optax.scale_by_moments, such as adam_optax.adamw, or one such chain)."
    )
  return found[0]


def stable_adamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.99,
  eps: Any = 1e-6,
  weight_decay: optax.ScalarOrSchedule = 0.01,
  *,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""StableAdamW (Wortsman et al., 2023): AdamW whose step is clipped per tensor.

  .. math::

    \eta'_t = \frac{\eta_t}{\max\!\left(1, \sqrt{\operatorname{mean}\!\left(
      g_t^2 / \max(\hat v_t, \epsilon^2)\right)}\right)}, \qquad
    \theta_t = \theta_{t-1} - \eta'_t \left(
      \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda_t \theta_{t-1} \right),

  with :math:`\hat m_t, \hat v_t` Adam's bias-corrected moments and the mean
  over each tensor. It is ``clip_by_update_rms(adamw-chain, b2, eps)``: the
  chain ``scale_by_moments(b1, b2, eps)``, ``bias_correction(b1, b2)``,
  ``add_decayed_weights(weight_decay, mask)``, ``scale_by_lr(learning_rate)``
  (no decay block for ``weight_decay=0``), its update scaled by
  :func:`clip_by_update_rms`. The decay is multiplied by the clipped rate,
  as in the paper and ``optimi.StableAdamW``.

  Defaults and conventions are those of ``optimi.StableAdamW`` 0.3.3, which
  this matches step by step: :math:`\beta = (0.9, 0.99)`,
  :math:`\epsilon = 10^{-6}` added to :math:`\sqrt{\hat v_t}` (as in Adam's
  Algorithm 1) and :math:`\epsilon^2` the floor of :math:`\hat v_t` in the
  ratio, ``weight_decay=0.01`` multiplied by the learning rate (optimi's
  default ``decouple_lr=False``; its ``decouple_lr=True`` is
  ``weight_decay / max_lr`` here). optimi keeps the bias-corrected moments
  (its "debiased betas"); this package keeps the raw EMAs, the same numbers
  after the correction.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_t}`; :math:`\epsilon^2`
      floors :math:`\hat v_t` in the clipping ratio, ``>= 0``.
    weight_decay: :math:`\lambda`, a number ``>= 0`` or an optax schedule.
    mask: which leaves are decayed, as in :func:`adam_optax.adamw`.
    mu_dtype: dtype of the first moment in the state (default: the params').
    nu_dtype: dtype of the second moment (default: the params', float32 for
      half-precision params).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`; its state is the
    AdamW chain's (a :class:`adam_optax.ScaleByMomentsState` holds the moments).

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message; at ``init``, a ``mask`` that does not fit the params.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.stable_adamw(learning_rate=0.1, weight_decay=0.0)
    >>> params = jnp.zeros(2)
    >>> state = optimizer.init(params)
    >>> for grad in (1.0, 1.0, 1000.0):  # a sudden 1000x gradient
    ...   updates, state = optimizer.update(jnp.full(2, grad), state, params)
    >>> updates  # Adam's step would be -0.1 * 0.637; the RMS is 1.72
    Array([-0.03696346, -0.03696346], dtype=float32)

  References:
    Wortsman et al., *Stable and low-precision training for large-scale
    vision-language models*, NeurIPS 2023, https://arxiv.org/abs/2304.13013,
    Algorithm 2.
  """
  owner = "stable_adamw"
  chain = moment_chain(
    owner,
    learning_rate,
    b1,
    b2,
    eps,
    weight_decay=weight_decay,
    mask=mask,
    mu_dtype=mu_dtype,
    nu_dtype=nu_dtype,
  )
  return update_clipping(owner, chain, b2, eps)
