"""Tables, figures and the docs page "Which Adam?" from the workbench's results JSON.

    python benchmarks/workbench_report.py docs/_static/workbench/workbench.json
        # redraws docs/_static/workbench/*.png and rewrites docs/which_adam.md

How results are read (stated on the page too):

- a run's loss is its final validation loss; a run that ended non-finite
  counts as diverged (+inf);
- a member's best learning rate is the one with the lowest mean over seeds;
  its spread is the standard deviation over those seeds (ddof 1);
- two members are tied when their means differ by no more than the sum of
  their spreads; the page names the members tied with the lowest mean instead
  of ranking them;
- steps to target: the first validation step (after step 0) at which the
  seed-mean curve at the best learning rate is at or below the task's target: its own where it
  states one (the online problem: x <= -0.8), else 1.05 x the median over members of their best
  mean loss (a level about half the members reach).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "docs" / "_static" / "workbench"
PAGE = ROOT / "docs" / "which_adam.md"
ANCHOR = "adamw"  # time per step is relative to this member's
TARGET_MARGIN = 1.05  # of the median best loss, where a task states no target


def finals(cell: dict[str, Any]) -> np.ndarray:
  """Final validation loss per (lr, seed); non-finite (diverged) as +inf."""
  values = np.asarray(cell["val"], np.float64)[:, :, -1]
  return np.where(np.isfinite(values), values, np.inf)


def best(cell: dict[str, Any]) -> dict[str, Any]:
  """The best learning rate's index, mean and spread (std over seeds) of the final loss."""
  values = finals(cell)
  means = values.mean(axis=1)
  index = int(np.argmin(means))
  runs = values[index]
  spread = float(runs.std(ddof=1)) if len(runs) > 1 and np.all(np.isfinite(runs)) else 0.0
  return {
    "index": index,
    "lr": cell["lrs"][index],
    "mean": float(means[index]),
    "spread": spread if np.all(np.isfinite(runs)) else math.inf,
    "at_edge": index in (0, len(means) - 1),
  }


def mean_curve(cell: dict[str, Any], index: int) -> np.ndarray:
  return np.asarray(cell["val"], np.float64)[index].mean(axis=0)


