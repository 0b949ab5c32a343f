"""Sharded optimizer state over a :class:`jax.sharding.Mesh`, including ZeRO-1.

Nothing here communicates by itself: it only decides *where* each leaf of an
optimizer state lives, as :class:`jax.sharding.NamedSharding`\\ s, and hands
those to :func:`jax.jit`. XLA's SPMD partitioner then inserts the collectives,
on one host or on several joined by :func:`jax.distributed.initialize`.

How a state leaf gets its sharding (generic over any optax state pytree, no
field names are used):

1. A subtree of the state that *mirrors the params* (the params' tree
   structure, each leaf an array of the same shape as its param, or an empty
   node such as ``None`` or :class:`optax.MaskedNode`) takes the params'
   shardings leaf by leaf. This covers ``mu`` and ``nu`` of :func:`adam`, the
   inner states of :func:`optax.chain`, :func:`optax.inject_hyperparams` and
   :func:`optax.masked`, whatever their dtypes.
2. Every other leaf (step counts, injected hyperparameters, buffers laid out
   differently from the params) is replicated over the params' mesh.
3. With ``zero1_axis`` (ZeRO stage 1), each leaf that is not already split
   over that mesh axis is additionally split along one of its dimensions: the
   largest dimension that no other mesh axis shards and whose size is a
   multiple of the axis size (the first such on a tie). Leaves with no such
   dimension (scalars, the count, small odd-sized biases) stay replicated over
   the axis; :func:`state_memory` lists the ones that end up whole on every
   device. Uneven splits are never made, so no leaf is padded.

A fused ("bucketed") state that keeps the moments of many params in a few flat
buffers does not mirror the params, so rule 2 replicates those buffers and
ZeRO-1 splits them along their length when it divides by the axis size. Such a
buffer mixes several params, so it cannot follow model-parallel param
shardings; with params sharded over a model axis it is held whole on that axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adam_optax._fused import update_and_apply

PyTree = Any
AxisNames = str | tuple[str, ...]
_MISSING = "no sharding"  # a leaf, unlike None


def _path_str(path: tuple[Any, ...]) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def _is_array_like(x: Any) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _abstract(tree: PyTree) -> PyTree:
  """The tree's leaves as :class:`jax.ShapeDtypeStruct`\\ s, without shardings or data."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(_shape(x), jax.numpy.result_type(x)), tree)


def _resolve_param_shardings(
  owner: str, params: PyTree, param_shardings: Any
) -> tuple[PyTree, Any]:
  """One :class:`NamedSharding` per param leaf, and their one mesh (``None`` if no leaves)."""
  if param_shardings is None:
    shardings = jax.tree.map(lambda p: getattr(p, "sharding", _MISSING), params)
    source = "the params' own .sharding"
  elif isinstance(param_shardings, Mesh):
    replicated = NamedSharding(param_shardings, PartitionSpec())
    shardings = jax.tree.map(lambda _: replicated, params)
    source = "param_shardings"
  else:
    source = "param_shardings"
    try:
      shardings = jax.tree.map(
        lambda s, sub: jax.tree.map(lambda _: s, sub),
        param_shardings,
        params,
        is_leaf=lambda x: x is None or isinstance(x, jax.sharding.Sharding),
      )
    except (ValueError, TypeError) as error:
      raise ValueError(
        f"{owner}(param_shardings=...): expected a Mesh, a NamedSharding, or a tree "
        f"of NamedShardings matching (a prefix of) the params' structure; got "
        f"{jax.tree.structure(param_shardings)} for params {jax.tree.structure(params)}."
      ) from error
  mesh = None
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, param), sharding in zip(flat, jax.tree.leaves(shardings), strict=True):
    where = _path_str(path)
    if not isinstance(sharding, NamedSharding):
      raise ValueError(
        f"{owner}(param_shardings=...): {source} at params{where} is {sharding!r}; "
        "expected a jax.sharding.NamedSharding (pass param_shardings, or a Mesh for "
        "params replicated over it)."
      )
    if len(sharding.spec) > len(_shape(param)):
      raise ValueError(
        f"{owner}(param_shardings=...): params{where} has shape {_shape(param)} but "
        f"its sharding's spec {sharding.spec} has {len(sharding.spec)} entries."
      )
    if mesh is None:
      mesh = sharding.mesh
    elif sharding.mesh != mesh:
      raise ValueError(
        f"{owner}(param_shardings=...): all params must live on one mesh; params{where} "
        f"is on {sharding.mesh}, an earlier param on {mesh}."
      )
  return shardings, mesh


