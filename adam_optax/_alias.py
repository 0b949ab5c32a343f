"""The optimizers: chains of the building-block transforms."""

from __future__ import annotations

from typing import Any

import optax

from adam_optax._bias_correction import bias_correction
from adam_optax._fused import Plan, fused_chain
from adam_optax._learning_rate import scale_by_lr
from adam_optax._moments import moment_options, scale_by_moments
from adam_optax._recipes import Recipe, recorded
from adam_optax._validation import (
  check_flag,
  check_moment_hyperparameters,
  check_nonnegative,
  check_rate,
)
from adam_optax._weight_decay import decayed_weights


def adam(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  mu_dtype: Any = None,
  *,
  nesterov: bool = False,
  nu_dtype: Any = None,
  fused: bool = False,
) -> optax.GradientTransformation:
  r"""Adam (Kingma & Ba, 2015), a drop-in replacement for :func:`optax.adam`.

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \\
    \hat m_t &= \frac{m_t}{1 - \beta_1^t}, \qquad
    \hat v_t = \frac{v_t}{1 - \beta_2^t}, \\
    \theta_t &= \theta_{t-1} - \eta_t\,
      \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}.

  It is literally ``optax.chain(scale_by_moments(...), bias_correction(...),
  scale_by_lr(learning_rate))``, and its trajectory matches ``optax.adam`` and
  ``torch.optim.Adam`` (see the parity tests), including where :math:`\epsilon`
  dominates. Unlike ``optax.adam`` it keeps half-precision params finite on
  all-zero gradients and accepts ``nu_dtype``.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added outside the square root, ``>= 0``.
    eps_root: :math:`\epsilon_{root}`, added inside the square root, ``>= 0``.
    mu_dtype: dtype of the first moment in the state (default: the params').
    nesterov: use Nesterov momentum (NAdam, Dozat 2016).
    nu_dtype: dtype of the second moment in the state (default: the params').
    fused: let :func:`adam_optax.update_and_apply` run the step as one call
      of the fused CPU kernel for the whole tree (same state, same numbers;
      ``init`` and ``update`` stay the chain's; see
      ``docs/performance_fused.md``).

  Returns:
    An :class:`optax.GradientTransformation`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message (``b1`` and ``b2`` are checked as rounded to the precision
      the update is computed in).
    TypeError: a flag (``nesterov``) that is not a bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.adam(learning_rate=0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = optimizer.init(params)
    >>> updates, state = optimizer.update(jnp.array([0.5, -3.0]), state)
    >>> optax.apply_updates(params, updates)  # the first step is -lr * sign(g)
    Array([ 0.9, -1.9], dtype=float32)

  References:
    Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015,
    https://arxiv.org/abs/1412.6980.
  """
  hyperparameters = learning_rate, b1, b2, eps, eps_root, mu_dtype, nu_dtype
  return adam_chain("adam", *hyperparameters, nesterov=nesterov, fused=fused)


_NO_WEIGHT_DECAY: Any = object()  # adam_chain's default: no add_decayed_weights at all


def adam_chain(
  owner: str,
  learning_rate: optax.ScalarOrSchedule,
  b1: Any,
  b2: Any,
  eps: Any,
  eps_root: Any,
  mu_dtype: Any,
  nu_dtype: Any,
  *,
  correct: tuple[bool, bool] = (True, True),
  weight_decay: optax.ScalarOrSchedule = _NO_WEIGHT_DECAY,
  mask: Any = None,
  fused: bool = False,
  **moments: Any,
) -> optax.GradientTransformation:
  """The chain every member of the family is made of, validated in ``owner``'s name.

  ``scale_by_moments(**moments)``, then ``bias_correction`` of the moments
  flagged in ``correct`` (left out when neither is), then ``add_decayed_weights``
  when ``weight_decay`` is given (``None`` is an error, as in ``optax.adamw``),
  then ``scale_by_lr``. With ``fused=True`` the same chain, marked for
  :func:`adam_optax.update_and_apply` to run with the fused CPU kernel
  (:mod:`adam_optax._fused`).
  """
  fused = check_flag(owner, "fused", fused)
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  b1, b2, eps, eps_root, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, eps_root, mu_dtype, nu_dtype
  )
  for flag in ("nesterov", "amsgrad", "infinity_norm"):
    if flag in moments:
      moments[flag] = check_flag(owner, flag, moments[flag])
  if moments.get("momentum_decay") is not None:
    moments["momentum_decay"] = check_nonnegative(
      owner, "momentum_decay", moments["momentum_decay"]
    )
  parts = [scale_by_moments(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, **moments)]
  correction = (b1 if correct[0] else None, b2 if correct[1] else None) if any(correct) else None
  if correction is not None:
    parts.append(bias_correction(*correction))
  decays = weight_decay is not _NO_WEIGHT_DECAY
  if decays:
    parts.append(decayed_weights(owner, weight_decay, mask))
  parts.append(scale_by_lr(learning_rate))
  convention = {"downstream": "torch", "inside": "optax", "none": "paper"}.get(
    moments.get("nu_correction") or "downstream"
  )
  member = owner
  if moments.get("nesterov"):  # adam(nesterov=True) is NAdam, adamw(nesterov=True) NAdamW
    member = {"adam": "nadam", "adamw": "nadamw"}.get(owner, owner)
  recipe = Recipe(
    member,
    learning_rate,
    b1,
    b2,
    eps,
    eps_root,
    weight_decay=weight_decay if decays else None,
    momentum_decay=moments.get("momentum_decay"),
    convention=convention if moments.get("amsgrad") else None,
  )
  chain = optax.chain(*parts)
  if fused:
    plan = Plan(
      owner=owner,
      moments=moment_options(
        b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, **moments
      ),
      correction=correction,
      weight_decay=weight_decay if decays else None,
      mask=mask,
      learning_rate=learning_rate,
    )
    chain = fused_chain(plan, chain)
  return recorded(recipe, chain)
