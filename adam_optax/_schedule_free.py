r"""Schedule-Free AdamW (Defazio et al., 2024): momentum by interpolation, no decay schedule.

Three sequences: :math:`z` takes the optimizer's steps, :math:`x` is its
weighted average (the point to evaluate), and the gradient is taken at their
interpolation :math:`y = \beta_1 x + (1 - \beta_1) z`. The params the user
holds are :math:`y`; the state keeps :math:`z`, and :math:`x` is recovered as
:math:`(y - (1 - \beta_1) z) / \beta_1` by :func:`schedule_free_eval_params`
only when it is needed, so the state costs what AdamW's does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._bias_correction import bias_correction as bias_correction_block
from adam_optax._learning_rate import scale_by_lr
from adam_optax._second_moment import scale_by_second_moment
from adam_optax._trees import check_fits_params, check_fits_state, check_state_type, colocate
from adam_optax._validation import (
  check_choice,
  check_decay,
  check_float_dtype,
  check_nonnegative,
  check_rate,
  concrete_scalar,
)
from adam_optax._weight_decay import decay_blocks

_OWNER = "schedule_free_average"
BiasCorrection = Literal["learning_rate", "second_moment"]


class ScheduleFreeAverageState(NamedTuple):
  r"""State of :func:`schedule_free_average`.

  Attributes:
    count: number of updates applied so far (int32, saturating); a
      learning-rate schedule is evaluated at it.
    b1: the interpolation weight :math:`\beta_1` of the last update, which
      :func:`schedule_free_eval_params` needs to recover :math:`x`.
    lr_max: the largest learning rate seen so far, :math:`\max_{i \le t} \gamma_i`.
    weight_sum: :math:`\sum_{i \le t} \gamma_{\max, i}^p`, the averaging weights so far.
    z: the sequence :math:`z_t` that takes the optimizer's steps, shaped and
      typed like the params (it starts as a copy of them).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  b1: jax.Array
  lr_max: jax.Array
  weight_sum: jax.Array
  z: optax.Params


