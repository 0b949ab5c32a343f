r"""Which state leaves :func:`quantized` stores in 8 or 4 bits, and with which map: declared.

A leaf of the inner optimizer's state is quantized when all of these hold:

1. it is real floating (counts, keys and complex moments are kept);
2. it is *parameter-shaped*: it lies in a subtree of the state that mirrors the
   params (their tree structure, each part an array or an empty node) and its
   shape equals its param's shape;
3. it has at least ``min_size`` elements;
4. a map is declared for it: the user's ``rule(path, state_type)`` says
   ``"signed"`` or ``"unsigned"``, or, where the rule says ``None`` (or there
   is none), :func:`quantized_maps` has an entry for ``(state_type, field)``.

``state_type`` is the type of the nearest ``NamedTuple`` around the leaf's
param-mirroring subtree (``None`` if there is none) and ``field`` the name of
its field that holds it: ``ScaleByAdamState`` and ``"nu"`` for Adam's second
moment. Every other leaf stays in full precision. A copy of the params
(schedule-free's ``z``, prodigy's ``params0``) is never quantized, because no
entry names it. Nothing is probed: the decision depends only on the types,
paths, shapes and dtypes of the state that ``init`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

from adam_optax._adabelief import ScaleByBeliefState
from adam_optax._adam_mini import ScaleByBlockMomentsState
from adam_optax._ademamix import ScaleByAdemamixState, ScaleBySimplifiedAdemamixState
from adam_optax._adopt import ScaleByAdoptState
from adam_optax._laprop import ScaleByLapropState
from adam_optax._moments import ScaleByMomentsState
from adam_optax._second_moment import ScaleBySecondMomentState

MAPS = ("signed", "unsigned")
Rule = Callable[[str, "type | None"], "str | None"]


class MapRules(dict[tuple[type, str], str]):
  """The table ``(state type, field) -> "signed" | "unsigned"``; prints as a table.

  ``"signed"`` is for values of any sign (first moments, momentum traces,
  accumulated gradients); ``"unsigned"`` for values that are never negative
  (second moments, their running maxima, infinity norms): its map has no
  zero, so a small second moment never decodes to 0.
  """

  def __str__(self) -> str:
    rows = [(f"{t.__module__.split('.')[0]}.{t.__name__}", f, m) for (t, f), m in self.items()]
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows)


_TRANSFORM = optax._src.transform  # the states optax does not re-export

QUANTIZED_MAPS = MapRules(
  {
    (ScaleByMomentsState, "mu"): "signed",
    (ScaleByMomentsState, "nu"): "unsigned",
    (ScaleByMomentsState, "nu_max"): "unsigned",
    # The modern family. Not listed, so kept in full precision: schedule-free's z (a copy of
    # the params), MARS's previous gradient (its error is amplified by gamma b1 / (1 - b1)),
    # Adam-mini's per-block nu (not parameter-shaped, and small).
    (ScaleByAdoptState, "mu"): "signed",
    (ScaleByAdoptState, "nu"): "unsigned",
    (ScaleByBeliefState, "mu"): "signed",
    (ScaleByBeliefState, "nu"): "unsigned",
    (ScaleByLapropState, "mu"): "signed",
    (ScaleByLapropState, "nu"): "unsigned",
    (ScaleByAdemamixState, "mu"): "signed",
    (ScaleByAdemamixState, "mu_slow"): "signed",
    (ScaleByAdemamixState, "nu"): "unsigned",
    (ScaleBySimplifiedAdemamixState, "mu"): "signed",
    (ScaleBySimplifiedAdemamixState, "nu"): "unsigned",
    (ScaleBySecondMomentState, "nu"): "unsigned",
    (ScaleByBlockMomentsState, "mu"): "signed",
    (optax.ScaleByAdamState, "mu"): "signed",
    (optax.ScaleByAdamState, "nu"): "unsigned",
    (optax.ScaleByAmsgradState, "mu"): "signed",
    (optax.ScaleByAmsgradState, "nu"): "unsigned",
    (optax.ScaleByAmsgradState, "nu_max"): "unsigned",
    (optax.ScaleByBeliefState, "mu"): "signed",
    (optax.ScaleByBeliefState, "nu"): "unsigned",
    (optax.ScaleByLionState, "mu"): "signed",
    (optax.TraceState, "trace"): "signed",
    (optax.ScaleByRmsState, "nu"): "unsigned",
    (_TRANSFORM.ScaleByRmsWithCountState, "nu"): "unsigned",
    (optax.ScaleByRStdDevState, "mu"): "signed",
    (optax.ScaleByRStdDevState, "nu"): "unsigned",
    (_TRANSFORM.ScaleByRStdDevWithCountState, "mu"): "signed",
    (_TRANSFORM.ScaleByRStdDevWithCountState, "nu"): "unsigned",
    (optax.ScaleByRssState, "sum_of_squares"): "unsigned",
    (optax.FactoredState, "v"): "unsigned",
    (optax.MultiStepsState, "acc_grads"): "signed",
    (optax.contrib.ScaleByAdemamixState, "m1"): "signed",
    (optax.contrib.ScaleByAdemamixState, "m2"): "signed",
    (optax.contrib.ScaleByAdemamixState, "nu"): "unsigned",
    (optax.contrib.ScaleBySimplifiedAdEMAMixState, "m"): "signed",
    (optax.contrib.ScaleBySimplifiedAdEMAMixState, "n"): "unsigned",
    (optax.contrib.ProdigyState, "exp_avg"): "signed",
    (optax.contrib.ProdigyState, "exp_avg_sq"): "unsigned",
  }
)


class Site(NamedTuple):
  """Where a state leaf lies: its path, its owner state and field, and its param's shape."""

  path: str
  state_type: type | None
  field: str | None
  param_shape: tuple[int, ...] | None  # None: not in a subtree that mirrors the params


