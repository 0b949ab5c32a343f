"""Moving a run between torch (``torch.optim``'s Adams, RAdam; pytorch_optimizer's ADOPT) and ours.

torch keeps one state per parameter (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, NAdam's ``mu_product``, Adamax's ``exp_inf``; ADOPT keeps its
``step`` in the param_group) and the hyperparameters in ``param_groups``; this
package keeps one count per family member and the moments as trees shaped like
the params. The conversion is exact: the moments are copied (permuted where
torch lays a weight out differently) and the count is torch's ``step``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from adam_optax import _migrate as mig
from adam_optax._quantized import dequantized, quantize_like, quantized_layout, unquantized

Indices = Any  # None, a tree of ints/strs shaped like the params, or a callable
Axes = Any  # None, a tree of None/tuples shaped like the params, or a callable
_EXACT_FLOAT32 = 2**24  # torch's float32 step stops counting here (2^24 + 1 rounds down)


class _Kind(NamedTuple):
  """A torch optimizer as far as a state is concerned."""

  name: str  # "Adam", "AdamW", "NAdam", "Adamax", "RAdam" or "ADOPT" (pytorch_optimizer's)
  amsgrad: bool = False
  decoupled: bool = False

  @property
  def keys(self) -> tuple[str, ...]:
    if self.name == "Adamax":
      return ("step", "exp_avg", "exp_inf")
    if self.name == "NAdam":
      return ("step", "exp_avg", "exp_avg_sq", "mu_product")
    if self.name == "ADOPT":  # its step is the param_group's
      return ("exp_avg", "exp_avg_sq")
    return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

  def __str__(self) -> str:
    flags = {
      "amsgrad": self.amsgrad,
      "decoupled_weight_decay": self.decoupled and self.name in ("NAdam", "RAdam"),
      "weight_decouple": self.decoupled and self.name == "ADOPT",
    }
    options = ", ".join(f"{flag}=True" for flag, on in flags.items() if on)
    package = "pytorch_optimizer" if self.name == "ADOPT" else "torch.optim"
    return f"{package}.{self.name}" + (f"({options})" if options else "")


_MEMBER_KINDS = {
  "adam": _Kind("Adam"),
  "amsgrad": _Kind("Adam", amsgrad=True),
  "adamw": _Kind("AdamW", decoupled=True),
  "nadam": _Kind("NAdam"),
  "nadamw": _Kind("NAdam", decoupled=True),
  "adamax": _Kind("Adamax"),
  "radam": _Kind("RAdam"),
  "adopt": _Kind("ADOPT"),
}
# pytorch_optimizer.ADOPT's param_group, recognised by exactly these keys (its optimizers
# share a base class; the others add keys of their own).
_ADOPT_GROUP = {"lr", "betas", "eps", "weight_decay", "weight_decouple", "fixed_decay", "foreach"}
_THRESHOLD = 5.0  # torch.optim.RAdam's rectification threshold, fixed


def _kind_of_member(owner: str, member: mig.Member) -> _Kind:
  """The torch optimizer that runs the same steps as ``member``, or a clear error."""
  recipe = member.recipe
  if recipe.member == "amsgrad" and recipe.convention != "torch":
    raise ValueError(
      f"{owner}: amsgrad(convention={recipe.convention!r}) keeps a running maximum that "
      "torch does not (torch.optim.Adam(amsgrad=True) takes the maximum of the raw "
      "second moment): build amsgrad(..., convention='torch')"
    )
  if member.coupled is not None and recipe.weight_decay is not None:
    raise ValueError(
      f"{owner}: {recipe.member}(...) decays the weights itself and an "
      "add_decayed_weights comes before it as well; torch has one weight_decay"
    )
  kind = _MEMBER_KINDS[recipe.member]
  if kind.name in ("RAdam", "ADOPT"):  # a decay block inside the member: decoupled
    return kind._replace(decoupled=recipe.weight_decay is not None)
  return kind


def _torch_kind(owner: str, group: dict[str, Any], states: list[dict[str, Any]]) -> _Kind:
  """The optimizer a torch ``param_group`` (and its params' states) belongs to."""
  decoupled = bool(group.get("decoupled_weight_decay"))
  if set(group) - {"params", "step", "param_names"} == _ADOPT_GROUP:
    decays = bool(group["weight_decouple"]) and mig.scalar(group["weight_decay"]) != 0.0
    return _Kind("ADOPT", decoupled=decays)
  if "momentum_decay" in group:
    return _Kind("NAdam", decoupled=decoupled)
  if "amsgrad" in group:
    return _Kind("AdamW" if decoupled else "Adam", bool(group["amsgrad"]), decoupled)
  if "decoupled_weight_decay" in group and "betas" in group:
    return _Kind("RAdam", decoupled=decoupled)
  adamax_like = "betas" in group and "decoupled_weight_decay" not in group
  if adamax_like and all(set(s) <= {"step", "exp_avg", "exp_inf"} for s in states):
    return _Kind("Adamax")
  keys = sorted(k for k in group if k != "params")
  raise ValueError(
    f"{owner}(torch_state=...): not the state of torch.optim.Adam, AdamW, NAdam, "
    f"Adamax, RAdam or pytorch_optimizer.ADOPT: a param_group has the keys {keys}"
  )


def _numpy(value: Any) -> np.ndarray:
  """A torch tensor (any device, bfloat16 included), NumPy array or number as NumPy."""
  if hasattr(value, "detach"):
    tensor = value.detach().cpu()
    try:
      return tensor.numpy()
    except TypeError:  # bfloat16 and other dtypes NumPy lacks: exact in float32
      return tensor.float().numpy()
  return np.asarray(value)


class _Torch(NamedTuple):
  """A torch state_dict, read and checked."""

  groups: list[dict[str, Any]]
  order: list[Any]  # parameter ids in param_groups order
  group_of: dict[Any, int]
  state: dict[Any, dict[str, Any]]
  names: dict[str, Any]
  kinds: list[_Kind]


def _read_torch(owner: str, torch_state: Any) -> _Torch:
  if hasattr(torch_state, "state_dict") and hasattr(torch_state, "param_groups"):
    torch_state = torch_state.state_dict()  # a torch.optim.Optimizer
  if not isinstance(torch_state, dict) or not {"state", "param_groups"} <= set(torch_state):
    raise ValueError(
      f"{owner}(torch_state=...): expected a torch optimizer or its state_dict() (a dict "
      f"with 'state' and 'param_groups'), got {type(torch_state).__name__}"
      + (f" with keys {sorted(torch_state)}" if isinstance(torch_state, dict) else "")
    )
  groups = list(torch_state["param_groups"])
  state = dict(torch_state["state"])
  order, group_of, names = [], {}, {}
  for number, group in enumerate(groups):
    for position, pid in enumerate(group["params"]):
      order.append(pid)
      group_of[pid] = number
      if "param_names" in group:
        names[group["param_names"][position]] = pid
  stray = [pid for pid in state if pid not in group_of]
  if stray:
    raise ValueError(
      f"{owner}(torch_state=...): 'state' has entries for parameter ids {stray[:5]} that "
      "no param_group lists"
    )
  kinds = [
    _torch_kind(owner, group, [state.get(pid, {}) for pid in group["params"]]) for group in groups
  ]
  return _Torch(groups, order, group_of, state, names, kinds)


def _leaf_ids(owner: str, params: Any, indices: Indices, torch: _Torch) -> list[Any]:
  """The torch parameter id of each param leaf, checked to be a one-to-one mapping."""
  entries = mig.per_leaf(owner, "indices", indices, params, lambda x: isinstance(x, (int, str)))
  paths = [mig.where(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  if indices is None and len(paths) != len(torch.order):
    raise ValueError(
      f"{owner}(params=...): the params have {len(paths)} leaves but torch's optimizer "
      f"has {len(torch.order)} parameters; by default the i-th leaf (jax.tree.leaves "
      "order) is the i-th torch parameter: pass indices=... to map them"
    )
  ids: list[Any] = []
  for path, entry in zip(paths, entries, strict=True):
    if entry is None:
      ids.append(torch.order[len(ids)])
    elif isinstance(entry, str):
      if entry not in torch.names:
        known = "its parameters have no names" if not torch.names else "it names none so"
        raise ValueError(
          f"{owner}(indices=...): param leaf {path} is mapped to torch parameter "
          f"{entry!r}, but {known} (build the torch optimizer from "
          "model.named_parameters() to have names in its state_dict)"
        )
      ids.append(torch.names[entry])
    elif isinstance(entry, int) and not isinstance(entry, bool) and 0 <= entry < len(torch.order):
      ids.append(torch.order[entry])
    else:
      raise ValueError(
        f"{owner}(indices=...): param leaf {path} is mapped to {entry!r}; expected a torch "
        f"parameter index in [0, {len(torch.order)}) or a parameter name"
      )
  seen: dict[Any, str] = {}
  for path, pid in zip(paths, ids, strict=True):
    if pid in seen:
      raise ValueError(
        f"{owner}(indices=...): param leaves {seen[pid]} and {path} both map to torch "
        f"parameter {torch.order.index(pid)}"
      )
    seen[pid] = path
  unused = [torch.order.index(pid) for pid in torch.order if pid not in seen]
  if unused:
    raise ValueError(
      f"{owner}(indices=...): torch parameters {unused[:5]} have no param leaf; their "
      "optimizer state would be lost"
    )
  return ids


def _log_momentum_product(b1: float, psi: float, steps: int) -> float:
  r"""``log`` of torch NAdam's ``mu_product`` :math:`\prod_{i \le t} \beta_1 (1 - 0.96^{i\psi}/2)`.

  Summed in float64 over the terms that still differ from :math:`\log\beta_1`
  (beyond them :math:`0.96^{i\psi}/2 < 10^{-20}`); torch multiplies the product up
  step by step in its scalar dtype.
  """
  with np.errstate(divide="ignore"):
    total = steps * math.log(b1) if b1 > 0 else -math.inf
  q = 0.96**psi
  if q == 1.0:
    return total + steps * math.log(0.5)
  terms = steps if q == 0.0 else min(steps, math.ceil(math.log(2e-20) / math.log(q)))
  for start in range(1, terms + 1, 1 << 20):
    i = np.arange(start, min(terms, start + (1 << 20) - 1) + 1, dtype=np.float64)
    total += float(np.sum(np.log1p(-0.5 * q**i)))
  return total


def _hyperparameters(owner: str, member: mig.Member, k: int, state: Any = None) -> dict:
  """The member's hyperparameters as torch names them, at step ``k``; ``None`` if unknown.

  An injected hyperparameter (``inject_hyperparams``) is read from ``state``'s
  leaves when they are given.
  """
  recipe = member.recipe

  def value(name: str) -> float | None:
    if name in member.hyper and state is not None:
      what = f"the injected hyperparameter {name} of {recipe.member}(...)"
      return mig.hyperparameter(f"{owner}(state=...)", what, state[member.hyper[name]])
    return mig.value_at(fields[name], k)

  fields = {**recipe._asdict(), **dict(recipe.options)}
  return {
    "lr": value("learning_rate"),
    "b1": value("b1"),
    "b2": value("b2"),
    "eps": value("eps"),
    "eps_root": value("eps_root"),
    "momentum_decay": None if recipe.momentum_decay is None else value("momentum_decay"),
    "weight_decay": None if recipe.weight_decay is None else value("weight_decay"),
    "coupled": None if member.coupled is None else mig.value_at(member.coupled, k),
    "threshold": value("threshold") if "threshold" in fields else _THRESHOLD,
  }


def _same_momentum_decay(ours: float | None, theirs: float) -> bool:
  if ours is None:  # optax's NAdam: torch's mu_t is b1 from the first step when 0.96^psi == 0
    return 0.96**theirs == 0.0
  return mig.close(ours, theirs)


def _compare(owner: str, member: mig.Member, hyper: dict, group: dict, number: int, decayed: bool):
  """The mismatches between the member's hyperparameters and torch's param_group ``number``."""
  problems = []

  def differ(name: str, ours: Any, theirs: Any) -> None:
    if ours is not None and theirs is not None and not mig.close(ours, mig.scalar(theirs)):
      problems.append(f"{name} {ours!r} (torch: {mig.scalar(theirs)!r})")

  differ("learning_rate", hyper["lr"], group.get("lr"))
  b1, b2 = group.get("betas", (None, None))
  differ("b1", hyper["b1"], b1)
  differ("b2", hyper["b2"], b2)
  differ("eps", hyper["eps"], group.get("eps"))
  if hyper["eps_root"] not in (None, 0.0):
    problems.append(f"eps_root {hyper['eps_root']!r} (torch has none: it must be 0)")
  decay = hyper["weight_decay"] if hyper["weight_decay"] is not None else hyper["coupled"]
  differ("weight_decay", decay if decayed else 0.0, group.get("weight_decay", 0.0))
  if "momentum_decay" in group and "momentum_decay" not in member.hyper:
    psi = mig.scalar(group["momentum_decay"])
    if not _same_momentum_decay(hyper["momentum_decay"], psi):
      problems.append(f"momentum_decay {hyper['momentum_decay']!r} (torch: {psi!r})")
  threshold = hyper["threshold"]
  if threshold is not None and not mig.close(threshold, _THRESHOLD):
    problems.append(f"threshold {threshold!r} (torch.optim.RAdam's is {_THRESHOLD})")
  if group.get("fixed_decay"):
    problems.append("fixed_decay (torch: True): the decay here is scaled by the learning rate")
  if group.get("maximize"):
    problems.append(
      "maximize (torch: True): minimise the negated objective in JAX, whose state "
      "this is, and pass check_hyperparameters=False"
    )
  return [f"param_groups[{number}]: {p}" for p in problems]


def _check_kind(owner: str, member: mig.Member, kind: _Kind, theirs: _Kind, leaf: str) -> None:
  if kind == theirs:
    return
  member_of = {kind: name for name, kind in _MEMBER_KINDS.items()}
  hint = f"; that is adam_optax.{member_of[theirs]}" if theirs in member_of else ""
  raise ValueError(
    f"{owner}: param leaf {leaf} belongs to {member.recipe.member}(...), which continues a "
    f"run of {kind}, but torch's state is that of {theirs}{hint}"
  )


def state_from_torch(
  optimizer: optax.GradientTransformation,
  params: optax.Params,
  torch_state: Any,
  *,
  indices: Indices = None,
  axes: Axes = None,
  shardings: Any = None,
  check_hyperparameters: bool = True,
) -> optax.OptState:
  r"""The state of ``optimizer`` that continues a ``torch.optim`` run where it stopped.

  For every member of the family inside ``optimizer`` (:func:`adam`,
  :func:`adamw`, :func:`nadam`/:func:`nadamw` with ``momentum_decay``,
  :func:`amsgrad` in torch's convention, :func:`adamax`, :func:`radam`,
  :func:`adopt` from ``pytorch_optimizer.ADOPT``, wrapped or not), its
  moments are torch's and its count is torch's ``step``:

  ============================  ==========================================
  torch (per parameter)         this package
  ============================  ==========================================
  ``step``                      ``count`` (and every other step count)
  ``exp_avg``                   ``ScaleByMomentsState.mu``
  ``exp_avg_sq``, ``exp_inf``   ``ScaleByMomentsState.nu``
  ``max_exp_avg_sq``            ``ScaleByMomentsState.nu_max``
  ``mu_product``                checked: NAdam computes it from the count
  ============================  ==========================================

  Under :func:`quantized` the moments are quantized as ``init`` quantizes
  them. Every other leaf of the state (``skip_nonfinite``'s record, ``MultiSteps``'
  accumulator, ...) is what ``optimizer.init(params)`` gives; injected
  hyperparameters (``optax.inject_hyperparams``) are set from torch's
  ``param_groups``. The moments are cast to the state's dtypes (an overflow,
  e.g. into float16, raises) and placed on ``shardings``.

  torch's ``step`` is a float32 tensor: it counts exactly up to :math:`2^{24}`
  and then stops (:math:`2^{24} + 1` rounds down), so a torch run longer than
  that has used :math:`t = 2^{24}` in its bias corrections ever since; the count
  here is torch's value and goes on counting (the corrections differ from 1 by
  :math:`\beta^{2^{24}}`, below float32 resolution for :math:`\beta \le
  1 - 10^{-6}`).

  Args:
    optimizer: the optimizer to continue with; its members must be the torch
      optimizer's (``torch.optim.Adam`` is :func:`adam`, ``Adam(amsgrad=True)``
      :func:`amsgrad`, ``AdamW`` :func:`adamw`, ``NAdam``
      :func:`nadam` with ``momentum_decay=4e-3`` (:func:`nadamw` with
      ``decoupled_weight_decay=True``), ``Adamax`` :func:`adamax`, ``RAdam``
      :func:`radam` with the same ``weight_decay`` and
      ``decoupled_weight_decay``, ``pytorch_optimizer.ADOPT`` :func:`adopt`
      with ``clip=lambda t: (t + 1) ** 0.25``, its clipping, which its
      state_dict does not record, and ``weight_decouple=True`` for a
      ``weight_decay`` of :func:`adopt`'s own). torch's coupled ``weight_decay`` (Adam,
      NAdam, Adamax) is
      ``optax.chain(adam_optax.add_decayed_weights(wd), adam(...))``. Params in
      param_groups with different hyperparameters need one member each
      (``optax.multi_transform``), except AdamW's usual split into decayed and
      undecayed groups, which is ``adamw(..., mask=...)``.
    params: the params (arrays or :class:`jax.ShapeDtypeStruct`\ s), as given
      to ``optimizer.init``.
    torch_state: a ``torch.optim`` optimizer or its ``state_dict()``.
    indices: which torch parameter each param leaf is: ``None`` (the i-th
      leaf in ``jax.tree.leaves`` order is the i-th torch parameter in
      param_groups order), or a tree shaped like the params, or a callable
      ``(path, param) -> entry``, whose entries are torch parameter indices or
      names (``param_names``, present when the torch optimizer was built from
      ``model.named_parameters()``). The mapping must be one-to-one.
    axes: how a leaf is laid out relative to its torch parameter: ``None``
      (the same), or a tree/callable as for ``indices`` whose entries are
      ``None`` or a permutation, the leaf being ``torch_tensor.permute(axes)``:
      ``(1, 0)`` for a Flax ``Dense`` kernel from a torch ``Linear`` weight
      (Equinox's ``Linear`` needs none), ``(2, 3, 1, 0)`` for a Flax ``Conv``
      kernel from a torch ``Conv2d`` weight.
    shardings: where the state's leaves go: a tree of shardings shaped like
      the state, e.g. ``adam_optax.state_shardings(optimizer, params, mesh,
      zero1_axis="data")``; by default the params' shardings (as
      :func:`state_shardings` derives them) when every param has a
      ``NamedSharding``, else the default device.
    check_hyperparameters: compare the optimizer's hyperparameters
      (learning rate at the current step, ``b1``, ``b2``, ``eps``,
      ``weight_decay``, ``momentum_decay``, ``eps_root = 0``, RAdam's
      ``threshold = 5``, no ``maximize``) with each param_group's and raise on a difference.

  Returns:
    A state of ``optimizer`` for ``params``.

  Raises:
    TypeError: ``optimizer`` is not an optimizer.
    ValueError: the optimizer has no family member; the torch state is not one
      of the four optimizers, or not the member's; a parameter is missing, has
      another shape (the message names the torch index, the leaf's path and
      both shapes), holds complex values, or has a different ``step`` from the
      other params of its member; a hyperparameter differs; ``mu_product`` does
      not match ``step``; a moment overflows the state's dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> import torch
    >>> import adam_optax
    >>> weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> torch_optimizer = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.01)
    >>> weight.grad = torch.tensor([0.5, -3.0])
    >>> torch_optimizer.step()
    >>> optimizer = adam_optax.adamw(0.1, weight_decay=0.01)
    >>> params = jnp.asarray(weight.detach().numpy())
    >>> state = adam_optax.state_from_torch(optimizer, params, torch_optimizer)
    >>> state[0].count, state[0].mu
    (Array(1, dtype=int32), Array([ 0.05, -0.3 ], dtype=float32))
  """
  owner = "state_from_torch"
  layout = quantized_layout(optimizer, params)
  if layout is not None:  # convert as if unquantized, then quantize as init does
    with unquantized():
      exact = state_from_torch(
        optimizer,
        params,
        torch_state,
        indices=indices,
        axes=axes,
        check_hyperparameters=check_hyperparameters,
      )
    return mig.placed(owner, optimizer, params, quantize_like(layout, exact), shardings)
  target = mig.inspect(owner, optimizer, params)
  torch = _read_torch(owner, torch_state)
  ids = _leaf_ids(owner, params, indices, torch)
  param_shapes = [tuple(np.shape(p)) for p in jax.tree.leaves(params)]
  permutations = mig.per_leaf(owner, "axes", axes, params, mig.is_axes)
  mig.check_axes(owner, permutations, param_shapes)
  covered = {j for member in target.members for j in member.params}
  for j, pid in enumerate(ids):
    if j not in covered and torch.state.get(pid):
      raise ValueError(
        f"{owner}: torch parameter {torch.order.index(pid)} has optimizer state, but param "
        f"leaf {target.param_paths[j]} is updated by no member of the family"
      )
  values: dict[int, Any] = {}
  counts, problems = [], []
  reading = f"{owner}(torch_state=...)"
  for member in target.members:
    kind = _kind_of_member(owner, member)
    steps: dict[int, tuple[int, str]] = {}
    for position, j in enumerate(member.params):
      pid, leaf = ids[j], target.param_paths[j]
      number = torch.group_of[pid]
      _check_kind(owner, member, kind, torch.kinds[number], leaf)
      entry = torch.state.get(pid, {})
      label = f"torch parameter {torch.order.index(pid)} (param leaf {leaf})"
      missing = [key for key in kind.keys if key not in entry]
      if entry and missing:
        raise ValueError(
          f"{owner}(torch_state=...): {label} lacks {missing} in its state; "
          f"{kind} keeps {list(kind.keys)}"
        )
      if "step" in kind.keys:
        step = mig.step_count(reading, f"{label}'s step", _numpy(entry.get("step", 0)))
      else:
        where_step = f"param_groups[{number}]'s step"
        step = mig.step_count(reading, where_step, _numpy(torch.groups[number].get("step", 0)))
      steps[step] = (j, label)
      fields = [
        ("exp_avg", member.mu),
        ("exp_inf" if kind.name == "Adamax" else "exp_avg_sq", member.nu),
      ]
      if kind.amsgrad:
        fields.append(("max_exp_avg_sq", member.nu_max))
      for key, leaves in fields:
        index = leaves[position]
        values[index] = _from_layout(
          owner, entry.get(key), target.leaves[index].shape, permutations[j], f"{label}'s {key}"
        )
        mig.check_moment(reading, f"{label}'s {key}", values[index], second=key != "exp_avg")
    if len(steps) > 1:
      (s1, (_, l1)), (s2, (_, l2)) = sorted(steps.items())[:2]
      raise ValueError(
        f"{owner}(torch_state=...): {l1} has taken {s1} steps and {l2} {s2}; a member of "
        "the family keeps one count for all its params: give such params members of their "
        "own (optax.multi_transform)"
      )
    k = next(iter(steps)) if steps else 0
    counts.append(k)
    values[member.count] = np.asarray(k)
    hyper = _hyperparameters(owner, member, k)
    numbers = sorted({torch.group_of[ids[j]] for j in member.params})
    for position, j in enumerate(member.params):
      number = torch.group_of[ids[j]]
      decayed = member.decoupled[position] or member.coupled_leaves[position]
      if check_hyperparameters:
        problems += _compare(owner, member, hyper, torch.groups[number], number, decayed)
    _set_injected(owner, member, torch, numbers, values)
    if kind.name == "NAdam" and k > 0:
      _check_mu_product(owner, member, torch, ids, k)
  if problems:
    listed = "\n  ".join(dict.fromkeys(problems))
    raise ValueError(
      f"{owner}: the optimizer's hyperparameters differ from torch's, so continuing "
      f"would not repeat torch's steps:\n  {listed}\nBuild the optimizer with torch's "
      "values (docs/migrating_from_pytorch.md), or pass check_hyperparameters=False to "
      "convert the state anyway."
    )
  values.update({i: np.asarray(k) for i, k in mig.step_counts(owner, target, counts).items()})
  return mig.build(target, values, shardings)


def _from_layout(
  owner: str, value: Any, shape: tuple[int, ...], axes: Any, label: str
) -> np.ndarray:
  """A torch moment permuted into the leaf's layout, its shape checked."""
  if value is None:  # a parameter torch never stepped: a fresh moment
    return np.zeros(shape, np.float32)
  array = _numpy(value)
  if np.iscomplexobj(array):
    raise ValueError(
      f"{owner}(torch_state=...): {label} is complex; torch treats a complex parameter "
      "as two real ones (view_as_real), with two second moments, where this package "
      "keeps one |g|^2: the states do not convert"
    )
  torch_shape = array.shape
  if axes is not None and array.ndim == len(axes):
    array = np.transpose(array, axes)
  if array.shape != tuple(shape):
    permuted = f", {array.shape} after axes={axes}" if axes is not None else ""
    hint = ""
    if axes is None and len(shape) == 2 and torch_shape == tuple(shape)[::-1]:
      hint = "; torch stores a Linear weight as (out, in): pass axes=(1, 0) for this leaf"
    raise ValueError(
      f"{owner}: {label} has shape {torch_shape}{permuted}, but the param leaf has shape "
      f"{tuple(shape)}{hint}"
    )
  return array


def _set_injected(owner: str, member: mig.Member, torch: _Torch, numbers: list, values: dict):
  """Injected hyperparameters take torch's values (one value across the member's groups)."""
  torch_names: dict[str, Callable[[dict], Any]] = {
    "learning_rate": lambda g: g.get("lr"),
    "b1": lambda g: g.get("betas", (None, None))[0],
    "b2": lambda g: g.get("betas", (None, None))[1],
    "eps": lambda g: g.get("eps"),
    "weight_decay": lambda g: g.get("weight_decay"),
    "momentum_decay": lambda g: g.get("momentum_decay"),
  }
  for name, index in member.hyper.items():
    if name not in torch_names:
      continue
    found = {
      mig.hyperparameter(
        f"{owner}(torch_state=...)",
        f"param_groups[{n}]'s {name}",
        torch_names[name](torch.groups[n]),
      )
      for n in numbers
    }
    if name == "weight_decay" and len(found) == 2:
      found.discard(0.0)  # the undecayed groups of a masked decay
    if len(found) != 1:
      raise ValueError(
        f"{owner}: the injected hyperparameter {name} of {member.recipe.member}(...) has one "
        f"value, but torch's param_groups {numbers} have {sorted(found)}"
      )
    values[index] = np.asarray(found.pop())


def _check_mu_product(owner: str, member: mig.Member, torch: _Torch, ids: list, k: int):
  """Checks that each param's ``mu_product`` is its group's NAdam schedule over ``k`` steps."""
  for j in member.params:
    group = torch.groups[torch.group_of[ids[j]]]
    b1, psi = mig.scalar(group["betas"][0]), mig.scalar(group["momentum_decay"])
    expected = math.exp(_log_momentum_product(b1, psi, k))
    number = torch.order.index(ids[j])
    got = mig.number(
      f"{owner}(torch_state=...)",
      f"torch parameter {number}'s mu_product",
      _numpy(torch.state[ids[j]]["mu_product"]),
    )
    if not math.isclose(got, expected, rel_tol=1e-3, abs_tol=1e-30):
      raise ValueError(
        f"{owner}(torch_state=...): torch parameter {number} has "
        f"mu_product {got!r}, but {k} steps of NAdam with b1={b1} and momentum_decay={psi} "
        f"give {expected!r}: the state's step and mu_product disagree"
      )


def state_to_torch(
  optimizer: optax.GradientTransformation,
  state: optax.OptState,
  params: optax.Params,
  *,
  indices: Indices = None,
  axes: Axes = None,
) -> dict[str, Any]:
  r"""A ``torch.optim`` state_dict that continues ``optimizer``'s run in torch.

  The inverse of :func:`state_from_torch`: load the result with
  ``load_state_dict`` into the torch optimizer of the family member (``adam``:
  ``torch.optim.Adam``; ``amsgrad`` in torch's convention:
  ``Adam(amsgrad=True)``; ``adamw``: ``AdamW``; ``nadam``/``nadamw``: ``NAdam``,
  with ``decoupled_weight_decay`` for ``nadamw``; ``adamax``: ``Adamax``;
  ``radam``: ``RAdam``, with its ``decoupled_weight_decay``; ``adopt``:
  ``pytorch_optimizer.ADOPT``, whose ``step`` is in the param_group)
  built over the same parameters. Its ``param_groups`` carry the optimizer's
  hyperparameters (``load_state_dict`` replaces the torch optimizer's own with
  them): a learning-rate schedule is evaluated at the current step (attach the
  matching torch scheduler to go on scheduling), NAdam without
  ``momentum_decay`` becomes ``momentum_decay=inf`` (torch's momentum schedule
  is then constant, as optax's), and a decayed/undecayed split (``adamw``'s
  ``mask``, or a coupled ``add_decayed_weights`` with a mask) becomes two
  groups. Groups are ordered by their first parameter; torch matches
  parameters by position, so build the torch optimizer with the same groups.

  ``step`` is a float32 tensor, as torch makes it (float64 for float64 moments
  or counts above :math:`2^{24}`, which float32 cannot hold); NAdam's
  ``mu_product`` is computed from the count in float64.

  Args:
    optimizer: the optimizer whose state this is.
    state: its state, as returned by ``init``/``update``.
    params: the params (arrays or :class:`jax.ShapeDtypeStruct`\ s).
    indices: the torch parameter index of each param leaf, as in
      :func:`state_from_torch` (names are not accepted: torch's
      ``load_state_dict`` matches parameters by position).
    axes: each leaf's permutation from its torch parameter, as in
      :func:`state_from_torch` (the inverse permutation is applied here).

  Returns:
    ``{"state": {index: {...}}, "param_groups": [...]}``, which the torch
    optimizer's ``load_state_dict`` accepts.

  Raises:
    ValueError: the state is not this optimizer's for these params; a member
      has no torch equivalent (AMSGrad in optax's or the paper's convention,
      ``eps_root != 0``, complex params, an injected hyperparameter that
      cannot be read, members of different torch classes); ``optax.MultiSteps``
      is in the middle of accumulating.

  Examples:
    >>> import jax.numpy as jnp
    >>> import torch
    >>> import adam_optax
    >>> optimizer = adam_optax.adam(0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = optimizer.init(params)
    >>> _, state = optimizer.update(jnp.array([0.5, -3.0]), state)
    >>> exported = adam_optax.state_to_torch(optimizer, state, params)
    >>> weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> torch_optimizer = torch.optim.Adam([weight], lr=0.1)
    >>> torch_optimizer.load_state_dict(exported)
    >>> torch_optimizer.state[weight]["exp_avg"]
    tensor([ 0.0500, -0.3000])
  """
  import torch

  owner = "state_to_torch"
  if quantized_layout(optimizer, params) is not None:  # convert the dequantized state
    with unquantized():
      return state_to_torch(
        optimizer, dequantized(state, params), params, indices=indices, axes=axes
      )
  target = mig.inspect(owner, optimizer, params)
  leaves = mig.check_state(owner, target, state)
  for index, path in enumerate(target.paths):
    last = path[-1] if path else None
    mini_step = isinstance(last, jax.tree_util.GetAttrKey) and last.name == "mini_step"
    if mini_step and int(np.asarray(leaves[index])) != 0:
      raise ValueError(
        f"{owner}: optax.MultiSteps at {mig.where(path[:-1])} is in the middle of "
        "accumulating gradients (mini_step != 0); torch has no place for them: convert "
        "after a full step"
      )
  param_leaves = jax.tree.leaves(params)
  entries = mig.per_leaf(owner, "indices", indices, params, lambda x: isinstance(x, (int, str)))
  if any(isinstance(e, str) for e in entries):
    raise ValueError(
      f"{owner}(indices=...): give torch parameter indices, not names: torch's "
      "load_state_dict matches parameters by position"
    )
  ids = [j if e is None else e for j, e in enumerate(entries)]
  if sorted(ids) != list(range(len(ids))):
    raise ValueError(
      f"{owner}(indices=...): expected each of 0..{len(ids) - 1} once, got {sorted(ids)}"
    )
  permutations = mig.per_leaf(owner, "axes", axes, params, mig.is_axes)
  mig.check_axes(owner, permutations, [tuple(np.shape(p)) for p in param_leaves])
  kinds = {_kind_of_member(owner, m).name for m in target.members}
  if len(kinds) > 1:
    raise ValueError(
      f"{owner}: the optimizer's members run as different torch optimizers "
      f"({sorted(kinds)}); one torch optimizer holds one class"
    )
  per_param: dict[int, dict[str, Any]] = {}
  settings: dict[int, dict[str, Any]] = {}
  reading = f"{owner}(state=...)"
  for member in target.members:
    kind = _kind_of_member(owner, member)
    where_count = f"the step count at {mig.where(target.paths[member.count])}"
    k = mig.step_count(reading, where_count, jax.device_get(leaves[member.count]))
    hyper = _hyperparameters(owner, member, k, leaves)
    unknown = [name for name in ("lr", "b1", "b2", "eps", "threshold") if hyper[name] is None]
    if unknown:
      raise ValueError(
        f"{owner}: the hyperparameters {unknown} of {member.recipe.member}(...) are traced "
        "and not found among the state's leaves"
      )
    if hyper["eps_root"]:
      raise ValueError(
        f"{owner}: {member.recipe.member}(eps_root={hyper['eps_root']}) has no torch "
        "equivalent (torch adds eps outside the root only)"
      )
    if not mig.close(hyper["threshold"], _THRESHOLD):
      raise ValueError(
        f"{owner}: radam(threshold={hyper['threshold']}) has no torch equivalent "
        f"(torch.optim.RAdam's threshold is {_THRESHOLD})"
      )
    wide = any(np.dtype(target.leaves[i].dtype) == np.float64 for i in member.mu)
    step_dtype = torch.float64 if wide or k > _EXACT_FLOAT32 else torch.float32
    for position, j in enumerate(member.params):
      if np.iscomplexobj(np.asarray(leaves[member.mu[position]])):
        raise ValueError(
          f"{owner}: param leaf {target.param_paths[j]} is complex; torch's Adam treats "
          "complex params as pairs of reals, a different optimizer"
        )
      inverse = None if permutations[j] is None else tuple(np.argsort(permutations[j]))

      def tensor(index: int, *, second: bool = True, inverse: Any = inverse) -> Any:
        array = np.asarray(jax.device_get(leaves[index]))
        if array.dtype not in (np.float16, np.float32, np.float64):
          array = array.astype(np.float32)  # exact; load_state_dict casts to the param's dtype
        what = f"the state leaf at {mig.where(target.paths[index])}"
        mig.check_moment(reading, what, array, second=second)
        if inverse is not None:
          array = np.transpose(array, inverse)
        return torch.from_numpy(np.array(array))  # a writable copy

      entry = {"exp_avg": tensor(member.mu[position], second=False)}
      if "step" in kind.keys:
        entry["step"] = torch.tensor(float(k), dtype=step_dtype)
      entry["exp_inf" if kind.name == "Adamax" else "exp_avg_sq"] = tensor(member.nu[position])
      if kind.amsgrad:
        entry["max_exp_avg_sq"] = tensor(member.nu_max[position])
      if kind.name == "NAdam":
        psi = math.inf if hyper["momentum_decay"] is None else hyper["momentum_decay"]
        product = math.exp(_log_momentum_product(hyper["b1"], psi, k))
        entry["mu_product"] = torch.tensor(product, dtype=step_dtype)
      per_param[ids[j]] = entry
      decayed = member.decoupled[position] or member.coupled_leaves[position]
      decay = hyper["weight_decay"] if hyper["weight_decay"] is not None else hyper["coupled"]
      settings[ids[j]] = _torch_group(kind, hyper, decay if decayed else 0.0, k)
  missing = [target.param_paths[j] for j in range(len(ids)) if ids[j] not in settings]
  if missing:
    raise ValueError(f"{owner}: param leaves {missing[:5]} are updated by no member of the family")
  groups: list[dict[str, Any]] = []
  for pid in sorted(settings):
    group = next((g for g in groups if _same(g, settings[pid])), None)
    if group is None:
      group = {**settings[pid], "params": []}
      groups.append(group)
    group["params"].append(pid)
  return {"state": per_param, "param_groups": groups}


def _same(group: dict[str, Any], setting: dict[str, Any]) -> bool:
  return all(group[key] == value for key, value in setting.items())


def _torch_group(kind: _Kind, hyper: dict, weight_decay: float, k: int) -> dict[str, Any]:
  """A torch param_group's hyperparameters (without ``params``) for ``kind`` at step ``k``."""
  if kind.name == "ADOPT":
    return {
      "lr": hyper["lr"],
      "betas": (hyper["b1"], hyper["b2"]),
      "eps": hyper["eps"],
      "weight_decay": weight_decay,
      "weight_decouple": kind.decoupled,
      "fixed_decay": False,
      "foreach": None,
      "step": k,
    }
  group: dict[str, Any] = {
    "lr": hyper["lr"],
    "betas": (hyper["b1"], hyper["b2"]),
    "eps": hyper["eps"],
    "weight_decay": weight_decay,
    "foreach": None,
    "maximize": False,
    "capturable": False,
    "differentiable": False,
  }
  if kind.name in ("Adam", "AdamW"):
    group.update(amsgrad=kind.amsgrad, fused=None, decoupled_weight_decay=kind.decoupled)
  elif kind.name == "RAdam":
    group.update(decoupled_weight_decay=kind.decoupled)
  elif kind.name == "NAdam":
    psi = hyper["momentum_decay"]
    group.update(
      momentum_decay=math.inf if psi is None else psi,
      decoupled_weight_decay=hyper["weight_decay"] is not None,
    )
  return group
