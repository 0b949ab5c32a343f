"""Multiplying every leaf of an update tree by a per-step scalar."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
import optax

from adam_optax._numerics import compute_dtype, real_dtype


def scale_tree(updates: optax.Updates, factor: Callable[[np.dtype], jax.Array]) -> optax.Updates:
  """Returns ``updates`` with each leaf multiplied by ``factor(real dtype)``.

  The product is formed in the leaf's compute dtype (float32 at least) and cast
  back to the leaf's dtype, so half-precision updates are scaled without an
  intermediate overflow and the tree keeps its dtypes. ``factor`` is evaluated
  once per dtype, not once per leaf.
  """
  factor = functools.cache(factor)

  def scale_leaf(update: jax.Array) -> jax.Array:
    dtype = compute_dtype(update.dtype)
    scalar = factor(real_dtype(dtype)).astype(dtype)
    return (update.astype(dtype) * scalar).astype(update.dtype)

  return jax.tree.map(scale_leaf, updates)
