"""The "Which Adam?" workbench at smoke size (the full run is `make bench-family`, never a test)."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

import adam_optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import workbench
import workbench_members
import workbench_report
import workbench_tasks

MEMBERS, TASKS = ["adam", "adamw"], ["lstsq", "digits"]


@pytest.fixture(scope="module")
def smoke():
  return workbench.run(workbench.SIZES["smoke"], MEMBERS, TASKS, progress=False)


def test_every_sweep_trains_below_its_initial_loss(smoke):
  size = workbench.SIZES["smoke"]
  assert list(smoke["tasks"]) == TASKS
  for task_name, task in smoke["tasks"].items():
    assert list(task["cells"]) == MEMBERS
    for member, cell in task["cells"].items():
      assert cell["status"] == "ok", (task_name, member, cell["status"])
      val = np.asarray(cell["val"])
      assert val.shape == (size.n_lrs, len(size.seeds), len(cell["eval_steps"]))
      centre = val[size.n_lrs // 2]  # the member's default learning rate (times the task's)
      assert np.all(np.isfinite(centre)), (task_name, member)
      assert np.all(centre[:, -1] < 0.5 * centre[:, 0]), (task_name, member, centre[:, [0, -1]])
      assert len(set(centre[:, -1])) == len(size.seeds)  # the seeds are different runs
      lrs = np.asarray(cell["lrs"])
      np.testing.assert_allclose(lrs[1:] / lrs[:-1], lrs[1] / lrs[0], rtol=1e-5)  # log-spaced
      assert cell["step_ms"] > 0 and cell["compile_s"] > 0
      assert cell["state_bytes_per_param"] >= 8.0  # Adam's m and v in float32, at least


def test_the_table_is_well_formed(smoke):
  text = workbench_report.markdown(smoke)
  for task_name in TASKS:
    block = text.split(f"### {task_name}:")[1].split("###")[0]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    widths = {line.count("|") for line in rows}
    assert len(widths) == 1 and len(rows) == 2 + len(MEMBERS), block
    for member in MEMBERS:
      (row,) = [r for r in rows if r.startswith(f"| {member} |")]
      loss = float(re.search(r"\| ([\d.e+-]+) ± ", row).group(1))
      assert math.isfinite(loss)
  summary = workbench_report.summary(smoke["tasks"]["lstsq"])
  assert summary["adamw"]["time_vs_anchor"] == pytest.approx(1.0)


def test_figures_and_page_are_written(smoke, tmp_path):
  paths = workbench_report.figures(smoke, tmp_path)
  assert [p.name for p in paths] == ["curves.png", "sensitivity.png", "state_bytes.png"]
  assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
  page = workbench_report.page_text({**smoke, "wall_s": 1.0})
  for heading in ("# Which Adam?", "## What was found", "## Method", "## Results", "## Machine"):
    assert heading in page
  assert "python benchmarks/workbench.py" in page and "```python" not in page


def _task(means: dict[str, tuple[float, float, float]]) -> dict:
  """A results entry whose members end at the given three seeds' losses (one lr)."""
  cells = {
    name: {
      "status": "ok",
      "lrs": [1e-3],
      "val": [[[2.0, v] for v in finals]],
      "eval_steps": [0, 10],
      "step_ms": 1.0,
      "state_bytes_per_param": 8.0,
    }
    for name, finals in means.items()
  }
  return {"cells": cells}


def test_members_within_the_seed_spread_are_tied_not_ranked():
  rows = workbench_report.summary(
    _task({"adamw": (1.0, 1.1, 0.9), "adam": (1.15, 1.25, 1.05), "nadam": (1.5, 1.5, 1.6)})
  )
  assert rows["adamw"]["tied_with_lowest"] and rows["adam"]["tied_with_lowest"]  # 0.15 <= 0.2
  assert not rows["nadam"]["tied_with_lowest"]
  diverged = workbench_report.summary(
    _task({"adamw": (1.0, 1.0, 1.0), "adam": (1.0, math.nan, 1.0)})
  )
  assert diverged["adam"]["mean"] == math.inf and not diverged["adam"]["tied_with_lowest"]


def test_a_member_missing_from_the_package_is_listed_not_run(monkeypatch):
  monkeypatch.delattr(adam_optax, "amsgrad")
  registry = workbench_members.members()
  assert registry["amsgrad"].build is None and registry["adam"].build is not None
  results = workbench.run(workbench.SIZES["smoke"], ["amsgrad"], ["lstsq"], progress=False)
  assert results["not_available"] == ["amsgrad"] and results["tasks"]["lstsq"]["cells"] == {}


def test_the_evaluated_point_is_kept_in_the_online_problems_box():
  """An evaluation point off the box (Schedule-Free's x is an average) is projected first."""
  far = workbench_members.Member(
    "far",
    1e-3,
    "adam, evaluated at 100 x its params",
    lambda lr, steps, options: adam_optax.adam(lr, **options),
    eval_params=lambda state, params: 100.0 * params,
  )
  task = workbench_tasks.reddi_task(periods=4, evals=2)
  with tqdm(disable=True) as bar:
    (cell,) = workbench.run_task([far], task, workbench.SIZES["smoke"], bar).values()
  xs = np.asarray(cell["final_x"])
  assert np.all(np.abs(xs) <= 1.0) and np.any(np.abs(xs) == 1.0)  # 100 x left the box
  final = np.asarray(cell["val"])[:, :, -1]
  np.testing.assert_allclose(final, workbench_tasks.MEAN_GRADIENT * (xs + 1.0), rtol=1e-6)