def summary(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """Per member that ran: best lr and loss, the tie with the lowest, steps to target, cost."""
  ran = {name: cell for name, cell in task["cells"].items() if cell["status"] == "ok"}
  rows = {name: best(cell) for name, cell in ran.items()}
  if not rows:
    return {}
  lowest_name = min(rows, key=lambda n: rows[n]["mean"])
  lowest = rows[lowest_name]
  target = task.get("target") or TARGET_MARGIN * float(
    np.median([r["mean"] for r in rows.values()])
  )
  anchor_ms = ran[ANCHOR]["step_ms"] if ANCHOR in ran else None
  for name, row in rows.items():
    cell = ran[name]
    gap = row["mean"] - lowest["mean"]
    tied = math.isfinite(row["mean"]) and gap <= row["spread"] + lowest["spread"]
    row["tied_with_lowest"] = bool(tied)
    curve = mean_curve(cell, row["index"])
    reached = np.flatnonzero(curve[1:] <= target) + 1  # after the first step
    row["target"] = target
    row["steps_to_target"] = int(cell["eval_steps"][reached[0]]) if reached.size else None
    row["time_vs_anchor"] = cell["step_ms"] / anchor_ms if anchor_ms else None
    row["state_bytes_per_param"] = cell["state_bytes_per_param"]
    row["state_bytes_per_param_8bit"] = cell.get("state_bytes_per_param_8bit")
    row["initial"] = float(mean_curve(cell, row["index"])[0])
    if "final_x" in cell:
      xs = np.asarray(cell["final_x"], np.float64)[row["index"]]
      row["final_x"] = float(xs.mean())
      row["distance_to_optimum"] = float(np.abs(xs + 1.0).mean())
  return rows


def _number(value: float) -> str:
  return "diverged" if not math.isfinite(value) else f"{value:.4g}"


def task_table(name: str, task: dict[str, Any]) -> str:
  """The markdown table of one task."""
  rows = summary(task)
  lm = name == "lm"
  online = any("final_x" in r for r in rows.values())
  head = ["member", "best lr", "final val loss (mean ± std, seeds)", "tied with lowest"]
  head += ["steps to target", "time/step ÷ adamw", "state B/param"]
  head += ["8-bit state B/param"] if lm else []
  head += ["final x", "distance to -1"] if online else []
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for member, row in sorted(rows.items(), key=lambda item: item[1]["mean"]):
    edge = " (edge)" if row["at_edge"] else ""
    ratio = f"{row['time_vs_anchor']:.2f}" if row["time_vs_anchor"] else "n/a"
    steps = row["steps_to_target"] if row["steps_to_target"] is not None else "not reached"
    cells = [
      member,
      f"{row['lr']:.3g}{edge}",
      f"{_number(row['mean'])} ± {_number(row['spread'])}",
      "yes" if row["tied_with_lowest"] else "",
      str(steps),
      ratio,
      f"{row['state_bytes_per_param']:.2f}",
    ]
    if lm:
      q = row["state_bytes_per_param_8bit"]
      cells.append(f"{q:.2f}" if isinstance(q, float) else "failed (see JSON)")
    if online:
      cells += [f"{row['final_x']:+.3f}", f"{row['distance_to_optimum']:.3f}"]
    lines.append("| " + " | ".join(cells) + " |")
  failed = [f"{m} ({c['status']})" for m, c in task["cells"].items() if c["status"] != "ok"]
  target = next(iter(rows.values()))["target"] if rows else math.nan
  notes = [f"Target loss: {target:.4g}. Initial loss: {_initial(rows)}."]
  if failed:
    notes.append("Failed: " + "; ".join(failed) + ".")
  return "\n".join(lines) + "\n\n" + " ".join(notes)


def _initial(rows: dict[str, dict[str, Any]]) -> str:
  values = sorted({round(r["initial"], 4) for r in rows.values()})
  return ", ".join(f"{v:.4g}" for v in values)


def markdown(results: dict[str, Any]) -> str:
  """Every task's table, with a heading line each."""
  parts = []
  for name, task in results["tasks"].items():
    parts.append(f"### {name}: {task['title']}\n\n{task_table(name, task)}")
  if results["not_available"]:
    parts.append("Not available in this checkout: " + ", ".join(results["not_available"]) + ".")
  return "\n\n".join(parts)


# --------------------------------------------------------------------- figures


def _style(index: int) -> dict[str, Any]:
  import matplotlib.pyplot as plt

  colors = plt.get_cmap("tab20").colors
  return {"color": colors[index % len(colors)], "linestyle": ["-", "--", ":"][index // 20 % 3]}


def _grid(count: int) -> tuple[Any, Any]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = min(2, count)
  rows = math.ceil(count / columns)
  figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.2 * rows), squeeze=False)
  for extra in axes.flat[count:]:
    extra.set_visible(False)
  return figure, axes.flat


def figures(results: dict[str, Any], folder: Path) -> list[Path]:
  """Loss curves at the best lr, loss against lr, state bytes: PNGs in ``folder``."""
  folder.mkdir(parents=True, exist_ok=True)
  members = list(results["members"])
  tasks = results["tasks"]
  paths = []

  figure, axes = _grid(len(tasks))
  for ax, (name, task) in zip(axes, tasks.items(), strict=False):
    rows = summary(task)
    for member, row in rows.items():
      cell = task["cells"][member]
      ax.plot(
        cell["eval_steps"],
        mean_curve(cell, row["index"]),
        label=member,
        **_style(members.index(member)),
      )
    ax.set(
      title=f"{name}: seed mean at each member's best lr", xlabel="step", ylabel="validation loss"
    )
    if task["log_scale"]:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7, ncol=2)
  paths.append(_save(figure, folder / "curves.png"))

  figure, axes = _grid(len(tasks))
  for ax, (name, task) in zip(axes, tasks.items(), strict=False):
    for member, cell in task["cells"].items():
      if cell["status"] != "ok":
        continue
      means = finals(cell).mean(axis=1)
      initial = np.asarray(cell["val"], np.float64)[:, :, 0].mean()
      shown = np.where(np.isfinite(means), np.minimum(means, 2 * initial), np.nan)  # diverged: gap
      ax.plot(
        cell["lrs"], shown, marker="o", markersize=3, label=member, **_style(members.index(member))
      )
    ax.set(
      title=f"{name}: final loss against peak lr",
      xlabel="peak learning rate",
      ylabel="final validation loss",
    )
    ax.set_xscale("log")
    if task["log_scale"]:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7, ncol=2)
  paths.append(_save(figure, folder / "sensitivity.png"))

  name = "lm" if "lm" in tasks else next(iter(tasks))
  cells = {m: c for m, c in tasks[name]["cells"].items() if c["status"] == "ok"}
  figure, (ax,) = _grid(1)
  positions = np.arange(len(cells))
  plain = [c["state_bytes_per_param"] for c in cells.values()]
  eight = [c.get("state_bytes_per_param_8bit") for c in cells.values()]
  width = 0.4 if any(isinstance(q, float) for q in eight) else 0.8
  ax.bar(positions, plain, width, label="float32 state")
  if width < 0.8:
    eight_values = [q if isinstance(q, float) else np.nan for q in eight]
    ax.bar(positions + width, eight_values, width, label="quantized(bits=8)")
  ax.set_xticks(positions + (width / 2 if width < 0.8 else 0), list(cells), rotation=60, ha="right")
  ax.set(
    ylabel="optimizer-state bytes per parameter", title=f"state bytes per parameter ({name} task)"
  )
  ax.legend()
  ax.grid(alpha=0.3, axis="y")
  paths.append(_save(figure, folder / "state_bytes.png"))
  return paths