class LeafPlan(NamedTuple):
  """What :func:`quantized` does with one leaf of the inner state, and why."""

  site: Site
  shape: tuple[int, ...]
  dtype: Any
  map: str | None  # "signed", "unsigned", or None: kept in full precision
  reason: str


def _is_array(x: Any) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def sites(state: Any, params: Any) -> list[Site]:
  """For each leaf of ``state`` (``jax.tree.leaves`` order), where it lies; see the module doc."""
  params_def: Any = jax.tree.structure(params)  # PyTreeDef: jaxlib ships no stub for it
  param_shapes = [tuple(jnp.shape(p)) for p in jax.tree.leaves(params)]
  out: list[Site] = []

  def mirror(node: Any) -> list[Any] | None:
    try:
      parts = params_def.flatten_up_to(node)
    except (ValueError, TypeError):
      return None
    arrays = [_is_array(part) for part in parts]
    if not any(arrays) or any(
      not is_array and jax.tree.leaves(part) for part, is_array in zip(parts, arrays, strict=True)
    ):
      return None
    return parts

  def walk(node: Any, path: tuple[Any, ...], owner: type | None, field: str | None) -> None:
    if not jax.tree.leaves(node):
      return
    parts = mirror(node)
    if parts is not None:
      leaves = iter(jax.tree_util.tree_flatten_with_path(node)[0])
      for part, shape in zip(parts, param_shapes, strict=True):
        if _is_array(part):
          sub, _ = next(leaves)
          out.append(Site(jax.tree_util.keystr(path + sub), owner, field, shape))
      return
    children = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(node)):
      out.append(Site(jax.tree_util.keystr(path), owner, field, None))
      return
    named = isinstance(node, tuple) and hasattr(node, "_fields")
    for key, child in children:
      if named:
        walk(child, path + key, type(node), key[0].name)
      else:
        walk(child, path + key, owner, field)

  walk(state, (), None, None)
  return out


def _name(state_type: type | None) -> str:
  return "-" if state_type is None else state_type.__name__


def _decide(
  site: Site, shape: tuple[int, ...], dtype: Any, min_size: int, rule: Rule | None
) -> tuple[str | None, str]:
  """The map for one leaf (``None``: full precision) and the reason, by the module's rules."""
  if not jnp.issubdtype(dtype, jnp.floating):
    return None, f"not real floating ({jnp.dtype(dtype).name})"
  if site.param_shape is None:
    return None, "not parameter-shaped (no subtree around it mirrors the params)"
  if shape != site.param_shape:
    return None, f"not parameter-shaped (its param has shape {site.param_shape})"
  size = int(np.prod(shape, dtype=np.int64))
  if size < min_size:
    return None, f"{size} elements < min_size={min_size}"
  choice = None if rule is None else rule(site.path, site.state_type)
  if choice is not None:
    if choice not in (*MAPS, "keep"):
      raise ValueError(
        f"quantized(rule=...): rule({site.path!r}, {_name(site.state_type)}) returned "
        f"{choice!r}; expected 'signed', 'unsigned', 'keep' or None (defer to quantized_maps())"
      )
    return (None, "the rule says keep") if choice == "keep" else (choice, "the rule")
  declared = QUANTIZED_MAPS.get((site.state_type, site.field))  # type: ignore[arg-type]
  if declared is None and site.state_type is None:
    return None, "no rule, and no NamedTuple state around it to look up in quantized_maps()"
  if declared is None:
    return None, f"no map declared for {_name(site.state_type)}.{site.field}"
  return declared, "quantized_maps()"


