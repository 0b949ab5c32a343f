r"""``quantized``: any optax optimizer with its parameter-shaped state in 8 or 4 bits.

Which leaves are quantized is decided by structure, never by field names, so
the states of optax's own optimizers are covered as well as this package's:

1. A subtree of the inner state that *mirrors the params* (the params' tree
   structure, each leaf an array of its param's shape, or an empty node such
   as ``None``) is parameter-shaped: ``mu`` and ``nu`` of Adam, the trace of
   SGD with momentum, ``optax.MultiSteps``' accumulator, ...
2. Of those leaves, the floating ones with at least ``min_size`` elements are
   stored as a :class:`QuantizedArray`; everything else (counts, injected
   hyperparameters, small biases, complex leaves) is kept as it is.

Each quantized leaf gets the signed map (any sign) or the unsigned map (values
``>= 0``, zero excluded: second moments). Which one is decided by *probing*
the inner optimizer once at ``init``: it is initialised on a stand-in of the
params with one element per leaf and stepped 8 times, once with gradients +1
and once with -1 (a jitted run on tiny arrays). A leaf that is ``>= 0`` after
both runs, and not zero after both, gets the unsigned map (Adam's :math:`v`,
AMSGrad's maximum, AdaMax's :math:`u`: even functions of the gradient);
every other leaf gets the signed one (:math:`m`, momentum traces,
accumulators). If the probe's state does not
have the real state's structure (an optimizer whose state depends on the
params' shapes, such as a factored one) or its update fails, every leaf gets
the signed map, which represents any value, with one bit less resolution.
Override per leaf with ``signed``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax._quantize import BITS, QuantizedArray, decode, encode, explicit_sharding
from adam_optax._trees import check_state_type

_DEFAULT_BLOCK = {8: 256, 4: 128}


class QuantizedState(NamedTuple):
  """State of :func:`quantized`.

  Attributes:
    inner_state: the wrapped optimizer's state, with each quantized leaf
      replaced by a :class:`QuantizedArray` (a pytree of ``codes`` and
      ``scales``), so jit, donation, sharding and checkpointing see plain arrays.
  """

  inner_state: optax.OptState


def _is_quantized(node: Any) -> bool:
  return isinstance(node, QuantizedArray)


def _lost_metadata(node: Any) -> bool:
  """Whether ``node`` is a mapping that holds a :class:`QuantizedArray`'s data, rebuilt."""
  return isinstance(node, Mapping) and set(node.keys()) == {"codes", "scales"}


def _placed_like(new: jax.Array, old: jax.Array) -> jax.Array:
  """``new`` on ``old``'s sharding where that is explicit, so the state keeps its type."""
  sharding = explicit_sharding(old)
  return new if sharding is None else jax.sharding.reshard(new, sharding)


def dequantized(tree: Any) -> Any:
  """``tree`` with every :class:`QuantizedArray` in it replaced by the array it stands for."""
  return jax.tree.map(lambda x: decode(x) if _is_quantized(x) else x, tree, is_leaf=_is_quantized)


_PLAIN: contextvars.ContextVar[bool] = contextvars.ContextVar(
  "adam_optax_unquantized", default=False
)


@contextlib.contextmanager
def unquantized() -> Iterator[None]:
  """Within it, ``quantized(...).init`` keeps the inner state as it is (for the converters).

  jax caches a trace by the function traced, which cannot see this switch:
  within it, never hand ``optimizer.init`` itself to ``jax.jit`` or
  ``jax.eval_shape``, only a new function that calls it.
  """
  token = _PLAIN.set(True)
  try:
    yield
  finally:
    _PLAIN.reset(token)


def quantized_layout(optimizer: Any, params: optax.Params) -> Any | None:
  """``jax.eval_shape(optimizer.init, params)`` if it holds a :class:`QuantizedArray`."""
  if not callable(getattr(optimizer, "init", None)):
    return None
  # A new function each time: jax caches traces by function, and whether init
  # quantizes depends on unquantized(), which that cache does not see.
  layout = jax.eval_shape(lambda p: optimizer.init(p), params)
  leaves = jax.tree.leaves(layout, is_leaf=_is_quantized)
  return layout if any(_is_quantized(leaf) for leaf in leaves) else None


