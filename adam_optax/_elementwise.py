"""The frame of an elementwise moment transform: state, checks, per-dtype scalars, leaf map.

ADOPT, AdaBelief, LaProp and AdEMAMix each keep a step count and a few
parameter-shaped moments and update every entry independently. They differ
only in their leaf arithmetic, so :func:`moment_transform` builds the
:class:`optax.GradientTransformation` around a leaf function once: the state
(zero moments in the dtypes :func:`adam_optax._numerics.state_dtype` chooses,
colocated with the params), the checks of ``update`` (state type, tree layout,
moment dtypes), the step's scalars computed once per dtype (not once per
leaf), and the saturating count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_optax import _numerics as num
from adam_optax._moments import zero_moment
from adam_optax._trees import (
  check_fits_state,
  check_inexact_leaves,
  check_state_type,
  colocate,
  where,
)
from adam_optax._validation import check_in_dtype


class Moment(NamedTuple):
  """One parameter-shaped field of the state.

  Attributes:
    name: the state's field.
    requested: the user's dtype for it (``mu_dtype``/``nu_dtype``), or ``None``.
    real: whether it holds magnitudes (a second moment: real, float32 for
      half-precision params by default) rather than signed values.
  """

  name: str
  requested: Any
  real: bool


# scalars(state before this step, compute dtype) -> whatever the leaf function needs
Scalars = Callable[[Any, np.dtype], Any]
# the state's scalar fields besides count: name -> (initial value, next value from the old state)
ScalarFields = dict[str, tuple[Callable[[], jax.Array], Callable[[Any], jax.Array]]]
# leaf(scalars, grad in the compute dtype, *moments in the compute dtype) -> (update, *moments)
Leaf = Callable[..., tuple[jax.Array, ...]]


def moment_transform(
  owner: str,
  state_type: type,
  moments: Sequence[Moment],
  scalars: Scalars,
  leaf: Leaf,
  scalar_fields: ScalarFields | None = None,
) -> optax.GradientTransformation:
  """An elementwise transform with state ``state_type(count, *moments, *scalar_fields)``.

  ``leaf`` receives the gradient and the moments in the leaf's compute dtype
  (float32 for half precision; real moments in its real dtype) and returns
  the update and the new moments, which are stored back in their dtypes.
  ``scalar_fields`` are further scalars of the state (a running weight), each
  made by its initial function and advanced from the old state.
  """
  scalar_fields = scalar_fields or {}

  def init_fn(params: optax.Params) -> Any:
    check_inexact_leaves(f"{owner}.init", params, "param")
    fields = {m.name: zero_moment(params, m.requested, real=m.real) for m in moments}
    fields |= {name: initial() for name, (initial, _) in scalar_fields.items()}
    return colocate(state_type(count=num.zero_count(), **fields), params)

  def update_fn(
    updates: optax.Updates, state: Any, params: optax.Params | None = None
  ) -> tuple[optax.Updates, Any]:
    check_state_type(owner, state, state_type)
    held = [getattr(state, m.name) for m in moments]
    check_fits_state(owner, updates, held[0], params)
    if params is not None:
      _check_dtypes(owner, moments, held, params)
    step_scalars = functools.cache(functools.partial(scalars, state))

    def one_leaf(grad: Any, *stored: jax.Array) -> tuple[jax.Array, ...]:
      grad = jnp.asarray(grad)
      dtype = num.compute_dtype(grad.dtype)
      computed = [
        x.astype(num.real_dtype(dtype) if m.real else dtype)
        for m, x in zip(moments, stored, strict=True)
      ]
      out, *new = leaf(step_scalars(dtype), grad.astype(dtype), *computed)
      return (
        out.astype(grad.dtype),
        *(x.astype(s.dtype) for x, s in zip(new, stored, strict=True)),
      )

    results = jax.tree.map(one_leaf, updates, *held)

    def column(index: int) -> optax.Updates:  # also right for trees with no leaves
      return jax.tree.map(lambda _, r: r[index], updates, results)

    fields = {m.name: column(i + 1) for i, m in enumerate(moments)}
    fields |= {name: advance(state) for name, (_, advance) in scalar_fields.items()}
    count = num.saturating_increment(state.count)
    return column(0), state_type(count=count, **fields)

  return optax.GradientTransformation(init_fn, update_fn)


def _check_dtypes(
  owner: str, moments: Sequence[Moment], held: list[Any], params: optax.Params
) -> None:
  """Raises if a stored moment is not in the dtype this transform's init would choose."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for moment, tree in zip(moments, held, strict=True):
    for (path, param), leaf in zip(flat, jax.tree.leaves(tree), strict=True):
      expected = num.state_dtype(jnp.result_type(param), moment.requested, real=moment.real)
      if jnp.result_type(leaf) != expected:
        raise TypeError(
          f"{owner}.update: the state's {moment.name} at {where(path)} is "
          f"{jnp.result_type(leaf)}, but this optimizer keeps it in {expected}. Was the "
          "state made by an optimizer with another mu_dtype or nu_dtype?"
        )


def check_in_dtypes(
  owner: str, dtype: Any, *, decays: dict[str, Any], constants: dict[str, Any]
) -> None:
  """Checks that the decays stay below 1 and the constants finite once rounded to ``dtype``."""
  for name, value in decays.items():
    check_in_dtype(owner, name, value, dtype, decay=True)
  for name, value in constants.items():
    check_in_dtype(owner, name, value, dtype)
