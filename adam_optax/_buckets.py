r"""Bucketed parameters: a whole parameter tree as a few contiguous buffers.

An Adam step is pure memory traffic, yet with thousands of small parameter
arrays XLA spends most of the step (and most of the compile time) on per-array
work: one loop per array and per output, and one output buffer per array. The
remedy is to keep the parameters themselves in a few flat buffers, one per
dtype (and per optional group), across steps:

>>> import jax, jax.numpy as jnp
>>> import adam_optax
>>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
>>> buckets, layout = adam_optax.bucket(params)
>>> {key: buffer.shape for key, buffer in buckets.items()}
{'float32': (9,)}
>>> tree = layout.unbucket(buckets)  # the original tree, as views of the buffers
>>> tree["w"].shape
(2, 3)

A model evaluates ``loss(layout.unbucket(buckets))``; ``jax.grad`` with respect
to ``buckets`` then gives bucket-shaped gradients directly (the backward pass of
:meth:`BucketLayout.unbucket` is one concatenation per bucket), and every
optimizer of this package, being a per-leaf tree map, runs on a handful of big
leaves. Nothing about the optimizer changes: only what counts as a leaf.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Buckets = dict[str, jax.Array]
GroupFn = Callable[[tuple[Any, ...], Any], str]


@dataclasses.dataclass(frozen=True)
class _Slot:
  """Where one leaf lives: ``buckets[key][offset : offset + size]``."""

  key: str
  offset: int
  shape: tuple[int, ...]

  @property
  def size(self) -> int:
    return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class BucketLayout:
  """Where every leaf of a parameter tree lives inside its buckets.

  Built by :func:`bucket`; hashable and immutable, so it can be closed over by
  jitted functions or passed as a static argument. It only holds shapes,
  dtypes and offsets, never arrays.

  Attributes:
    treedef: the structure of the original tree.
    slots: for each leaf, in ``jax.tree.leaves`` order, its bucket key,
      offset and shape.
    sizes: ``(key, length)`` of each bucket, in key order; a length includes
      the zero padding requested by ``pad_to``.
    dtypes: ``(key, dtype)`` of each bucket, in key order.
  """

  treedef: Any
  slots: tuple[_Slot, ...]
  sizes: tuple[tuple[str, int], ...]
  dtypes: tuple[tuple[str, np.dtype], ...]

  @property
  def keys(self) -> tuple[str, ...]:
    """The bucket keys, sorted."""
    return tuple(key for key, _ in self.sizes)

  def unbucket(self, buckets: Mapping[str, jax.Array]) -> Any:
    """The original tree, each leaf a reshaped slice of its bucket.

    Each bucket is cut by one :func:`jax.lax.split`; inside ``jit`` the parts
    are views that XLA fuses into their consumers. Under ``jax.grad`` the
    cotangents of all leaves of a bucket are gathered by a single
    concatenation, so the gradient is bucket-shaped. Forward mode
    (``jax.jvp``) and ``vmap`` work as for any linear map.

    Args:
      buckets: a mapping from bucket key to a 1-D array, as returned by
        :func:`bucket` or by an optimizer update on such buckets.

    Returns:
      A tree with the structure, shapes and dtypes of the bucketed tree.

    Raises:
      ValueError: ``buckets`` has other keys, shapes or dtypes than the layout.
    """
    self._check("unbucket", "buckets", buckets)
    return jax.tree.unflatten(self.treedef, self._unbucket_leaves(dict(buckets)))

  def bucket(self, tree: Any) -> Buckets:
    """Gathers a tree shaped like the bucketed one into buckets of this layout.

    Use it for trees that arrive leaf by leaf (gradients from a model that was
    not written against :meth:`unbucket`, a checkpoint). It costs one copy of
    every element; buckets that stay buckets across steps avoid it.

    Args:
      tree: a tree with the structure, shapes and dtypes of the bucketed tree.

    Returns:
      A dict from bucket key to a 1-D array.

    Raises:
      ValueError: ``tree`` has another structure or leaf shape.
      TypeError: a leaf of ``tree`` has another dtype than its bucket.
    """
    leaves = self._check_tree("bucket", "tree", tree)
    return self._concatenate(leaves)

  def _unbucket_leaves(self, buckets: Buckets) -> list[jax.Array]:
    # One `split` per bucket, not a slice per leaf: its transpose is a single
    # concatenation, where JAX would transpose each slice into a bucket-sized
    # pad and add them all up (thousands of bucket-sized adds).
    leaves: list[Any] = [None] * len(self.slots)
    for key, length in self.sizes:
      members = [i for i, slot in enumerate(self.slots) if slot.key == key]
      sizes = [self.slots[i].size for i in members]
      parts = jax.lax.split(buckets[key], [*sizes, length - sum(sizes)])
      for i, part in zip(members, parts, strict=False):
        leaves[i] = part.reshape(self.slots[i].shape)
    return leaves

  def _concatenate(self, leaves: Sequence[Any]) -> Buckets:
    parts: dict[str, list[jax.Array]] = {key: [] for key in self.keys}
    for slot, leaf in zip(self.slots, leaves, strict=True):
      if slot.size:
        parts[slot.key].append(jnp.ravel(leaf))
    buckets = {}
    for (key, length), (_, dtype) in zip(self.sizes, self.dtypes, strict=True):
      used = sum(part.shape[0] for part in parts[key])
      if length > used:
        parts[key].append(jnp.zeros((length - used,), dtype))
      buckets[key] = jnp.concatenate(parts[key]) if parts[key] else jnp.zeros((0,), dtype)
    return buckets

  def _check(self, method: str, name: str, buckets: Any) -> None:
    where = f"BucketLayout.{method}({name}=...)"
    if not isinstance(buckets, Mapping):
      raise ValueError(
        f"{where}: {name} must be a mapping from bucket key to a 1-D array, as "
        f"returned by adam_optax.bucket; got {type(buckets).__name__}"
      )
    if tuple(sorted(buckets)) != self.keys:
      raise ValueError(
        f"{where}: {name} has keys {sorted(buckets)}, but the layout has buckets {list(self.keys)}"
      )
    for (key, length), (_, dtype) in zip(self.sizes, self.dtypes, strict=True):
      buffer = buckets[key]
      if jnp.shape(buffer) != (length,) or jnp.result_type(buffer) != dtype:
        raise ValueError(
          f"{where}: {name}[{key!r}] is {jnp.result_type(buffer)}{list(jnp.shape(buffer))}, "
          f"but the layout expects {dtype}[{length}]"
        )

  def _check_tree(self, method: str, name: str, tree: Any) -> list[Any]:
    where = f"BucketLayout.{method}({name}=...)"
    leaves, treedef = jax.tree.flatten(tree)
    if treedef != self.treedef:
      raise ValueError(
        f"{where}: {name} has structure {treedef}, but the layout was built from {self.treedef}"
      )
    bucket_dtype = dict(self.dtypes)
    for slot, leaf in zip(self.slots, leaves, strict=True):
      if jnp.shape(leaf) != slot.shape:
        raise ValueError(
          f"{where}: a leaf of {name} has shape {jnp.shape(leaf)}, but the layout "
          f"expects {slot.shape} there"
        )
      if jnp.result_type(leaf) != bucket_dtype[slot.key]:
        raise TypeError(
          f"{where}: a leaf of {name} has dtype {jnp.result_type(leaf)}, but it "
          f"belongs to bucket {slot.key!r} of dtype {bucket_dtype[slot.key]}"
        )
    return leaves


def bucket(
  params: Any, *, group: GroupFn | None = None, pad_to: int = 1
) -> tuple[Buckets, BucketLayout]:
  """Packs a tree of arrays into one contiguous 1-D buffer per dtype (and group).

  Leaves go into their bucket in ``jax.tree.leaves`` order, back to back
  (``None`` and zero-size leaves take no room). Keep the returned buckets as
  your parameters across steps and recover the tree with
  ``layout.unbucket(buckets)`` inside the loss; the optimizer state built from
  the buckets is bucketed too (``layout.unbucket(state.mu)`` shows a moment as
  a tree).

  Args:
    params: a tree of arrays (any dtypes; integer leaves get buckets of their
      own, which an optimizer of floats will reject, as it would the leaves).
    group: optional ``group(path, leaf) -> str`` putting leaves into separate
      buckets, keyed ``f"{group}/{dtype}"``: for example to give decayed and
      non-decayed weights buckets of their own, so that ``optax.masked`` can
      select them. Without it, keys are dtype names such as ``"float32"``.
    pad_to: round each bucket's length up to a multiple of this, with zeros at
      the end: ``pad_to=jax.device_count()`` lets a sharder split each bucket
      evenly along its only axis. The padding is never read by
      :meth:`BucketLayout.unbucket` and its gradient is zero.

  Returns:
    ``(buckets, layout)``: a dict from key to 1-D array, and the
    :class:`BucketLayout` that maps it back to ``params``' structure.

  Raises:
    TypeError: a leaf is not an array or a number, or ``group`` does not
      return a string.
    ValueError: ``pad_to`` is not a positive integer.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adam_optax
    >>> params = {"w": jnp.ones((3,)), "b": jnp.zeros((1,))}
    >>> buckets, layout = adam_optax.bucket(params)
    >>> loss = lambda buckets: jnp.sum(layout.unbucket(buckets)["w"] ** 2)
    >>> grads = jax.grad(loss)(buckets)  # bucket-shaped
    >>> optimizer = adam_optax.adam(0.1)
    >>> updates, state = optimizer.update(grads, optimizer.init(buckets))
    >>> layout.unbucket(optax.apply_updates(buckets, updates))["w"]
    Array([0.9, 0.9, 0.9], dtype=float32)
  """
  if isinstance(pad_to, (bool, np.bool_)) or not isinstance(pad_to, (int, np.integer)):
    raise ValueError(f"bucket(pad_to={pad_to!r}): pad_to must be a positive integer")
  if pad_to < 1:
    raise ValueError(f"bucket(pad_to={pad_to!r}): pad_to must be a positive integer")
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  slots = []
  used: dict[str, int] = {}
  dtypes: dict[str, np.dtype] = {}
  for path, leaf in paths_and_leaves:
    where = jax.tree_util.keystr(path) or "<root>"
    if not hasattr(leaf, "dtype") and not isinstance(leaf, (int, float, complex)):
      raise TypeError(
        f"bucket(params=...): the leaf at {where} is a {type(leaf).__name__}; "
        "expected an array or a number"
      )
    dtype = np.dtype(jnp.result_type(leaf))
    key = dtype.name
    if group is not None:
      name = group(path, leaf)
      if not isinstance(name, str):
        raise TypeError(
          f"bucket(group=...): group returned {name!r} for the leaf at {where}; expected a string"
        )
      key = f"{name}/{dtype.name}"
    dtypes[key] = dtype
    slot = _Slot(key=key, offset=used.get(key, 0), shape=tuple(jnp.shape(leaf)))
    used[key] = slot.offset + slot.size
    slots.append(slot)
  keys = sorted(used)
  layout = BucketLayout(
    treedef=treedef,
    slots=tuple(slots),
    sizes=tuple((key, -(-used[key] // pad_to) * pad_to) for key in keys),
    dtypes=tuple((key, dtypes[key]) for key in keys),
  )
  return layout._concatenate([leaf for _, leaf in paths_and_leaves]), layout
