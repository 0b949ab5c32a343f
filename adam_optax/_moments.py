r"""``scale_by_moments``: Adam's moment estimates and their normalised ratio."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._trees import check_fits_state
from adam_optax._validation import check_decay, check_float_dtype, check_nonnegative


class ScaleByMomentsState(NamedTuple):
  """State of :func:`scale_by_moments`.

  Attributes:
    count: number of updates applied so far (int32, saturating).
    mu: first-moment EMA :math:`m_t`, shaped like the params.
    nu: second-moment EMA :math:`v_t`, shaped like the params (real-valued
      for complex params).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  mu: optax.Updates
  nu: optax.Updates


def scale_by_moments(
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  *,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
  nesterov: bool = False,
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
  :math:`\beta_1 m_t\, c_1(t) / c_1(t+1) + (1 - \beta_1) g_t`.

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
    nu_dtype: precision of ``nu`` in the state (always real); ``None`` keeps
      each param's precision. ``jnp.float32`` with bfloat16 params stops the
      second moment from stalling: bfloat16's 8-bit mantissa cannot hold an
      increment of ``(1 - b2) g^2`` once ``v`` is a few hundred times larger.
    nesterov: use Nesterov momentum (Dozat, 2016) in the numerator.

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByMomentsState`.

  References:
    Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015,
    https://arxiv.org/abs/1412.6980.
    Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016.
  """
  owner = "scale_by_moments"
  check_decay(owner, "b1", b1)
  check_decay(owner, "b2", b2)
  check_nonnegative(owner, "eps", eps)
  check_nonnegative(owner, "eps_root", eps_root)
  mu_dtype = check_float_dtype(owner, "mu_dtype", mu_dtype)
  nu_dtype = check_float_dtype(owner, "nu_dtype", nu_dtype)

  def init_fn(params: optax.Params) -> ScaleByMomentsState:
    def zeros(param: jax.Array, requested: Any, *, real: bool) -> jax.Array:
      dtype = num.state_dtype(jnp.result_type(param), requested, real=real)
      return jnp.zeros(jnp.shape(param), dtype)

    mu = jax.tree.map(lambda p: zeros(p, mu_dtype, real=False), params)
    nu = jax.tree.map(lambda p: zeros(p, nu_dtype, real=True), params)
    return ScaleByMomentsState(count=num.zero_count(), mu=mu, nu=nu)

  def update_fn(
    updates: optax.Updates, state: ScaleByMomentsState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScaleByMomentsState]:
    del params
    check_fits_state(owner, updates, state.mu)
    count = num.saturating_increment(state.count)

    def update_leaf(grad: jax.Array, mu: jax.Array, nu: jax.Array):
      dtype = num.compute_dtype(grad.dtype)
      real = num.real_dtype(dtype)
      keep1, mix1 = num.decay_weights(b1, dtype)
      keep2, mix2 = num.decay_weights(b2, real)
      g = grad.astype(dtype)
      new_mu = keep1 * mu.astype(dtype) + mix1 * g
      new_nu = keep2 * nu.astype(real) + mix2 * num.squared_magnitude(g)
      bias2 = num.one_minus_power(b2, count, real)
      denominator = jnp.sqrt(new_nu + jnp.asarray(eps_root, real) * bias2) + jnp.asarray(
        eps, real
      ) * jnp.sqrt(bias2)
      numerator = new_mu
      if nesterov:
        look_ahead = num.one_minus_power(b1, count, real) / num.one_minus_power(
          b1, num.saturating_increment(count), real
        )
        numerator = keep1 * new_mu * look_ahead.astype(dtype) + mix1 * g
      ratio = numerator / denominator.astype(dtype)
      return ratio.astype(grad.dtype), new_mu.astype(mu.dtype), new_nu.astype(nu.dtype)

    out = jax.tree.map(update_leaf, updates, state.mu, state.nu)
    ratio, mu, nu = jax.tree.transpose(
      jax.tree.structure(updates), jax.tree.structure((0, 0, 0)), out
    )
    return ratio, ScaleByMomentsState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