def plan(state: Any, params: Any, *, min_size: int, rule: Rule | None) -> list[LeafPlan]:
  """For each leaf of ``state`` (``jax.tree.leaves`` order), what happens to it and why."""
  out = []
  for site, leaf in zip(sites(state, params), jax.tree.leaves(state), strict=True):
    shape, dtype = tuple(jnp.shape(leaf)), jnp.result_type(leaf)
    choice, reason = _decide(site, shape, dtype, min_size, rule)
    out.append(LeafPlan(site, shape, dtype, choice, reason))
  return out


class QuantizedDescription(NamedTuple):
  """What ``quantized(...)`` keeps how, leaf by leaf, and what it costs; prints as a table.

  Attributes:
    leaves: one ``LeafPlan`` (``site``, ``shape``, ``dtype``, ``map``, ``reason``) per leaf of
      the inner state.
    bits: 8 or 4.
    block_size: elements per block.
    processing: how ``update`` runs: ``"chunked"`` or ``"whole tree"``, with why.
  """

  leaves: tuple[LeafPlan, ...]
  bits: int
  block_size: int
  processing: str

  def stored_bytes(self, leaf: LeafPlan) -> int:
    """Bytes ``leaf`` takes in the state: its codes and scales if quantized, else itself."""
    size = int(np.prod(leaf.shape, dtype=np.int64))
    if leaf.map is None:
      return size * jnp.dtype(leaf.dtype).itemsize
    blocks = max(1, -(-size // self.block_size))
    return blocks * (self.block_size * self.bits // 8 + 4)

  @property
  def full_bytes(self) -> int:
    """Bytes of the inner state in full precision."""
    return sum(
      int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize for x in self.leaves
    )

  @property
  def total_bytes(self) -> int:
    """Bytes of the state as :func:`quantized` stores it."""
    return sum(self.stored_bytes(x) for x in self.leaves)

  def __str__(self) -> str:
    header = ("path", "state.field", "shape", "dtype", "kept as", "bytes", "stored")
    rows = [header]
    for x in self.leaves:
      size = int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize
      how = (
        f"{x.map} {self.bits}-bit ({x.reason})"
        if x.map is not None
        else f"full precision: {x.reason}"
      )
      owner = "-" if x.site.field is None else f"{_name(x.site.state_type)}.{x.site.field}"
      shape = "x".join(map(str, x.shape)) or "()"
      rows.append(
        (
          x.site.path or "<root>",
          owner,
          shape,
          jnp.dtype(x.dtype).name,
          how,
          str(size),
          str(self.stored_bytes(x)),
        )
      )
    width = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
      "  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)).rstrip() for row in rows
    ]
    ratio = self.total_bytes / max(self.full_bytes, 1)
    lines.append(
      f"total: {self.full_bytes} bytes in full precision, {self.total_bytes} stored "
      f"({ratio:.3f}x); blocks of {self.block_size}; update: {self.processing}"
    )
    return "\n".join(lines)


def quantized_maps(state_type: type | None = None) -> MapRules:
  """The declared maps of :func:`quantized`: ``(state type, field) -> "signed" | "unsigned"``.

  The live table, not a copy: adding an entry declares a new state type for
  every :func:`quantized` built afterwards (a ``rule`` does it for one).

  Args:
    state_type: ``None`` for the whole table, or a state type for its entries only.

  Returns:
    A :class:`dict` that prints as a table.

  Raises:
    TypeError: ``state_type`` is not a type.

  Examples:
    >>> import optax
    >>> import adam_optax
    >>> print(adam_optax.quantized_maps(optax.ScaleByAdamState))
    optax.ScaleByAdamState  mu  signed
    optax.ScaleByAdamState  nu  unsigned
  """
  if state_type is None:
    return QUANTIZED_MAPS
  if not isinstance(state_type, type):
    raise TypeError(
      f"quantized_maps(state_type={state_type!r}): expected a state type such as "
      "optax.ScaleByAdamState, or None for the whole table"
    )
  return MapRules({key: m for key, m in QUANTIZED_MAPS.items() if key[0] is state_type})
