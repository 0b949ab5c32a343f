"""Smoke run of ``examples/amsgrad_counterexample.py`` as a script (a few seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "amsgrad_counterexample.py"


def test_amsgrad_counterexample_runs_as_a_script():
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  result = subprocess.run(
    [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=True, env=env
  )
  lines = result.stdout.splitlines()
  assert "Adam: final x = +1.0000" in lines
  assert any(line.startswith("AMSGrad: final x = -0.99") for line in lines), lines
  saved = Path(lines[-1].removeprefix("plot saved to "))
  assert saved.suffix == ".png" and saved.stat().st_size > 10_000
