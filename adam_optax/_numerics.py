"""Small numerical helpers shared by the transforms.

All arithmetic here states its dtypes, so the package runs under
``jax_numpy_dtype_promotion="strict"``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_COUNT_DTYPE = jnp.int32


def zero_count() -> jax.Array:
  """The step counter of a fresh state."""
  return jnp.zeros([], _COUNT_DTYPE)


def saturating_increment(count: jax.Array) -> jax.Array:
  """``count + 1``, except that the largest int32 stays where it is."""
  limit = jnp.iinfo(_COUNT_DTYPE).max
  return jnp.where(count < limit, count + 1, jnp.asarray(limit, _COUNT_DTYPE))


def is_half_precision(dtype: Any) -> bool:
  """Whether ``dtype`` is a floating dtype narrower than float32 (float16, bfloat16, ...)."""
  return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32


def compute_dtype(dtype: Any) -> np.dtype:
  """The dtype the update arithmetic of a ``dtype`` leaf is carried out in.

  Half-precision leaves are computed in float32 (then stored back in their own
  dtype): ``eps = 1e-8`` is not representable in float16, which is why an
  all-zero float16 gradient gives ``0 / 0`` in a float16 computation. The
  dtype is canonicalised, so a NumPy float64 leaf with 64-bit types off is
  computed in float32 without a warning per cast.
  """
  dtype = jax.dtypes.canonicalize_dtype(np.dtype(dtype))
  if is_half_precision(dtype):
    return np.dtype(jnp.float32)
  return dtype


def rounded_to(x: jax.Array, dtype: Any) -> jax.Array:
  """``x`` rounded to the nearest value of the narrower floating ``dtype``, kept in ``x``'s dtype.

  Not ``x.astype(dtype).astype(x.dtype)``: XLA may drop such a pair of
  conversions inside a fusion and keep the wider value (its GPU backend does,
  "excess precision"), which silently turns every rounding into none.
  ``lax.reduce_precision`` rounds on every backend.
  """
  info = jnp.finfo(dtype)
  rounded = jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)
  # Below dtype's smallest normal, reduce_precision flushes to zero; there dtype's values are
  # the multiples of its smallest subnormal q, so round x / q to an integer (half to even),
  # exact where q is a normal number of x's dtype (float16's 2**-24 in float32; bfloat16's
  # subnormals are float32 subnormals, which XLA flushes anyway).
  quantum = int(info.minexp) - int(info.nmant)
  if quantum >= int(jnp.finfo(x.dtype).minexp):
    q = jnp.asarray(2.0**quantum, x.dtype)
    subnormal = jnp.round(x / q) * q
    rounded = jnp.where(jnp.abs(x) < jnp.asarray(info.smallest_normal, x.dtype), subnormal, rounded)
  return rounded


def complex_dtype(dtype: Any) -> np.dtype:
  """The complex dtype of ``dtype``'s precision: ``float32 -> complex64``."""
  if jnp.issubdtype(dtype, jnp.complexfloating):
    return np.dtype(dtype)
  return np.dtype(jnp.complex128 if jnp.finfo(dtype).bits == 64 else jnp.complex64)


def scalar(value: Any, dtype: Any) -> jax.Array:
  """A (possibly traced) hyperparameter as a 0-d array of ``dtype``.

  A complex value meeting a real ``dtype`` contributes its real part:
  :func:`optax.inject_hyperparams` stores every hyperparameter in the dtype of
  the first param, complex when that param is.
  """
  array = jnp.asarray(value)
  if jnp.iscomplexobj(array) and not jnp.issubdtype(dtype, jnp.complexfloating):
    array = jnp.real(array)
  return array.astype(dtype)


def real_dtype(dtype: Any) -> np.dtype:
  """The real dtype of the same precision: ``complex64 -> float32``."""
  return np.dtype(jnp.finfo(dtype).dtype)