def _axis_tuple(owner: str, mesh: Mesh, zero1_axis: AxisNames) -> tuple[str, ...]:
  expected = "a mesh axis name or a tuple of distinct names"
  if isinstance(zero1_axis, str):
    names: tuple[Any, ...] = (zero1_axis,)
  elif isinstance(zero1_axis, (tuple, list)):
    names = tuple(zero1_axis)
  else:
    raise TypeError(
      f"{owner}(zero1_axis={zero1_axis!r}): zero1_axis must be {expected}, such as "
      f"'data'; got {type(zero1_axis).__name__}"
    )
  if len(set(names)) != len(names):
    raise ValueError(f"{owner}(zero1_axis={zero1_axis!r}): zero1_axis must be {expected}")
  for name in names:
    if name not in mesh.shape:
      raise ValueError(
        f"{owner}(zero1_axis={zero1_axis!r}): {name!r} is not an axis of the params' "
        f"mesh, whose axes are {tuple(mesh.axis_names)}."
      )
  if not names:
    raise ValueError(f"{owner}(zero1_axis={zero1_axis!r}): name at least one mesh axis.")
  return names


def _spec_axes(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def _zero1_spec(
  shape: tuple[int, ...], spec: PartitionSpec, axes: tuple[str, ...], axis_size: int
) -> PartitionSpec | None:
  """``spec`` with ``axes`` added on the best dimension of ``shape``, or ``None``.

  The chosen dimension is the largest one that ``spec`` leaves unsharded and
  whose size is a positive multiple of ``axis_size`` (the first on a tie).
  ``spec`` is returned unchanged when it already uses one of ``axes``; ``None``
  means the leaf cannot be split evenly.
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  if any(name in axes for entry in entries for name in _spec_axes(entry)):
    return spec
  best = None
  for dim, (size, entry) in enumerate(zip(shape, entries, strict=True)):
    fits = entry is None and size >= axis_size and size % axis_size == 0
    if fits and (best is None or size > shape[best]):
      best = dim
  if best is None:
    return None
  entries[best] = axes[0] if len(axes) == 1 else axes
  while entries and entries[-1] is None:
    entries.pop()
  return PartitionSpec(*entries)


def _check_optimizer(owner: str, optimizer: Any) -> None:
  if not callable(getattr(optimizer, "init", None)):
    raise TypeError(
      f"{owner}(optimizer=...): expected an optax.GradientTransformation (anything "
      f"with an init(params) method), got {type(optimizer).__name__}; did you pass "
      "the factory (adam) instead of the optimizer (adam(learning_rate))?"
    )


def state_shardings(
  optimizer: optax.GradientTransformation,
  params: PyTree,
  param_shardings: PyTree | Mesh | None = None,
  *,
  zero1_axis: AxisNames | None = None,
) -> PyTree:
  """Shardings for every leaf of ``optimizer.init(params)``, computed without allocating it.

  The rules are in this module's docstring: param-shaped parts of the state
  follow the params' shardings, everything else is replicated, and with
  ``zero1_axis`` every leaf is further split over that axis where one of its
  dimensions divides evenly (ZeRO stage 1: parameters replicated over the data
  axis, optimizer state partitioned over it).

  Args:
    optimizer: any :class:`optax.GradientTransformation` (or object with an
      ``init``, such as :class:`optax.MultiSteps`); its ``init`` is traced
      with :func:`jax.eval_shape`, never run.
    params: the params, as arrays or :class:`jax.ShapeDtypeStruct`\\ s; only
      shapes and dtypes are read.
    param_shardings: where the params live: a tree of
      :class:`~jax.sharding.NamedSharding` matching the params (or a prefix of
      it, e.g. one sharding for all), a :class:`~jax.sharding.Mesh` meaning
      "replicated over this mesh", or ``None`` to read each param's own
      ``.sharding``. All must share one mesh.
    zero1_axis: a mesh axis name (or a tuple of names, used together) to
      partition the state over, typically the data-parallel axis; ``None``
      keeps the state sharded exactly like the params.

  Returns:
    A tree of :class:`~jax.sharding.NamedSharding` with the structure of
    ``jax.eval_shape(optimizer.init, params)``; pass it to
    :func:`init_sharded` and as ``in_shardings``/``out_shardings`` of a jitted
    step (see :func:`sharded_train_step`).

  Raises:
    ValueError: a param's sharding is missing, not a ``NamedSharding``, on a
      different mesh, or has more spec entries than the param has dimensions;
      or ``zero1_axis`` is not an axis of the mesh.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import adam_optax
    >>> mesh = jax.make_mesh((8,), ("data",))
    >>> params = {"w": jnp.zeros((16, 3)), "b": jnp.zeros(3)}
    >>> shardings = adam_optax.state_shardings(
    ...     adam_optax.adam(1e-3), params, mesh, zero1_axis="data")
    >>> moments = shardings[0]
    >>> moments.mu["w"].spec, moments.mu["b"].spec, moments.count.spec
    (P('data',), P(), P())
  """
  owner = "state_shardings"
  _check_optimizer(owner, optimizer)
  shardings, mesh = _resolve_param_shardings(owner, params, param_shardings)
  if mesh is None:
    raise ValueError(
      f"{owner}(param_shardings=...): the params have no array leaves, so no mesh can "
      "be read from their shardings; pass the Mesh itself as param_shardings."
    )
  abstract_params = _abstract(params)
  params_def: Any = jax.tree.structure(abstract_params)  # PyTreeDef: jaxlib ships no stub
  param_leaves = jax.tree.leaves(abstract_params)
  sharding_leaves = jax.tree.leaves(shardings)
  # A new function each call: jax caches traces by function, and the state
  # converters trace ``init`` with quantization off (adam_optax._quantized.unquantized).
  abstract_state = jax.eval_shape(lambda p: optimizer.init(p), abstract_params)

  def mirror(node: Any) -> PyTree | None:
    """The params' shardings laid over ``node`` if it mirrors the params."""
    try:
      parts = params_def.flatten_up_to(node)
    except (ValueError, TypeError):
      return None
    matched = False
    out = []
    for part, param, sharding in zip(parts, param_leaves, sharding_leaves, strict=True):
      if _is_array_like(part) and tuple(part.shape) == tuple(param.shape):
        out.append(sharding)
        matched = True
      elif not _is_array_like(part) and not jax.tree.leaves(part):
        out.append(part)  # None, MaskedNode(), EmptyState(): nothing to place
      else:
        return None
    return params_def.unflatten(out) if matched else None

  replicated = NamedSharding(mesh, PartitionSpec())

  def place(node: Any) -> PyTree:
    mirrored = mirror(node)
    if mirrored is not None:
      return mirrored
    return replicated

  result = jax.tree.map(place, abstract_state, is_leaf=lambda n: mirror(n) is not None)
  if zero1_axis is None:
    return result
  axes = _axis_tuple(owner, mesh, zero1_axis)
  axis_size = int(np.prod([mesh.shape[name] for name in axes]))

  def split(leaf: jax.ShapeDtypeStruct, sharding: NamedSharding) -> NamedSharding:
    spec = _zero1_spec(tuple(leaf.shape), sharding.spec, axes, axis_size)
    return sharding if spec is None else NamedSharding(mesh, spec)

  return jax.tree.map(split, abstract_state, result)


def init_sharded(
  optimizer: optax.GradientTransformation, params: PyTree, shardings: PyTree
) -> optax.OptState:
  """``optimizer.init(params)``, created directly in ``shardings``.

  ``init`` runs inside :func:`jax.jit` with ``out_shardings=shardings``, so
  each device computes only its own shard: the state never exists whole on one
  device. Given abstract params (:class:`jax.ShapeDtypeStruct`\\ s) nothing
  runs at all and the abstract state comes back, each leaf a
  :class:`jax.ShapeDtypeStruct` carrying its sharding (for ahead-of-time
  lowering, or restoring a checkpoint straight into its shards).

  Args:
    optimizer: the :class:`optax.GradientTransformation` to initialise.
    params: the params (global :class:`jax.Array`\\ s, possibly spread over
      several processes), or all :class:`jax.ShapeDtypeStruct`\\ s.
    shardings: the state's shardings, from :func:`state_shardings`.

  Returns:
    The optimizer state, each leaf a :class:`jax.Array` with its sharding (or
    a :class:`jax.ShapeDtypeStruct` with it, for abstract params).

  Raises:
    ValueError: ``shardings`` does not have the structure of the state.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import adam_optax
    >>> mesh = jax.make_mesh((8,), ("data",))
    >>> params = {"w": jnp.zeros((16, 3))}
    >>> optimizer = adam_optax.adam(1e-3)
    >>> shardings = adam_optax.state_shardings(optimizer, params, mesh, zero1_axis="data")
    >>> state = adam_optax.init_sharded(optimizer, params, shardings)
    >>> state[0].mu["w"].sharding.spec, state[0].mu["w"].addressable_shards[0].data.shape
    (P('data',), (2, 3))
  """
  _check_optimizer("init_sharded", optimizer)
  state_def: Any = jax.tree.structure(jax.eval_shape(optimizer.init, _abstract(params)))
  sharding_def: Any = jax.tree.structure(shardings)
  if state_def != sharding_def:
    raise ValueError(
      "init_sharded(shardings=...): the tree of shardings does not match the structure "
      "of optimizer.init(params); build it with state_shardings(optimizer, params, ...)."
      f"\n  state:     {state_def}\n  shardings: {sharding_def}"
    )
  init = jax.jit(optimizer.init, out_shardings=shardings)
  leaves = jax.tree.leaves(params)
  if leaves and all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves):
    return jax.eval_shape(init, params)
  return init(params)


