"""Each example runs as a script and prints what it claims."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(script: str, *args: str, timeout: float = 300) -> str:
  """Runs ``examples/<script>`` in a fresh interpreter; returns its stdout."""
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  result = subprocess.run(
    [sys.executable, str(ROOT / "examples" / script), *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
    cwd=ROOT,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


def test_regression_reports_honest_and_converged_fits():
  out = run_example("regression.py")
  fits = re.findall(r"learned w = ([-\d.]+), b = ([-\d.]+)", out)
  assert len(fits) == 2
  (w_slow, b_slow), (w_fast, b_fast) = [(float(w), float(b)) for w, b in fits]
  assert 0.5 < w_slow < 1.5 and 0.5 < b_slow < 1.0  # lr 0.001: on its way, honestly
  assert abs(w_fast - 2.0) < 1e-3 and abs(b_fast - 1.0) < 1e-3
  assert len(re.findall(r"step\s+\d+\s+loss", out)) == 20  # every 100 steps, twice


@pytest.mark.slow
def test_flax_mlp_trains_both_optimizers_and_writes_the_plot(tmp_path):
  png = tmp_path / "loss.png"
  out = run_example("flax_mlp.py", "--steps", "150", "--out", str(png))
  accuracies = [float(a) for a in re.findall(r"test accuracy ([\d.]+)", out)]
  assert len(accuracies) == 2 and min(accuracies) > 0.85
  assert abs(accuracies[0] - accuracies[1]) < 0.02  # same seed, same batches
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_amsgrad_counterexample_prints_both_endpoints_and_saves_the_plot(tmp_path):
  png = tmp_path / "amsgrad.png"
  lines = run_example("amsgrad_counterexample.py", "--out", str(png)).splitlines()
  assert "Adam: final x = +1.0000" in lines
  assert any(line.startswith("AMSGrad: final x = -0.99") for line in lines), lines
  assert lines[-1] == f"plot saved to {png}"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_donated_step_aliases_every_output_and_trains():
  out = run_example("donated_step.py")
  aliased = re.search(r"aliases ([\d.]+) KiB of its ([\d.]+) KiB of outputs", out)
  assert aliased and aliased.group(1) == aliased.group(2), out
  start, end = (float(v) for v in re.search(r"loss ([\d.]+) -> ([\d.]+)", out).groups())
  assert end < 0.05 * start


@pytest.mark.slow
def test_equinox_from_torch_continues_torchs_run():
  out = run_example("equinox_from_torch.py", "--torch-steps", "100", "--jax-steps", "30")
  losses = {
    who: float(loss)
    for who, loss in re.findall(r"^(\w+: \d+ more steps[^,]*), loss ([\d.]+)", out, re.M)
  }
  converted = losses["equinox: 30 more steps with the converted state"]
  assert abs(converted - losses["torch: 30 more steps"]) < 1e-4 * converted
  assert losses["equinox: 30 more steps with a fresh state"] > 1.1 * converted  # the jolt
  difference = float(re.search(r"max relative difference ([\d.e+-]+)", out).group(1))
  assert difference < 1e-5
