"""Reference implementations the tests compare against.

- :func:`algorithm1`: Kingma & Ba's Algorithm 1 written out in float64 NumPy.
- :func:`run_optax`: any optax transformation over a fixed gradient sequence.
- :func:`run_torch`: a ``torch.optim`` optimizer over the same sequence.
- :func:`least_squares_loss_after`: the low-precision training problem of the
  stochastic-rounding and Kahan-summation tests.

Every runner returns the parameter trajectory, one row per step, so that the
same gradients drive every implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_optax


def algorithm1(
  grads: Sequence[np.ndarray],
  params: np.ndarray,
  lr: float | Callable[[int], float],
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  *,
  nesterov: bool = False,
  momentum_decay: float | None = None,
  amsgrad: str | None = None,
  weight_decay: float | Callable[[int], float] = 0.0,
  decay_mask: np.ndarray | bool = True,
  flush: float = 0.0,
) -> np.ndarray:
  """Kingma & Ba (2015), Algorithm 1, in float64 (``eps_root`` as in optax).

  ``1 - b**t`` is written ``-expm1(t log b)``: the same number, without the
  cancellation that costs ``1 - b**t`` ~3e-13 (relative) in float64 at
  ``b = 0.9999``, so the reference is accurate to float64 rounding.

  The keyword options turn it into the other members of the family, each
  written from its paper or library's formula:

  - ``nesterov``: Dozat's NAdam as optax writes it,
    ``mhat = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t)``; with
    ``momentum_decay`` psi, as torch.optim.NAdam writes it: ``mu_t = b1 (1 -
    0.96^(t psi) / 2)``, ``mhat = mu_(t+1) m_t / (1 - prod_(i<=t+1) mu_i) +
    (1 - mu_t) g_t / (1 - prod_(i<=t) mu_i)``.
  - ``amsgrad``: ``"torch"`` (max of raw v, then corrected), ``"optax"`` (max
    of the corrected vhat) or ``"paper"`` (max of raw v, no correction at all).
  - ``weight_decay`` (a number or a function of the step, from 0) with
    ``decay_mask`` (booleans shaped like ``params``): AdamW, decay times lr.

  ``lr`` may be a function of the step count (from 0), like an optax schedule.

  ``flush`` emulates a narrower type's range: gradients and every product and
  sum that forms the moments are set to 0 where their magnitude is below it,
  as float32 arithmetic with denormals flushed to zero does (XLA's CPU and GPU
  backends) for ``flush = np.finfo(np.float32).tiny``. A zero denominator
  (a zero second moment with ``eps = 0``) gives a zero step, the convention of
  the package (the first moment is zero there too, but for flushing).
  """
  theta = np.asarray(params, np.float64)
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)

  def ftz(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < flush, 0.0, x) if flush else x

  v_max = np.zeros_like(theta)
  product = 1.0
  trajectory = []
  for t, g in enumerate(grads, start=1):
    g = ftz(np.asarray(g, np.float64))
    m = ftz(ftz(b1 * m) + ftz((1 - b1) * g))
    v = ftz(ftz(b2 * v) + ftz((1 - b2) * ftz(g * g)))
    m_hat = m / _one_minus_power(b1, t)
    v_hat = v / _one_minus_power(b2, t)
    if nesterov and momentum_decay is None:
      m_hat = b1 * m / _one_minus_power(b1, t + 1) + (1 - b1) * g / _one_minus_power(b1, t)
    elif nesterov:
      mu, mu_next = (b1 * (1 - 0.5 * 0.96 ** (i * momentum_decay)) for i in (t, t + 1))
      product *= mu
      m_hat = mu_next * m / (1 - product * mu_next) + (1 - mu) * g / (1 - product)
    if amsgrad == "torch":
      v_max = np.maximum(v_max, v)
      v_hat = v_max / _one_minus_power(b2, t)
    elif amsgrad == "optax":
      v_max = np.maximum(v_max, v_hat)
      v_hat = v_max
    elif amsgrad == "paper":
      v_max = np.maximum(v_max, v)
      m_hat, v_hat = m, v_max
    rate = lr(t - 1) if callable(lr) else lr
    decay = weight_decay(t - 1) if callable(weight_decay) else weight_decay
    step = _ratio(m_hat, np.sqrt(v_hat + eps_root) + eps) + decay * np.where(decay_mask, theta, 0.0)
    theta = theta - rate * step
    trajectory.append(theta)
  return np.stack(trajectory)


def adamax_reference(
  grads: Sequence[np.ndarray],
  params: np.ndarray,
  lr: float,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  *,
  flush: float = 0.0,
) -> np.ndarray:
  """Kingma & Ba (2015), Section 7.1 (AdaMax), in float64, eps inside the max.

  ``flush`` and a zero denominator as in :func:`algorithm1`.
  """
  theta = np.asarray(params, np.float64)
  m = np.zeros_like(theta)
  u = np.zeros_like(theta)

  def ftz(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < flush, 0.0, x) if flush else x

  trajectory = []
  for t, g in enumerate(grads, start=1):
    g = ftz(np.asarray(g, np.float64))
    m = ftz(ftz(b1 * m) + ftz((1 - b1) * g))
    u = ftz(np.maximum(ftz(b2 * u), np.abs(g) + eps))
    theta = theta - (lr / _one_minus_power(b1, t)) * _ratio(m, u)
    trajectory.append(theta)
  return np.stack(trajectory)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """``numerator / denominator``, 0 where the denominator is 0."""
  safe = np.where(denominator == 0, 1.0, denominator)
  return np.where(denominator == 0, 0.0, numerator / safe)


def _one_minus_power(b: float, t: int) -> float:
  return -math.expm1(t * math.log(b)) if b > 0 else 1.0


def run_optax(
  optimizer: optax.GradientTransformation,
  grads: Sequence[optax.Updates],
  params: optax.Params,
  *,
  jit: bool = True,
) -> np.ndarray:
  """Applies ``optimizer`` to ``grads`` in turn, starting from ``params``.

  ``params`` (and each gradient) may be an array or a pytree; a pytree's
  leaves are raveled and concatenated, one row per step.
  """
  params = jax.tree.map(jnp.asarray, params)
  state = optimizer.init(params)

  def step(params, state, grad):  # update, then apply_updates (the fused kernel where fused)
    return adam_optax.update_and_apply(optimizer, grad, state, params)

  if jit:
    step = jax.jit(step)
  trajectory = []
  for grad in grads:
    grad = jax.tree.map(lambda g, p: np.asarray(g, p.dtype), grad, params)  # host: no dispatch
    params, state = step(params, state, grad)
    if isinstance(params, jax.Array):
      trajectory.append(np.asarray(params))
    else:
      trajectory.append(np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(params)]))
  return np.stack(trajectory)


def run_torch(
  make_optimizer: Callable[[list], object],
  grads: Sequence[np.ndarray],
  params: np.ndarray,
  *,
  before_step: Callable[[object, int], None] | None = None,
) -> np.ndarray:
  """Applies a ``torch.optim`` optimizer (built by ``make_optimizer([p])``).

  ``before_step(optimizer, count)``, if given, runs before each step (count
  from 0), e.g. to set a scheduled ``lr`` or ``weight_decay`` in its groups.

  torch keeps scalar state (the step, NAdam's momentum product) in its default
  dtype, float32; for float64 params it is switched to float64 for the run,
  or NAdam's ``prod mu_i`` alone would put torch ~2e-7 from the float64 maths.
  """
  import torch

  default_dtype = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64 if params.dtype == np.float64 else torch.float32)
  try:
    param = torch.tensor(np.array(params), requires_grad=True)
    optimizer = make_optimizer([param])
    trajectory = []
    for count, grad in enumerate(grads):
      if before_step is not None:
        before_step(optimizer, count)
      param.grad = torch.tensor(np.array(grad, dtype=params.dtype))
      optimizer.step()
      trajectory.append(param.detach().numpy().copy())
  finally:
    torch.set_default_dtype(default_dtype)
  return np.stack(trajectory)


def normwise_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """max over steps of ``max|actual - expected| / max|expected|`` at that step.

  Elementwise relative error is meaningless for coordinates crossing zero, so
  each step's error is measured against the largest coordinate of that step.
  """
  actual = np.asarray(actual, np.float64).reshape(len(actual), -1)
  expected = np.asarray(expected, np.float64).reshape(len(expected), -1)
  scale = np.maximum(np.abs(expected).max(axis=1), np.finfo(np.float64).tiny)
  return float(np.max(np.abs(actual - expected).max(axis=1) / scale))


def gradient_sequence(
  seed: int, steps: int, size: int, scale: float, dtype=np.float32
) -> list[np.ndarray]:
  """Gradients with a log-normal spread of magnitudes around ``scale``."""
  rng = np.random.default_rng(seed)
  return [
    (scale * rng.standard_normal(size) * np.exp(rng.standard_normal(size))).astype(dtype)
    for _ in range(steps)
  ]


def units_apart(actual, expected) -> int:
  """The largest number of representable values between two arrays' elements (0: equal)."""
  a, b = np.asarray(actual), np.asarray(expected)
  if jnp.issubdtype(a.dtype, jnp.integer):
    return int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)), initial=0))
  bits = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
  magnitude = np.iinfo(bits).max
  bits_a, bits_b = a.view(bits), b.view(bits)
  mag_a, mag_b = (bits_a & magnitude).astype(np.int64), (bits_b & magnitude).astype(np.int64)
  same_sign = (bits_a < 0) == (bits_b < 0)
  # Same sign: the magnitudes' distance (exact); opposite signs: their sum (values far apart).
  far = mag_a.astype(np.float64) + mag_b.astype(np.float64)
  gaps = np.where(same_sign, np.abs(mag_a - mag_b).astype(np.float64), far)
  gaps = np.where((mag_a == 0) & (mag_b == 0), 0.0, gaps)  # +0 and -0
  return int(np.max(gaps, initial=0))