def _save(figure: Any, path: Path) -> Path:
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  import matplotlib.pyplot as plt

  plt.close(figure)
  return path


# ------------------------------------------------------------------------ page

COMMAND = "python benchmarks/workbench.py"
REDRAW = "python benchmarks/workbench_report.py docs/_static/workbench/workbench.json"


def write_page(results: dict[str, Any], page: Path = PAGE) -> None:
  """Writes the docs page from ``results`` (and keeps the JSON beside the figures)."""
  STATIC.mkdir(parents=True, exist_ok=True)
  (STATIC / "workbench.json").write_text(json.dumps(results, indent=1))
  page.write_text(page_text(results))


def _verdicts(results: dict[str, Any]) -> list[str]:
  lines = []
  for name, task in results["tasks"].items():
    rows = summary(task)
    if not rows:
      continue
    tied = sorted(
      (m for m, r in rows.items() if r["tied_with_lowest"]), key=lambda m: rows[m]["mean"]
    )
    if len(tied) == len(rows):
      lines.append(f"- **{name}**: every member is within seed noise of the lowest; no ranking.")
    else:
      lines.append(
        f"- **{name}**: lowest mean {tied[0]}; within seed noise of it: "
        f"{', '.join(tied[1:]) or 'none'} ({len(tied)} of {len(rows)} tied)."
      )
  return lines


