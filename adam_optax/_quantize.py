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

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

BITS = (4, 8)
# The companding exponent p of each map, (bits, signed) -> p, chosen by measurement.
POWERS = {(8, True): 2, (8, False): 4, (4, True): 2, (4, False): 4}


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


def explicit_sharding(x: Any) -> jax.sharding.NamedSharding | None:
  """``x``'s sharding if it is split over a mesh of ``Explicit`` axes, else ``None``."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  types = getattr(getattr(sharding, "mesh", None), "axis_types", ())
  if not any(t == jax.sharding.AxisType.Explicit for t in types):
    return None
  spec = getattr(sharding, "spec", ())
  return sharding if any(axis is not None for axis in spec) else None


def replicated_if_explicit(flat: jax.Array) -> jax.Array:
  """``flat`` gathered whole on every device if split over explicit mesh axes.

  Blocks need not line up with the devices' pieces (a (64, 100) param split 8
  ways is 800 elements a device, 3.125 blocks of 256), and an explicit mesh
  refuses a reshape that would move elements between devices. Encoded codes
  are then born replicated, as ``state_shardings`` places them (the caller
  reshards them to the state's own sharding, e.g. ZeRO-1's); decoding
  gathers ZeRO-1's pieces, one leaf at a time.
  """
  sharding = explicit_sharding(flat)
  if sharding is None:
    return flat
  return jax.sharding.reshard(flat, jax.sharding.NamedSharding(sharding.mesh, P()))


def n_blocks(size: int, block_size: int) -> int:
  """The number of blocks of ``block_size`` that hold ``size`` elements (at least one)."""
  return max(1, -(-size // block_size))


def encode(
  x: jax.Array, bits: int, *, signed: bool, block_size: int, power: int | None = None
) -> tuple[jax.Array, jax.Array]:
  """Quantizes ``x`` block-wise; see the module docstring for the maps.

  Args:
    x: a floating array of any shape; it is flattened and zero-padded to whole
      blocks.
    bits: 8 or 4.
    signed: the signed map, or the unsigned one for values ``>= 0`` (negative
      values are clipped to the smallest level).
    block_size: elements per block (even at 4 bits).
    power: the companding exponent; ``None`` for the chosen one (:data:`POWERS`).

  Returns:
    ``(codes, scales)``: ``uint8[n_blocks, block_size * bits // 8]`` (at 4 bits
    two codes a byte, the even element in the low nibble) and
    ``float32[n_blocks]``, each block's largest magnitude (NaN for a block
    that held a NaN or an infinity).
  """
  p = POWERS[bits, signed] if power is None else power
  size = math.prod(x.shape)
  count = n_blocks(size, block_size)
  flat = replicated_if_explicit(jnp.ravel(x).astype(jnp.float32))
  flat = jnp.pad(flat, (0, count * block_size - size))
  blocks = flat.reshape(count, block_size)
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
  return codes, scales


def decode(
  codes: jax.Array, scales: jax.Array, bits: int, *, signed: bool, power: int | None = None
) -> jax.Array:
  """The float32 blocks that :func:`encode`'s ``(codes, scales)`` stand for.

  Args:
    codes: ``uint8`` codes, any shape whose leading dimension is the block.
    scales: ``float32[n_blocks]``.
    bits: 8 or 4.
    signed: which map encoded them.
    power: the companding exponent; ``None`` for the chosen one (:data:`POWERS`).

  Returns:
    ``float32[n_blocks, block_size]``, padding included.
  """
  p = POWERS[bits, signed] if power is None else power
  scales = replicated_if_explicit(scales)
  codes = replicated_if_explicit(codes).reshape(scales.shape[0], -1)
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
  return y * scales[:, None]
