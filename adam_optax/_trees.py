"""Checks that a gradient tree fits the optimizer state it is applied to."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def check_fits_state(owner: str, updates: optax.Updates, state_tree: optax.Updates) -> None:
  """Raises if ``updates`` cannot be combined leaf by leaf with ``state_tree``.

  A mismatch would otherwise broadcast silently or fail deep inside XLA. The
  check runs at trace time, so it costs nothing in a compiled step.

  Args:
    owner: the transform's name, used in the message.
    updates: the incoming gradients (or updates).
    state_tree: a parameter-shaped tree of the state, built by ``init``.

  Raises:
    ValueError: the tree structures or a leaf's shape differ.
    TypeError: a gradient leaf is not of a floating or complex dtype.
  """
  grad_def: Any = jax.tree.structure(updates)  # PyTreeDef: jaxlib ships no stub for it
  state_def: Any = jax.tree.structure(state_tree)
  if grad_def != state_def:
    raise ValueError(
      f"{owner}: the gradient tree's structure differs from the optimizer "
      "state's, which init built from the params. Pass gradients shaped like "
      f"the params given to init.\n  gradients: {grad_def}\n  state:     {state_def}"
    )
  paths_and_grads = jax.tree_util.tree_flatten_with_path(updates)[0]
  for (path, grad), held in zip(paths_and_grads, jax.tree.leaves(state_tree), strict=False):
    where = jax.tree_util.keystr(path) or "<root>"
    if jnp.shape(grad) != jnp.shape(held):
      raise ValueError(
        f"{owner}: the gradient at {where} has shape {jnp.shape(grad)}, but the "
        f"state holds shape {jnp.shape(held)} there (from the params given to init)."
      )
    if not jnp.issubdtype(jnp.result_type(grad), jnp.inexact):
      raise TypeError(
        f"{owner}: the gradient at {where} has dtype {jnp.result_type(grad)}; "
        "expected a floating or complex dtype."
      )
