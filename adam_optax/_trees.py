"""Checks that the trees handed to ``init`` and ``update`` fit each other.

A mismatch would otherwise broadcast silently or fail deep inside XLA, so each
check names the transform, the leaf's path and what was expected. They run at
trace time, so they cost nothing in a compiled step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def where(path: tuple[Any, ...]) -> str:
  """A leaf's path as ``['layer']['w']`` (``<root>`` for a bare array)."""
  return jax.tree_util.keystr(tuple(path)) or "<root>"


def colocate(state: Any, params: Any) -> Any:
  """Commits the state's free-floating leaves to the params' mesh, replicated.

  Eagerly built, a step count (or the moments of a Python-float param) is an
  uncommitted single-device array, while a jitted step over params sharded on
  a mesh returns it committed to that mesh, replicated. The state would change
  type after the first step and the step would compile twice (``optax.adam``
  does); born where the step will put them, the leaves keep their type. Under
  a trace, or when no param lives on a mesh, ``state`` is returned as it is.
  """
  mesh = None
  for leaf in jax.tree.leaves(params):
    if isinstance(leaf, jax.core.Tracer):
      return state
    sharding = getattr(leaf, "sharding", None)
    if mesh is None and isinstance(sharding, jax.sharding.NamedSharding):
      mesh = sharding.mesh
  if mesh is None:
    return state
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def place(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array) and not leaf.committed:
      return jax.device_put(np.asarray(leaf), replicated)
    return leaf

  return jax.tree.map(place, state)


def check_state_type(owner: str, state: Any, state_type: type) -> None:
  """Raises ``TypeError`` if ``state`` is not the ``state_type`` that ``owner``'s init makes."""
  if not isinstance(state, state_type):
    raise TypeError(
      f"{owner}.update: expected the {state_type.__name__} made by this transform's init, "
      f"got {type(state).__name__}. Was the state made by another optimizer, or restored "
      "without a target structure?"
    )


def check_inexact_leaves(owner: str, tree: Any, what: str) -> None:
  """Raises ``TypeError`` naming the first leaf of ``tree`` that is not floating or complex.

  Python floats count as floating (float32, or float64 with x64 on), as in optax.

  Args:
    owner: the transform's name, used in the message.
    tree: params or updates.
    what: what the leaves are, for the message (``"param"``, ``"update"``).
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"{owner}: the {what} at {where(path)} has dtype {dtype}; expected a floating "
        "or complex dtype. Leave integer and boolean leaves out of the optimizer "
        "(e.g. nnx.Optimizer(..., wrt=nnx.Param), or optax.multi_transform with "
        "optax.set_to_zero for them)."
      )


def _check_same_layout(owner: str, what: str, tree: Any, reference: Any, label: str) -> None:
  """Raises ``ValueError`` unless ``tree`` has ``reference``'s structure and leaf shapes."""
  tree_def: Any = jax.tree.structure(tree)  # PyTreeDef: jaxlib ships no stub for it
  reference_def: Any = jax.tree.structure(reference)
  if tree_def != reference_def:
    width = max(len(what) + 2, len(label) + 1)
    raise ValueError(
      f"{owner}: the {what} tree's structure differs from the {label}'s. Pass {what}s "
      "shaped like the params given to init."
      f"\n  {(what + 's:').ljust(width)} {tree_def}\n  {(label + ':').ljust(width)} {reference_def}"
    )
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  for (path, leaf), held in zip(flat, jax.tree.leaves(reference), strict=True):
    if jnp.shape(leaf) != jnp.shape(held):
      raise ValueError(
        f"{owner}: the {what} at {where(path)} has shape {jnp.shape(leaf)}, but the "
        f"{label} holds shape {jnp.shape(held)} there."
      )


def check_fits_params(owner: str, updates: optax.Updates, params: optax.Params) -> None:
  """Raises ``ValueError`` unless ``updates`` have the params' structure and shapes."""
  _check_same_layout(owner, "update", updates, params, "params")


def check_fits_state(
  owner: str,
  updates: optax.Updates,
  state_tree: optax.Updates,
  params: optax.Params | None = None,
) -> None:
  """Raises if ``updates`` (or ``params``) cannot be combined leaf by leaf with ``state_tree``.

  Args:
    owner: the transform's name, used in the message.
    updates: the incoming gradients (or updates).
    state_tree: a parameter-shaped tree of the state, built by ``init``.
    params: the params handed to ``update``, if any; checked the same way
      (``optax.apply_updates`` would otherwise broadcast the updates into them).

  Raises:
    ValueError: the tree structures or a leaf's shape differ.
    TypeError: a gradient leaf is not of a floating or complex dtype, or is
      complex where the param (hence the state) is real.
  """
  _check_same_layout(owner, "gradient", updates, state_tree, "state")
  if params is not None:
    _check_same_layout(owner, "param", params, state_tree, "state")
  check_inexact_leaves(owner, updates, "gradient")
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  for (path, grad), held in zip(flat, jax.tree.leaves(state_tree), strict=True):
    if jnp.iscomplexobj(grad) and not jnp.iscomplexobj(held):
      raise TypeError(
        f"{owner}: the gradient at {where(path)} is {jnp.result_type(grad)} but the param "
        f"is real (the state holds {jnp.result_type(held)}); a real param has a real "
        "gradient: take its real part, or make the param complex."
      )