def state_dtype(param_dtype: Any, requested: Any, *, real: bool) -> np.dtype:
  """The dtype a moment of a ``param_dtype`` param is stored in.

  Args:
    param_dtype: the param's dtype.
    requested: the user's ``mu_dtype``/``nu_dtype`` (a precision), or ``None``
      for the default: the param's own precision, except that the second
      moment of a half-precision param is kept in float32 (see
      :func:`adam_optax.scale_by_moments`).
    real: whether the moment is real-valued (the second moment ``|g|^2``).

  Returns:
    ``requested`` (or the default) made complex for a complex first moment and
    real for a second moment: ``mu_dtype=float32`` on complex64 params keeps
    the imaginary part instead of silently dropping it.
  """
  param_dtype = jax.dtypes.canonicalize_dtype(np.dtype(param_dtype))
  if requested is None and real and is_half_precision(param_dtype):
    requested = jnp.float32
  dtype = np.dtype(requested if requested is not None else param_dtype)
  if real or not jnp.issubdtype(param_dtype, jnp.complexfloating):
    return real_dtype(dtype) if jnp.issubdtype(dtype, jnp.complexfloating) else dtype
  return complex_dtype(dtype)


def squared_magnitude(x: jax.Array) -> jax.Array:
  """``|x|^2`` elementwise, real-valued for complex ``x``."""
  if jnp.iscomplexobj(x):
    return jnp.square(x.real) + jnp.square(x.imag)
  return jnp.square(x)


def safe_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  r"""``numerator / denominator``, and 0 where the denominator is 0.

  Adam's denominator is 0 only when the second moment is 0 and ``eps = 0``: no
  gradient has reached the entry yet (so the first moment is 0 too and the
  step is 0, not ``0 / 0``), or the gradients are so small that
  :math:`(1 - \beta_2) g^2` underflows (below ~3e-18 in float32 at
  ``b2 = 0.999``); a float32 second moment then holds no information and a
  zero step is the safe answer, where the unguarded division gives
  :math:`\pm\infty`. The guard keeps the gradient of the division finite as well.
  """
  zero = denominator == 0
  safe = jnp.where(zero, jnp.ones([], denominator.dtype), denominator)
  return jnp.where(zero, jnp.zeros([], numerator.dtype), numerator / safe)


def decay_weights(decay: Any, dtype: Any) -> tuple[jax.Array, jax.Array]:
  r"""The weights :math:`(\beta, 1 - \beta)` of an EMA, in ``dtype``.

  :math:`1 - \beta` is formed from the rounded :math:`\beta` (exactly, for
  :math:`\beta \ge 0.5`), so the two weights sum to one and the bias correction
  below describes the average that is really computed. optax rounds ``1 - b``
  from the Python value instead, which in float32 makes its first
  bias-corrected second moment ``1.000013 g^2`` rather than ``g^2``.
  """
  keep = scalar(decay, dtype)
  return keep, 1 - keep


def uncorrected_decay_weights(decay: Any, dtype: Any) -> tuple[jax.Array, jax.Array]:
  r"""The weights :math:`(\beta, 1 - \beta)` of an EMA that no bias correction follows.

  Without a correction the increment's weight :math:`1 - \beta` is what the
  algorithm sees: for a concrete ``decay`` it is formed before rounding
  (``float32(1 - 0.9999)`` is ``1e-4`` to 7 digits, where ``1 -
  float32(0.9999)`` is 1.66e-5 larger, a drift that grows with every step). A
  traced ``decay`` (:func:`optax.inject_hyperparams`) arrives rounded, so its
  weight is formed from the rounded value, as in :func:`decay_weights`.
  """
  keep = scalar(decay, dtype)
  if isinstance(decay, float):
    return keep, scalar(1.0 - decay, dtype)
  return keep, 1 - keep


