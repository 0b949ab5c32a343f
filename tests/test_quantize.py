"""The block-wise quantizer: error bounds per block, edge values, packing, shapes and dtypes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adam_optax import _quantize

MAPS = [(bits, signed) for bits in (8, 4) for signed in (True, False)]


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _round_trips(xs: tuple, bits: int, signed: bool, block: int) -> list:
  """Per array of ``xs``: ``(decoded in its shape and dtype, codes, scales)``, in one compile."""
  out = []
  for x in xs:
    codes, scales = _quantize.encode(x, bits, signed=signed, block_size=block)
    flat = _quantize.decode(codes, scales, bits, signed=signed).reshape(-1)
    out.append((flat[: x.size].reshape(x.shape).astype(x.dtype), codes, scales))
  return out


def _round_trip(x, bits: int, signed: bool, block: int):
  """``(decoded in x's shape and dtype, codes, scales)``."""
  return _round_trips((x,), bits, signed, block)[0]


def _blocks_of_many_scales(signed: bool, blocks: int, block: int, seed: int = 0) -> np.ndarray:
  """Each block at its own scale (1e-30 to 1e30), with entries spread over 6 decades."""
  rng = np.random.default_rng(seed)
  scale = 10.0 ** rng.uniform(-30, 30, (blocks, 1))
  magnitude = 10.0 ** rng.uniform(-6, 0, (blocks, block))
  sign = rng.choice([-1.0, 1.0], (blocks, block)) if signed else 1.0
  return (scale * magnitude * sign).astype(np.float32)


@pytest.mark.parametrize(("bits", "signed"), MAPS)
def test_each_element_decodes_to_a_neighbouring_level(bits, signed, strict_promotion):
  """The bound: |x - x_hat| <= (gap between the two levels around x / s_b) * s_b, per block.

  Stronger than an error bound: the decoded value must be one of the two map levels
  that bracket the normalised input (or the lowest level below it, unsigned).
  """
  block = 256 if bits == 8 else 128
  x = _blocks_of_many_scales(signed, 24, block)
  out, _, scales = _round_trip(jnp.asarray(x), bits, signed, block)
  decoded = np.asarray(out, np.float64).reshape(24, block)
  scale = np.abs(x).max(axis=1, keepdims=True).astype(np.float64)
  np.testing.assert_array_equal(np.asarray(scales), scale[:, 0].astype(np.float32))
  table = _quantize.levels(bits, signed)
  y = x / scale
  below = table[np.clip(np.searchsorted(table, y, side="right") - 1, 0, len(table) - 1)]
  above = table[np.clip(np.searchsorted(table, y, side="left"), 0, len(table) - 1)]
  got = decoded / scale
  tolerance = 1e-6 * np.abs(got) + 1e-30
  on_level = (np.abs(got - below) <= tolerance) | (np.abs(got - above) <= tolerance)
  assert on_level.all(), (got[~on_level][:5], y[~on_level][:5])
  gaps = np.diff(table).max()
  assert np.all(np.abs(decoded - x) <= gaps * scale * (1 + 1e-6))


@pytest.mark.parametrize(("bits", "signed"), MAPS)
def test_levels_times_scale_round_trip_to_float32_rounding(bits, signed):
  table = _quantize.levels(bits, signed)
  x = np.float32(2.0**-3) * np.concatenate([table, table]).astype(np.float32)  # an even block
  out, _, _ = _round_trip(jnp.asarray(x), bits, signed, len(x))
  np.testing.assert_allclose(np.asarray(out), x, rtol=3e-7, atol=0)


@pytest.mark.parametrize(("bits", "signed"), MAPS)
def test_zero_blocks_equal_blocks_and_denormals(bits, signed):
  block = 256 if bits == 8 else 128
  tiny = np.float32(1e-39)  # a float32 subnormal: XLA:CPU flushes it to zero
  rows = [
    np.zeros(block),
    np.full(block, 3.5),
    np.full(block, tiny),
    np.concatenate([np.full(block // 2, tiny), np.full(block // 2, 2.0)]),
  ]
  if signed:
    rows.append(np.full(block, -0.75))
  x = np.stack(rows).astype(np.float32)
  decoded = np.asarray(_round_trip(jnp.asarray(x), bits, signed, block)[0])
  np.testing.assert_array_equal(decoded[0], 0.0)  # zeros stay exactly zero, even unsigned
  np.testing.assert_array_equal(decoded[1], 3.5)  # a block of equal values is exact
  assert np.all(np.abs(decoded[2]) <= tiny)  # subnormals: at most their own size off
  np.testing.assert_array_equal(decoded[3, block // 2 :], 2.0)
  lowest = 0.0 if signed else 2.0 * _quantize.levels(bits, signed)[0]  # unsigned: zero excluded
  np.testing.assert_allclose(decoded[3, : block // 2], lowest, rtol=1e-6)
  if signed:
    np.testing.assert_array_equal(decoded[4], -0.75)


@pytest.mark.parametrize(("bits", "signed"), MAPS)
def test_a_non_finite_entry_poisons_its_block_visibly_and_only_its_block(bits, signed):
  block = 256 if bits == 8 else 128
  x = _blocks_of_many_scales(signed, 6, block)
  poisoned = [1, 3, 4]
  for row, bad in zip(poisoned, [np.nan, np.inf, -np.inf], strict=True):
    x[row, 7] = bad
  clean = [0, 2, 5]
  out, _, scales = _round_trip(jnp.asarray(x), bits, signed, block)
  assert np.isnan(np.asarray(scales)[poisoned]).all()
  assert np.isfinite(np.asarray(scales)[clean]).all()
  decoded = np.asarray(out)
  assert np.isnan(decoded[poisoned]).all()  # never silently finite
  assert np.isfinite(decoded[clean]).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_shapes_padding_packing_and_dtypes(bits):
  block = 64
  cases = [
    (shape, dtype)
    for shape in [(), (1,), (7,), (3, 5, 11), (300, 2)]
    for dtype in [jnp.float32, jnp.bfloat16, jnp.float16]
  ]
  xs = tuple(
    jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(dtype) for shape, dtype in cases
  )
  gap = np.diff(_quantize.levels(bits, True)).max()
  for (shape, dtype), x, (out, codes, scales) in zip(
    cases, xs, _round_trips(xs, bits, True, block), strict=True
  ):
    size = int(np.prod(shape))
    n_blocks = max(1, -(-size // block))
    assert codes.dtype == jnp.uint8 and codes.shape == (n_blocks, block * bits // 8), shape
    assert scales.shape == (n_blocks,) and scales.dtype == jnp.float32, shape
    assert out.shape == shape and out.dtype == dtype, (shape, dtype)
    exact = np.asarray(x, np.float32)
    rounding = float(jnp.finfo(dtype).eps)  # storing the decoded value back in dtype
    bound = (gap + rounding) * np.abs(exact).max(initial=0.0)
    error = np.abs(np.asarray(out, np.float32) - exact).max(initial=0.0)
    assert error <= bound, (shape, dtype, error, bound)


def test_four_bit_codes_pack_two_per_byte_low_nibble_first():
  x = jnp.asarray(_quantize.levels(4, False), jnp.float32)  # codes 0, 1, ..., 15 in order
  codes, _ = _quantize.encode(x, 4, signed=False, block_size=16)
  expected = np.arange(0, 16, 2) | (np.arange(1, 16, 2) << 4)
  np.testing.assert_array_equal(np.asarray(codes), expected[None])


def test_encode_and_decode_jit():
  x = jnp.arange(1000.0)
  codes, scales = jax.jit(
    _quantize.encode, static_argnums=1, static_argnames=("signed", "block_size")
  )(x, 8, signed=True, block_size=256)
  eager = _quantize.decode(*_quantize.encode(x, 8, signed=True, block_size=256), 8, signed=True)
  decode = jax.jit(_quantize.decode, static_argnums=2, static_argnames="signed")
  np.testing.assert_array_equal(decode(codes, scales, 8, signed=True), eager)
