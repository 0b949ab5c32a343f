"""The machinery shared by the state converters: find the family in a state, fill the state.

A converter never writes a state layout of its own. It traces
``optimizer.init(params)`` with :func:`jax.eval_shape` while
:mod:`adam_optax._recipes` records every family member that ``init`` builds,
locates each member's state in the result by identity (:class:`Member`), and
fills a copy of that state: the member's moments from the source, every step
count (``count`` fields, ``optax.MultiSteps``'s ``gradient_step``) with the
number of steps taken, and every other leaf with the value ``init`` gives it.
Wrappers (``optax.chain``, ``skip_nonfinite``, ``inject_hyperparams``,
``masked``, ``multi_transform``, ``MultiSteps``) therefore compose without
being named here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from adam_optax._recipes import DecayRecipe, Event, Recipe, recording
from adam_optax._sharding import state_shardings
from adam_optax._trees import where

KeyPath = tuple[Any, ...]
INT32_MAX = 2**31 - 1  # the largest step count the state's int32 counts hold
_COUNT_FIELDS = ("count", "gradient_step")


class Member(NamedTuple):
  """Where one family member's state lies in an optimizer's state (flat leaf indices).

  Attributes:
    recipe: what the member was built from.
    path: the key path of the member's chain state.
    count: the leaf of its step count.
    mu: the state leaves of its first moment, in flatten order.
    nu: those of its second moment (AdaMax's infinity norm).
    nu_max: those of AMSGrad's running maximum (empty otherwise).
    params: for each ``mu`` leaf, the index of its param leaf.
    decoupled: for each ``mu`` leaf, whether AdamW's decay applies to it.
    coupled: the weight decay of an :func:`adam_optax.add_decayed_weights`
      that comes before the member in the same chain (torch's coupled L2), or
      ``None``.
    coupled_leaves: for each ``mu`` leaf, whether that decay applies to it.
    hyper: the hyperparameters that are state leaves (``inject_hyperparams``):
      name -> leaf index.
  """

  recipe: Recipe
  path: KeyPath
  count: int  # type: ignore[assignment]  # shadows tuple.count, as in optax
  mu: tuple[int, ...]
  nu: tuple[int, ...]
  nu_max: tuple[int, ...]
  params: tuple[int, ...]
  decoupled: tuple[bool, ...]
  coupled: Any
  coupled_leaves: tuple[bool, ...]
  hyper: dict[str, int]


class Target(NamedTuple):
  """An optimizer's state for some params, abstract, with its family members located."""

  owner: str
  optimizer: Any
  params: Any
  abstract: Any
  paths: tuple[KeyPath, ...]
  leaves: tuple[jax.ShapeDtypeStruct, ...]
  param_paths: tuple[str, ...]
  members: tuple[Member, ...]


def _starts_with(path: KeyPath, prefix: KeyPath) -> bool:
  return tuple(path[: len(prefix)]) == tuple(prefix)


def _leaf_paths(tree: Any) -> list[KeyPath]:
  return [tuple(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _locate(state: Any, events: list[Event]) -> list[tuple[Event, KeyPath, Any, dict]]:
  """For each family event: its state's path, a coupled decay before it, its injected leaves."""
  targets = {id(event.state): event for event in events}
  hyper_ids: dict[int, tuple[int, str]] = {}
  for number, event in enumerate(events):
    if isinstance(event.recipe, Recipe):
      for name, value in [*event.recipe._asdict().items(), *event.recipe.options]:
        if isinstance(value, jax.Array):
          hyper_ids[id(value)] = (number, name)

  def is_target(node: Any) -> bool:
    return id(node) in targets or id(node) in hyper_ids

  found = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_target)[0]
  path_of = {id(node): tuple(path) for path, node in found if id(node) in targets}
  hyper_paths: dict[int, dict[str, KeyPath]] = {}
  for path, node in found:
    if id(node) in hyper_ids:
      number, name = hyper_ids[id(node)]
      hyper_paths.setdefault(number, {})[name] = tuple(path)
  decays = [e for e in events if isinstance(e.recipe, DecayRecipe) and id(e.state) in path_of]
  located = []
  for number, event in enumerate(events):
    if not isinstance(event.recipe, Recipe):
      continue
    if id(event.state) not in path_of:
      raise ValueError(
        f"the state of {event.recipe.member}(...) is not a part of optimizer.init's state "
        "(a wrapper rebuilt it): it cannot be located there"
      )
    path = path_of[id(event.state)]
    coupled = None
    if path and isinstance(path[-1], jax.tree_util.SequenceKey):
      parent, index = path[:-1], path[-1].idx
      before = [
        decay
        for decay in decays
        if len(path_of[id(decay.state)]) > len(parent)
        and _starts_with(path_of[id(decay.state)], parent)
        and isinstance(path_of[id(decay.state)][len(parent)], jax.tree_util.SequenceKey)
        and path_of[id(decay.state)][len(parent)].idx < index
      ]
      if len(before) > 1:
        raise ValueError(
          f"two add_decayed_weights come before {event.recipe.member}(...) at "
          f"{where(path)}; torch adds one weight decay to the gradient"
        )
      coupled = before[0] if before else None
    located.append((event, path, coupled, hyper_paths.get(number, {})))
  return located


def inspect(owner: str, optimizer: Any, params: Any) -> Target:
  """Traces ``optimizer.init(params)`` and locates the family members in its state.

  Raises:
    TypeError: ``optimizer`` has no ``init``.
    ValueError: ``init`` builds no member of the family, or a member's state
      does not mirror the params.
  """
  if not callable(getattr(optimizer, "init", None)):
    raise TypeError(
      f"{owner}(optimizer=...): expected an optax.GradientTransformation, got "
      f"{type(optimizer).__name__}; did you pass the factory (adam) instead of the "
      "optimizer (adam(learning_rate))?"
    )
  found: dict[str, Any] = {}

  def traced(p: Any) -> Any:
    with recording() as events:
      state = optimizer.init(p)
    try:
      found["located"] = _locate(state, events)
    except ValueError as error:
      raise ValueError(f"{owner}(optimizer=...): {error}") from None
    return state

  abstract = jax.eval_shape(traced, params)
  if not found["located"]:
    raise ValueError(
      f"{owner}(optimizer=...): optimizer.init builds no member of adam_optax's family "
      "(adam, adamw, nadam, nadamw, amsgrad, adamax, radam, adopt), whose state this converter "
      "fills; optax's own optimizers are not recognised as targets"
    )
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  paths = tuple(tuple(path) for path, _ in flat)
  param_paths = _leaf_paths(params)
  param_index = {path: i for i, path in enumerate(param_paths)}
  members = []
  for event, path, coupled, hyper in found["located"]:
    moments = (*path, jax.tree_util.SequenceKey(0))

    def leaves_of(field: str, moments: KeyPath = moments) -> tuple[int, ...]:
      prefix = (*moments, jax.tree_util.GetAttrKey(field))
      return tuple(i for i, p in enumerate(paths) if _starts_with(p, prefix))

    mu = leaves_of("mu")
    relative = [paths[i][len(moments) + 1 :] for i in mu]
    missing = [r for r in relative if r not in param_index]
    if missing:
      raise ValueError(
        f"{owner}(params=...): the first moment of {event.recipe.member}(...) at "
        f"{where(path)} has a leaf at {where(missing[0])} that the params do not have; "
        "pass the params that the optimizer's init is given"
      )
    decayed = {tuple(p) for d in event.inner for p in _leaf_paths(d.params)}
    coupled_paths = set() if coupled is None else set(_leaf_paths(coupled.params))
    members.append(
      Member(
        recipe=event.recipe,
        path=path,
        count=paths.index((*moments, jax.tree_util.GetAttrKey("count"))),
        mu=mu,
        nu=leaves_of("nu"),
        nu_max=leaves_of("nu_max"),
        params=tuple(param_index[r] for r in relative),
        decoupled=tuple(r in decayed for r in relative),
        coupled=None if coupled is None else coupled.recipe.weight_decay,
        coupled_leaves=tuple(r in coupled_paths for r in relative),
        hyper={name: paths.index(p) for name, p in hyper.items()},
      )
    )
  return Target(
    owner=owner,
    optimizer=optimizer,
    params=params,
    abstract=abstract,
    paths=paths,
    leaves=tuple(leaf for _, leaf in flat),
    param_paths=tuple(where(p) for p in param_paths),
    members=tuple(members),
  )


def per_leaf(
  owner: str, name: str, value: Any, params: Any, is_value: Callable[[Any], bool]
) -> list[Any]:
  """One entry of ``value`` per param leaf: ``value`` is ``None``, a callable or a tree.

  A callable is called as ``value(path, param)`` for each leaf; a tree must have
  the params' structure with one entry per leaf (``None`` entries allowed).
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  if value is None:
    return [None] * len(flat)
  if callable(value):
    return [value(path, leaf) for path, leaf in flat]
  entries, structure = jax.tree.flatten(value, is_leaf=lambda x: x is None or is_value(x))
  expected: Any = jax.tree.structure(params, is_leaf=lambda x: x is None)
  if structure != expected:
    raise ValueError(
      f"{owner}({name}=...): expected a tree with the params' structure (one entry per "
      f"leaf) or a callable (path, param) -> entry; got {structure} for params {expected}"
    )
  kept = jax.tree.leaves(params, is_leaf=lambda x: x is None)
  return [entry for entry, leaf in zip(entries, kept, strict=True) if leaf is not None]


def check_axes(owner: str, axes: Sequence[Any], shapes: Sequence[tuple[int, ...]]) -> None:
  """Checks that each entry of ``axes`` is ``None`` or a permutation of its leaf's axes."""
  for entry, shape, path in zip(axes, shapes, range(len(shapes)), strict=True):
    if entry is None:
      continue
    if sorted(entry) != list(range(len(shape))):
      raise ValueError(
        f"{owner}(axes=...): entry {entry!r} for param leaf {path} (shape {shape}) is not "
        f"a permutation of its {len(shape)} axes"
      )


def is_axes(value: Any) -> bool:
  """Whether ``value`` is an ``axes`` entry: a tuple of ints."""
  return isinstance(value, tuple) and all(isinstance(i, int) for i in value)


def cast(owner: str, what: str, value: Any, dtype: Any) -> np.ndarray:
  """``value`` in ``dtype``; raises when a finite entry does not fit (float16 overflow)."""
  array = np.asarray(value)
  with np.errstate(over="ignore"):  # reported below, with the leaf's name
    out = array.astype(dtype)
  if jnp.issubdtype(dtype, jnp.inexact) and np.issubdtype(array.dtype, np.inexact):
    wide = np.complex128 if np.iscomplexobj(out) else np.float64
    lost = np.isfinite(array) & ~np.isfinite(out.astype(wide))
    if np.any(lost):
      raise ValueError(
        f"{owner}: {what} has finite values up to {np.max(np.abs(array[lost])):.3g} that "
        f"overflow the target state's dtype {np.dtype(dtype).name}; choose a wider "
        "mu_dtype/nu_dtype"
      )
  return out


def step_counts(owner: str, target: Target, counts: Sequence[int]) -> dict[int, int]:
  """The value of every step-count leaf: a member's own inside it, the common one elsewhere."""
  values: dict[int, int] = {}
  for index, path in enumerate(target.paths):
    last = path[-1] if path else None
    if not (isinstance(last, jax.tree_util.GetAttrKey) and last.name in _COUNT_FIELDS):
      continue
    if not jnp.issubdtype(target.leaves[index].dtype, jnp.integer):
      continue
    inside = [k for m, k in zip(target.members, counts, strict=True) if _starts_with(path, m.path)]
    if inside:
      values[index] = inside[0]
    elif len(set(counts)) == 1:
      values[index] = counts[0]
    else:
      raise ValueError(
        f"{owner}: the family members have taken different numbers of steps "
        f"({sorted(set(counts))}), so the step count at {where(path)}, outside all of "
        "them, has no single value"
      )
  return values


def _shardings(target: Target, shardings: Any) -> list[Any]:
  if shardings is not None:
    flat = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(flat) != len(target.leaves) or not all(
      isinstance(s, jax.sharding.Sharding) for s in flat
    ):
      raise ValueError(
        f"{target.owner}(shardings=...): expected one jax.sharding.Sharding per leaf of "
        f"optimizer.init(params) ({len(target.leaves)} leaves), e.g. from "
        f"adam_optax.state_shardings; got {len(flat)} entries"
      )
    return flat
  own = [getattr(leaf, "sharding", None) for leaf in target.leaves]
  if all(isinstance(s, NamedSharding) for s in own):
    return own
  param_leaves = jax.tree.leaves(target.params)
  if param_leaves and all(
    isinstance(getattr(p, "sharding", None), NamedSharding) for p in param_leaves
  ):
    return jax.tree.leaves(
      state_shardings(target.optimizer, target.params),
      is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
    )
  return [None] * len(target.leaves)


def placed(owner: str, optimizer: Any, params: Any, state: Any, shardings: Any) -> Any:
  """``state`` on ``shardings``; by default where ``state_shardings`` puts it for sharded params."""
  if shardings is None:
    param_leaves = jax.tree.leaves(params)
    if not param_leaves or not all(
      isinstance(getattr(p, "sharding", None), NamedSharding) for p in param_leaves
    ):
      return state
    shardings = state_shardings(optimizer, params)
  try:
    return jax.device_put(state, shardings)
  except (ValueError, TypeError) as error:
    raise ValueError(
      f"{owner}(shardings=...): expected the shardings of optimizer.init(params), e.g. from "
      f"adam_optax.state_shardings: {error}"
    ) from None


def build(target: Target, values: dict[int, Any], shardings: Any = None) -> Any:
  """``optimizer.init(params)`` with the leaves in ``values`` replaced, cast and placed.

  Leaves not in ``values`` take ``init``'s values, computed without building the
  replaced ones (XLA drops what is not returned).
  """
  rest = [i for i in range(len(target.leaves)) if i not in values]
  initial: list[Any] = []
  if rest:

    def selected(p: Any) -> list[Any]:
      leaves = jax.tree.leaves(target.optimizer.init(p))
      return [leaves[i] for i in rest]

    initial = jax.jit(selected)(target.params)
  filled = dict(zip(rest, initial, strict=True))
  placements = _shardings(target, shardings)
  out = []
  for index, leaf in enumerate(target.leaves):
    if index in values:
      what = f"the value for the state leaf at {where(target.paths[index])}"
      value = jnp.asarray(cast(target.owner, what, values[index], leaf.dtype))
    else:
      value = filled[index]
    placement = placements[index]
    out.append(value if placement is None else jax.device_put(value, placement))
  return jax.tree.unflatten(jax.tree.structure(target.abstract), out)


def check_state(owner: str, target: Target, state: Any) -> list[Any]:
  """The leaves of ``state``, checked against the structure and shapes ``init`` gives."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  got: Any = jax.tree.structure(state)
  expected: Any = jax.tree.structure(target.abstract)
  if got != expected:
    raise ValueError(
      f"{owner}(state=...): the state's structure differs from optimizer.init(params)'s; "
      f"pass the state of this optimizer for these params.\n  state:    {got}\n"
      f"  expected: {expected}"
    )
  for (path, leaf), abstract in zip(flat, target.leaves, strict=True):
    if jnp.shape(leaf) != abstract.shape:
      raise ValueError(
        f"{owner}(state=...): the leaf at {where(path)} has shape {jnp.shape(leaf)}, but "
        f"optimizer.init(params) gives shape {abstract.shape} there"
      )
  return [leaf for _, leaf in flat]


def number(owner: str, what: str, value: Any) -> float:
  """A number read from a state (a Python number or a 0-d array) as a float.

  Raises:
    ValueError: ``value`` is not a real number or holds more than one (a torch
      ``step`` of shape ``(1,)``), naming ``what``.
  """
  array = np.asarray(value)
  if array.ndim != 0 or not (np.issubdtype(array.dtype, np.number) or _is_float(array)):
    shape = f"an array of shape {array.shape}" if array.ndim else f"{value!r}"
    raise ValueError(
      f"{owner}: {what} is {shape} ({array.dtype}); expected a single real number "
      "(a Python number or a 0-d array)"
    )
  if np.iscomplexobj(array):
    raise ValueError(f"{owner}: {what} is {value!r}; expected a real number")
  return float(array)


def hyperparameter(owner: str, what: str, value: Any) -> float:
  """An injected hyperparameter read from a state or a param_group: one finite number.

  Raises:
    ValueError: ``value`` is not a single finite real number, naming ``what``.
  """
  result = number(owner, what, value)
  if not math.isfinite(result):
    raise ValueError(f"{owner}: {what} is {result!r}; expected a finite number")
  return result


def _is_float(array: np.ndarray) -> bool:
  return jnp.issubdtype(array.dtype, jnp.floating)  # np.issubdtype misses bfloat16


def step_count(owner: str, what: str, value: Any) -> int:
  """A step count read from a state: a whole number in ``[0, 2**31 - 1]`` (int32's range).

  Raises:
    ValueError: ``value`` is not a single number, or not a whole number of
      steps in range (negative, fractional, NaN, inf), naming ``what``.
  """
  step = number(owner, what, value)
  if not (math.isfinite(step) and step == int(step) and 0 <= step <= INT32_MAX):
    raise ValueError(
      f"{owner}: {what} is {step!r}; expected a whole number of steps in [0, {INT32_MAX}]"
    )
  return int(step)


def check_moment(owner: str, what: str, array: np.ndarray, *, second: bool) -> None:
  """Raises if a moment read from a state would corrupt the next update.

  A first moment must be finite; a second moment (``nu``, ``exp_avg_sq``,
  AMSGrad's maximum, AdaMax's ``exp_inf``: averages or maxima of ``|g|**2`` or
  ``|g|``) finite and ``>= 0``, since the root of a negative one is NaN. One
  vectorised pass over ``array``; the bad entries are located only on failure.

  Args:
    owner: the converter and argument, for the message.
    what: the moment's name and where it is (the parameter, the key).
    array: its values.
    second: whether it is a second moment.

  Raises:
    ValueError: naming ``what``, how many entries are bad and the first of them.
  """
  array = np.asarray(array)
  fine = (array >= 0) & (array < np.inf) if second else np.isfinite(array)  # NaN: neither
  if np.all(fine):
    return
  bad = ~fine
  first = np.unravel_index(int(np.argmax(bad)), array.shape)
  rule = "finite and >= 0, as a second moment is" if second else "finite"
  raise ValueError(
    f"{owner}: {what} has {int(np.sum(bad))} of {array.size} values that are not {rule}, "
    f"the first {array[first]!s} at index {tuple(int(i) for i in first)}; continuing "
    "from it would make the params NaN or stall them: the state is damaged"
  )


def scalar(value: Any) -> float:
  """A concrete scalar (Python number or 0-d array) as a Python float."""
  return float(np.asarray(value))


def value_at(value: Any, count: int) -> Any:
  """A hyperparameter's value at the next step: a schedule is evaluated at ``count``."""
  if callable(value):
    return scalar(value(jnp.asarray(count, jnp.int32)))
  if isinstance(value, jax.core.Tracer):
    return None
  return scalar(value)


def close(a: float, b: float) -> bool:
  """Equality of two hyperparameters, allowing for a float32 rounding of either."""
  return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
