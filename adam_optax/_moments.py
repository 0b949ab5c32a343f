r"""``scale_by_moments``: Adam's moment estimates and their normalised ratio.

One leaf function serves the whole family: Adam, NAdam (``nesterov``),
AMSGrad (``amsgrad`` with the three ``nu_correction`` conventions) and AdaMax
(``infinity_norm``). The options only choose which lines of it run.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_optax import _numerics as num
from adam_optax._trees import check_fits_state
from adam_optax._validation import (
  check_choice,
  check_decay,
  check_float_dtype,
  check_nonnegative,
  check_zero,
)

NuCorrection = Literal["downstream", "inside", "none"]


class ScaleByMomentsState(NamedTuple):
  r"""State of :func:`scale_by_moments`.

  One state type serves every option, so tools that address the state by field
  name (``optax.tree.get(state, "nu")``, sharding rules) treat the whole family
  alike. ``nu_max`` is ``None`` unless ``amsgrad=True``: ``None`` is an empty
  pytree, so Adam, NAdam and AdaMax carry no extra leaf and no extra memory.

  Attributes:
    count: number of updates applied so far (int32, saturating).
    mu: first-moment EMA :math:`m_t`, shaped like the params.
    nu: second-moment EMA :math:`v_t` (or AdaMax's weighted infinity norm
      :math:`u_t`), shaped like the params (real-valued for complex params).
    nu_max: AMSGrad's running maximum :math:`\hat v^{\max}_t` of the second
      moment (of :math:`v_t`, or of :math:`v_t / c_2(t)` with
      ``nu_correction="inside"``), in ``nu``'s dtype; ``None`` without
      ``amsgrad``.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  mu: optax.Updates
  nu: optax.Updates
  nu_max: optax.Updates | None = None


class _StepScalars(NamedTuple):
  """The per-step scalars of :func:`scale_by_moments`'s leaf update, in one dtype."""

  keep1: jax.Array  # b1, in the compute dtype
  mix1: jax.Array  # 1 - b1
  keep2: jax.Array  # b2, real
  mix2: jax.Array  # 1 - b2
  bias2: jax.Array  # c_2(t) = 1 - b2^t
  eps: jax.Array  # eps, scaled to the second moment's units
  eps_root: jax.Array  # eps_root, likewise
  weight_mu: jax.Array  # NAdam's numerator weights (b1, 1 - b1 without nesterov)
  weight_g: jax.Array


