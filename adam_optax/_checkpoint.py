"""Restoring an optimizer state from a checkpoint: the target, checked first.

The state of every optimizer here is a plain pytree of ``NamedTuple``\\ s and
arrays, so any library that saves pytrees (orbax, ``flax.serialization``)
saves and restores it bit for bit. Such libraries restore into an *abstract
target*, a tree of :class:`jax.ShapeDtypeStruct` (with shardings) saying what to
build. What they check poorly is whether the checkpoint was saved by the same
configuration: orbax 0.12.8 casts a float32 checkpoint into a bfloat16 target
without a word, names no leaf when a shape differs, and reports a state saved by
another optimizer as two flattened trees that differ. :func:`restore_target`
builds the target and, given the checkpoint's metadata, names the difference.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from adam_optax._sharding import _abstract, _shape, init_sharded

PyTree = Any
_SHOWN = 6  # differences listed in one message


def _key_name(key: Any) -> str:
  """One key of a pytree path as orbax names it: a field, a dict key or an index."""
  for attribute in ("name", "key", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _leaves_by_name(tree: PyTree) -> dict[str, Any]:
  """The leaves of ``tree`` keyed by dotted path (``0.mu.w``), as orbax names them on disk."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(_key_name(key) for key in path) or "<root>": leaf for path, leaf in flat}


def _listed(names: list[str]) -> str:
  more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
  return ", ".join(names[:_SHOWN]) + more


def _describe(leaf: Any) -> str:
  dtype = getattr(leaf, "dtype", None)
  shape = _shape(leaf)
  name = np.dtype(dtype).name if dtype is not None else type(leaf).__name__
  return f"{name}[{','.join(map(str, shape))}]"


def _check_saved(saved: PyTree, target: PyTree) -> None:
  """Raises ``ValueError`` naming each leaf where ``saved`` and ``target`` differ."""
  saved_leaves, target_leaves = _leaves_by_name(saved), _leaves_by_name(target)
  lacking = [name for name in target_leaves if name not in saved_leaves]
  extra = [name for name in saved_leaves if name not in target_leaves]
  if lacking or extra:
    parts = [f"only in the target: {_listed(lacking)}"] if lacking else []
    parts += [f"only in the checkpoint: {_listed(extra)}"] if extra else []
    raise ValueError(
      "restore_target(saved=...): the checkpoint holds another state than this optimizer's "
      f"({'; '.join(parts)}). It was saved by another optimizer or with other options "
      "(amsgrad keeps nu_max, a schedule a count, skip_nonfinite its counters, a mask its "
      "own structure) or for other params; build both exactly as when saving."
    )
  differences = []
  for name, leaf in target_leaves.items():
    kept = saved_leaves[name]
    same_shape = _shape(kept) == tuple(leaf.shape)
    kept_dtype = getattr(kept, "dtype", None)
    if not same_shape or (kept_dtype is not None and np.dtype(kept_dtype) != leaf.dtype):
      differences.append(f"{name}: {_describe(kept)} saved, {_describe(leaf)} in the target")
  if differences:
    raise ValueError(
      f"restore_target(saved=...): {len(differences)} leaves of the checkpoint differ from "
      "this optimizer's state in shape or dtype (other params, params' dtypes, mu_dtype or "
      "nu_dtype than when saving; a checkpointer may cast dtypes silently):\n  "
      + "\n  ".join(differences[:_SHOWN])
      + (f"\n  and {len(differences) - _SHOWN} more" if len(differences) > _SHOWN else "")
    )


def restore_target(
  optimizer: optax.GradientTransformation,
  params: PyTree,
  shardings: PyTree | None = None,
  *,
  saved: PyTree | None = None,
) -> PyTree:
  """The abstract state to restore ``optimizer``'s checkpointed state into.

  Pass it as the restore target of a checkpointer (orbax:
  ``ocp.args.StandardRestore(target)``). Nothing is allocated.

  Args:
    optimizer: the optimizer whose state was saved, built as it was then.
    params: the params, as arrays or :class:`jax.ShapeDtypeStruct`\\ s; only
      their shapes and dtypes are read.
    shardings: where each leaf of the restored state goes, from
      :func:`adam_optax.state_shardings` for the mesh restored onto (it may
      differ from the mesh saved on: the checkpointer reshards); ``None``
      leaves placement to the checkpointer (one device by default).
    saved: optionally, the saved state's metadata, any tree with the saved
      structure whose leaves have ``shape`` and ``dtype`` (orbax:
      ``manager.item_metadata(step)["opt_state"]``), checked against the target.

  Returns:
    ``jax.eval_shape(optimizer.init, params)``: the state's tree of
    :class:`jax.ShapeDtypeStruct`, each carrying its sharding when
    ``shardings`` is given.

  Raises:
    ValueError: ``saved`` differs from the target: a leaf only in one of them
      (another optimizer or other options), or one with another shape or
      dtype (other params, ``mu_dtype`` or ``nu_dtype``); the message names
      the leaves, in the dotted form orbax uses on disk.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> params = {"w": jnp.zeros((4, 2))}
    >>> saved = adam_optax.restore_target(adam_optax.adam(1e-3), params)
    >>> saved[0].mu["w"]
    ShapeDtypeStruct(shape=(4, 2), dtype=float32)
    >>> other = adam_optax.amsgrad(1e-3)
    >>> adam_optax.restore_target(other, params, saved=saved)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: restore_target(saved=...): ... (only in the target: 0.nu_max.w). It was ...
  """
  abstract_params = _abstract(params)
  if shardings is None:
    target = jax.eval_shape(optimizer.init, abstract_params)
  else:
    target = init_sharded(optimizer, abstract_params, shardings)
  if saved is not None:
    _check_saved(saved, target)
  return target