def one_minus_power(decay: Any, count: jax.Array, dtype: Any) -> jax.Array:
  r""":math:`1 - \beta^t` in ``dtype``, accurate for every ``t``.

  Evaluated as :math:`-\operatorname{expm1}(t \log\beta)`: the textbook
  ``1 - b ** t`` cancels for small ``t`` and loses up to ~7e-6 (relative) in
  float32 (``t = 2``, ``b = 0.999``), where this stays within ~2e-7. The same
  code runs for concrete and traced decays, so :func:`optax.inject_hyperparams`
  does not drift from the plain optimizer. ``decay = 0`` gives exactly 1 for ``t >= 1``.
  """
  t = count.astype(dtype)
  return -jnp.expm1(t * jnp.log(scalar(decay, dtype)))


_SERIES_TERMS = 64  # 0.5**64 * t: below float64 rounding for any int32 t


def nesterov_coefficients(
  decay: Any, momentum_decay: Any, count: jax.Array, dtype: Any
) -> tuple[jax.Array, jax.Array]:
  r"""The weights :math:`(a_t, b_t)` of NAdam's numerator :math:`a_t m_t + b_t g_t`.

  They are scaled so that dividing by :math:`c_1(t) = 1 - \beta_1^t` (what
  :func:`adam_optax.bias_correction` does) gives the bias-corrected look-ahead.

  ``momentum_decay=None`` (optax's NAdam): :math:`a_t = \beta_1 c_1(t) /
  c_1(t+1)`, :math:`b_t = 1 - \beta_1`.

  A number :math:`\psi` (``torch.optim.NAdam``): with Dozat's momentum schedule
  :math:`\mu_t = \beta_1 (1 - \tfrac12 q^t)`, :math:`q = 0.96^\psi`, and
  :math:`\Pi_t = \prod_{i \le t} \mu_i`,
  :math:`a_t = c_1(t)\, \mu_{t+1} / (1 - \Pi_{t+1})`,
  :math:`b_t = c_1(t) (1 - \mu_t) / (1 - \Pi_t)`. The product needs no state:
  :math:`\log \Pi_t = t \log\beta_1 + \sum_{i \le t} \log(1 - \tfrac12 q^i)`
  and, expanding the logarithm,
  :math:`\sum_{i \le t} \log(1 - \tfrac12 q^i) = -\sum_{k \ge 1}
  \frac{2^{-k}}{k} q^k \frac{1 - q^{kt}}{1 - q^k}`, a series that converges
  like :math:`2^{-k}` and is summed to 64 terms. (torch multiplies
  :math:`\Pi_t` up step by step in its default dtype, float32.) As
  :math:`\psi \to \infty`, :math:`\mu_t \to \beta_1` and the weights become
  optax's.
  """
  keep, mix = decay_weights(decay, dtype)
  bias = one_minus_power(decay, count, dtype)
  following = saturating_increment(count)
  if momentum_decay is None:
    return keep * bias / one_minus_power(decay, following, dtype), mix
  log_q = scalar(momentum_decay, dtype) * jnp.log(jnp.asarray(0.96, dtype))
  k = jnp.arange(1, _SERIES_TERMS + 1).astype(dtype)
  term_weights = jnp.exp2(-k) / k * jnp.exp(k * log_q)
  per_term = jnp.expm1(k * log_q)  # 1 - q^k, negated; 0 when psi = 0

  def momentum(t: jax.Array) -> jax.Array:
    return keep * (1 - jnp.asarray(0.5, dtype) * jnp.exp(t.astype(dtype) * log_q))

  def one_minus_product(t: jax.Array) -> jax.Array:
    steps = t.astype(dtype)
    safe = jnp.where(per_term == 0, jnp.ones([], dtype), per_term)
    ratios = jnp.where(per_term == 0, steps, jnp.expm1(k * steps * log_q) / safe)
    log_tail = -jnp.sum(term_weights * ratios)
    return -jnp.expm1(steps * jnp.log(keep) + log_tail)

  first = bias * momentum(following) / one_minus_product(following)
  second = bias * (1 - momentum(count)) / one_minus_product(count)
  return first, second
