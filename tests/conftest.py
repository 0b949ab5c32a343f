"""Test configuration: simulated CPU devices, x64 on demand, strict promotion helper, one
compilation cache per test process, slow tests first, device-count skips, exact float32 matmuls
on accelerators.

``XLA_FLAGS`` must be set before JAX initialises its backend, so it is set here,
at import time, before any test module imports jax.

Many tests compile the same program again (the same optimizer and shapes at
another gradient scale, the same step in another parametrization): JAX's
persistent compilation cache, in a fresh temporary folder that each test
process (each pytest-xdist worker) owns and deletes at its end, compiles each
only once per process. Nothing is kept between runs, so every run compiles
what it runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

COMPILATION_CACHE = tempfile.mkdtemp(prefix="adam_optax-tests-compilation-cache-")
jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config: pytest.Config) -> None:
  del config
  shutil.rmtree(COMPILATION_CACHE, ignore_errors=True)


if jax.default_backend() != "cpu":
  # The parity tests compare float32 arithmetic with float32 references; XLA's GPU
  # matmuls would otherwise run in TF32 (10-bit mantissas).
  jax.config.update("jax_default_matmul_precision", "highest")


def pytest_runtest_setup(item: pytest.Item) -> None:
  """Skips a test marked ``devices(n)`` where JAX has fewer than ``n`` devices, naming them."""
  marker = item.get_closest_marker("devices")
  if marker is not None and jax.device_count() < marker.args[0]:
    pytest.skip(
      f"needs {marker.args[0]} devices; the {jax.default_backend()} backend has "
      f"{jax.device_count()} (on CPU this conftest simulates 8)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """Runs the tests marked ``slow`` first, so that no long test starts last (xdist's tail)."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
