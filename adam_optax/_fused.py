r"""``fused=True``: the family's step run by one CPU kernel call, in :func:`update_and_apply`.

:func:`adam_optax.adam` and its family are ``optax.chain(scale_by_moments,
bias_correction, [add_decayed_weights], scale_by_lr)``. Under XLA:CPU that
chain and ``optax.apply_updates`` compile to three loops per parameter array
(new ``mu``, new ``nu``, the new params), 40 bytes per float32 parameter by
XLA's own count. :func:`update_and_apply` with an optimizer made with
``fused=True`` hands the per-element work of every leaf to one call of the
kernel in ``csrc/adam_fused_cpu.cc``, which performs the chain's operations in
the chain's order and adds the update to the params in place: read
:math:`\theta, g, m, v`, write :math:`\theta, m, v`, 28 bytes per parameter.
The chain's state logic (step counts, schedules, masks, per-step scalars)
runs through the chain's own helpers.

The rule for where the kernel runs: in :func:`update_and_apply` only. A fused
optimizer's ``update`` is the chain's own ``update``: it must return the
updates for ``optax.apply_updates``, so a kernel there cannot write the
params; it would write the updates to a buffer of their own (a copy of the
gradients wherever they are an argument of the step) and ``apply_updates``
would read them back in a second pass: 0.22-0.47x the XLA path's speed on one
32M array, as measured before issue 17 (``docs/performance_fused.md``).
``init`` is the chain's own too, so fused and unfused optimizers share one
state.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax

from adam_optax import _kernel
from adam_optax import _numerics as num
from adam_optax._bias_correction import BiasCorrectionState, correction_factor, next_count
from adam_optax._learning_rate import descent_factor
from adam_optax._moments import (
  LeafOptions,
  MomentOptions,
  _StepScalars,
  check_update,
  step_scalars,
  update_leaf,
)
from adam_optax._scaling import scale_leaf, step_value
from adam_optax._weight_decay import decay_leaf, decay_transform

_KERNEL_DTYPES = {np.dtype(t) for t in (jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16)}
_DECAYED = object()
# At most this many leaves per kernel call: XLA's layout assignment takes time
# quadratic in a custom call's operand count (1024 leaves in one call: 32 s to
# compile; in calls of 32: 1.9 s, the same as 1024 separate loops).
LEAVES_PER_CALL = 32  # marks, in a probe of the decay's mask, the leaves it decays


@dataclasses.dataclass(frozen=True)
class Plan:
  """What :func:`adam_optax._alias.adam_chain` chained, in the kernel's terms.

  Attributes:
    owner: the optimizer's name, for messages.
    moments: ``scale_by_moments``' hyperparameters and options.
    correction: ``bias_correction``'s ``(b1, b2)``, or ``None`` without one.
    weight_decay: ``add_decayed_weights``' rate, or ``None`` without one.
    mask: its mask.
    learning_rate: ``scale_by_lr``'s rate.
  """

  owner: str
  moments: MomentOptions
  correction: tuple[Any, Any] | None
  weight_decay: optax.ScalarOrSchedule | None
  mask: Any
  learning_rate: optax.ScalarOrSchedule


def fused_chain(plan: Plan, chain: optax.GradientTransformation) -> optax.GradientTransformation:
  """``chain``, marked for :func:`update_and_apply` to run with the fused kernel.

  Falls back to ``chain`` itself, with a warning, when the kernel is not built.
  """
  error = _kernel.load_error()
  if error is not None:
    warnings.warn(
      f"{plan.owner}(fused=True): the fused CPU kernel is unavailable ({error}). Using "
      "the XLA path, which gives the same results more slowly.",
      RuntimeWarning,
      stacklevel=3,
    )
    return chain
  return optax.GradientTransformation(chain.init, FusedUpdate(plan, chain))


def update_and_apply(
  optimizer: optax.GradientTransformation,
  grads: optax.Updates,
  state: optax.OptState,
  params: optax.Params,
) -> tuple[optax.Params, optax.OptState]:
  r"""One optimizer step: ``optax.apply_updates(params, optimizer.update(...)[0])``.

  For an optimizer made with ``fused=True`` (:func:`adam_optax.adam`,
  :func:`adam_optax.adamw`, ... on CPU) the fused kernel writes the new params
  and state in place in one pass over memory, without materialising the
  updates: read :math:`\theta, g, m, v`, write :math:`\theta, m, v`, 28
  bytes per float32 parameter. Under :func:`jax.jit` with the params and state
  donated (``donate_argnums``) nothing parameter-sized is allocated. For any
  other optimizer it is exactly the two-line step it replaces, so code written
  with it runs with every optimizer.

  The results equal the unfused optimizer's ``update`` followed by
  :func:`optax.apply_updates` inside one jitted function, bit for bit in
  float32 and float64 (XLA fuses the last multiply and add into one FMA there,
  and so does the kernel), except in the configurations that
  ``docs/performance_fused.md`` lists with their measured bounds (moments
  stored in another dtype than the params', and leaves with a short last
  dimension under NAdam or weight decay), each tested.

  Args:
    optimizer: any :class:`optax.GradientTransformation`.
    grads: the gradients, shaped like the params.
    state: the optimizer's state.
    params: the params (not ``None``: the step adds the updates to them).

  Returns:
    ``(new_params, new_state)``.

  Raises:
    ValueError: ``params`` is ``None``, for every optimizer; and whatever
      ``optimizer.update`` raises (a gradient tree or state that does not fit,
      named by the leaf's path).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import adam_optax
    >>> optimizer = adam_optax.adamw(0.1, weight_decay=0.01, fused=True)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = optimizer.init(params)
    >>> step = jax.jit(
    ...     lambda p, s, g: adam_optax.update_and_apply(optimizer, g, s, p),
    ...     donate_argnums=(0, 1))
    >>> params, state = step(params, state, {"w": jnp.array([0.5, -3.0])})
    >>> params["w"]  # -0.1 * (sign(g) + 0.01 w)
    Array([ 0.899, -1.898], dtype=float32)
  """
  if params is None:
    raise ValueError(
      "update_and_apply(params=None): the step adds the updates to the params, so it "
      "needs them; pass the params tree (for the updates alone, call optimizer.update)."
    )
  if isinstance(optimizer.update, FusedUpdate):
    return optimizer.update.apply(grads, state, params)
  updates, state = optimizer.update(grads, state, params)
  return optax.apply_updates(params, updates), state


class FusedUpdate:
  """A fused optimizer's ``update``: the chain's own, recognised by :func:`update_and_apply`."""

  def __init__(self, plan: Plan, chain: optax.GradientTransformation):
    self.plan = plan
    self.chain = chain
    self.parts = 2 + (plan.correction is not None) + (plan.weight_decay is not None)

  def __call__(
    self, updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    return self.chain.update(updates, state, params)

  def apply(
    self, grads: optax.Updates, state: Any, params: optax.Params
  ) -> tuple[optax.Params, optax.OptState]:
    """The chain's update followed by ``optax.apply_updates``, by the kernel where it can."""
    plan = self.plan
    if not isinstance(state, tuple) or len(state) != self.parts:  # optax.chain's own error
      updates, state = self.chain.update(grads, state, params)
      return optax.apply_updates(params, updates), state
    moments, *rest = state
    check_update(plan.moments, moments, grads, params)
    count = num.saturating_increment(moments.count)
    new_states: list[Any] = []
    factor: Any = _ones
    if plan.correction is not None:
      correction_count = next_count(rest.pop(0))
      factor = functools.partial(correction_factor, *plan.correction, correction_count)
      new_states.append(BiasCorrectionState(count=correction_count))
    decayed = [False] * len(jax.tree.leaves(grads))
    rate = jnp.zeros([], jnp.float32)
    if plan.weight_decay is not None:
      decayed, rate, decay_state = _decay_step(plan, grads, rest.pop(0), params)
      new_states.append(decay_state)
    learning_rate, lr_state = step_value(
      "scale_by_lr", "learning_rate", plan.learning_rate, rest.pop(0)
    )
    new_states.append(lr_state)

    @functools.cache
    def scalars(dtype: np.dtype) -> tuple[_StepScalars, jax.Array, jax.Array, jax.Array]:
      real = num.real_dtype(dtype)
      return (
        step_scalars(plan.moments, count, dtype),
        factor(real),
        rate,
        descent_factor(learning_rate, real),
      )

    leaves = _Leaves(grads, moments, params)
    units = _UNIT_LR * _is_constant_one(learning_rate) | _UNIT_DECAY * _is_constant_one(rate)
    outputs = _run(plan.moments.leaf, leaves, decayed, scalars, units)
    new_moments = moments._replace(
      count=count,
      mu=leaves.unflatten(outputs[1]),
      nu=leaves.unflatten(outputs[2]),
      nu_max=leaves.unflatten(outputs[3]) if plan.moments.leaf.amsgrad else None,
    )
    return leaves.unflatten(outputs[0]), (new_moments, *new_states)


def _ones(dtype: np.dtype) -> jax.Array:
  return jnp.ones([], dtype)


_UNIT_LR, _UNIT_DECAY = _kernel.UNIT_LR, _kernel.UNIT_DECAY


def _is_constant_one(value: Any) -> bool:
  """Whether ``value`` is 1, a constant of the program being traced (a jaxpr literal).

  XLA drops a multiply by such a constant and fuses the product before it into
  the add after it instead; the kernel is told to do the same (``kUnitLr``,
  ``kUnitDecay`` in csrc). A traced value (an injected hyperparameter, a
  schedule of the step count) is multiplied by, and so is any value outside
  :func:`jax.jit`, where XLA compiles each operation by itself.
  """
  literal = getattr(value, "val", None)  # jax's tracer of a literal holds the literal
  return isinstance(literal, jax.extend.core.Literal) and bool(np.asarray(literal.val) == 1)


def _decay_step(
  plan: Plan, grads: optax.Updates, state: Any, params: optax.Params | None
) -> tuple[list[bool], jax.Array, Any]:
  """add_decayed_weights' new state, its rate and, per leaf, whether it is decayed."""
  recorded: list[jax.Array] = []

  def record(updates: optax.Updates, params: optax.Params, rate: jax.Array) -> optax.Updates:
    del params
    recorded.append(rate)
    return jax.tree.map(lambda _: _DECAYED, updates)

  transform = decay_transform(plan.owner, plan.weight_decay, plan.mask, record)
  marked, new_state = transform.update(grads, state, params)
  return [leaf is _DECAYED for leaf in jax.tree.leaves(marked)], recorded[0], new_state


class _Leaves:
  """The flat leaves of the gradients, the moments and the params."""

  def __init__(self, grads: optax.Updates, moments: Any, params: optax.Params):
    self.grads = jax.tree.leaves(grads)
    treedef: Any = jax.tree.structure(grads)  # PyTreeDef: jaxlib ships no stub for it
    self.treedef = treedef
    self.mu = treedef.flatten_up_to(moments.mu)
    self.nu = treedef.flatten_up_to(moments.nu)
    none: list[Any] = [None] * len(self.grads)
    self.nu_max = none if moments.nu_max is None else treedef.flatten_up_to(moments.nu_max)
    self.params = treedef.flatten_up_to(params)

  def unflatten(self, leaves: Sequence[Any]) -> Any:
    return self.treedef.unflatten(leaves)

  def operands(self, index: int) -> tuple[Any, ...]:
    return self.grads[index], self.mu[index], self.nu[index], self.nu_max[index], self.params[index]


def _kernel_dtype(operands: Sequence[Any]) -> np.dtype | None:
  """The compute dtype the kernel would use for this leaf, or ``None`` if it cannot take it."""
  grad, param = operands[0], operands[-1]
  present = [x for x in operands if x is not None]
  if not all(isinstance(x, jax.Array) for x in present) or jnp.size(grad) <= 1:
    return None  # XLA computes one-element leaves with scalar code, rounded otherwise
  if any(jnp.shape(x) != jnp.shape(grad) for x in present):
    return None
  dtypes = [np.dtype(x.dtype) for x in present]
  if not all(dtype in _KERNEL_DTYPES for dtype in dtypes):
    return None
  compute = num.compute_dtype(grad.dtype)
  if compute == np.float64 and np.dtype(jnp.bfloat16) in dtypes:
    return None  # float64 -> bfloat16 would round twice
  if param is None or param.dtype != grad.dtype:
    return None
  return compute


def _run(
  options: LeafOptions,
  leaves: _Leaves,
  decayed: list[bool],
  scalars: Any,
  units: int,
) -> list[list[Any]]:
  """Per leaf ``new params, mu, nu, nu_max``: the kernel's where it can, else the chain's."""
  count = len(leaves.grads)
  columns: list[list[Any]] = [[None] * count for _ in range(4)]
  groups: dict[np.dtype, list[int]] = {}
  for index in range(count):
    leaf = leaves.operands(index)
    dtype = _kernel_dtype(leaf)
    if dtype is not None:
      groups.setdefault(dtype, []).append(index)
      continue
    k, factor, rate, neg_lr = scalars(num.compute_dtype(jnp.result_type(leaf[0])))
    results = _chain_leaf(options, k, factor, rate, neg_lr, decayed[index], *leaf)
    for column, value in zip(columns, results, strict=False):
      column[index] = value
  for dtype, members in groups.items():
    k, factor, rate, neg_lr = scalars(dtype)
    # In the order of csrc's enum Scalar (and of _xla_impl's unpacking).
    vector = jnp.stack([x.astype(dtype) for x in (*k, factor, rate, neg_lr)])
    for start in range(0, len(members), LEAVES_PER_CALL):
      indices = members[start : start + LEAVES_PER_CALL]
      call = _kernel.Call(
        dtype=dtype,
        mode=_mode(options) | units,
        leaf_flags=tuple(_kernel.DECAY if decayed[i] else 0 for i in indices),
        options=options,
        xla_impl=_xla_impl,
      )
      operands: list[Any] = []
      for i in indices:
        grad, mu, nu, nu_max, param = leaves.operands(i)
        operands += [grad, mu, nu]
        operands += [nu_max] if options.amsgrad else []
        operands += [param]
      outputs = _kernel.fused_call(call, vector, operands)
      per_leaf = call.outputs_per_leaf
      for position, i in enumerate(indices):
        for j in range(per_leaf):
          columns[j][i] = outputs[position * per_leaf + j]
  return columns


def _mode(options: LeafOptions) -> int:
  bits = [
    (options.nesterov, _kernel.NESTEROV),
    (options.amsgrad, _kernel.AMSGRAD),
    (options.nu_correction == "inside", _kernel.INSIDE),
    (options.infinity_norm, _kernel.INFINITY),
  ]
  return sum(bit for on, bit in bits if on)


def _chain_leaf(
  options: LeafOptions,
  k: _StepScalars,
  factor: jax.Array,
  rate: jax.Array,
  neg_lr: jax.Array,
  decay: bool,
  grad: Any,
  mu: Any,
  nu: Any,
  nu_max: Any,
  param: Any,
) -> tuple[Any, ...]:
  """One leaf through the chain's leaf functions and ``apply_updates``: what the kernel does."""
  if grad is None:
    return None, None, None, None
  ratio, new_mu, new_nu, *kept = update_leaf(options, lambda _: k, grad, mu, nu, nu_max)
  update = scale_leaf(ratio, factor)
  if decay:
    update = decay_leaf(rate, update, param)
  update = scale_leaf(update, neg_lr)
  return optax.apply_updates(param, update), new_mu, new_nu, kept[0] if kept else None


def _xla_impl(call: _kernel.Call, scalars: jax.Array, operands: Sequence[Any]) -> list[Any]:
  """The kernel's results computed by XLA from the same scalars (see :mod:`._kernel`)."""
  *moment_scalars, factor, rate, neg_lr = scalars  # the order _run stacks them in
  k = _StepScalars(*moment_scalars)
  if call.mode & _UNIT_DECAY:  # constants again, so that XLA folds them as in the chain
    rate = jnp.ones([], rate.dtype)
  if call.mode & _UNIT_LR:
    neg_lr = -jnp.ones([], neg_lr.dtype)
  options = call.options
  results: list[Any] = []
  for leaf, flags in zip(call.leaves(operands), call.leaf_flags, strict=True):
    grad, mu, nu, *rest = leaf
    nu_max = rest[0] if options.amsgrad else None
    decay = bool(flags & _kernel.DECAY)
    out = _chain_leaf(options, k, factor, rate, neg_lr, decay, grad, mu, nu, nu_max, rest[-1])
    results += list(out[: call.outputs_per_leaf])
  return results
