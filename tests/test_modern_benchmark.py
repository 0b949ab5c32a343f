"""Smoke test of benchmarks/modern.py: a tiny run yields a row per member, present or missing."""

from __future__ import annotations

import re

import adam_optax
from benchmarks import modern


def test_smoke_run_lists_every_member_with_ratios_to_adam():
  text = modern.main(["--smoke"])
  for name in ["adam", *modern.MEMBERS]:
    row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
    if getattr(adam_optax, name, None) is None:
      assert "missing" in row
    else:
      step_ratio, compile_ratio = (float(x) for x in re.findall(r"([\d.]+)x", row))
      assert step_ratio > 0 and compile_ratio > 0
  assert "| `adam` |" in text and "1.00x" in text