def schedule_free_average(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  weight_lr_power: Any = 2.0,
) -> optax.GradientTransformation:
  r"""Turns an optimizer's steps into Schedule-Free steps of the interpolated point.

  Last in a chain whose steps :math:`\Delta_t` already include the learning
  rate :math:`\gamma_t` (e.g. after :func:`adam_optax.scale_by_lr`), it keeps
  :math:`z_t` and moves the params :math:`y_t` to :math:`y_{t+1}`:

  .. math::

    z_{t+1} &= z_t + \Delta_t, \qquad
    c_{t+1} = \frac{\gamma_{\max,t}^p}{\sum_{i \le t} \gamma_{\max,i}^p},
    \quad \gamma_{\max,t} = \max_{i \le t} \gamma_i, \\
    x_{t+1} &= (1 - c_{t+1})\, x_t + c_{t+1} z_{t+1}, \qquad
    y_{t+1} = \beta_1 x_{t+1} + (1 - \beta_1) z_{t+1} .

  The update it emits, :math:`y_{t+1} - y_t`, is formed without :math:`x`:
  :math:`c_{t+1}(z_t - y_t) + (1 - \beta_1 + c_{t+1}\beta_1)\,\Delta_t`
  (no division by :math:`\beta_1`). ``learning_rate`` is only read for the
  weights: pass the same rate or schedule as to ``scale_by_lr``. A step with
  :math:`\sum \gamma_{\max}^p = 0` gets :math:`c = 0`.

  Args:
    learning_rate: :math:`\gamma_t`, a number ``>= 0`` or a schedule of the
      step count (from 0).
    b1: :math:`\beta_1`, in ``(0, 1)``; 0 would make :math:`y = z` and leave
      :math:`x` unrecoverable.
    weight_lr_power: :math:`p \ge 0` (2 in the paper; 0 weighs every step alike).

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScheduleFreeAverageState`; ``update`` needs ``params`` (:math:`y_t`).

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> schedule_free_sgd = optax.chain(
    ...     adam_optax.scale_by_lr(0.1), adam_optax.schedule_free_average(0.1, b1=0.9)
    ... )
    >>> y = jnp.array([1.0])
    >>> state = schedule_free_sgd.init(y)
    >>> updates, state = schedule_free_sgd.update(jnp.array([1.0]), state, y)
    >>> y + updates  # c_1 = 1: x_1 = z_1 = y_1 = 1 - 0.1
    Array([0.9], dtype=float32)
    >>> adam_optax.schedule_free_eval_params(state, y + updates)
    Array([0.9], dtype=float32)

  References:
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, *The Road Less
    Scheduled*, NeurIPS 2024, https://arxiv.org/abs/2405.15682.
  """
  owner = _OWNER
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  b1 = _check_interpolation(owner, b1)
  weight_lr_power = check_nonnegative(owner, "weight_lr_power", weight_lr_power)
  scalar_dtype = jax.dtypes.canonicalize_dtype(jnp.float64)

  def init_fn(params: optax.Params) -> ScheduleFreeAverageState:
    state = ScheduleFreeAverageState(
      count=num.zero_count(),
      b1=num.scalar(b1, scalar_dtype),
      lr_max=jnp.zeros([], scalar_dtype),
      weight_sum=jnp.zeros([], scalar_dtype),
      z=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
    )
    return colocate(state, params)

  def update_fn(
    updates: optax.Updates, state: ScheduleFreeAverageState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScheduleFreeAverageState]:
    check_state_type(owner, state, ScheduleFreeAverageState)
    if params is None:
      raise ValueError(f"{owner}: update needs the params (update(grads, state, params)).")
    check_fits_state(owner, updates, state.z, params)
    rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
    lr_max = jnp.maximum(state.lr_max, num.scalar(rate, scalar_dtype))
    weight = jnp.power(lr_max, num.scalar(weight_lr_power, scalar_dtype))
    weight_sum = state.weight_sum + weight
    mix = num.safe_ratio(weight, weight_sum)  # c_{t+1}
    interpolation = num.scalar(b1, scalar_dtype)

    def leaf(step: Any, z: jax.Array, y: Any) -> tuple[jax.Array, jax.Array]:
      step = jnp.asarray(step)
      dtype = num.compute_dtype(step.dtype)
      c, keep = mix.astype(dtype), interpolation.astype(dtype)
      step_, z_ = step.astype(dtype), z.astype(dtype)
      move = c * (z_ - jnp.asarray(y).astype(dtype)) + (1 - keep + c * keep) * step_
      return move.astype(step.dtype), (z_ + step_).astype(z.dtype)

    out = jax.tree.map(leaf, updates, state.z, params)
    moves = jax.tree.map(lambda _, pair: pair[0], updates, out)
    z = jax.tree.map(lambda _, pair: pair[1], updates, out)
    new_state = ScheduleFreeAverageState(
      count=num.saturating_increment(state.count),
      b1=interpolation,
      lr_max=lr_max,
      weight_sum=weight_sum,
      z=z,
    )
    return moves, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def schedule_free_eval_params(state: optax.OptState, params: optax.Params) -> optax.Params:
  r"""The averaged point :math:`x_t = (y_t - (1 - \beta_1) z_t) / \beta_1` to evaluate.

  Args:
    state: the state of an optimizer that contains exactly one
      :func:`schedule_free_average` (such as :func:`schedule_free_adamw`'s),
      possibly inside wrappers (``inject_hyperparams``, ``MultiSteps``,
      :func:`adam_optax.skip_nonfinite`, ...).
    params: the params being trained, :math:`y_t`.

  Returns:
    :math:`x_t`, shaped and typed like ``params``.

  Raises:
    ValueError: ``state`` holds no :class:`ScheduleFreeAverageState`, or more
      than one; ``params`` do not fit its :math:`z`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> optimizer = adam_optax.schedule_free_adamw(0.1)
    >>> y = jnp.array([1.0, -2.0])
    >>> state = optimizer.init(y)
    >>> adam_optax.schedule_free_eval_params(state, y)  # x_0 = y_0 = z_0
    Array([ 1., -2.], dtype=float32)
  """
  found = [
    node
    for node in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, ScheduleFreeAverageState))
    if isinstance(node, ScheduleFreeAverageState)
  ]
  if len(found) != 1:
    raise ValueError(
      "schedule_free_eval_params: expected the state of an optimizer with exactly one "
      f"schedule_free_average (such as schedule_free_adamw); found {len(found)}."
    )
  average = found[0]
  check_fits_params("schedule_free_eval_params", average.z, params)

  def leaf(y: Any, z: jax.Array) -> jax.Array:
    y = jnp.asarray(y)
    dtype = num.compute_dtype(y.dtype)
    keep = average.b1.astype(dtype)
    return ((y.astype(dtype) - (1 - keep) * z.astype(dtype)) / keep).astype(y.dtype)

  return jax.tree.map(leaf, params, average.z)