def _constrain(tree: PyTree, shardings: PyTree) -> PyTree:
  """Pins ``tree`` to ``shardings`` inside a jitted function.

  :func:`jax.lax.with_sharding_constraint` is a no-op assertion for meshes
  whose axes are all ``Explicit``, where :func:`jax.sharding.reshard` is the
  operation that changes a value's sharding; this picks per leaf.
  """

  def pin(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    types = getattr(sharding.mesh, "axis_types", ())
    if types and all(t == jax.sharding.AxisType.Explicit for t in types):
      return jax.sharding.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)

  return jax.tree.map(pin, tree, shardings)


def sharded_train_step(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  optimizer: optax.GradientTransformation,
  param_shardings: PyTree | Mesh,
  state_shardings: PyTree,
  batch_shardings: PyTree,
  *,
  donate: bool = True,
) -> Callable[[PyTree, optax.OptState, PyTree], tuple[PyTree, optax.OptState, jax.Array]]:
  """A jitted ``step(params, state, batch) -> (params, state, loss)`` that keeps its shardings.

  The step computes ``jax.value_and_grad(loss_fn)(params, batch)``, applies
  ``optimizer`` with :func:`adam_optax.update_and_apply` (so an optimizer made
  with ``fused=True`` runs its kernel), and returns params and state in exactly the shardings they
  came in with, step after step. With a ZeRO-1 state the partitioner reduces
  the gradients, updates each state shard where it lives and gathers the
  updates back onto the replicated params; nothing else is communicated. It
  works with meshes of ``Auto`` and of ``Explicit`` axes (under
  :func:`jax.set_mesh` too), and across processes.

  With several processes on CPU (gloo collectives), block on each step's
  outputs before dispatching the next one, as ``examples/data_parallel.py``
  does: with jax 0.10.2, steps queued asynchronously have deadlocked there.
  XLA:CPU reduces the gradients with an all-reduce (it does not rewrite
  all-reduce + slice into a reduce-scatter), so on CPU ZeRO-1 saves memory and
  adds one all-gather of the updates per step.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``; average over the global
      batch so that the result does not depend on how the batch is split.
    optimizer: the :class:`optax.GradientTransformation`.
    param_shardings: the params' shardings (a tree or prefix of
      :class:`~jax.sharding.NamedSharding`, or a :class:`~jax.sharding.Mesh`
      for replicated params), as given to :func:`state_shardings`.
    state_shardings: the state's shardings, from :func:`state_shardings`.
    batch_shardings: the batch's shardings (a tree or prefix), typically
      ``NamedSharding(mesh, PartitionSpec("data"))``.
    donate: donate the params and state buffers to the step (saves a copy of
      both; the arrays passed in are deleted by the call, see below).

  Returns:
    The jitted step. The loss comes back replicated. With ``donate=True`` it
    first checks that no param or state array it is given was deleted by an
    earlier donated call, and raises a ``ValueError`` naming the leaf if one
    was: with jax 0.10.2, handing a donated (deleted) array to a jitted
    function over several devices kills the interpreter with a segmentation
    fault instead of raising. The check costs one flag read per leaf;
    ``step.jitted`` is the unchecked function.

  Raises:
    ValueError: with ``donate=True``, when the step is given an array that an
      earlier donated call deleted (naming the leaf).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> import adam_optax
    >>> mesh = jax.make_mesh((8,), ("data",))
    >>> params = {"w": jnp.zeros((16, 3))}
    >>> optimizer = adam_optax.adam(1e-2)
    >>> shardings = adam_optax.state_shardings(optimizer, params, mesh, zero1_axis="data")
    >>> state = adam_optax.init_sharded(optimizer, params, shardings)
    >>> loss_fn = lambda params, x: jnp.mean((x @ params["w"] - 1.0) ** 2)
    >>> step = adam_optax.sharded_train_step(
    ...     loss_fn, optimizer, mesh, shardings, NamedSharding(mesh, P("data")))
    >>> old = params
    >>> params, state, loss = step(params, state, jnp.ones((8, 16)))
    >>> float(loss)
    1.0
    >>> step(old, state, jnp.ones((8, 16)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...
  """
  if isinstance(param_shardings, Mesh):
    param_shardings = NamedSharding(param_shardings, PartitionSpec())
  mesh = jax.tree.leaves(state_shardings)[0].mesh if jax.tree.leaves(state_shardings) else None
  if mesh is None:
    mesh = jax.tree.leaves(param_shardings)[0].mesh
  loss_sharding = NamedSharding(mesh, PartitionSpec())

  def step(params: PyTree, state: optax.OptState, batch: PyTree):
    full_param_shardings, _ = _resolve_param_shardings(
      "sharded_train_step", params, param_shardings
    )
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    params, state = update_and_apply(optimizer, grads, state, params)
    params = _constrain(params, full_param_shardings)
    state = _constrain(state, state_shardings)
    return params, state, loss

  jitted = jax.jit(
    step,
    in_shardings=(param_shardings, state_shardings, batch_shardings),
    out_shardings=(param_shardings, state_shardings, loss_sharding),
    donate_argnums=(0, 1) if donate else (),
  )
  return _DonationGuard(jitted) if donate else jitted