def relative_gap(actual, expected) -> float:
  """``max |actual - expected| / max |expected|`` over the elements that differ.

  Equal elements (infinities included: a float16 update can overflow on both
  paths alike) do not count.
  """
  a, b = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  differ = (a != b) & ~(np.isnan(a) & np.isnan(b))
  if not differ.any():
    return 0.0
  scale = np.max(np.abs(b[np.isfinite(b)]), initial=np.finfo(np.float64).tiny)
  with np.errstate(invalid="ignore"):
    return float(np.max(np.abs(a - b)[differ]) / scale)


def least_squares_loss_after(optimizer, dtype=jnp.float32, steps: int = 400):
  """``(initial loss, loss after steps)`` of ``optimizer`` on a fixed least-squares problem.

  Weights of size ~1 (32 x 64, all ones at the start, stored in ``dtype``) and
  Adam steps of ~1e-3: below bfloat16's half-ulp, so round-to-nearest never
  moves them. The loss is computed in float32.
  """
  key_x, key_w = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (128, 32))
  y = x @ (1.0 + 0.2 * jax.random.normal(key_w, (32, 64)))

  def loss(w):
    return jnp.mean((x @ w.astype(jnp.float32) - y) ** 2)

  @jax.jit
  def step(w, state):
    grads = jax.grad(loss)(w).astype(w.dtype)
    updates, state = optimizer.update(grads, state, w)
    return optax.apply_updates(w, updates), state

  w = jnp.ones((32, 64), dtype)
  initial = float(loss(w))
  state = optimizer.init(w)
  for _ in range(steps):
    w, state = step(w, state)
  return initial, float(loss(w))


def mean_after_sgd_steps(optimizer, steps: int = 50) -> float:
  """The mean of 10,000 bfloat16 weights, all 1, after ``steps`` steps of ``optimizer``.

  The gradients are all 1; with ``optax.sgd(1e-3)`` inside, every step is
  -1e-3, below half an ulp of 1.0 in bfloat16: the exact mean after 50 steps is
  0.95, and round-to-nearest leaves it at 1.
  """
  params = jnp.ones(10_000, jnp.bfloat16)
  state = optimizer.init(params)
  step = jax.jit(optimizer.update)
  for _ in range(steps):
    updates, state = step(jnp.ones_like(params), state, params)
    params = optax.apply_updates(params, updates)
  return float(jnp.mean(params.astype(jnp.float32)))
