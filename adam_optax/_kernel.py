"""The fused CPU kernel (``csrc/adam_fused_cpu.cc``) as a JAX operation.

:func:`load_error` finds the compiled library next to this module and
registers its XLA FFI handlers. :func:`fused_call` runs it on the buffers of a
whole parameter tree, or runs ``xla_impl`` (the same arithmetic written with
JAX operations) wherever the kernel cannot:

- under differentiation: a :func:`jax.custom_jvp` whose rule is the JVP of
  ``xla_impl``, so derivatives (and the values returned with them) are the
  XLA path's;
- under :func:`jax.vmap`: ``xla_impl`` vectorised;
- on any platform but CPU: where the default backend is a GPU or TPU,
  :func:`jax.lax.platform_dependent` picks ``xla_impl`` for computations
  lowered for it and the kernel for those lowered for the CPU;
- on operands sharded over several devices: a
  :func:`~jax.experimental.custom_partitioning.custom_partitioning` rule runs
  the kernel on each device's shards, never gathering a leaf.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.metadata
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import (
  ArrayMapping,
  SdyShardingRule,
  custom_partitioning,
)

# Library file name (the build writes it next to this module) and ABI version:
# both must match csrc/adam_fused_cpu.cc.
LIBRARY = "_adam_fused_cpu.so"
NOTE = "_adam_fused_cpu.not-built.txt"  # the build's reason, when it could not build LIBRARY
ABI_VERSION = 4
TARGETS = {
  np.dtype(np.float32): "adam_optax_fused_f32",
  np.dtype(np.float64): "adam_optax_fused_f64",
}
_SYMBOLS = {
  "adam_optax_fused_f32": "AdamOptaxFusedF32",
  "adam_optax_fused_f64": "AdamOptaxFusedF64",
}

# Bits of the kernel's "mode" attribute and of its per-leaf flags.
NESTEROV, AMSGRAD, INSIDE, INFINITY, UNIT_LR, UNIT_DECAY = (1 << i for i in range(6))
DECAY = 1


@functools.cache
def load_error() -> str | None:
  """Loads and registers the kernel once; ``None`` on success, else why not.

  ``ADAM_OPTAX_FUSED_LIBRARY`` names another library file to load (the tests
  use it to simulate a missing build).
  """
  path = Path(os.environ.get("ADAM_OPTAX_FUSED_LIBRARY", Path(__file__).with_name(LIBRARY)))
  if not path.exists():
    note = path.with_name(NOTE)
    why = f": {note.read_text().strip()}" if note.exists() else ""
    return (
      f"{path.name} was not built when adam_optax was installed{why}. Installing adam_optax "
      "compiles it where a C++17 compiler is found: install one (g++ or clang++; CXX names "
      "another) and reinstall adam_optax from source (pip install --force-reinstall "
      "--no-deps --no-binary adam_optax adam_optax, or pip install -e . in a checkout), or "
      "pass fused=False"
    )
  try:
    library = ctypes.CDLL(str(path))
    abi = int(library.AdamOptaxFusedAbiVersion())
    library.AdamOptaxFusedJaxlibVersion.restype = ctypes.c_char_p
    built_for = library.AdamOptaxFusedJaxlibVersion().decode()
  except (OSError, AttributeError) as error:
    return f"{path} cannot be loaded: {error}"
  if abi != ABI_VERSION:
    return f"{path} was built from another version of the kernel; reinstall adam_optax"
  running = importlib.metadata.version("jaxlib")
  if _version(running) < _version(built_for):
    return (
      f"{path} was compiled against jaxlib {built_for}'s FFI, newer than the "
      f"jaxlib {running} running it; reinstall adam_optax"
    )
  for target, symbol in _SYMBOLS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), "cpu")
  return None


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@dataclasses.dataclass(frozen=True)
class Call:
  """One kernel call's static configuration (hashable: it parameterises traces).

  Attributes:
    dtype: the compute dtype, float32 or float64: the scalars' dtype.
    mode: the mode bits (``NESTEROV | AMSGRAD | ...``).
    leaf_flags: per leaf, its flag bits (``DECAY``).
    options: hashable options for ``xla_impl``.
    xla_impl: ``xla_impl(call, scalars, operands) -> results``, the same
      arithmetic in JAX operations.
  """

  dtype: np.dtype
  mode: int
  leaf_flags: tuple[int, ...]
  options: Any
  xla_impl: Callable[[Call, jax.Array, Sequence[jax.Array]], list[jax.Array]]

  @property
  def inputs_per_leaf(self) -> int:
    """g, m, v, [nu_max], p."""
    return 4 + bool(self.mode & AMSGRAD)

  @property
  def outputs_per_leaf(self) -> int:
    """p, m, v, [nu_max]."""
    return 3 + bool(self.mode & AMSGRAD)

  def leaves(self, operands: Sequence[Any]) -> list[Sequence[Any]]:
    """``operands`` (leaf after leaf) cut into one group per leaf."""
    size = self.inputs_per_leaf
    return [operands[i : i + size] for i in range(0, len(operands), size)]

  def result_types(self, operands: Sequence[Any]) -> list[jax.ShapeDtypeStruct]:
    """The results' shapes and dtypes: the new params, then the state's."""
    types = []
    for leaf in self.leaves(operands):
      for array in (leaf[-1], *leaf[1 : self.outputs_per_leaf]):
        types.append(jax.ShapeDtypeStruct(jnp.shape(array), jnp.result_type(array)))
    return types

  def aliases(self) -> dict[int, int]:
    """Operand -> result aliasing: everything is updated in place.

    The state over the state, the params over the params. (Where an operand
    is still needed afterwards, e.g. params passed to a jitted step without
    donation, XLA copies it first.)
    """
    ins, outs = self.inputs_per_leaf, self.outputs_per_leaf
    pairs = {}
    for leaf in range(len(self.leaf_flags)):
      for k in range(1, outs):  # m, v, nu_max; operand 0 is the scalars
        pairs[1 + leaf * ins + k] = leaf * outs + k
      pairs[1 + leaf * ins + ins - 1] = leaf * outs  # p
    return pairs


def _ffi(call: Call, scalars: jax.Array, *operands: jax.Array) -> list[jax.Array]:
  """The kernel itself, on whatever (local) buffers it is given."""
  kernel = jax.ffi.ffi_call(
    TARGETS[call.dtype],
    call.result_types(operands),
    input_output_aliases=call.aliases(),
    vmap_method="sequential",
  )
  return list(
    kernel(
      scalars,
      *operands,
      mode=np.int64(call.mode),
      leaf_flags=np.asarray(call.leaf_flags, np.int64),
    )
  )


def _sharding_rule(call: Call, operands: Sequence[Any]) -> SdyShardingRule:
  """Every leaf elementwise: its operands and results share one factor per dimension."""
  inputs: list[ArrayMapping] = [ArrayMapping("s")]
  results: list[ArrayMapping] = []
  for index, leaf in enumerate(call.leaves(operands)):
    factors = ArrayMapping(*(f"l{index}d{d}" for d in range(jnp.ndim(leaf[0]))))
    inputs += [factors] * len(leaf)
    results += [factors] * call.outputs_per_leaf
  return SdyShardingRule(
    operand_mappings=tuple(inputs),
    result_mappings=tuple(results),
    need_replication_factors=("s",),
  )


def _pieces(sharding: Any, shape: tuple[int, ...]) -> int:
  """Into how many distinct pieces ``sharding`` cuts an array of ``shape``."""
  indices = sharding.devices_indices_map(shape).values()
  return len({tuple((i.start, i.stop) for i in index) for index in indices})


def _leaf_shardings(call: Call, operand_shapes: Sequence[Any]) -> list[Any]:
  """One sharding per leaf: that of its most finely split operand.

  Under ZeRO-1 that is the state's: the replicated gradients and params are
  then sliced to match, which moves nothing between devices. No leaf is
  ever gathered.
  """
  chosen = []
  for leaf in call.leaves(operand_shapes):
    shape = tuple(leaf[0].shape)
    chosen.append(max((x.sharding for x in leaf), key=lambda s: _pieces(s, shape)))
  return chosen


def _on_cpu(call: Call, scalars: jax.Array, operands: Sequence[jax.Array]) -> list[jax.Array]:
  """The kernel, per device when the operands are sharded."""

  def kernel(scalars: jax.Array, *operands: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(_ffi(call, scalars, *operands))

  def partition(mesh: Any, arg_shapes: Any, result_shape: Any):
    del result_shape
    leaves = _leaf_shardings(call, arg_shapes[1:])
    arg_shardings = (
      arg_shapes[0].sharding,
      *(s for s in leaves for _ in range(call.inputs_per_leaf)),
    )
    return mesh, kernel, infer(mesh, arg_shapes, None), arg_shardings

  def infer(mesh: Any, arg_shapes: Any, result_shape: Any) -> tuple[Any, ...]:
    del mesh, result_shape
    leaves = _leaf_shardings(call, arg_shapes[1:])
    return tuple(s for s in leaves for _ in range(call.outputs_per_leaf))

  function = custom_partitioning(kernel)
  function.def_partition(
    partition=partition,
    infer_sharding_from_operands=infer,
    sharding_rule=_sharding_rule(call, operands),
  )
  return list(function(scalars, *operands))


def _batched(call: Call, axis_size: int, in_batched: list[Any], *args: Any):
  """Under vmap: the XLA arithmetic, vectorised (the kernel has no batch axis)."""
  del axis_size
  axes = [0 if batched else None for batched in in_batched]
  results = jax.vmap(
    lambda scalars, *operands: call.xla_impl(call, scalars, operands), in_axes=axes
  )(*args)
  return results, [True] * len(results)


def default_backend() -> str:
  """The platform computations run on unless told otherwise (tests replace it)."""
  return jax.default_backend()


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def fused_call(call: Call, scalars: jax.Array, operands: list[jax.Array]) -> list[jax.Array]:
  """The kernel on every leaf at once (see the module docstring for where it falls back).

  Args:
    call: the static configuration.
    scalars: the per-step scalars (csrc's ``enum Scalar``), of ``call.dtype``.
    operands: per leaf ``g, m, v, [nu_max], p``, leaf after leaf.

  Returns:
    Per leaf the new params ``p + u`` and ``m, v, [nu_max]``.
  """

  @jax.custom_batching.custom_vmap
  def kernel(scalars: jax.Array, *operands: jax.Array) -> list[jax.Array]:
    if default_backend() == "cpu":  # then nothing can be lowered for another platform
      return _on_cpu(call, scalars, operands)
    return jax.lax.platform_dependent(  # traces both: only where it is needed
      scalars,
      list(operands),
      cpu=functools.partial(_on_cpu, call),
      default=functools.partial(call.xla_impl, call),
    )

  kernel.def_vmap(functools.partial(_batched, call))
  return kernel(scalars, *operands)


@fused_call.defjvp
def _fused_call_jvp(call: Call, primals: Any, tangents: Any) -> Any:
  return jax.jvp(functools.partial(call.xla_impl, call), primals, tangents)