class _DonationGuard:
  """A donated jitted step that refuses deleted inputs instead of crashing on them."""

  def __init__(self, jitted: Any) -> None:
    self.jitted = jitted

  def __call__(self, params: PyTree, state: optax.OptState, batch: PyTree) -> Any:
    for name, tree in (("params", params), ("state", state)):
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and leaf.is_deleted():
          raise ValueError(
            f"sharded_train_step: {name}{_path_str(path)} was donated to an earlier step "
            "and no longer exists; pass the params and state that the last step returned "
            "(or build the step with donate=False to keep its inputs alive)."
          )
    return self.jitted(params, state, batch)

  def __getattr__(self, name: str) -> Any:  # lower, trace, eval_shape, ...
    return getattr(self.jitted, name)


class StateMemory(NamedTuple):
  """Where the bytes of a (sharded) tree of arrays live; see :func:`state_memory`.

  Attributes:
    total_bytes: the logical size of the tree, each leaf counted once.
    device_bytes: bytes held by each device, shards and replicas included.
    max_device_bytes: the largest entry of ``device_bytes``: what one device
      must fit.
    whole_leaves: paths of the non-scalar leaves that every device holds
      whole (fully replicated), e.g. state that ZeRO-1 could not split.
  """

  total_bytes: int
  device_bytes: dict[Any, int]
  max_device_bytes: int
  whole_leaves: tuple[str, ...]