def page_text(results: dict[str, Any]) -> str:
  size = results["size"]
  machine = results["machine"]
  members = results["members"]
  sched = results["schedule"]
  tasks = "\n".join(
    f"- **{name}**: {task['title']}; {task['steps']} steps, {task['n_params']:,} params, "
    f"learning-rate centre {task['lr_scale']:g} x the member's default"
    + (f", options {task['options']}" if task["options"] else "")
    + ("; schedule alpha/sqrt(t) (the paper's)" if task["schedule"] == "inverse_sqrt" else "")
    + "."
    for name, task in results["tasks"].items()
  )
  defaults = "\n".join(
    f"| {name} | {m['lr']:g} | {'warm-up + cosine' if m['scheduled'] else 'none'} | {m['note']} |"
    for name, m in members.items()
  )
  missing = ", ".join(results["not_available"]) or "none"
  return f"""# Which Adam?

Every member of the family, on the same four tasks, each member's learning rate swept and
three seeds per learning rate. Generated by `{COMMAND}` (the tables, the figures and this page)
from `docs/_static/workbench/workbench.json`; nothing on it is written by hand. Independent
benchmarks (Wen et al. 2025, [arXiv 2509.02046](https://arxiv.org/abs/2509.02046); Semenov et
al. 2025, [arXiv 2509.01440](https://arxiv.org/abs/2509.01440)) find that most members' gains
shrink against a well-tuned AdamW; these small CPU tasks are a check anyone can rerun, not a
replacement for them.

## What was found

{chr(10).join(_verdicts(results))}

## Method

- **Swept**: the peak learning rate, {size["n_lrs"]} values log-spaced over {size["decades"]:g}
  decades centred on each member's default (times a per-task factor, the same for every member);
  seeds {", ".join(map(str, size["seeds"]))} at each (a seed sets the initial params and the
  minibatches; the same seed gives every member the same ones).
- **Fixed**: everything else at each member's defaults (below), including its weight decay.
  Members with a schedule get linear warm-up over {sched["warmup_fraction"]:.0%} of the run, then
  cosine decay to {sched["final_fraction"]:.0%} of the peak; Schedule-Free gets no schedule.
- **Winner of a sweep**: the learning rate with the lowest mean final validation loss over the
  seeds; "(edge)" marks a best learning rate at the end of the sweep (the optimum may lie
  outside it). The spread is the standard deviation over the seeds at that learning rate.
- **Ties**: two members whose means differ by no more than the sum of their spreads are within
  seed noise of each other; the tables say "tied" instead of ranking them. The best of
  {size["n_lrs"]} learning rates is chosen on the same seeds it is reported on, which flatters
  every member alike.
- **Steps to target**: the first validation step after step 0 at which the seed-mean curve
  at the best learning rate is at or below the task's target: 1.05 x the median over members
  of their best loss, or on the online problem the loss of x = -0.8 (validation is every few
  steps, so this is a step count to within that interval).
- **Cost**: time per step is that of the whole vmapped sweep of a member (all learning rates
  and seeds in one compiled program), over AdamW's on the same task: the optimizer's share of
  a step that also runs the model. State bytes per parameter are those of `optimizer.init`,
  float32 params; on the LM also under `adam_optax.quantized(optimizer, bits=8)` (leaves of
  4096 elements or more are quantized).

### Tasks

{tasks}

### Members and their defaults

| member | default lr | schedule | where the defaults come from |
|---|---:|---|---|
{defaults}

Not available in the checkout that made this page: {missing}.

## Results

{markdown({**results, "not_available": []})}

## Figures

Each figure is redrawn from the JSON by `{REDRAW}`, and remade from scratch (with a new run) by
`{COMMAND}`.

![Validation loss at each member's best learning rate](_static/workbench/curves.png)

Loss curves: the seed mean at each member's best learning rate (`{COMMAND}`).

![Final validation loss against the peak learning rate](_static/workbench/sensitivity.png)

Sensitivity: mean final loss at each learning rate of the sweep; a gap is a diverged run,
values are capped at twice the initial loss (`{COMMAND}`).

![Optimizer-state bytes per parameter](_static/workbench/state_bytes.png)

State bytes per parameter, float32 and under `quantized(bits=8)` (`{COMMAND}`).

## Machine

{machine["cpu"]}; {machine["versions"]}. Load average {machine["load_at_start"]:.2f} at the
start, {machine.get("load_at_end", math.nan):.2f} at the end; {machine["date"]}; the run took
{results["wall_s"] / 60:.1f} minutes.
"""


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", type=Path, help="a workbench JSON (full size for the page)")
  parser.add_argument("--figures", type=Path, default=STATIC, help="where the PNGs go")
  parser.add_argument("--page", type=Path, default=PAGE, help="the docs page to write")
  args = parser.parse_args(argv)
  results = json.loads(args.results.read_text())
  figures(results, args.figures)
  args.page.write_text(page_text(results))
  print(f"figures: {args.figures}; page: {args.page}")


if __name__ == "__main__":
  main()
