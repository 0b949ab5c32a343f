r"""``scale_by_second_moment``: the gradient normalised by Adam's second moment alone.

The members of the family that keep no first moment of the gradient
(Schedule-Free AdamW, whose momentum is an interpolation of iterates) divide
the gradient by :math:`\sqrt{v_t}` only. Keeping a zero first moment for them
would cost a parameter-sized buffer per leaf; this block keeps ``nu`` alone and
runs the same leaf function as :func:`adam_optax.scale_by_moments` with
:math:`\beta_1 = 0` (its first moment is then the gradient itself and is not
stored), so the stabilisers, half-precision and complex handling are the same.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._moments import moment_options, step_scalars, update_leaf
from adam_optax._trees import check_fits_state, check_inexact_leaves, check_state_type, colocate
from adam_optax._validation import (
  check_choice,
  check_decay,
  check_float_dtype,
  check_nonnegative,
)

_OWNER = "scale_by_second_moment"


class ScaleBySecondMomentState(NamedTuple):
  """State of :func:`scale_by_second_moment`.

  Attributes:
    count: number of updates applied so far (int32, saturating).
    nu: second-moment EMA :math:`v_t`, shaped like the params (real; float32
      for half-precision params unless ``nu_dtype`` says otherwise).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  nu: optax.Updates


def scale_by_second_moment(
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  *,
  nu_dtype: Any = None,
  nu_correction: Literal["downstream", "none"] = "downstream",
) -> optax.GradientTransformation:
  r"""Divides the gradient by the root of its second-moment EMA.

  .. math::

    v_t = \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2, \qquad
    r_t = \frac{g_t}{\sqrt{v_t + \epsilon_{root}\, k_t} + \epsilon \sqrt{k_t}},

  with :math:`k_t = 1 - \beta_2^t` for ``nu_correction="downstream"``: chained
  with ``bias_correction(None, b2)``, which multiplies by :math:`\sqrt{k_t}`,
  the result is :math:`g_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`
  exactly, as in :func:`adam_optax.scale_by_moments`. With
  ``nu_correction="none"``, :math:`k_t = 1`: the stabilisers act on the raw
  :math:`v_t` and the bias is left to whatever follows (Schedule-Free's paper
  folds :math:`\sqrt{1 - \beta_2^t}` into its learning rate).

  Args:
    b2: decay of the second-moment EMA, in ``[0, 1)``.
    eps: added to the root, ``>= 0``.
    eps_root: added inside the root, ``>= 0``.
    nu_dtype: precision of ``nu``; ``None`` keeps each param's, float32 for
      half-precision params (as :func:`adam_optax.scale_by_moments`).
    nu_correction: ``"downstream"`` or ``"none"``, see above.

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleBySecondMomentState`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, or an
      unknown ``nu_correction``, named in the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> normalise = adam_optax.scale_by_second_moment(b2=0.999, eps=0.0)
    >>> ratio, state = normalise.update(jnp.array([0.5, -3.0]), normalise.init(jnp.zeros(2)))
    >>> ratio  # step 1: g / sqrt((1 - b2) g^2), before bias correction
    Array([ 31.62298, -31.62298], dtype=float32)
  """
  owner = _OWNER
  b2 = check_decay(owner, "b2", b2)
  eps = check_nonnegative(owner, "eps", eps)
  eps_root = check_nonnegative(owner, "eps_root", eps_root)
  nu_dtype = check_float_dtype(owner, "nu_dtype", nu_dtype)
  check_choice(owner, "nu_correction", nu_correction, ("downstream", "none"))
  options = moment_options(0.0, b2, eps, eps_root, nu_dtype=nu_dtype, nu_correction=nu_correction)

  def init_fn(params: optax.Params) -> ScaleBySecondMomentState:
    check_inexact_leaves(f"{owner}.init", params, "param")

    def zeros(param: Any) -> jax.Array:
      dtype = num.state_dtype(jnp.result_type(param), nu_dtype, real=True)
      return jnp.zeros_like(param, dtype=dtype)

    state = ScaleBySecondMomentState(count=num.zero_count(), nu=jax.tree.map(zeros, params))
    return colocate(state, params)

  def update_fn(
    updates: optax.Updates, state: ScaleBySecondMomentState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScaleBySecondMomentState]:
    check_state_type(owner, state, ScaleBySecondMomentState)
    check_fits_state(owner, updates, state.nu, params)
    count = num.saturating_increment(state.count)
    scalars = functools.cache(functools.partial(step_scalars, options, count))

    def leaf(grad: Any, nu: jax.Array) -> tuple[jax.Array, jax.Array]:
      # b1 = 0: the "first moment" is the gradient itself; a 0-d zero stands in for it.
      no_mu = jnp.zeros([], num.compute_dtype(jnp.result_type(grad)))
      ratio, _, new_nu = update_leaf(options.leaf, scalars, grad, no_mu, nu)
      return ratio, new_nu

    out = jax.tree.map(leaf, updates, state.nu)
    ratio = jax.tree.map(lambda _, pair: pair[0], updates, out)
    nu = jax.tree.map(lambda _, pair: pair[1], updates, out)
    return ratio, ScaleBySecondMomentState(count=count, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