def state_memory(tree: PyTree, shardings: PyTree | None = None) -> StateMemory:
  """Counts the bytes each device holds for ``tree``, from shardings alone.

  Nothing is transferred, so it is cheap and works for abstract trees (give
  ``shardings``, or :class:`jax.ShapeDtypeStruct`\\ s that carry them) and for
  arrays spread over several processes.

  Args:
    tree: arrays or :class:`jax.ShapeDtypeStruct`\\ s (e.g. an optimizer
      state).
    shardings: a matching tree of shardings; ``None`` reads each leaf's
      ``.sharding``.

  Returns:
    A :class:`StateMemory`.

  Raises:
    ValueError: a leaf has no sharding.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> import adam_optax
    >>> mesh = jax.make_mesh((8,), ("data",))
    >>> split, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    >>> tree = {  # abstract: nothing is allocated
    ...     "w": jax.ShapeDtypeStruct((16, 3), jnp.float32, sharding=split),
    ...     "b": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=whole)}
    >>> memory = adam_optax.state_memory(tree)
    >>> memory.total_bytes, memory.max_device_bytes, memory.whole_leaves
    (204, 36, ("['b']",))
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  if shardings is None:
    sharding_leaves = [getattr(leaf, "sharding", None) for _, leaf in flat]
  else:
    sharding_leaves = jax.tree.leaves(shardings)
    if len(sharding_leaves) != len(flat):
      raise ValueError(
        f"state_memory(shardings=...): {len(sharding_leaves)} shardings for "
        f"{len(flat)} leaves of the tree."
      )
  total = 0
  per_device: dict[Any, int] = {}
  whole = []
  for (path, leaf), sharding in zip(flat, sharding_leaves, strict=True):
    if sharding is None:
      raise ValueError(
        f"state_memory(tree=...): the leaf at {_path_str(path)} has no sharding; pass shardings."
      )
    shape = _shape(leaf)
    itemsize = np.dtype(leaf.dtype).itemsize
    total += int(np.prod(shape, dtype=np.int64)) * itemsize
    for device, index in sharding.devices_indices_map(shape).items():
      count = 1
      for size, piece in zip(shape, index, strict=True):
        count *= len(range(*piece.indices(size)))
      per_device[device] = per_device.get(device, 0) + count * itemsize
    if shape and sharding.is_fully_replicated:
      whole.append(_path_str(path))
  return StateMemory(
    total_bytes=total,
    device_bytes=per_device,
    max_device_bytes=max(per_device.values(), default=0),
    whole_leaves=tuple(whole),
  )
