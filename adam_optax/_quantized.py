r"""``quantized``: any optax optimizer with its moments in 8 or 4 bits, by declared rules.

Which leaves of the inner state are quantized, and with which map, is decided
by :mod:`adam_optax._quantized_rules` (:func:`quantized_maps` and the user's
``rule``), never by running the optimizer. The state holds plain arrays only:

- ``inner_state``: the inner optimizer's state with each quantized leaf replaced
  by a *placeholder*, a 0-d ``int8`` (signed map) or ``uint8`` (unsigned map)
  array: one byte that records the leaf's map, exactly and at trace time;
- ``codes`` and ``scales``: per map, all its quantized leaves in one buffer, in
  the order of ``jax.tree.leaves``, each leaf padded to whole blocks (a block
  never straddles two leaves). ``codes`` is ``uint8[n_blocks, bits,
  block_size // 8]``, so its shape records ``bits`` and ``block_size``.

The shape and dtype of each quantized leaf come from ``init``'s abstract state
for the params (or gradients) at hand (``jax.eval_shape``), so nothing but
arrays travels with the state: ``flax.nnx.Optimizer``, orbax, flax serialization
and ``jax.tree`` utilities carry it as they carry any state.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_optax._quantize import (
  BITS,
  decode,
  encode,
  explicit_sharding,
  n_blocks,
  replicated_if_explicit,
)
from adam_optax._quantized_rules import (
  LeafPlan,
  QuantizedDescription,
  Rule,
  plan,
  sites,
)
from adam_optax._trees import check_state_type, colocate

_DEFAULT_BLOCK = {8: 256, 4: 128}
_PLACEHOLDER = {"signed": jnp.int8, "unsigned": jnp.uint8}


class QuantizedState(NamedTuple):
  """State of :func:`quantized`: plain arrays only.

  Attributes:
    inner_state: the wrapped optimizer's state, each quantized leaf replaced by
      a 0-d placeholder (``int8``: signed map, ``uint8``: unsigned map).
    codes: ``{map: uint8[n_blocks, bits, block_size // 8]}``: the codes of all
      quantized leaves of that map, leaf after leaf, each padded to whole blocks.
    scales: ``{map: float32[n_blocks]}``: each block's largest magnitude.
  """

  inner_state: optax.OptState
  codes: dict[str, jax.Array]
  scales: dict[str, jax.Array]


_QUANTIZED_INITS: weakref.WeakSet[Any] = weakref.WeakSet()  # init functions of quantized(...)
_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("adam_optax_inside", default=False)
_PLAIN: contextvars.ContextVar[bool] = contextvars.ContextVar(
  "adam_optax_unquantized", default=False
)
_DESCRIPTIONS: contextvars.ContextVar[list[QuantizedDescription] | None] = contextvars.ContextVar(
  "adam_optax_descriptions", default=None
)


def _is_wrapper(node: Any) -> bool:
  """Whether ``node`` is a one-array pytree node such as ``flax.nnx.Variable``.

  A quantized leaf's placeholder replaces such a wrapper as a whole, so that its
  metadata (an nnx sharding of the param's rank) never meets the placeholder.
  """
  if isinstance(node, (tuple, list, dict)) or node is None:
    return False
  if jax.tree_util.treedef_is_leaf(jax.tree.structure(node)):
    return False
  children = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)[0]
  return len(children) == 1 and jax.tree_util.treedef_is_leaf(jax.tree.structure(children[0]))


def _items(tree: Any) -> tuple[list[Any], Any]:
  """``tree`` flattened to its leaves, with each one-array wrapper kept whole."""
  return jax.tree.flatten(tree, is_leaf=_is_wrapper)


def _leaf(item: Any) -> Any:
  return jax.tree.leaves(item)[0] if _is_wrapper(item) else item


def _rewrap(like: Any, value: jax.Array) -> Any:
  """``value`` inside the same wrapper as ``like`` (or bare, if ``like`` is bare)."""
  if not _is_wrapper(like):
    return value
  return jax.tree.unflatten(jax.tree.structure(like), [value])


def _codes_shape(count: int, bits: int, block_size: int) -> tuple[int, int, int]:
  return (count, bits, block_size // 8)


def _pack(values: list[jax.Array], block_size: int) -> jax.Array:
  """The values flattened to float32, each zero-padded to whole blocks, concatenated."""
  parts = []
  for value in values:
    flat = replicated_if_explicit(jnp.ravel(value).astype(jnp.float32))
    pad = n_blocks(flat.size, block_size) * block_size - flat.size
    parts.append(jnp.pad(flat, (0, pad)) if pad else flat)
  return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def _unpack(blocks: jax.Array, like: list[Any]) -> list[jax.Array]:
  """The inverse of :func:`_pack`: ``like``'s shapes and dtypes cut out of the decoded blocks.

  Each leaf is a slice of whole rows (its own blocks), so cutting it out is a
  slice and a reshape of contiguous memory.
  """
  out, row = [], 0
  block_size = blocks.shape[1]
  for x in like:
    size = int(np.prod(jnp.shape(x), dtype=np.int64))
    count = n_blocks(size, block_size)
    flat = blocks[row : row + count].reshape(-1)
    if count * block_size != size:
      flat = flat[:size]
    out.append(flat.reshape(jnp.shape(x)).astype(jnp.result_type(x)))
    row += count
  return out


@functools.partial(jax.jit, static_argnums=(1, 2))
def _encode_maps(
  values: dict[str, list[jax.Array]], bits: int, block_size: int
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Per map, its leaves packed into one buffer and encoded: ``(codes, scales)``.

  Jitted, so that an eager ``init`` compiles it once instead of dispatching (and
  compiling) each operation for each new shape; inside a trace it is inlined.
  """
  codes, scales = {}, {}
  for name, leaves in values.items():
    flat = _pack(leaves, block_size)
    c, s = encode(flat, bits, signed=name == "signed", block_size=block_size)
    codes[name] = c.reshape(_codes_shape(s.shape[0], bits, block_size))
    scales[name] = s
  return codes, scales


def _decode_maps(state: QuantizedState, like: dict[str, list[Any]]) -> dict[str, list[jax.Array]]:
  """Per map, its leaves decoded in ``like``'s shapes and dtypes."""
  out = {}
  for name, leaves in like.items():
    codes = state.codes[name]
    bits = int(codes.shape[1])
    flat = decode(codes, state.scales[name], bits, signed=name == "signed")
    out[name] = _unpack(flat, leaves)
  return out


def _by_map(plans: list[LeafPlan], values: list[Any]) -> dict[str, list[Any]]:
  grouped: dict[str, list[Any]] = {}
  for p, value in zip(plans, values, strict=True):
    if p.map is not None:
      grouped.setdefault(p.map, []).append(value)
  return grouped


def _placed_like(new: jax.Array, old: jax.Array) -> jax.Array:
  """``new`` on ``old``'s sharding where that is explicit, so the state keeps its type."""
  sharding = explicit_sharding(old)
  return new if sharding is None else jax.sharding.reshard(new, sharding)


def _is_placeholder(x: Any) -> bool:
  return jnp.ndim(x) == 0 and jnp.result_type(x) in (jnp.dtype(jnp.int8), jnp.dtype(jnp.uint8))


def _map_of_placeholder(x: Any) -> str:
  return "signed" if jnp.result_type(x) == jnp.dtype(jnp.int8) else "unsigned"


@contextlib.contextmanager
def unquantized() -> Iterator[None]:
  """Within it, ``quantized(...).init`` keeps the inner state as it is (for the converters).

  The state is then ``QuantizedState(inner_state, {}, {})``. jax caches a trace
  by the function traced, which cannot see this switch: within it, never hand
  ``optimizer.init`` itself to ``jax.jit`` or ``jax.eval_shape``, only a new
  function that calls it.
  """
  token = _PLAIN.set(True)
  try:
    yield
  finally:
    _PLAIN.reset(token)


def _has_codes(tree: Any) -> bool:
  nodes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, QuantizedState))
  return any(isinstance(x, QuantizedState) and x.codes for x in nodes)


def quantized_layout(optimizer: Any, params: optax.Params) -> Any | None:
  """``jax.eval_shape(optimizer.init, params)`` if it holds quantized leaves, else ``None``."""
  if not callable(getattr(optimizer, "init", None)):
    return None
  # A new function each time: jax caches traces by function, and whether init
  # quantizes depends on unquantized(), which that cache does not see.
  layout = jax.eval_shape(lambda p: optimizer.init(p), params)
  return layout if _has_codes(layout) else None


def _quantize_one(layout: QuantizedState, exact: QuantizedState) -> QuantizedState:
  """``exact`` (made within :func:`unquantized`) quantized as ``layout`` says."""
  layout_items, treedef = _items(layout.inner_state)
  exact_items = treedef.flatten_up_to(exact.inner_state)
  values: dict[str, list[Any]] = {}
  stored = []
  for like, item in zip(layout_items, exact_items, strict=True):
    if _is_placeholder(like) and not _is_placeholder(_leaf(item)):
      values.setdefault(_map_of_placeholder(like), []).append(_leaf(item))
      stored.append(jnp.zeros((), like.dtype))
    else:
      stored.append(item)
  some = next(iter(layout.codes.values()))
  bits, block_size = int(some.shape[1]), int(some.shape[2]) * 8
  codes, scales = _encode_maps(values, bits, block_size)
  return QuantizedState(treedef.unflatten(stored), codes, scales)


def _map_quantized_states(fn: Any, *trees: Any) -> Any:
  def apply(node: Any, *rest: Any) -> Any:
    return fn(node, *rest) if isinstance(node, QuantizedState) and node.codes else node

  return jax.tree.map(apply, *trees, is_leaf=lambda x: isinstance(x, QuantizedState))


def quantize_like(layout: Any, state: Any) -> Any:
  """``state`` (made within :func:`unquantized`) quantized where ``layout`` is.

  Each placeholder of ``layout`` stands for the leaf of ``state`` at its place,
  encoded with the map it records and the ``bits``/``block_size`` that the
  codes' shape records.
  """
  return _map_quantized_states(_quantize_one, layout, state)


def dequantized(tree: Any, params: optax.Params) -> Any:
  """``tree`` with each quantized state decoded, as :func:`unquantized`'s ``init`` makes it.

  Where each placeholder's leaf lies among the params gives its shape; its
  values come back in float32 (the codes' precision).
  """

  def decode_one(state: QuantizedState) -> QuantizedState:
    items, treedef = _items(state.inner_state)
    places = sites(state.inner_state, params)
    like: dict[str, list[Any]] = {}
    for item, site in zip(items, places, strict=True):
      if _is_placeholder(_leaf(item)) and site.param_shape is not None:
        name = _map_of_placeholder(_leaf(item))
        like.setdefault(name, []).append(jax.ShapeDtypeStruct(site.param_shape, jnp.float32))
    decoded = {k: iter(v) for k, v in _decode_maps(state, like).items()}
    leaves = []
    for item, site in zip(items, places, strict=True):
      leaf = _leaf(item)
      if _is_placeholder(leaf) and site.param_shape is not None:
        leaves.append(next(decoded[_map_of_placeholder(leaf)]))
      else:
        leaves.append(item)
    return QuantizedState(treedef.unflatten(leaves), {}, {})

  return _map_quantized_states(decode_one, tree)


def describe_quantized(optimizer: Any, params: optax.Params) -> QuantizedDescription:
  r"""What ``quantized(...)`` inside ``optimizer`` keeps how, leaf by leaf, for ``params``.

  Runs ``optimizer.init`` abstractly (``jax.eval_shape``: nothing is computed)
  and reports, for every leaf of the inner state of the (first)
  :func:`quantized` in it, its path, the state type and field that hold it, its
  shape and dtype, the map it is stored with (and which rule chose it) or why it
  stays in full precision, and its bytes in full precision and as stored.

  Args:
    optimizer: :func:`quantized`'s result, or any optimizer that contains one
      (``optax.chain``, ``optax.inject_hyperparams``, ``optax.MultiSteps``, ...).
    params: the params (arrays or :class:`jax.ShapeDtypeStruct`\ s).

  Returns:
    A :class:`QuantizedDescription`; ``print`` it for the table.

  Raises:
    ValueError: ``optimizer`` contains no :func:`quantized`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> optimizer = adam_optax.quantized(adam_optax.adam(1e-3), bits=8)
    >>> params = {"w": jnp.zeros((256, 256)), "b": jnp.zeros(256)}
    >>> described = adam_optax.describe_quantized(optimizer, params)
    >>> [(x.site.path, x.map) for x in described.leaves if x.site.field == "nu"]
    [("[0].nu['b']", None), ("[0].nu['w']", 'unsigned')]
    >>> described.leaves[1].reason
    '256 elements < min_size=4096'
    >>> described.full_bytes, described.total_bytes
    (526344, 135176)
  """
  records: list[QuantizedDescription] = []
  token = _DESCRIPTIONS.set(records)
  try:
    jax.eval_shape(lambda p: optimizer.init(p), params)
  finally:
    _DESCRIPTIONS.reset(token)
  if not records:
    raise ValueError(
      "describe_quantized(optimizer=...): the optimizer contains no quantized(...); "
      "wrap it, e.g. adam_optax.quantized(adam_optax.adam(1e-3))"
    )
  return records[0]


def _check_stored(
  owner: str,
  plans: list[LeafPlan],
  stored: list[Any],
  state: QuantizedState,
  bits: int,
  block_size: int,
) -> None:
  """Raises ``ValueError`` naming the leaf if ``state`` was written by another configuration."""
  for p, item in zip(plans, stored, strict=True):
    leaf = _leaf(item)
    was = _map_of_placeholder(leaf) if _is_placeholder(leaf) else None
    if was == p.map:
      continue
    if p.map is None:
      raise ValueError(
        f"{owner}.update: the state at {p.site.path} was stored with the {was} map, but this "
        f"optimizer keeps it in full precision ({p.reason}). Was the state made by another "
        "quantized(...) configuration (min_size, rule)? Initialise it with this optimizer's init."
      )
    if was is None:
      raise ValueError(
        f"{owner}.update: the state at {p.site.path} is a plain "
        f"{jnp.result_type(leaf)}{list(jnp.shape(leaf))} array, but this optimizer keeps it "
        f"quantized with the {p.map} map ({p.reason}). Was the state made by the unwrapped "
        "optimizer, or by quantized(...) with another min_size or rule? Initialise it with "
        "this optimizer's init."
      )
    raise ValueError(
      f"{owner}.update: the state at {p.site.path} was stored with the {was} map, but this "
      f"optimizer's rules give the {p.map} map ({p.reason}); decoding it with the other map "
      "would corrupt it. Was the state made by quantized(...) with another rule?"
    )
  for name, leaves in _by_map(plans, plans).items():
    count = sum(n_blocks(int(np.prod(x.shape, dtype=np.int64)), block_size) for x in leaves)
    expected = _codes_shape(count, bits, block_size)
    codes = state.codes.get(name)
    scales = state.scales.get(name)
    got = None if codes is None else tuple(codes.shape)
    if got != expected or scales is None or tuple(scales.shape) != (count,):
      made = "" if got is None or len(got) != 3 else f" (bits={got[1]}, block_size={got[2] * 8})"
      raise ValueError(
        f"{owner}.update: the {name} codes have shape {got}{made}, but this optimizer "
        f"(bits={bits}, block_size={block_size}) stores its {name} leaves, the first at "
        f"{leaves[0].site.path}, as {expected}. Was the state made by another quantized(...) "
        "configuration? Initialise it with this optimizer's init."
      )
  extra = sorted(set(state.codes) - {p.map for p in plans})
  if extra:
    raise ValueError(
      f"{owner}.update: the state holds {extra[0]} codes, but this optimizer stores no leaf "
      "with that map. Was the state made by another quantized(...) configuration?"
    )


def quantized(
  optimizer: optax.GradientTransformation,
  bits: int = 8,
  *,
  block_size: int | None = None,
  min_size: int = 4096,
  rule: Rule | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps an optax optimizer so that its moments are kept block-wise in ``bits`` bits.

  Each step decodes the quantized leaves, runs ``optimizer.update`` and encodes
  the new state, all inside the caller's jitted step:

  .. math::

    (u_t, s_t) = \text{optimizer.update}(g_t, D(Q_{t-1})), \qquad Q_t = Q(s_t),

  where :math:`Q` stores every element of a block of ``block_size`` as a
  ``bits``-bit code of a companded map times the block's largest magnitude
  (see :mod:`adam_optax._quantize`). State bytes per parameter of a quantized
  leaf, scales included: :math:`\tfrac{bits}{8} + 4/\text{block\_size}` per
  moment, so Adam's :math:`m, v` take 2.03 bytes at 8 bits and 1.06 at 4 bits,
  instead of 8 in float32.

  Which leaves are quantized, and with which map, is declared, never probed:
  a real floating, parameter-shaped leaf of at least ``min_size`` elements, for
  which ``rule`` or the table :func:`adam_optax.quantized_maps` (keyed on the
  state's type and field: ``ScaleByAdamState.nu`` is ``"unsigned"``) names a
  map. Every other leaf (counts, a copy of the params, unknown state types)
  stays in full precision. :func:`describe_quantized` prints the decision for
  every leaf.

  Args:
    optimizer: any :class:`optax.GradientTransformation` (or object with
      ``init`` and ``update``, such as :class:`optax.MultiSteps`), not itself
      quantized.
    bits: 8 or 4.
    block_size: elements per quantization block, a multiple of 8; ``None`` for
      256 at 8 bits and 128 at 4 bits (torchao's choices).
    min_size: leaves with fewer elements stay in full precision (bitsandbytes
      keeps leaves under 4096 elements in 32 bits).
    rule: optional ``rule(path, state_type) -> "signed" | "unsigned" | "keep" |
      None``, asked for every eligible leaf: ``path`` is
      ``jax.tree_util.keystr`` of the leaf's path in the inner state (e.g.
      ``"[0].nu['w']"``), ``state_type`` the ``NamedTuple`` type whose field
      holds it (or ``None``); ``None`` defers to :func:`quantized_maps`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`QuantizedState`.

  Raises:
    ValueError: ``bits``, ``block_size``, ``min_size`` or ``rule`` is out of
      range; ``optimizer`` is itself quantized.
    TypeError: ``optimizer`` has no ``init``/``update``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> optimizer = adam_optax.quantized(adam_optax.adam(1e-3), bits=8, min_size=16)
    >>> params = {"w": jnp.ones((64, 64)), "b": jnp.zeros(8)}
    >>> state = optimizer.init(params)
    >>> state.codes["signed"].shape, state.codes["unsigned"].shape  # 16 blocks of 256 each
    ((16, 8, 32), (16, 8, 32))
    >>> moments = state.inner_state[0]
    >>> moments.mu["w"].dtype, moments.nu["w"].dtype  # placeholders: the map, in one byte
    (dtype('int8'), dtype('uint8'))
    >>> moments.mu["b"].dtype  # under min_size: kept as it is
    dtype('float32')

  References:
    Dettmers, Lewis, Shleifer & Zettlemoyer, *8-bit Optimizers via Block-wise
    Quantization*, ICLR 2022, https://arxiv.org/abs/2110.02861.
    Li, Chen & Zhu, *Memory Efficient Optimizers with 4-bit States*,
    NeurIPS 2023, https://arxiv.org/abs/2309.01507.
  """
  owner = "quantized"
  if not (
    callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
  ):
    raise TypeError(
      f"{owner}(optimizer=...): expected an optax.GradientTransformation, got "
      f"{type(optimizer).__name__}; did you pass the factory (adam) instead of the "
      "optimizer (adam(learning_rate))?"
    )
  if optimizer.init in _QUANTIZED_INITS:
    raise ValueError(
      f"{owner}(optimizer=...): the optimizer is already quantized; quantized(quantized(...)) "
      "would quantize placeholders. Wrap the unquantized optimizer once."
    )
  if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
    raise ValueError(f"{owner}(bits={bits!r}): bits must be 8 or 4")
  if block_size is None:
    block_size = _DEFAULT_BLOCK[bits]
  if (
    isinstance(block_size, bool)
    or not isinstance(block_size, int)
    or block_size < 8
    or block_size % 8
  ):
    raise ValueError(
      f"{owner}(block_size={block_size!r}): block_size must be a positive multiple of 8"
    )
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
    raise ValueError(f"{owner}(min_size={min_size!r}): min_size must be an int >= 0")
  if rule is not None and not callable(rule):
    raise ValueError(
      f"{owner}(rule={rule!r}): rule must be None or a function of (path, state_type)"
    )
  inner = optax.with_extra_args_support(optimizer)

  def plans_for(state: Any, params: Any) -> list[LeafPlan]:
    return plan(state, params, min_size=min_size, rule=rule)

  def init_fn(params: optax.Params) -> QuantizedState:
    if _INSIDE.get():
      raise ValueError(
        f"{owner}: a quantized(...) optimizer is nested inside another quantized(...); "
        "wrap the unquantized optimizer once."
      )
    token = _INSIDE.set(True)
    try:
      state = inner.init(params)
    finally:
      _INSIDE.reset(token)
    if _PLAIN.get():
      return QuantizedState(state, {}, {})
    plans = plans_for(state, params)
    records = _DESCRIPTIONS.get()
    if records is not None:
      records.append(QuantizedDescription(tuple(plans), bits, block_size, "whole tree"))
    items, treedef = _items(state)
    codes, scales = _encode_maps(_by_map(plans, [_leaf(i) for i in items]), bits, block_size)
    stored = [
      item if p.map is None else jnp.zeros((), _PLACEHOLDER[p.map])
      for p, item in zip(plans, items, strict=True)
    ]
    return colocate(QuantizedState(treedef.unflatten(stored), codes, scales), params)

  def update_fn(
    updates: optax.Updates,
    state: QuantizedState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, QuantizedState]:
    check_state_type(owner, state, QuantizedState)
    like = updates if params is None else params
    abstract = jax.eval_shape(inner.init, like)
    plans = plans_for(abstract, like)
    abstract_items, treedef = _items(abstract)
    try:
      stored = treedef.flatten_up_to(state.inner_state)
    except (ValueError, TypeError) as error:
      raise ValueError(
        f"{owner}.update: the inner state's structure differs from init's for these "
        f"params: {error}. Was the state made by another optimizer?"
      ) from None
    _check_stored(owner, plans, stored, state, bits, block_size)
    decoded = {
      name: iter(values)
      for name, values in _decode_maps(
        state, _by_map(plans, [_leaf(i) for i in abstract_items])
      ).items()
    }
    full = [
      item if p.map is None else _rewrap(like_item, next(decoded[p.map]))
      for p, item, like_item in zip(plans, stored, abstract_items, strict=True)
    ]
    updates, new_state = inner.update(updates, treedef.unflatten(full), params, **extra_args)
    new_items = treedef.flatten_up_to(new_state)
    for p, item in zip(plans, new_items, strict=True):
      leaf = _leaf(item)
      if p.map is not None and (jnp.shape(leaf), jnp.result_type(leaf)) != (p.shape, p.dtype):
        raise ValueError(
          f"{owner}: the inner optimizer's state at {p.site.path} changed from "
          f"{p.dtype}{list(p.shape)} to {jnp.result_type(leaf)}{list(jnp.shape(leaf))} in "
          "update; a quantized leaf must keep its shape and dtype."
        )
    codes, scales = _encode_maps(_by_map(plans, [_leaf(i) for i in new_items]), bits, block_size)
    codes = {k: _placed_like(v, state.codes[k]) for k, v in codes.items()}
    scales = {k: _placed_like(v, state.scales[k]) for k, v in scales.items()}
    kept = [
      old if p.map is not None else item
      for p, old, item in zip(plans, stored, new_items, strict=True)
    ]
    return updates, QuantizedState(treedef.unflatten(kept), codes, scales)

  _QUANTIZED_INITS.add(init_fn)
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
