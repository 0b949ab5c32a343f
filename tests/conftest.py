"""Test configuration: simulated CPU devices, x64 on demand, strict promotion helper.

``XLA_FLAGS`` must be set before JAX initialises its backend, so it is set here,
at import time, before any test module imports jax.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest


@pytest.fixture
def x64():
  """Runs the test with 64-bit types enabled (float64 parity tests)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def strict_promotion():
  """Runs the test with ``jax_numpy_dtype_promotion="strict"``: no implicit casts."""
  with jax.numpy_dtype_promotion("strict"):
    yield
