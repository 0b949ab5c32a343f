r"""Block-wise quantization of one array: codes of 8 or 4 bits and a float32 scale per block.

An array is flattened, zero-padded to whole blocks of ``block_size`` elements
and each block :math:`b` is normalised by its largest magnitude
:math:`s_b = \max_i |x_i|` (Dettmers et al., 2022). A normalised value
:math:`y \in [-1, 1]` is stored as the nearest level of a *power-companded*
map, evenly spaced in :math:`|y|^{1/p}` (no lookup table: one root to encode,
one integer power to decode; FlashOptim's "companding" idea):

- **signed** (first moments, any sign): :math:`h = 2^{k-1} - 1` and
  :math:`\hat y = \operatorname{sign}(q) (|q| / h)^p`, :math:`q \in [-h, h]`:
  255 levels at 8 bits, 15 at 4, symmetric, zero included.
- **unsigned** (second moments, :math:`\ge 0` by construction):
  :math:`\hat y = ((c + 1) / 2^k)^p`, :math:`c \in [0, 2^k)`: zero *excluded*,
  so a small second moment is never decoded as 0, which would blow up the
  step :math:`m / (\sqrt{v} + \epsilon)` (the "zero-point problem" of Li et al.,
  2023). A true zero decodes to :math:`s_b / 2^{kp}`.

The exponents :math:`p` (:data:`POWERS`) were chosen by measuring the
round-trip error on real Adam moments (``benchmarks/quantized_maps.py``).

A block holding a NaN or an infinity gets a NaN scale, so the whole block
decodes to NaN: visibly poisoned, never silently turned into finite numbers
(and caught by :func:`adam_optax.skip_nonfinite`, which sees the NaN).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BITS = (4, 8)
# The companding exponent p of each map, (bits, signed) -> p, chosen by measurement.
POWERS = {(8, True): 2, (8, False): 4, (4, True): 2, (4, False): 4}


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["codes", "scales"],
  meta_fields=["array_shape", "array_dtype", "bits", "signed"],
)
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """An array stored block-wise quantized; a pytree whose leaves are ``codes`` and ``scales``.

  It deliberately has no ``shape``/``dtype`` attributes, so that code that
  recognises arrays by them (sharding rules, ``jax.eval_shape`` consumers)
  treats it as the small tree of arrays it is, not as the array it encodes.

  Attributes:
    codes: ``uint8[n_blocks * block_size]`` at 8 bits; at 4 bits
      ``uint8[n_blocks * block_size // 2]``, two codes a byte (the even element
      in the low nibble). Flat, block after block: split evenly over ``k``
      devices (ZeRO-1), each device holds whole blocks whenever ``k`` divides
      ``n_blocks``, and then exactly the blocks whose ``scales`` it holds.
    scales: ``float32[n_blocks]``, each block's largest magnitude (NaN for a
      block that held a NaN or an infinity).
    array_shape: the original array's shape.
    array_dtype: the original array's dtype, restored by :meth:`dequantize`.
    bits: 8 or 4.
    signed: whether the signed map (any sign) or the unsigned map (values
      ``>= 0``, zero excluded) was used.
  """

  codes: jax.Array
  scales: jax.Array
  array_shape: tuple[int, ...]
  array_dtype: Any
  bits: int
  signed: bool

  @property
  def block_size(self) -> int:
    """The number of elements per block."""
    return int(self.codes.shape[0]) * (8 // self.bits) // int(self.scales.shape[0])

  def dequantize(self) -> jax.Array:
    """The array these codes stand for, in its original shape and dtype."""
    return decode(self)


def levels(bits: int, signed: bool, power: int | None = None) -> np.ndarray:
  """All values of a normalised map, ascending, in float64 (for tests and benchmarks)."""
  p = POWERS[bits, signed] if power is None else power
  if signed:
    half = 2 ** (bits - 1) - 1
    q = np.arange(-half, half + 1, dtype=np.float64) / half
    return np.sign(q) * np.abs(q) ** p
  return ((np.arange(2**bits, dtype=np.float64) + 1) / 2**bits) ** p


def _root(y: jax.Array, power: int) -> jax.Array:
  """:math:`y^{1/p}` for ``y >= 0``, by square roots where they suffice."""
  if power == 1:
    return y
  if power == 2:
    return jnp.sqrt(y)
  if power == 4:
    return jnp.sqrt(jnp.sqrt(y))
  return jnp.power(y, jnp.asarray(1.0 / power, y.dtype))


def encode(
  x: jax.Array, bits: int, *, signed: bool, block_size: int, power: int | None = None
) -> QuantizedArray:
  """Quantizes ``x`` block-wise; see the module docstring for the maps.

  Args:
    x: a floating array of any shape.
    bits: 8 or 4.
    signed: the signed map, or the unsigned one for values ``>= 0`` (negative
      values are clipped to the smallest level).
    block_size: elements per block (even at 4 bits).
    power: the companding exponent; ``None`` for the chosen one (:data:`POWERS`).

  Returns:
    The :class:`QuantizedArray`.
  """
  p = POWERS[bits, signed] if power is None else power
  size = math.prod(x.shape)
  n_blocks = max(1, -(-size // block_size))
  flat = jnp.ravel(x).astype(jnp.float32)
  flat = jnp.pad(flat, (0, n_blocks * block_size - size))
  blocks = flat.reshape(n_blocks, block_size)
  magnitude = jnp.abs(blocks)
  finite = jnp.all(jnp.isfinite(blocks), axis=1)
  absmax = jnp.max(jnp.where(jnp.isfinite(magnitude), magnitude, 0), axis=1)
  scales = jnp.where(finite, absmax, jnp.float32(jnp.nan))
  safe = jnp.where(absmax > 0, absmax, jnp.ones([], jnp.float32))
  y = jnp.clip(blocks / safe[:, None], -1, 1)
  if signed:
    half = 2 ** (bits - 1) - 1
    q = jnp.round(jnp.sign(y) * _root(jnp.abs(y), p) * half)
    codes = (q + (half + 1)).astype(jnp.uint8)
  else:
    top = 2**bits
    c = jnp.round(_root(jnp.maximum(y, 0), p) * top) - 1
    codes = jnp.clip(c, 0, top - 1).astype(jnp.uint8)
  if bits == 4:
    codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
  return QuantizedArray(codes.reshape(-1), scales, tuple(x.shape), np.dtype(x.dtype), bits, signed)


def decode(quantized: QuantizedArray, power: int | None = None) -> jax.Array:
  """The array a :class:`QuantizedArray` stands for (the inverse of :func:`encode`)."""
  bits, signed = quantized.bits, quantized.signed
  p = POWERS[bits, signed] if power is None else power
  codes = quantized.codes.reshape(quantized.scales.shape[0], -1)
  if bits == 4:
    low, high = codes & 15, codes >> 4
    codes = jnp.stack([low, high], axis=-1).reshape(codes.shape[0], -1)
  c = codes.astype(jnp.float32)
  if signed:
    half = 2 ** (bits - 1) - 1
    z = (c - (half + 1)) / half
    y = z * jax.lax.integer_pow(jnp.abs(z), p - 1)
  else:
    y = jax.lax.integer_pow((c + 1) / 2**bits, p)
  flat = (y * quantized.scales[:, None]).reshape(-1)
  size = math.prod(quantized.array_shape)
  return flat[:size].reshape(quantized.array_shape).astype(quantized.array_dtype)
