"""``skip_nonfinite``: never let a NaN or inf gradient into the optimizer state.

One non-finite gradient entry makes Adam's moments NaN for good: every later
step is garbage, silently. :func:`skip_nonfinite` wraps an optimizer so that
such a step changes nothing (zero updates, the inner state kept) and records
what happened; :func:`nonfinite_report` turns that record into a sentence that
names the offending leaf. (``optax.apply_if_finite`` skips too, but does not
say which leaf went non-finite.)
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._trees import check_state_type, colocate, where
from adam_optax._validation import check_choice

Check = Literal["gradients", "updates", "all"]

# What a step's check looks at, in the order a report names the first bad one.
_SOURCES = ("gradients", "updates", "state")
_SOURCES_CHECKED: dict[str, int] = {"gradients": 1, "updates": 2, "all": 3}


class SkipNonfiniteState(NamedTuple):
  """State of :func:`skip_nonfinite`.

  Attributes:
    inner_state: the wrapped optimizer's state, unchanged by skipped steps.
    skipped: number of steps skipped so far (int32, saturating).
    last_bad_leaf: in the last skipped step, the index of the first non-finite
      leaf among the floating leaves (in ``jax.tree.leaves`` order) of the
      tree named by ``last_bad_source``; -1 before any.
    last_bad_leaves: how many of that tree's leaves were non-finite then.
    last_bad_source: which tree went non-finite first in the last skipped
      step: 0 the gradients, 1 the updates the inner optimizer returned, 2 its
      new state; -1 before any.
  """

  inner_state: optax.OptState
  skipped: jax.Array
  last_bad_leaf: jax.Array
  last_bad_leaves: jax.Array
  last_bad_source: jax.Array


def _floating_leaves(tree: Any) -> list[Any]:
  return [
    leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
  ]


def _nonfinite_flags(tree: Any) -> jax.Array:
  """One bool per floating leaf of ``tree``: whether it holds a NaN or an inf."""
  flags = [jnp.logical_not(jnp.all(jnp.isfinite(leaf))) for leaf in _floating_leaves(tree)]
  return jnp.stack(flags) if flags else jnp.zeros([0], bool)


def skip_nonfinite(
  inner: optax.GradientTransformation, *, check: Check = "all"
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps ``inner`` so that a step that would go non-finite is skipped and recorded.

  .. math::

    (u_t, s_t) = \begin{cases}
      \text{inner.update}(g_t, s_{t-1}) & \text{if it is finite,} \\
      (0,\ s_{t-1}) & \text{otherwise.}
    \end{cases}

  "Finite" covers, by ``check``, the incoming gradients (a NaN or inf
  gradient poisons Adam's moments for good), the updates the inner optimizer
  returns (a schedule or an injected hyperparameter gone NaN), and its new
  state: a finite gradient can still overflow the second moment (:math:`g^2`
  exceeds float32's range for :math:`|g|` above ~1.8e19, after which the
  param would stay frozen). The checks are reductions inside the jitted step;
  nothing leaves the device. Read ``state.skipped`` (or
  :func:`nonfinite_report`) to find out.

  Args:
    inner: the optimizer to protect, e.g. :func:`adam_optax.adam`.
    check: ``"all"`` (default): gradients, updates and the new inner state;
      ``"updates"``: gradients and updates; ``"gradients"``: the gradients
      only, as ``optax.apply_if_finite`` does. Each wider check reads more
      memory per step (the new state is two param-sized arrays for Adam); see
      the benchmarks for the cost.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`SkipNonfiniteState`.

  Raises:
    TypeError: ``inner`` is not an :class:`optax.GradientTransformation`.
    ValueError: ``check`` is not one of the three choices.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> optimizer = adam_optax.skip_nonfinite(adam_optax.adam(0.1))
    >>> params = {"b": jnp.zeros(2), "w": jnp.zeros(3)}
    >>> state = optimizer.init(params)
    >>> grads = {"b": jnp.ones(2), "w": jnp.array([1.0, jnp.nan, 0.0])}
    >>> updates, state = optimizer.update(grads, state, params)
    >>> print(adam_optax.nonfinite_report(state, grads))
    1 step skipped for NaN/inf gradients; in the last, 1 of 2 leaves, the first at ['w']
  """
  owner = "skip_nonfinite"
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
      f"{owner}(inner=...): expected an optax.GradientTransformation, got {type(inner).__name__}"
    )
  check_choice(owner, "check", check, tuple(_SOURCES_CHECKED))
  checked = _SOURCES_CHECKED[check]
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> SkipNonfiniteState:
    none = jnp.full([], -1, jnp.int32)
    state = SkipNonfiniteState(
      inner_state=inner.init(params),
      skipped=num.zero_count(),
      last_bad_leaf=none,
      last_bad_leaves=num.zero_count(),
      last_bad_source=none,
    )
    return colocate(state, params)

  def update_fn(
    updates: optax.Updates,
    state: SkipNonfiniteState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, SkipNonfiniteState]:
    check_state_type(owner, state, SkipNonfiniteState)
    new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
    flags = [_nonfinite_flags(tree) for tree in (updates, new_updates, new_inner)[:checked]]
    bad = jnp.stack([jnp.any(f) for f in flags])
    ok = jnp.logical_not(jnp.any(bad))
    source = jnp.argmax(bad).astype(jnp.int32)
    firsts = jnp.stack(
      [jnp.argmax(f).astype(jnp.int32) if f.size else jnp.zeros([], jnp.int32) for f in flags]
    )
    counts = jnp.stack([jnp.sum(f, dtype=jnp.int32) for f in flags])

    def keep(new: Any, old: Any) -> Any:
      return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

    new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
    return new_updates, SkipNonfiniteState(
      inner_state=keep(new_inner, state.inner_state),
      skipped=jnp.where(ok, state.skipped, num.saturating_increment(state.skipped)),
      last_bad_leaf=jnp.where(ok, state.last_bad_leaf, firsts[source]),
      last_bad_leaves=jnp.where(ok, state.last_bad_leaves, counts[source]),
      last_bad_source=jnp.where(ok, state.last_bad_source, source),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def nonfinite_report(state: SkipNonfiniteState, grads_like: optax.Updates) -> str:
  """Says how many steps :func:`skip_nonfinite` skipped and where the last NaN/inf was.

  Args:
    state: a :class:`SkipNonfiniteState` (concrete, not traced).
    grads_like: any tree with the gradients' structure (the params will do),
      used to turn the recorded leaf index into its path.

  Returns:
    A one-line description, e.g. ``"2 steps skipped for NaN/inf gradients;
    in the last, 1 of 8 leaves, the first at ['layer1']['w']"``, or a line
    saying that no step was skipped.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> optimizer = adam_optax.skip_nonfinite(adam_optax.adam(1e-3))
    >>> params = {"b": jnp.zeros(2), "w": jnp.zeros(2)}
    >>> state = optimizer.init(params)
    >>> adam_optax.nonfinite_report(state, params)
    'no step skipped: nothing went NaN/inf'
    >>> grads = {"b": jnp.ones(2), "w": jnp.array([jnp.nan, 1.0])}
    >>> _, state = optimizer.update(grads, state, params)
    >>> adam_optax.nonfinite_report(state, params)
    "1 step skipped for NaN/inf gradients; in the last, 1 of 2 leaves, the first at ['w']"
  """
  skipped = int(state.skipped)
  if skipped == 0:
    return "no step skipped: nothing went NaN/inf"
  source = _SOURCES[int(state.last_bad_source)]
  tree = state.inner_state if source == "state" else grads_like
  paths = [
    where(path)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
  ]
  index = int(state.last_bad_leaf)
  first = paths[index] if 0 <= index < len(paths) else f"leaf {index}"
  steps = "1 step" if skipped == 1 else f"{skipped} steps"
  what = {
    "gradients": "NaN/inf gradients",
    "updates": "NaN/inf updates (the gradients were finite)",
    "state": "a NaN/inf optimizer state (the gradients were finite)",
  }[source]
  return (
    f"{steps} skipped for {what}; in the last, "
    f"{int(state.last_bad_leaves)} of {len(paths)} leaves, the first at {first}"
  )
