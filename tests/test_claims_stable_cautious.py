"""Smoke tests of benchmarks/claims_stable_adamw.py and claims_cautious.py (the runs are there)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import claims_cautious
import claims_stable_adamw


def test_the_spike_benchmark_trains_through_the_jump(monkeypatch):
  monkeypatch.setattr(claims_stable_adamw, "STEPS", 12)
  monkeypatch.setattr(claims_stable_adamw, "JUMP", 6)
  losses = claims_stable_adamw.train(claims_stable_adamw.optimizers(0.99)["StableAdamW"])
  assert losses.shape == (12,) and np.all(np.isfinite(losses))


def test_steps_to_target_reads_the_first_evaluation_at_or_below_it():
  curves = {"AdamW": [3.0, 2.0, 1.5], "C-AdamW": [3.0, 1.4, 1.0], "Lion": [3.0, 2.5, 2.0]}
  curves["C-Lion"] = [3.0, 2.9, 2.8]
  result = claims_cautious.compare(curves)
  assert result["AdamW"]["steps_to_target"] == 2 * claims_cautious.EVAL_EVERY
  assert result["C-AdamW"]["steps_to_target"] == claims_cautious.EVAL_EVERY
  assert result["C-Lion"]["steps_to_target"] is None
  curves = claims_cautious.mlp_curves(0, steps=2 * claims_cautious.EVAL_EVERY)
  assert set(curves) == {"AdamW", "C-AdamW", "Lion", "C-Lion"}
  assert all(len(c) == 3 and np.all(np.isfinite(c)) for c in curves.values())