def scale_by_moments(
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  *,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
  nesterov: bool = False,
  momentum_decay: Any = None,
  amsgrad: bool = False,
  nu_correction: NuCorrection | None = None,
  infinity_norm: bool = False,
) -> optax.GradientTransformation:
  r"""Keeps Adam's moment EMAs and emits their normalised ratio.

  With :math:`c_k(t) = 1 - \beta_k^t` the bias of an EMA started at zero,

  .. math::

    m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2,

    r_t = \frac{m_t}{\sqrt{v_t + \epsilon_{root}\, c_2(t)} + \epsilon \sqrt{c_2(t)}}.

  The stabilisers are scaled by :math:`c_2(t)` so that they act on the
  bias-corrected second moment: multiplying :math:`r_t` by
  :math:`\sqrt{c_2(t)} / c_1(t)` (:func:`bias_correction`) gives exactly
  Kingma & Ba's Algorithm 1,
  :math:`\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`,
  for every :math:`\epsilon`. (A constant :math:`\epsilon` here would give
  TensorFlow's ":math:`\hat\epsilon`" variant, a different optimizer whenever
  :math:`\epsilon` matters.) Chain it with a :func:`bias_correction` that uses
  the same :math:`\beta_1, \beta_2`.

  With ``nesterov=True`` the numerator is Dozat's look-ahead moment, scaled to
  the same bias as :math:`m_t`:
  :math:`\beta_1 m_t\, c_1(t) / c_1(t+1) + (1 - \beta_1) g_t` (optax's NAdam),
  or, given ``momentum_decay`` :math:`\psi`, the same with torch's momentum
  schedule :math:`\mu_t = \beta_1 (1 - \tfrac12 \cdot 0.96^{t\psi})` in place
  of :math:`\beta_1` (``torch.optim.NAdam``; see
  :func:`adam_optax._numerics.nesterov_coefficients`).

  ``nu_correction`` says where the second moment's bias :math:`c_2(t)` is
  removed, and so which second moment :math:`s_t` the denominator
  :math:`\sqrt{s_t + \epsilon_{root}\,k_t} + \epsilon\sqrt{k_t}` uses:

  * ``"downstream"`` (default): :math:`s_t = v_t`, :math:`k_t = c_2(t)`; chain
    ``bias_correction(b1, b2)``, which multiplies by :math:`\sqrt{c_2(t)}`.
  * ``"inside"``: :math:`s_t = v_t / c_2(t)`, :math:`k_t = 1`; chain
    ``bias_correction(b1, None)``.
  * ``"none"``: :math:`s_t = v_t`, :math:`k_t = 1`; nothing corrects it.

  Without ``amsgrad`` the first two are the same optimizer. With
  ``amsgrad=True`` the denominator uses the running maximum
  :math:`s^{\max}_t = \max(s^{\max}_{t-1}, s_t)` instead of :math:`s_t`
  (Reddi, Kale & Kumar, 2018), and the three choices are the three AMSGrad
  conventions of :func:`adam_optax.amsgrad`: the maximum is taken over the raw
  :math:`v_t` and bias-corrected afterwards (torch), over :math:`\hat v_t`
  (optax), or over the uncorrected :math:`v_t` (the paper).

  With ``infinity_norm=True`` the second moment is AdaMax's exponentially
  weighted infinity norm (Kingma & Ba, Section 7.1), with :math:`\epsilon`
  inside the maximum as in ``optax.adamax`` and ``torch.optim.Adamax``:

  .. math::

    u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \qquad r_t = m_t / u_t .

  :math:`u_t` has no zero-initialisation bias, so ``nu_correction`` must be
  ``"none"`` (its default there) and ``eps_root`` must be 0; chain
  ``bias_correction(b1, None)``.

  Half-precision leaves are computed in float32 and stored back in their own
  dtype, so an all-zero float16 gradient gives a zero update, not ``0/0``.

  Args:
    b1: decay of the first-moment EMA, in ``[0, 1)``.
    b2: decay of the second-moment EMA, in ``[0, 1)``.
    eps: added to the root of the bias-corrected second moment, ``>= 0``.
    eps_root: added inside that root, ``>= 0``; make it positive to
      differentiate through the update (the root's derivative at 0 is infinite).
    mu_dtype: precision of ``mu`` in the state (complex for complex params);
      ``None`` keeps each param's dtype.
    nu_dtype: precision of ``nu`` (and ``nu_max``) in the state (always real); ``None`` keeps
      each param's precision. ``jnp.float32`` with bfloat16 params stops the
      second moment from stalling: bfloat16's 8-bit mantissa cannot hold an
      increment of ``(1 - b2) g^2`` once ``v`` is a few hundred times larger.
    nesterov: use Nesterov momentum (Dozat, 2016) in the numerator.
    momentum_decay: with ``nesterov``, ``None`` for optax's NAdam or
      :math:`\psi \ge 0` for torch's momentum schedule (torch's default is
      ``4e-3``).
    amsgrad: normalise by the running maximum of the second moment (AMSGrad).
    nu_correction: ``"downstream"``, ``"inside"`` or ``"none"``, see above;
      ``None`` picks ``"downstream"`` (``"none"`` with ``infinity_norm``).
    infinity_norm: use AdaMax's infinity norm instead of the second moment.

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByMomentsState`.

  References:
    Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015,
    https://arxiv.org/abs/1412.6980.
    Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016.
    Reddi, Kale & Kumar, *On the Convergence of Adam and Beyond*, ICLR 2018,
    https://arxiv.org/abs/1904.09237.
  """
  owner = "scale_by_moments"
  check_decay(owner, "b1", b1)
  check_decay(owner, "b2", b2)
  check_nonnegative(owner, "eps", eps)
  check_nonnegative(owner, "eps_root", eps_root)
  mu_dtype = check_float_dtype(owner, "mu_dtype", mu_dtype)
  nu_dtype = check_float_dtype(owner, "nu_dtype", nu_dtype)
  if momentum_decay is not None:
    if not nesterov:
      raise ValueError(
        f"{owner}(momentum_decay={momentum_decay!r}): momentum_decay schedules the "
        "Nesterov momentum; pass nesterov=True with it"
      )
    check_nonnegative(owner, "momentum_decay", momentum_decay)
  options = moment_options(
    b1,
    b2,
    eps,
    eps_root,
    nesterov=nesterov,
    momentum_decay=momentum_decay,
    amsgrad=amsgrad,
    nu_correction=nu_correction,
    infinity_norm=infinity_norm,
  )
  nu_correction = options.leaf.nu_correction
  check_choice(owner, "nu_correction", nu_correction, ("downstream", "inside", "none"))
  if infinity_norm:
    if nu_correction != "none":
      raise ValueError(
        f"{owner}(infinity_norm=True, nu_correction={nu_correction!r}): the infinity "
        "norm has no zero-initialisation bias; nu_correction must be 'none'"
      )
    check_zero(owner, "eps_root", eps_root, "with infinity_norm=True (it has no root)")

  def init_fn(params: optax.Params) -> ScaleByMomentsState:
    def zeros(param: jax.Array, requested: Any, *, real: bool) -> jax.Array:
      dtype = num.state_dtype(jnp.result_type(param), requested, real=real)
      return jnp.zeros(jnp.shape(param), dtype)

    mu = jax.tree.map(lambda p: zeros(p, mu_dtype, real=False), params)
    nu = jax.tree.map(lambda p: zeros(p, nu_dtype, real=True), params)
    nu_max = jax.tree.map(jnp.copy, nu) if amsgrad else None
    return ScaleByMomentsState(count=num.zero_count(), mu=mu, nu=nu, nu_max=nu_max)

  def update_fn(
    updates: optax.Updates, state: ScaleByMomentsState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScaleByMomentsState]:
    del params
    check_fits_state(owner, updates, state.mu)
    count = num.saturating_increment(state.count)
    # Once per dtype, not once per leaf: built per leaf, a 4096-leaf tree traces
    # and compiles the same scalar arithmetic 4096 times (NAdam's series too).
    scalars = functools.cache(functools.partial(step_scalars, options, count))

    def leaf(grad: jax.Array, mu: jax.Array, nu: jax.Array, nu_max: Any = None):
      k = scalars(num.compute_dtype(grad.dtype))
      return update_leaf(options.leaf, k, grad, mu, nu, nu_max)

    extra = (state.nu_max,) if amsgrad else ()
    out = jax.tree.map(leaf, updates, state.mu, state.nu, *extra)

    def column(index: int) -> optax.Updates:  # also right for trees with no leaves
      return jax.tree.map(lambda _, results: results[index], updates, out)

    ratio, mu, nu = column(0), column(1), column(2)
    nu_max = column(3) if amsgrad else None
    return ratio, ScaleByMomentsState(count=count, mu=mu, nu=nu, nu_max=nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


class LeafOptions(NamedTuple):
  """Which lines of :func:`update_leaf` run (static: they never depend on traced values)."""

  nesterov: bool
  amsgrad: bool
  nu_correction: NuCorrection
  infinity_norm: bool


class MomentOptions(NamedTuple):
  """The hyperparameters (possibly traced) and options of one :func:`scale_by_moments`."""

  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  momentum_decay: Any
  leaf: LeafOptions


def moment_options(
  b1: Any,
  b2: Any,
  eps: Any,
  eps_root: Any,
  *,
  nesterov: bool = False,
  momentum_decay: Any = None,
  amsgrad: bool = False,
  nu_correction: NuCorrection | None = None,
  infinity_norm: bool = False,
) -> MomentOptions:
  """:func:`scale_by_moments`' arguments as it resolves them (``nu_correction``'s default)."""
  if nu_correction is None:
    nu_correction = "none" if infinity_norm else "downstream"
  leaf = LeafOptions(nesterov, amsgrad, nu_correction, infinity_norm)
  return MomentOptions(b1, b2, eps, eps_root, momentum_decay, leaf)


def step_scalars(options: MomentOptions, count: jax.Array, dtype: np.dtype) -> _StepScalars:
  """Step ``count``'s scalars for leaves computed in ``dtype``.

  The chain's leaf function and the fused kernel (:mod:`adam_optax._fused`)
  both take their scalars from here.
  """
  real = num.real_dtype(dtype)
  keep1, mix1 = num.decay_weights(options.b1, dtype)
  keep2, mix2 = num.decay_weights(options.b2, real)
  bias2 = num.one_minus_power(options.b2, count, real)
  scale = bias2 if options.leaf.nu_correction == "downstream" else jnp.ones([], real)
  weight_mu, weight_g = keep1, mix1
  if options.leaf.nesterov:
    weights = num.nesterov_coefficients(options.b1, options.momentum_decay, count, real)
    weight_mu, weight_g = (w.astype(dtype) for w in weights)
  return _StepScalars(
    keep1=keep1,
    mix1=mix1,
    keep2=keep2,
    mix2=mix2,
    bias2=bias2,
    eps=jnp.asarray(options.eps, real) * jnp.sqrt(scale),
    eps_root=jnp.asarray(options.eps_root, real) * scale,
    weight_mu=weight_mu,
    weight_g=weight_g,
  )


def update_leaf(
  options: LeafOptions,
  k: _StepScalars,
  grad: jax.Array,
  mu: jax.Array,
  nu: jax.Array,
  nu_max: Any = None,
) -> tuple[jax.Array, ...]:
  """One leaf's ``(ratio, new mu, new nu[, new nu_max])``, given this step's scalars.

  The fused kernel (``csrc/adam_fused_cpu.cc``) performs these operations in
  this order; keep the two in step.
  """
  dtype = num.compute_dtype(grad.dtype)
  real = num.real_dtype(dtype)
  g = grad.astype(dtype)
  new_mu = k.keep1 * mu.astype(dtype) + k.mix1 * g
  if options.infinity_norm:
    new_nu = jnp.maximum(k.keep2 * nu.astype(real), jnp.abs(g) + k.eps)
  else:
    new_nu = k.keep2 * nu.astype(real) + k.mix2 * num.squared_magnitude(g)
  second = new_nu / k.bias2 if options.nu_correction == "inside" else new_nu
  kept: tuple[jax.Array, ...] = ()
  if options.amsgrad:
    second = jnp.maximum(nu_max.astype(real), second)
    kept = (second.astype(nu_max.dtype),)
  denominator = second if options.infinity_norm else jnp.sqrt(second + k.eps_root) + k.eps
  numerator = k.weight_mu * new_mu + k.weight_g * g if options.nesterov else new_mu
  ratio = numerator / denominator.astype(dtype)
  return (ratio.astype(grad.dtype), new_mu.astype(mu.dtype), new_nu.astype(nu.dtype), *kept)
