"""Moving a run from optax's own Adam family (``optax.adam``, ``adamw``, ...) to this package's.

optax keeps ``ScaleByAdamState(count, mu, nu)`` (``ScaleByAmsgradState`` adds
``nu_max``) followed by the learning rate's state; this package's chain keeps
:class:`~adam_optax.ScaleByMomentsState` and a count in each transform that
needs one. The moments mean the same in both, so they are copied.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from adam_optax import _migrate as mig
from adam_optax._quantized import dequantized, quantize_like, quantized_layout, unquantized

_SOURCES = (optax.ScaleByAdamState, optax.ScaleByAmsgradState)
_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def _nodes(tree: Any, types: tuple[type, ...]) -> list[tuple[mig.KeyPath, Any]]:
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, types))[0]
  return [(tuple(path), node) for path, node in flat if isinstance(node, types)]


def _relative(tree: Any) -> dict[mig.KeyPath, Any]:
  return {tuple(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _copy(
  owner: str,
  what: str,
  source: Any,
  target: mig.Target,
  indices: tuple[int, ...],
  prefix: mig.KeyPath,
  values: dict[int, Any],
  *,
  second: bool = False,
) -> None:
  """Copies a params-shaped source tree onto the target leaves under ``prefix``, by path.

  Each value is checked as :func:`adam_optax._migrate.check_moment` checks a
  moment (a second moment with ``second``); accumulated gradients as a first one.
  """
  given = _relative(source)
  wanted = {target.paths[i][len(prefix) :]: i for i in indices}
  if set(given) != set(wanted):
    extra = sorted(map(mig.where, set(given) - set(wanted)))[:3]
    lacking = sorted(map(mig.where, set(wanted) - set(given)))[:3]
    raise ValueError(
      f"{owner}(optax_state=...): {what} does not mirror the params the optimizer's state "
      f"holds: leaves only in the optax state {extra}, only in the target {lacking}"
    )
  for path, index in wanted.items():
    value = np.asarray(jax.device_get(given[path]))
    shape = target.leaves[index].shape
    if value.shape != tuple(shape):
      raise ValueError(
        f"{owner}(optax_state=...): {what} at {mig.where(path)} has shape {value.shape}, "
        f"but the param leaf has shape {tuple(shape)}"
      )
    mig.check_moment(
      f"{owner}(optax_state=...)", f"{what} (param leaf {mig.where(path)})", value, second=second
    )
    values[index] = value


def state_from_optax(
  optimizer: optax.GradientTransformation,
  params: optax.Params,
  optax_state: optax.OptState,
  *,
  shardings: Any = None,
) -> optax.OptState:
  r"""The state of ``optimizer`` that continues a run of optax's Adam family.

  ``optax_state`` is a state of ``optax.adam``, ``adamw``, ``nadam``,
  ``nadamw``, ``amsgrad`` or ``adamax``, alone or inside ``optax.chain``,
  ``inject_hyperparams``, ``MultiSteps``, ``masked``... Its
  ``ScaleByAdamState``\ s (``ScaleByAmsgradState``\ s) are matched, in order,
  with the family members in ``optimizer``; each member's moments are copied
  (cast to its dtypes) and every step count of the new state is the optax
  count. Injected hyperparameters of the same name are copied when both are
  ``inject_hyperparams``; ``MultiSteps``' accumulator and mini-step carry over
  when both accumulate. Every other leaf is ``optimizer.init(params)``'s.

  optax's state does not say which optimizer made it: build the matching
  member (``optax.adam`` is :func:`adam`, ``optax.adamw`` :func:`adamw`,
  ``optax.nadam`` :func:`nadam`, ``optax.nadamw`` :func:`nadamw`,
  ``optax.adamax`` :func:`adamax`, ``optax.amsgrad`` :func:`amsgrad` with
  ``convention="optax"``) with the same hyperparameters.

  Args:
    optimizer: the optimizer to continue with.
    params: the params (arrays or :class:`jax.ShapeDtypeStruct`\ s), as given
      to ``optimizer.init``.
    optax_state: the optax optimizer's state.
    shardings: where the state's leaves go, as in
      :func:`adam_optax.state_from_torch`.

  Returns:
    A state of ``optimizer`` for ``params``.

  Raises:
    ValueError: the numbers of members and of optax moment states differ; the
      moments do not mirror the params; an AMSGrad state meets a member of
      another kind or convention; ``MultiSteps`` is mid-accumulation and the
      target does not accumulate; a moment overflows the state's dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> old = optax.adam(0.1)
    >>> old_state = old.init(params)
    >>> _, old_state = old.update({"w": jnp.array([0.5, -3.0])}, old_state)
    >>> new = adam_optax.adam(0.1)
    >>> state = adam_optax.state_from_optax(new, params, old_state)
    >>> state[0].count, state[0].mu["w"]
    (Array(1, dtype=int32), Array([ 0.05, -0.3 ], dtype=float32))
  """
  owner = "state_from_optax"
  layout = quantized_layout(optimizer, params)
  if layout is not None:  # convert as if unquantized, then quantize as init does
    with unquantized():
      exact = state_from_optax(optimizer, params, optax_state)
    return mig.placed(owner, optimizer, params, quantize_like(layout, exact), shardings)
  target = mig.inspect(owner, optimizer, params)
  sources = _nodes(dequantized(optax_state, params), _SOURCES)
  if len(sources) != len(target.members):
    names = [m.recipe.member for m in target.members]
    raise ValueError(
      f"{owner}(optax_state=...): it holds {len(sources)} Adam states (ScaleByAdamState or "
      f"ScaleByAmsgradState), but the optimizer has {len(target.members)} members of the "
      f"family ({names}); they are matched one to one, in order"
    )
  values: dict[int, Any] = {}
  counts = []
  for member, (path, source) in zip(target.members, sources, strict=True):
    amsgrad_source = isinstance(source, optax.ScaleByAmsgradState)
    convention = member.recipe.convention
    if amsgrad_source and convention != "optax":
      raise ValueError(
        f"{owner}: the optax state at {mig.where(path)} is optax.amsgrad's, whose running "
        "maximum is of the bias-corrected second moment; it continues as "
        f"adam_optax.amsgrad(..., convention='optax'), not {member.recipe.member}"
        + (f"(convention={convention!r})" if convention else "(...)")
      )
    if convention is not None and not amsgrad_source:
      raise ValueError(
        f"{owner}: the optax state at {mig.where(path)} keeps no running maximum, which "
        f"{member.recipe.member}(convention={convention!r}) needs; it is not an AMSGrad run"
      )
    moments = (*member.path, jax.tree_util.SequenceKey(0))
    for field, indices in (("mu", member.mu), ("nu", member.nu), ("nu_max", member.nu_max)):
      if indices:
        prefix = (*moments, jax.tree_util.GetAttrKey(field))
        _copy(
          owner,
          f"{field} at {mig.where(path)}",
          getattr(source, field),
          target,
          indices,
          prefix,
          values,
          second=field != "mu",
        )
    count = jax.device_get(source.count)
    k = mig.step_count(f"{owner}(optax_state=...)", f"the count at {mig.where(path)}", count)
    counts.append(k)
    values[member.count] = np.asarray(k)
  values.update({i: np.asarray(k) for i, k in mig.step_counts(owner, target, counts).items()})
  _carry_injected(owner, optax_state, target, values)
  _carry_accumulation(owner, optax_state, target, values)
  return mig.build(target, values, shardings)


def _carry_injected(owner: str, optax_state: Any, target: mig.Target, values: dict) -> None:
  """Injected hyperparameters of the same name keep their values (one injector each side)."""
  given = _nodes(optax_state, _INJECTED)
  injected = _nodes(target.abstract, _INJECTED)
  if len(given) != 1 or len(injected) != 1:
    return
  (path, node), (source_path, source) = injected[0], given[0]
  for name in node.hyperparams:
    if name in source.hyperparams:
      leaf = (*path, jax.tree_util.GetAttrKey("hyperparams"), jax.tree_util.DictKey(name))
      what = f"the injected hyperparameter {name} at {mig.where(source_path)}"
      value = jax.device_get(source.hyperparams[name])
      number = mig.hyperparameter(f"{owner}(optax_state=...)", what, value)
      values[target.paths.index(leaf)] = np.asarray(number)


def _carry_accumulation(owner: str, optax_state: Any, target: mig.Target, values: dict) -> None:
  """``MultiSteps``' partial accumulation carries over, or raises if it has nowhere to go."""
  given = _nodes(optax_state, (optax.MultiStepsState,))
  accumulating = _nodes(target.abstract, (optax.MultiStepsState,))
  if len(given) != 1:
    return
  path, source = given[0]
  mini_step = mig.step_count(
    f"{owner}(optax_state=...)",
    f"optax.MultiSteps' mini_step at {mig.where(path)}",
    jax.device_get(source.mini_step),
  )
  if len(accumulating) != 1:
    if mini_step != 0:
      raise ValueError(
        f"{owner}(optax_state=...): optax.MultiSteps at {mig.where(path)} is in the middle "
        f"of accumulating (mini_step={mini_step}) and the optimizer "
        "does not accumulate: convert after a full step"
      )
    return
  target_path = accumulating[0][0]
  mini = (*target_path, jax.tree_util.GetAttrKey("mini_step"))
  values[target.paths.index(mini)] = np.asarray(mini_step)
  prefix = (*target_path, jax.tree_util.GetAttrKey("acc_grads"))
  indices = tuple(i for i, p in enumerate(target.paths) if p[: len(prefix)] == prefix)
  _copy(owner, "MultiSteps' acc_grads", source.acc_grads, target, indices, prefix, values)
