"""``benchmarks/device.py`` (``make bench-gpu``) runs on the CPU at its smallest size, so it
cannot rot before the next accelerator: the five steps build, run, stay finite and are
reported with the bytes their dtypes say they move."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import device

STEPS = [
  "adam_optax.adam",
  "adam_optax.adam, bucketed",
  "adam_optax.quantized(adam, bits=8)",
  "adam_optax.quantized(adam, bits=4)",
  "optax.adam",
]


def test_quick_run_reports_every_step_against_the_probe(tmp_path, capsys):
  out = tmp_path / "device.json"
  figures = device.main(["--quick", "--out", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(figures))
  rows = {row["name"]: row for row in figures["steps"]}
  assert not [row for row in rows.values() if "error" in row], rows
  assert set(rows) == {*STEPS, device.PROBE}
  table = capsys.readouterr().out
  for name in rows:
    assert f"| {name} |" in table
  # Bytes from the dtypes: float32 params and gradients, and each step's state.
  shapes = device.tree_shapes(**{k: figures["size"][k] for k in ("width", "layers")})
  params = sum(math.prod(s) for s in shapes)
  assert figures["params"] == params
  adam = rows["adam_optax.adam"]
  assert adam["bytes_per_step"] == 28 * params + 2 * 2 * 4  # + the two int32 counts, r/w
  assert rows["optax.adam"]["bytes_per_step"] == adam["bytes_per_step"] - 2 * 4  # one count
  assert rows["adam_optax.adam, bucketed"]["bytes_per_step"] == adam["bytes_per_step"]
  eight, four = rows[STEPS[2]], rows[STEPS[3]]
  assert 2 < eight["state_bytes_per_param"] < 8 and four["state_bytes_per_param"] > 1
  assert four["bytes_per_step"] < eight["bytes_per_step"] < adam["bytes_per_step"]
  probe = rows[device.PROBE]
  assert probe["fraction_of_probe"] == 1.0
  assert abs(probe["bytes_per_step"] - adam["bytes_per_step"]) <= 8
  for row in rows.values():
    assert row["seconds_per_step"] > 0 and row["rounds"] >= 5
    assert row["fraction_of_probe"] == row["gb_per_s"] / figures["probe_gb_per_s"]


def test_a_step_that_fails_is_reported_and_the_others_run(tmp_path, monkeypatch):
  def step_runner(name, optimizer, params, grads):
    if "quantized" in name:
      raise ValueError("the quantized API changed")
    return device.Runner(name, 8, 0, lambda: jnp.zeros(1))

  monkeypatch.setattr(device, "step_runner", step_runner)
  figures = device.main(["--quick", "--out", str(tmp_path / "device.json")])
  errors = {row["name"]: row["error"] for row in figures["steps"] if "error" in row}
  assert errors == {name: "ValueError: the quantized API changed" for name in STEPS[2:4]}
  measured = {row["name"] for row in figures["steps"] if "error" not in row}
  assert measured == {*STEPS[:2], STEPS[4], device.PROBE}
