"""``skip_nonfinite``: never let a NaN or inf gradient into the optimizer state.

One non-finite gradient entry makes Adam's moments NaN for good: every later
step is garbage, silently. :func:`skip_nonfinite` wraps an optimizer so that
such a step changes nothing (zero updates, the inner state kept) and records
what happened; :func:`nonfinite_report` turns that record into a sentence that
names the offending leaf. (``optax.apply_if_finite`` skips too, but does not
say which leaf went non-finite.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num


class SkipNonfiniteState(NamedTuple):
  """State of :func:`skip_nonfinite`.

  Attributes:
    inner_state: the wrapped optimizer's state, unchanged by skipped steps.
    skipped: number of steps skipped so far (int32, saturating).
    last_bad_leaf: in the last skipped step, the index of the first gradient
      leaf (in ``jax.tree.leaves`` order) with a NaN or inf; -1 before any.
    last_bad_leaves: how many gradient leaves were non-finite in that step.
  """

  inner_state: optax.OptState
  skipped: jax.Array
  last_bad_leaf: jax.Array
  last_bad_leaves: jax.Array


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  r"""Wraps ``inner`` so that a step with a non-finite gradient is skipped and recorded.

  .. math::

    (u_t, s_t) = \begin{cases}
      \text{inner.update}(g_t, s_{t-1}) & \text{if every } g_t \text{ entry is finite,} \\
      (0,\ s_{t-1}) & \text{otherwise.}
    \end{cases}

  The check is one reduction per leaf inside the jitted step; nothing leaves
  the device. Read ``state.skipped`` (or :func:`nonfinite_report`) to find out.

  Args:
    inner: the optimizer to protect, e.g. :func:`adam_optax.adam`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`SkipNonfiniteState`.

  Raises:
    TypeError: ``inner`` is not an :class:`optax.GradientTransformation`.

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
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
      f"skip_nonfinite(inner=...): expected an optax.GradientTransformation, "
      f"got {type(inner).__name__}"
    )
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> SkipNonfiniteState:
    return SkipNonfiniteState(
      inner_state=inner.init(params),
      skipped=num.zero_count(),
      last_bad_leaf=jnp.full([], -1, jnp.int32),
      last_bad_leaves=num.zero_count(),
    )

  def update_fn(
    updates: optax.Updates,
    state: SkipNonfiniteState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, SkipNonfiniteState]:
    finite = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(updates)]
    bad = jnp.logical_not(jnp.stack(finite)) if finite else jnp.zeros([0], bool)
    ok = jnp.logical_not(jnp.any(bad))
    new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)

    def keep(new: Any, old: Any) -> Any:
      return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

    new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
    first_bad = jnp.argmax(bad).astype(jnp.int32) if finite else jnp.full([], -1, jnp.int32)
    return new_updates, SkipNonfiniteState(
      inner_state=keep(new_inner, state.inner_state),
      skipped=jnp.where(ok, state.skipped, num.saturating_increment(state.skipped)),
      last_bad_leaf=jnp.where(ok, state.last_bad_leaf, first_bad),
      last_bad_leaves=jnp.where(ok, state.last_bad_leaves, jnp.sum(bad, dtype=jnp.int32)),
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
  """
  skipped = int(state.skipped)
  if skipped == 0:
    return "no step skipped: every gradient was finite"
  paths = [
    jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(grads_like)[0]
  ]
  index = int(state.last_bad_leaf)
  where = paths[index] if 0 <= index < len(paths) else f"leaf {index}"
  steps = "1 step" if skipped == 1 else f"{skipped} steps"
  return (
    f"{steps} skipped for NaN/inf gradients; in the last, "
    f"{int(state.last_bad_leaves)} of {len(paths)} leaves, the first at {where}"
  )
