"""The members of the "Which Adam?" workbench: one spec per optimizer, keyed by name.

A member is looked up on ``adam_optax`` by name when the workbench runs
(``getattr(adam_optax, name, None)``): a member that this checkout does not
have is listed as "not available" and skipped, so members merged later appear
without editing this file. ``optax.adamw`` runs beside them as an outside
anchor: it must tie with ``adamw``, which checks the harness itself.

Each spec states the member's own defaults: the peak learning rate the sweep
is centred on (its reference's default, unless noted), the weight decay of its
paper or reference, and whether it takes a schedule (every member but
Schedule-Free gets warm-up + cosine; Schedule-Free is run without one, which
is its point).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optax

import adam_optax

# A member's factory: (learning rate or schedule, the run's length, task options) -> optimizer.
Build = Callable[[Any, int, dict[str, Any]], optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class Member:
  """How the workbench builds and evaluates one optimizer.

  Attributes:
    name: the registry key (the ``adam_optax`` function's name, or ``optax.adamw``).
    lr: the peak learning rate the sweep is centred on.
    note: where ``lr`` and the weight decay come from, for the docs page.
    build: ``None`` when this checkout lacks the member; else the factory.
    scheduled: warm-up + cosine (``True``) or a constant learning rate.
    eval_params: the params to evaluate at, from ``(state, params)`` (Schedule-Free's x).
  """

  name: str
  lr: float
  note: str
  build: Build | None
  scheduled: bool = True
  eval_params: Callable[[Any, Any], Any] | None = None


def _ours(name: str) -> Callable[..., optax.GradientTransformation] | None:
  return getattr(adam_optax, name, None)


def _simple(name: str, **defaults: Any) -> Build | None:
  """A member called as ``adam_optax.<name>(lr, **defaults, **task_options)``."""
  factory = _ours(name)
  if factory is None:
    return None
  return lambda lr, steps, options: factory(lr, **defaults, **options)


def _ademamix() -> Build | None:
  """AdEMAMix with the paper's warm-ups of alpha and b3 over the whole run (T_alpha = T_b3 = T)."""
  factory = _ours("ademamix")
  if factory is None:
    return None
  return lambda lr, steps, options: factory(
    lr, alpha_warmup=steps, b3_warmup=steps, weight_decay=0.0, **options
  )


def _cautious() -> Build | None:
  """``cautious`` wraps this project's ``adamw`` (with AdamW's weight decay)."""
  wrapper, adamw = _ours("cautious"), _ours("adamw")
  if wrapper is None or adamw is None:
    return None
  return lambda lr, steps, options: wrapper(adamw(lr, weight_decay=0.01, **options))


def _schedule_free() -> Build | None:
  """Schedule-Free AdamW, constant lr after its own linear warm-up (5 % of the run)."""
  factory = _ours("schedule_free_adamw")
  if factory is None or _ours("schedule_free_eval_params") is None:
    return None
  return lambda lr, steps, options: factory(
    lr, warmup_steps=max(1, steps // 20), weight_decay=0.0, **options
  )


def members() -> dict[str, Member]:
  """Every member, available or not, in the order the tables list them."""
  specs = [
    Member(
      "adamw",
      1e-3,
      "lr 1e-3; weight decay 0.01 (torch.optim.AdamW's)",
      _simple("adamw", weight_decay=0.01),
    ),
    Member(
      "optax.adamw",
      1e-3,
      "the outside anchor: optax's own AdamW, same lr and decay as adamw",
      lambda lr, steps, options: optax.adamw(lr, weight_decay=0.01, **options),
    ),
    Member("adam", 1e-3, "Kingma & Ba's lr 1e-3; no decay", _simple("adam")),
    Member("nadam", 2e-3, "Dozat's lr 2e-3 (torch.optim.NAdam's)", _simple("nadam")),
    Member(
      "nadamw", 2e-3, "lr 2e-3 as nadam; weight decay 0.01", _simple("nadamw", weight_decay=0.01)
    ),
    Member("amsgrad", 1e-3, "lr 1e-3; torch's convention", _simple("amsgrad")),
    Member("adamax", 2e-3, "Kingma & Ba's lr 2e-3 for AdaMax (Section 7.1)", _simple("adamax")),
    Member("adopt", 1e-3, "lr 1e-3, b2 0.9999, no decay (the paper's)", _simple("adopt")),
    Member(
      "ademamix", 1e-3, "lr 1e-3, alpha and b3 warmed up over the run (the paper's)", _ademamix()
    ),
    Member(
      "simplified_ademamix",
      1e-4,
      "lr 1e-4 (pytorch-optimizer's: its momentum is a sum, ~1/(1 - b1) larger)",
      _simple("simplified_ademamix"),
    ),
    Member("laprop", 4e-4, "lr 4e-4, eps 1e-15 (the paper's)", _simple("laprop")),
    Member("radam", 1e-3, "lr 1e-3 (torch.optim.RAdam's)", _simple("radam")),
    Member("adabelief", 1e-3, "lr 1e-3, eps 1e-16 (the paper's)", _simple("adabelief")),
    Member("cautious", 1e-3, "cautious(adamw): adamw's lr and decay", _cautious()),
    Member(
      "stable_adamw",
      1e-3,
      "lr 1e-3, weight decay 0.01 (optimi's)",
      _simple("stable_adamw", weight_decay=0.01),
    ),
    Member(
      "adam_atan2",
      1e-3,
      "lr 1e-3 (the reference package's is 1e-4; its steps are Adam-sized)",
      _simple("adam_atan2"),
    ),
    Member(
      "schedule_free_adamw",
      2.5e-3,
      "lr 2.5e-3 (the paper's), no schedule: own warm-up, then constant",
      _schedule_free(),
      scheduled=False,
      eval_params=getattr(adam_optax, "schedule_free_eval_params", None),
    ),
    Member(
      "mars_adamw",
      3e-3,
      "lr 3e-3, b = (0.95, 0.99), gamma 0.025 (the paper's)",
      _simple("mars_adamw"),
    ),
    Member("adam_mini", 1e-3, "lr 1e-3, default blocks", _simple("adam_mini")),
  ]
  return {spec.name: spec for spec in specs}