def quantize_like(layout: Any, state: Any) -> Any:
  """``state`` (made within :func:`unquantized`) quantized where ``layout`` is.

  Each :class:`QuantizedArray` of ``layout`` stands for one leaf of ``state``,
  which is encoded with its bits, map and block size.
  """
  flat, layout_def = jax.tree.flatten(layout, is_leaf=_is_quantized)
  values = jax.tree.leaves(state)
  leaves = [
    encode(value, like.bits, signed=like.signed, block_size=like.block_size)
    if _is_quantized(like)
    else value
    for like, value in zip(flat, values, strict=True)
  ]
  return jax.tree.unflatten(layout_def, leaves)


def leaf_size(leaf: QuantizedArray) -> int:
  """The number of elements of the array ``leaf`` stands for."""
  return math.prod(leaf.array_shape)


def param_shaped_leaves(params: optax.Params, tree: Any) -> list[bool]:
  """For each leaf of ``tree`` (in ``jax.tree.leaves`` order), whether it mirrors the params.

  A subtree mirrors the params when it flattens up to the params' structure
  with each part an array of its param's shape or an empty node (``None``,
  ``optax.MaskedNode()``), at least one of them an array.
  """
  params_def: Any = jax.tree.structure(params)  # PyTreeDef: jaxlib ships no stub for it
  shapes = [jnp.shape(p) for p in jax.tree.leaves(params)]

  def mirrors(node: Any) -> bool:
    try:
      parts = params_def.flatten_up_to(node)
    except (ValueError, TypeError):
      return False
    arrays = [hasattr(part, "shape") and hasattr(part, "dtype") for part in parts]
    for part, is_array, shape in zip(parts, arrays, shapes, strict=True):
      if (is_array and tuple(part.shape) != tuple(shape)) or (
        not is_array and jax.tree.leaves(part)
      ):
        return False
    return any(arrays)

  marks = jax.tree.map(
    lambda node: jax.tree.map(lambda _: True, node) if mirrors(node) else False,
    tree,
    is_leaf=mirrors,
  )
  return jax.tree.leaves(marks)


_PROBE_STEPS = 8  # enough for optax.MultiSteps(every_k_schedule <= 8) to reach its inner step


def _probe_signed(inner: Any, params: optax.Params, state_def: Any) -> list[bool] | None:
  """Per state leaf, whether it can be negative; ``None`` if the probe does not apply."""

  def run(sign: int) -> Any:
    stand_in = jax.tree.map(lambda p: jnp.ones((1,) * jnp.ndim(p), jnp.result_type(p)), params)
    grads = jax.tree.map(lambda p: sign * p, stand_in)
    step = lambda _, state: inner.update(grads, state, stand_in)[1]  # noqa: E731
    return jax.lax.fori_loop(0, _PROBE_STEPS, step, inner.init(stand_in))

  with jax.ensure_compile_time_eval():  # concrete even inside jit or eval_shape
    try:
      ends = [jax.jit(run, static_argnums=0)(sign) for sign in (1, -1)]
    except Exception:  # any failure only means that the probe does not apply
      return None
    if jax.tree.structure(ends[0]) != state_def:
      return None
    signed = []
    for after_plus, after_minus in zip(*(jax.tree.leaves(end) for end in ends), strict=True):
      if not jnp.issubdtype(jnp.result_type(after_plus), jnp.floating):
        signed.append(True)  # never quantized: counts, complex moments
        continue
      values = jnp.stack([jnp.ravel(after_plus), jnp.ravel(after_minus)]).astype(jnp.float32)
      unsigned = bool(jnp.all(values >= 0)) and bool(jnp.any(values > 0))
      signed.append(not unsigned)
  return signed


