"""Orbax resumes the modern members bit for bit (the run of ``tests/checkpoint_run.py``).

Each member trains ``SAVED`` steps, is saved with orbax, restored through
:func:`adam_optax.restore_target` and trained on to ``STEPS``; params and every
state leaf must equal the uninterrupted run's, bytes and dtypes included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optax
import pytest

import adam_optax
from tests.checkpoint_run import SAVED, STEPS, initial_params, restore, save, train
from tests.test_checkpoint import _assert_bitwise_equal

MODERN: dict[str, Callable[[], optax.GradientTransformation]] = {
  "adopt": lambda: adam_optax.adopt(1e-2, weight_decay=1e-2),
  "ademamix": lambda: adam_optax.ademamix(1e-2, alpha_warmup=4, b3_warmup=4),
  "laprop": lambda: adam_optax.laprop(1e-2, weight_decay=1e-2),
  "radam": lambda: adam_optax.radam(1e-2, b2=0.9, weight_decay=1e-2),
  "adabelief": lambda: adam_optax.adabelief(1e-2),
  "cautious(adamw)": lambda: adam_optax.cautious(adam_optax.adamw(1e-2, weight_decay=1e-2)),
  "stable_adamw": lambda: adam_optax.stable_adamw(1e-2),
  "adam_atan2": lambda: adam_optax.adam_atan2(1e-2, weight_decay=1e-2),
  "schedule_free_adamw": lambda: adam_optax.schedule_free_adamw(1e-2, warmup_steps=2),
  "mars_adamw": lambda: adam_optax.mars_adamw(1e-2, weight_decay=1e-2),
  "adam_mini": lambda: adam_optax.adam_mini(1e-2),
}


@pytest.mark.parametrize("name", list(MODERN))
def test_a_modern_member_resumes_bit_for_bit(tmp_path: Path, name: str) -> None:
  optimizer = MODERN[name]()
  params = initial_params()
  expected = train(name, optimizer, params, optimizer.init(params), 0, STEPS)
  params, state = train(name, optimizer, params, optimizer.init(params), 0, SAVED)
  save(tmp_path, SAVED, params, state).close()
  params, state = restore(tmp_path, SAVED, MODERN[name]())
  _assert_bitwise_equal(train(name, optimizer, params, state, SAVED, STEPS), expected)
