"""What each optimizer was built from, recorded when its ``init`` runs.

An optimizer is an opaque :class:`optax.GradientTransformation`: its
hyperparameters live in closures. The converters of :mod:`adam_optax._migrate`
need them (which family member, its decays, its AMSGrad convention), so the
factories wrap ``init`` to report what they built to whoever is listening:
:func:`recording` collects one :class:`Event` per family member (and per
:func:`adam_optax.add_decayed_weights`) whose ``init`` runs inside it, with the
params that ``init`` saw and the state it returned. Wrappers such as
``optax.chain``, ``optax.inject_hyperparams`` (whose factory runs inside its
``init``), ``optax.masked``, ``optax.multi_transform``, ``optax.MultiSteps`` and
:func:`adam_optax.skip_nonfinite` call the inner ``init``, so they are seen
through; the state object returned is kept as is by them, which is how the
converters find each member's state by identity. Outside :func:`recording`
nothing is recorded and ``init`` is unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import optax


class Recipe(NamedTuple):
  """A family member's factory arguments (values may be tracers under ``inject_hyperparams``).

  Attributes:
    member: the factory: ``"adam"``, ``"adamw"``, ``"nadam"``, ``"nadamw"``,
      ``"amsgrad"``, ``"adamax"``, ``"radam"`` or ``"adopt"``.
    learning_rate: a number, an array or a schedule.
    b1: decay of the first moment.
    b2: decay of the second moment (of the infinity norm for AdaMax).
    eps: the stabiliser outside the root (inside the maximum for AdaMax).
    eps_root: the stabiliser inside the root.
    weight_decay: the decoupled decay of AdamW/NAdamW, else ``None``.
    momentum_decay: torch's NAdam momentum schedule, or ``None``.
    convention: AMSGrad's convention (``"torch"``, ``"optax"``, ``"paper"``),
      else ``None``.
    options: the member's other hyperparameters as ``(name, value)`` pairs
      (RAdam's ``threshold``, ADOPT's ``clip``).
  """

  member: str
  learning_rate: Any
  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  weight_decay: Any = None
  momentum_decay: Any = None
  convention: str | None = None
  options: tuple[tuple[str, Any], ...] = ()


def modern_recipe(
  member: str, learning_rate: Any, b1: Any, b2: Any, eps: Any, weight_decay: Any, **options: Any
) -> Recipe:
  """A :class:`Recipe` without ``eps_root``; ``weight_decay``: the member's own decay, or None."""
  return Recipe(
    member,
    learning_rate,
    b1,
    b2,
    eps,
    0.0,
    weight_decay=weight_decay,
    options=tuple(options.items()),
  )


class DecayRecipe(NamedTuple):
  """The argument of :func:`adam_optax.add_decayed_weights`."""

  weight_decay: Any


class Event(NamedTuple):
  """One recorded ``init``: what was built, what it saw and what it returned.

  Attributes:
    recipe: a :class:`Recipe` or a :class:`DecayRecipe`.
    params: the params that ``init`` was given (masked leaves are
      :class:`optax.MaskedNode` under ``optax.masked``/``multi_transform``).
    state: the state object ``init`` returned.
    inner: the events recorded while this ``init`` ran (AdamW's decay).
  """

  recipe: Recipe | DecayRecipe
  params: Any
  state: Any
  inner: tuple[Event, ...]


_LOCAL = threading.local()


def _stack() -> list[list[Event]]:
  if not hasattr(_LOCAL, "stack"):
    _LOCAL.stack = []
  return _LOCAL.stack


@contextlib.contextmanager
def recording() -> Iterator[list[Event]]:
  """Collects the :class:`Event` of every recorded ``init`` that runs inside it."""
  events: list[Event] = []
  _stack().append(events)
  try:
    yield events
  finally:
    _stack().pop()


def recorded(recipe: Recipe | DecayRecipe, transform: Any) -> Any:
  """``transform`` with an ``init`` that reports ``recipe`` inside :func:`recording`."""

  def init_fn(params: optax.Params) -> optax.OptState:
    if not _stack():
      return transform.init(params)
    with recording() as inner:
      state = transform.init(params)
    _stack()[-1].append(Event(recipe, params, state, tuple(inner)))
    return state

  return transform._replace(init=init_fn)
