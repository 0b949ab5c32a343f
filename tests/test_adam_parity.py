"""adam() against optax.adam, torch.optim.Adam and a float64 Algorithm 1.

Every implementation sees the same gradient sequence; params start at zero so
the trajectory is the sum of the steps and no rounding of a large offset hides
a difference. Gradient scales run from 1 down to 1e-9 (eps dominates there)
and to all-zero gradients.

float32 tolerances, measured (see README "Parity"): adam_optax is within 2e-6
of the float64 algorithm and of torch. optax.adam forms ``1 - b2**t`` from b2
rounded to float32 but ``1 - b2`` from the exact value, which puts it up to
~1e-4 (b2 = 0.9999) from the exact algorithm; against optax we therefore assert
that we are no further from it than its own distance from Algorithm 1.
"""

from __future__ import annotations

import numpy as np
import optax
import pytest
import torch

import adam_optax
from tests.references import algorithm1, gradient_sequence, normwise_error, run_optax, run_torch

STEPS = 300
SIZE = 64
HYPERPARAMETERS = [  # (lr, b1, b2, eps, eps_root)
  (1e-3, 0.9, 0.999, 1e-8, 0.0),
  (3e-2, 0.8, 0.99, 1e-3, 0.0),
  (1e-2, 0.0, 0.5, 1e-6, 0.0),
  (1e-3, 0.95, 0.9999, 1e-8, 1e-12),
  (1e-3, 0.9, 0.999, 0.0, 1e-10),
]
SCALES = [1.0, 1e-3, 1e-6, 1e-9]
TOLERANCE = {np.float32: 2e-6, np.float64: 1e-11}  # vs float64 Algorithm 1 and torch


PATHS = (False, True)  # fused=False (the XLA path) and fused=True (the CPU kernel)


def _ours(dtype, lr, b1, b2, eps, eps_root, grads) -> dict[bool, np.ndarray]:
  """Our trajectory from zero on each path; the tests compare both with one reference run."""
  params = np.zeros(SIZE, dtype)
  return {
    fused: run_optax(adam_optax.adam(lr, b1, b2, eps, eps_root, fused=fused), grads, params)
    for fused in PATHS
  }


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("hyperparameters", HYPERPARAMETERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_optax_and_algorithm1(request, dtype, hyperparameters, scale):
  if dtype == np.float64:
    request.getfixturevalue("x64")
  lr, b1, b2, eps, eps_root = hyperparameters
  grads = gradient_sequence(seed=len(request.node.name), steps=STEPS, size=SIZE, scale=scale)
  grads = [g.astype(dtype) for g in grads]
  params = np.zeros(SIZE, dtype)
  theirs = run_optax(optax.adam(lr, b1, b2, eps, eps_root), grads, params)
  reference = algorithm1(grads, params, lr, b1, b2, eps, eps_root)
  tolerance = TOLERANCE[dtype]
  optax_error = normwise_error(theirs, reference)
  for fused, ours in _ours(dtype, *hyperparameters, grads).items():
    assert ours.dtype == dtype
    assert normwise_error(ours, reference) < tolerance, fused
    assert normwise_error(ours, theirs) < max(optax_error, tolerance) + tolerance, fused


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("hyperparameters", [h for h in HYPERPARAMETERS if h[4] == 0.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch(request, dtype, hyperparameters, scale):
  if dtype == np.float64:
    request.getfixturevalue("x64")
  lr, b1, b2, eps, _ = hyperparameters
  grads = [g.astype(dtype) for g in gradient_sequence(7, STEPS, SIZE, scale)]
  params = np.zeros(SIZE, dtype)
  theirs = run_torch(lambda p: torch.optim.Adam(p, lr=lr, betas=(b1, b2), eps=eps), grads, params)
  for fused, ours in _ours(dtype, *hyperparameters, grads).items():
    assert normwise_error(ours, theirs) < TOLERANCE[dtype], fused


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_gradients_leave_params_exactly_unchanged(request, dtype):
  if dtype == np.float64:
    request.getfixturevalue("x64")
  params = np.linspace(-1, 1, SIZE).astype(dtype)
  grads = [np.zeros(SIZE, dtype)] * 20
  torch_ = run_torch(lambda p: torch.optim.Adam(p, lr=1e-3), grads, params)
  np.testing.assert_array_equal(torch_[-1], params)
  for fused in PATHS:
    ours = run_optax(adam_optax.adam(1e-3, fused=fused), grads, params)
    np.testing.assert_array_equal(ours[-1], params)


@pytest.mark.parametrize("fused", PATHS, ids=["xla", "fused"])
def test_first_step_is_minus_lr_times_sign(fused):
  """Kingma & Ba, Section 2.1: with eps = 0 the first step is -lr * sign(g)."""
  grads = gradient_sequence(3, 1, SIZE, 1e-4)
  ours = run_optax(adam_optax.adam(0.1, eps=0.0, fused=fused), grads, np.zeros(SIZE, np.float32))
  np.testing.assert_allclose(ours[0], -0.1 * np.sign(grads[0]), rtol=1e-6)


def test_nesterov_matches_optax_nadam(x64):
  grads = gradient_sequence(5, STEPS, SIZE, 1e-2, np.float64)
  params = np.zeros(SIZE, np.float64)
  theirs = run_optax(optax.adam(1e-3, nesterov=True), grads, params)
  plain = run_optax(adam_optax.adam(1e-3), grads, params)
  assert normwise_error(plain, theirs) > 1e-3  # nesterov really changes the step
  for fused in PATHS:
    ours = run_optax(adam_optax.adam(1e-3, nesterov=True, fused=fused), grads, params)
    assert normwise_error(ours, theirs) < 1e-11, fused
