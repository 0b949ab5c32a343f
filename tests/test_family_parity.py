"""The family against optax, torch and the float64 references, step by step.

Every implementation sees the same gradients: log-normal magnitudes around a
scale, with the second half 100x smaller so that AMSGrad's running maximum
and AdaMax's infinity norm really decide the steps. Parameters start at zero
(a small ramp for the decayed variants, so that the decay acts from step 1).

Tolerances as in ``test_adam_parity``: within ``TOLERANCE`` of the float64
reference and of torch; against optax, no further than optax's own distance
from the reference (its float32 bias corrections round ``b2`` first) plus
``TOLERANCE``. The measured figures are in the README's "Family" section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optax
import pytest
import torch

import adam_optax
from tests.references import (
  adamax_reference,
  algorithm1,
  gradient_sequence,
  normwise_error,
  run_optax,
  run_torch,
)

STEPS = 300
SIZE = 64
WEIGHT_DECAY = 0.1
HYPERPARAMETERS = [  # (lr, b1, b2, eps, eps_root)
  (1e-3, 0.9, 0.999, 1e-8, 0.0),
  (3e-2, 0.8, 0.99, 1e-3, 0.0),
  (1e-3, 0.95, 0.9999, 1e-8, 1e-12),
]
SCALES = [1.0, 1e-6]
TOLERANCE = {np.float32: 2e-6, np.float64: 1e-11}
TORCH_NADAM_WITHOUT_SCHEDULE = 1e9  # momentum_decay: 0.96 ** (t * 1e9) == 0, mu_t == b1
TORCH_NADAM_MOMENTUM_DECAY = 4e-3  # torch.optim.NAdam's default


@dataclass(frozen=True)
class Variant:
  """One member of the family and what it is compared with."""

  ours: Any  # (lr, b1, b2, eps, eps_root, fused=...) -> GradientTransformation
  optax: Any  # same signature, or None
  reference: Any  # (grads, params, lr, b1, b2, eps, eps_root) -> trajectory
  torch: Any = None  # (lr, b1, b2, eps) -> (params -> torch optimizer), or None
  uses_eps_root: bool = True
  decays: bool = False
  uncorrected: bool = False  # no bias correction: see ``reference_betas``


def _torch(cls, **options):
  return lambda lr, b1, b2, eps: lambda p: cls(p, lr=lr, betas=(b1, b2), eps=eps, **options)


VARIANTS = {
  "adamw": Variant(
    ours=lambda *h, **k: adam_optax.adamw(*h, weight_decay=WEIGHT_DECAY, **k),
    optax=lambda *h: optax.adamw(*h, weight_decay=WEIGHT_DECAY),
    reference=lambda *a: algorithm1(*a, weight_decay=WEIGHT_DECAY),
    torch=_torch(torch.optim.AdamW, weight_decay=WEIGHT_DECAY),
    decays=True,
  ),
  "nadam": Variant(
    ours=adam_optax.nadam,
    optax=optax.nadam,
    reference=lambda *a: algorithm1(*a, nesterov=True),
    torch=_torch(torch.optim.NAdam, momentum_decay=TORCH_NADAM_WITHOUT_SCHEDULE),
  ),
  "nadamw": Variant(
    ours=lambda *h, **k: adam_optax.nadamw(*h, weight_decay=WEIGHT_DECAY, **k),
    optax=lambda *h: optax.nadamw(*h, weight_decay=WEIGHT_DECAY),
    reference=lambda *a: algorithm1(*a, nesterov=True, weight_decay=WEIGHT_DECAY),
    torch=_torch(
      torch.optim.NAdam,
      momentum_decay=TORCH_NADAM_WITHOUT_SCHEDULE,
      weight_decay=WEIGHT_DECAY,
      decoupled_weight_decay=True,
    ),
    decays=True,
  ),
  "nadam-torch": Variant(
    ours=lambda *h, **k: adam_optax.nadam(*h, momentum_decay=TORCH_NADAM_MOMENTUM_DECAY, **k),
    optax=None,
    reference=lambda *a: algorithm1(*a, nesterov=True, momentum_decay=TORCH_NADAM_MOMENTUM_DECAY),
    torch=_torch(torch.optim.NAdam),
  ),
  "nadamw-torch": Variant(
    ours=lambda *h, **k: adam_optax.nadamw(
      *h, weight_decay=WEIGHT_DECAY, momentum_decay=TORCH_NADAM_MOMENTUM_DECAY, **k
    ),
    optax=None,
    reference=lambda *a: algorithm1(
      *a, nesterov=True, momentum_decay=TORCH_NADAM_MOMENTUM_DECAY, weight_decay=WEIGHT_DECAY
    ),
    torch=_torch(torch.optim.NAdam, weight_decay=WEIGHT_DECAY, decoupled_weight_decay=True),
    decays=True,
  ),
  "amsgrad-torch": Variant(
    ours=lambda *h, **k: adam_optax.amsgrad(*h, convention="torch", **k),
    optax=None,
    reference=lambda *a: algorithm1(*a, amsgrad="torch"),
    torch=_torch(torch.optim.Adam, amsgrad=True),
  ),
  "amsgrad-optax": Variant(
    ours=lambda *h, **k: adam_optax.amsgrad(*h, convention="optax", **k),
    optax=optax.amsgrad,
    reference=lambda *a: algorithm1(*a, amsgrad="optax"),
  ),
  "amsgrad-paper": Variant(
    ours=lambda *h, **k: adam_optax.amsgrad(*h, convention="paper", **k),
    optax=lambda *h: optax.amsgrad(*h, bias_correction_mu=False, bias_correction_nu=False),
    reference=lambda *a: algorithm1(*a, amsgrad="paper"),
    uncorrected=True,
  ),
  "adamax": Variant(
    ours=lambda lr, b1, b2, eps, _, **k: adam_optax.adamax(lr, b1, b2, eps, **k),
    optax=lambda lr, b1, b2, eps, _: optax.adamax(lr, b1, b2, eps),
    reference=lambda grads, params, lr, b1, b2, eps, _: adamax_reference(
      grads, params, lr, b1, b2, eps
    ),
    torch=_torch(torch.optim.Adamax),
    uses_eps_root=False,
  ),
}


def family_gradients(seed: int, dtype, scale: float, steps: int = STEPS) -> list[np.ndarray]:
  """Log-normal gradients whose second half is 100x smaller."""
  grads = gradient_sequence(seed, steps, SIZE, scale, np.float64)
  return [(g if t < steps // 2 else 1e-2 * g).astype(dtype) for t, g in enumerate(grads)]


def start(variant: Variant, dtype) -> np.ndarray:
  if variant.decays:
    return np.linspace(-0.1, 0.1, SIZE).astype(dtype)
  return np.zeros(SIZE, dtype)


def reference_betas(variant: Variant, dtype, b1: float, b2: float) -> tuple[float, float]:
  """The betas the float64 reference runs with.

  An EMA in float32 can only decay by ``b = float32(b2)``; ours weighs by
  ``(b, 1 - b)``, the same code for concrete and traced betas. With a bias
  correction (formed from the same ``b``) that is exactly Algorithm 1; without
  one (AMSGrad, paper convention) the step is off from the exact-``b2`` maths
  by ``sqrt((1 - b2) / (1 - b))`` (8.3e-5 for ``b2 = 0.9999``). That variant is
  therefore checked against the algorithm for the betas float32 holds; optax
  forms ``1 - b2`` from the Python number instead and so sits that far from it.
  """
  if variant.uncorrected and dtype == np.float32:
    return float(np.float32(b1)), float(np.float32(b2))
  return b1, b2


def errors(
  name: str, dtype, hyperparameters, scale: float, seed: int = 11, fused: bool = False
) -> dict[str, float]:
  """Normwise errors of ours vs the reference, optax and torch (and optax vs reference)."""
  return errors_of_both(name, dtype, hyperparameters, scale, seed, paths=(fused,))[fused]


def errors_of_both(
  name: str, dtype, hyperparameters, scale: float, seed: int = 11, paths=(False, True)
) -> dict[bool, dict[str, float]]:
  """:func:`errors` for each ``fused`` in ``paths``; the references run once for all."""
  variant = VARIANTS[name]
  lr, b1, b2, eps, eps_root = hyperparameters
  if not variant.uses_eps_root:
    hyperparameters = (lr, b1, b2, eps, 0.0)
  grads = family_gradients(seed, dtype, scale)
  params = start(variant, dtype)
  reference_hyperparameters = (lr, *reference_betas(variant, dtype, b1, b2), *hyperparameters[3:])
  reference = variant.reference(grads, params, *reference_hyperparameters)
  others = {}
  if variant.optax is not None:
    others["optax"] = run_optax(variant.optax(*hyperparameters), grads, params)
  if variant.torch is not None and eps_root == 0.0:
    others["torch"] = run_torch(variant.torch(lr, b1, b2, eps), grads, params)
  results = {}
  for fused in paths:
    ours = run_optax(variant.ours(*hyperparameters, fused=fused), grads, params)
    assert ours.dtype == dtype
    result = results[fused] = {"reference": normwise_error(ours, reference)}
    for key, theirs in others.items():
      result[key] = normwise_error(ours, theirs)
      result[f"{key}_vs_reference"] = normwise_error(theirs, reference)
  return results


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("hyperparameters", HYPERPARAMETERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_references(request, name, dtype, hyperparameters, scale):
  """The XLA path and the fused kernel (``fused=True``), each against every reference."""
  if dtype == np.float64:
    request.getfixturevalue("x64")
  tolerance = TOLERANCE[dtype]
  for fused, result in errors_of_both(name, dtype, hyperparameters, scale).items():
    assert result["reference"] < tolerance, (fused, result)
    if "optax" in result:
      limit = max(result["optax_vs_reference"], tolerance) + tolerance
      assert result["optax"] < limit, (fused, result)
    if "torch" in result:
      limit = max(result["torch_vs_reference"], tolerance) + tolerance
      assert result["torch"] < limit, (fused, result)