def quantized(
  optimizer: optax.GradientTransformation,
  bits: int = 8,
  *,
  block_size: int | None = None,
  min_size: int = 4096,
  signed: Callable[[str], bool | None] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps any optax optimizer so that its parameter-shaped state is kept in ``bits`` bits.

  Each step dequantizes the state, runs ``optimizer.update`` and quantizes
  the new state, all inside the caller's jitted step:

  .. math::

    (u_t, s_t) = \text{optimizer.update}(g_t, D(Q_{t-1})), \qquad Q_t = Q(s_t),

  where :math:`Q` stores every element of a block of ``block_size`` as a
  ``bits``-bit code of a companded map times the block's largest magnitude
  (see :class:`QuantizedArray`). State bytes per parameter of a quantized
  leaf, scales included: :math:`\tfrac{bits}{8} + 4/\text{block\_size}` per
  moment, so Adam's :math:`m, v` take 2.03 bytes at 8 bits and 1.06 at 4
  bits, instead of 8 in float32.

  Which leaves are quantized, and with which map, is decided by structure
  and by a probe of the optimizer, never by field names; see
  the rules of the documentation's "Low-memory state" page: a subtree that
  mirrors the params is parameter-shaped; a probe of ``optimizer`` on
  one-element stand-ins picks the unsigned map for leaves that stay ``>= 0``.

  Args:
    optimizer: any :class:`optax.GradientTransformation` (or object with
      ``init`` and ``update``, such as :class:`optax.MultiSteps`).
    bits: 8 or 4.
    block_size: elements per quantization block; ``None`` for 256 at 8 bits
      and 128 at 4 bits (torchao's choices). Must be even.
    min_size: leaves with fewer elements stay unquantized (bitsandbytes keeps
      leaves under 4096 elements in 32 bits).
    signed: optional ``signed(path) -> True | False | None`` over the state
      leaves' paths (``jax.tree_util.keystr`` of the path in the inner state,
      e.g. ``"[0].nu['w']"``): ``True`` forces the signed map, ``False`` the
      unsigned map (values ``>= 0``; negative values would be stored as the
      smallest positive level), ``None`` keeps the probe's choice.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`QuantizedState`.

  Raises:
    ValueError: ``bits``, ``block_size`` or ``min_size`` is out of range.
    TypeError: ``optimizer`` has no ``init``/``update``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> optimizer = adam_optax.quantized(adam_optax.adam(1e-3), bits=8, min_size=16)
    >>> params = {"w": jnp.ones((64, 64)), "b": jnp.zeros(8)}
    >>> state = optimizer.init(params)
    >>> moments = state.inner_state[0]
    >>> type(moments.mu["w"]).__name__, moments.mu["w"].signed, moments.nu["w"].signed
    ('QuantizedArray', True, False)
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
  if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
    raise ValueError(f"{owner}(bits={bits!r}): bits must be 8 or 4")
  if block_size is None:
    block_size = _DEFAULT_BLOCK[bits]
  if (
    isinstance(block_size, bool)
    or not isinstance(block_size, int)
    or block_size < 2
    or block_size % 2
  ):
    raise ValueError(f"{owner}(block_size={block_size!r}): block_size must be an even int >= 2")
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
    raise ValueError(f"{owner}(min_size={min_size!r}): min_size must be an int >= 0")
  if signed is not None and not callable(signed):
    raise ValueError(
      f"{owner}(signed={signed!r}): signed must be None or a function of the leaf's path"
    )
  inner = optax.with_extra_args_support(optimizer)

  def _check_layout(updates: optax.Updates, stored: Any) -> None:
    """Raises if ``stored`` was quantized by another configuration (or not at all)."""
    for path, node in jax.tree_util.tree_flatten_with_path(stored, is_leaf=_lost_metadata)[0]:
      if _lost_metadata(node):
        raise TypeError(
          f"{owner}.update: the state at {jax.tree_util.keystr(path)} is a "
          f"{type(node).__name__} of 'codes' and 'scales' where a QuantizedArray belongs: "
          "something rebuilt the state without its metadata (flax.nnx.Optimizer does, "
          "storing it as nnx.State). Keep the state as optimizer.init returns it, e.g. with "
          "nnx.split and a plain optax step (see the documentation's 'Low-memory state')."
        )
    flat, layout_def = jax.tree_util.tree_flatten_with_path(stored, is_leaf=_is_quantized)
    stand_ins = [
      jax.ShapeDtypeStruct(x.array_shape, x.array_dtype) if _is_quantized(x) else x for _, x in flat
    ]
    shaped = param_shaped_leaves(updates, jax.tree.unflatten(layout_def, stand_ins))
    for (path, leaf), mirror in zip(flat, shaped, strict=True):
      if _is_quantized(leaf):
        layout = (leaf.bits, leaf.block_size)
        if layout != (bits, block_size) or not mirror or leaf_size(leaf) < min_size:
          raise ValueError(
            f"{owner}.update: the state at {jax.tree_util.keystr(path)} was quantized with "
            f"bits={leaf.bits}, block_size={leaf.block_size} ({leaf_size(leaf)} elements), "
            f"but this optimizer has bits={bits}, block_size={block_size}, "
            f"min_size={min_size}. Was the state made by another quantized(...) "
            "configuration? Initialise it with this optimizer's init."
          )
      elif (
        mirror
        and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        and jnp.size(leaf) >= min_size
      ):
        raise ValueError(
          f"{owner}.update: the state at {jax.tree_util.keystr(path)} is a plain "
          f"{jnp.result_type(leaf)}{list(jnp.shape(leaf))} array, but this optimizer "
          f"keeps parameter-shaped leaves of >= min_size={min_size} elements quantized. Was "
          "the state made by the unwrapped optimizer? Initialise it with this optimizer's init."
        )

  def init_fn(params: optax.Params) -> QuantizedState:
    state = inner.init(params)
    if _PLAIN.get():
      return QuantizedState(inner_state=state)
    flat, state_def = jax.tree_util.tree_flatten_with_path(state)
    shaped = param_shaped_leaves(params, state)
    probed = _probe_signed(inner, params, state_def) or [True] * len(flat)
    leaves = []
    for (path, leaf), mirror, probe in zip(flat, shaped, probed, strict=True):
      big = jnp.issubdtype(jnp.result_type(leaf), jnp.floating) and jnp.size(leaf) >= min_size
      if not (mirror and big):
        leaves.append(leaf)
        continue
      choice = signed(jax.tree_util.keystr(path)) if signed is not None else None
      is_signed = probe if choice is None else bool(choice)
      leaves.append(encode(leaf, bits, signed=is_signed, block_size=block_size))
    return QuantizedState(inner_state=jax.tree.unflatten(state_def, leaves))

  def update_fn(
    updates: optax.Updates,
    state: QuantizedState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, QuantizedState]:
    check_state_type(owner, state, QuantizedState)
    stored = state.inner_state
    _check_layout(updates, stored)
    updates, new_state = inner.update(updates, dequantized(stored), params, **extra_args)

    def requantize(path: Any, old: Any, new: Any) -> Any:
      if not _is_quantized(old):
        return new
      if jnp.shape(new) != old.array_shape or jnp.result_type(new) != old.array_dtype:
        raise ValueError(
          f"{owner}: the inner optimizer's state at {jax.tree_util.keystr(path)} changed "
          f"from {old.array_dtype}{list(old.array_shape)} to "
          f"{jnp.result_type(new)}{list(jnp.shape(new))} in update; a quantized leaf must "
          "keep its shape and dtype."
        )
      fresh = encode(new, old.bits, signed=old.signed, block_size=old.block_size)
      return jax.tree.map(_placed_like, fresh, old)

    stored = jax.tree_util.tree_map_with_path(requantize, stored, new_state, is_leaf=_is_quantized)
    return updates, QuantizedState(inner_state=stored)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