def schedule_free_adamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  *,
  warmup_steps: int = 0,
  weight_lr_power: Any = 2.0,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  bias_correction: BiasCorrection = "learning_rate",
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""Schedule-Free AdamW (Defazio et al., 2024): no learning-rate decay, no horizon.

  Algorithm 1 of the paper, with :math:`y_t` the params and
  :math:`\rho_t = \min(1, t / T_{warmup})` the linear warm-up:

  .. math::

    v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \qquad
    \gamma_t = \gamma\, \rho_t \sqrt{1 - \beta_2^t}, \\
    z_{t+1} &= z_t - \gamma_t \left(\frac{g_t}{\sqrt{v_t} + \epsilon}
      + \lambda y_t\right), \qquad
    c_{t+1} = \frac{\gamma_{\max,t}^p}{\sum_{i \le t} \gamma_{\max,i}^p}, \\
    x_{t+1} &= (1 - c_{t+1})\, x_t + c_{t+1} z_{t+1}, \qquad
    y_{t+1} = \beta_1 x_{t+1} + (1 - \beta_1)\, z_{t+1},

  with :math:`\gamma_{\max,t} = \max_{i \le t}\gamma_i` (equal to
  :math:`\gamma_t` for a constant :math:`\gamma`). Evaluate the model at
  :math:`x_t`: :func:`schedule_free_eval_params`. The chain is
  ``scale_by_second_moment(b2, eps, nu_correction="none")``,
  ``add_decayed_weights(weight_decay, mask)`` (at :math:`y`),
  ``scale_by_lr(gamma_t)`` and ``schedule_free_average(gamma_t, b1,
  weight_lr_power)``.

  ``bias_correction`` says where Adam's :math:`\sqrt{1 - \beta_2^t}` goes:
  ``"learning_rate"`` (default), into :math:`\gamma_t` as above, as in the
  paper and ``schedulefree.AdamWScheduleFreePaper``; ``"second_moment"``,
  into :math:`\hat v_t = v_t / (1 - \beta_2^t)`, with :math:`\epsilon` added
  to :math:`\sqrt{\hat v_t}` and :math:`\gamma_t = \gamma \rho_t`, as in
  ``schedulefree.AdamWScheduleFreeReference`` and ``AdamWScheduleFree`` (the
  averaging weights then see no bias correction). The two differ while
  :math:`\beta_2^t` is not negligible (tests/test_schedule_free_adamw.py).
  ``optax.contrib.schedule_free_adamw`` follows ``"second_moment"``, but with a
  warm-up its first step moves :math:`z` by 0 (its optimizer reads the
  schedule one step behind its averaging weights); this one follows the
  reference's warm-up.

  Args:
    learning_rate: :math:`\gamma`, a number ``>= 0`` or a schedule of the step
      (from 0), multiplied by the warm-up; no decay is needed.
    b1: :math:`\beta_1`, the interpolation weight, in ``(0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added to the root of the second moment, ``>= 0``.
    warmup_steps: :math:`T_{warmup}`, an int ``>= 0`` (0: no warm-up).
    weight_lr_power: :math:`p \ge 0` in the averaging weights.
    weight_decay: :math:`\lambda`, a number ``>= 0`` or a schedule, applied
      at :math:`y` and multiplied by :math:`\gamma_t`.
    mask: which leaves are decayed, as in :func:`adam_optax.adamw`.
    bias_correction: ``"learning_rate"`` (the paper) or ``"second_moment"``
      (``schedulefree``'s main implementations, optax), see above.
    nu_dtype: dtype of the second moment (default: the params', float32 for
      half-precision params).

  Returns:
    An :class:`optax.GradientTransformation`; ``update`` needs ``params``.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message; ``warmup_steps`` that is not an int ``>= 0``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adam_optax
    >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
    >>> optimizer = adam_optax.schedule_free_adamw(0.5, warmup_steps=5)
    >>> y = jnp.zeros(2)
    >>> state = optimizer.init(y)
    >>> for _ in range(100):
    ...   updates, state = optimizer.update(jax.grad(loss)(y), state, y)
    ...   y = optax.apply_updates(y, updates)
    >>> x = adam_optax.schedule_free_eval_params(state, y)
    >>> bool(loss(x) < 1e-2)
    True

  References:
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, *The Road Less
    Scheduled*, NeurIPS 2024, https://arxiv.org/abs/2405.15682.
  """
  owner = "schedule_free_adamw"
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  b1 = _check_interpolation(owner, b1)
  b2 = check_decay(owner, "b2", b2)
  eps = check_nonnegative(owner, "eps", eps)
  weight_lr_power = check_nonnegative(owner, "weight_lr_power", weight_lr_power)
  nu_dtype = check_float_dtype(owner, "nu_dtype", nu_dtype)
  warmup_steps = _check_steps(owner, "warmup_steps", warmup_steps)
  check_choice(owner, "bias_correction", bias_correction, ("learning_rate", "second_moment"))
  in_rate = bias_correction == "learning_rate"
  rate = schedule_free_rate(learning_rate, warmup_steps, b2 if in_rate else None)
  parts = [
    scale_by_second_moment(
      b2, eps, nu_dtype=nu_dtype, nu_correction="none" if in_rate else "downstream"
    )
  ]
  if not in_rate:
    parts.append(bias_correction_block(None, b2))
  parts += decay_blocks(owner, weight_decay, mask)
  parts += [
    scale_by_lr(rate),
    schedule_free_average(rate, b1, weight_lr_power),
  ]
  return optax.chain(*parts)


def schedule_free_rate(
  learning_rate: optax.ScalarOrSchedule, warmup_steps: Any, b2: Any = None
) -> optax.ScalarOrSchedule:
  r"""Schedule-Free's :math:`\gamma_t = \gamma(t-1)\,\min(1, t / T_{warmup})\,\sqrt{1 - \beta_2^t}`.

  A schedule of the step count :math:`t - 1` (from 0). ``b2 = None`` leaves
  out the bias correction; a constant ``learning_rate`` with neither warm-up
  nor ``b2`` is returned as it is (no schedule, no step count in the state).
  """
  if not callable(learning_rate) and b2 is None and _is_zero(warmup_steps):
    return learning_rate

  def rate(count: jax.Array) -> jax.Array:
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    step = jnp.asarray(count).astype(dtype) + 1
    base = learning_rate(count) if callable(learning_rate) else learning_rate
    steps = num.scalar(warmup_steps, dtype)
    ramp = jnp.where(steps > 0, jnp.minimum(1, step / jnp.maximum(steps, 1)), 1)
    value = num.scalar(base, dtype) * ramp.astype(dtype)
    if b2 is not None:
      value = value * jnp.sqrt(num.one_minus_power(b2, step.astype(jnp.int32), dtype))
    return value

  return rate


def _is_zero(value: Any) -> bool:
  """Whether ``value`` is a concrete 0 (a tracer or a schedule is not)."""
  if isinstance(value, jax.core.Tracer) or callable(value):
    return False
  return concrete_scalar(value) == 0


def _check_steps(owner: str, name: str, value: Any) -> Any:
  """An int ``>= 0`` (a traced value passes)."""
  if isinstance(value, jax.core.Tracer) or (
    isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.integer)
  ):
    return value
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"{owner}({name}={value!r}): {name} must be an int >= 0")
  return value


def _check_interpolation(owner: str, b1: Any) -> Any:
  """:math:`\\beta_1` in ``(0, 1)``: 0 leaves :math:`x` unrecoverable from ``y`` and ``z``."""
  b1 = check_decay(owner, "b1", b1)
  number = concrete_scalar(b1)
  if number == 0:
    raise ValueError(
      f"{owner}(b1={b1!r}): b1 must be in (0, 1); with b1 = 0 the params equal z and the "
      "average x cannot be recovered from them for evaluation"
    )
  return b1
