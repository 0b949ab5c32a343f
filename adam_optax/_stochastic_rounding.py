r"""``stochastic_rounding``: low-precision params that land on the exact sum on average.

Rounding :math:`p + u` to the nearest bfloat16 loses every update smaller than
half a unit in the last place of :math:`p` (:math:`2^{-9} |p|`): with a
learning rate of 1e-3, bfloat16 weights stop moving. Stochastic rounding
picks one of the two neighbours :math:`a \le x \le b` of the exact value
:math:`x` at random,

.. math::

  \operatorname{sr}(x) = \begin{cases} b & \text{with probability } (x - a) / (b - a), \\
  a & \text{otherwise,} \end{cases} \qquad \mathbb{E}[\operatorname{sr}(x)] = x,

so small updates accumulate in expectation (Gupta et al., 2015).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num


def round_stochastically(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
  r"""``x`` rounded to ``dtype`` stochastically: to a neighbour, unbiased.

  Exact values (those ``dtype`` represents), zeros, infinities and NaN come
  back as they are. A value beyond ``dtype``'s largest finite number rounds
  as round-to-nearest does (to that number, or to infinity past the midpoint).

  Args:
    x: a float32 (or wider) array.
    dtype: the low-precision floating dtype to round to (bfloat16, float16).
    key: a :func:`jax.random.key`; the same key gives the same rounding.

  Returns:
    An array of ``dtype``, shaped like ``x``.
  """
  wide = num.rounded_to(x, dtype)  # the nearest value, held in x's dtype
  nearest = wide.astype(dtype)
  toward = jnp.where(wide < x, jnp.inf, -jnp.inf).astype(dtype)
  other = jnp.nextafter(nearest, toward)  # the neighbour on x's other side
  # Differences of tiny numbers would be float32 subnormals, which XLA:CPU flushes to
  # zero: scale them up by a power of two first (exact for normal numbers).
  lift = jnp.where(jnp.abs(wide) < 2.0**-60, 2.0**64, 1.0).astype(x.dtype)
  gap = other.astype(x.dtype) * lift - wide * lift
  # Far from `nearest` in units of the gap; in [0, 1/2]; 0 (or NaN) when x is exact or not finite.
  distance = (x * lift - wide * lift) / gap
  uniform = jax.random.uniform(key, jnp.shape(x), x.dtype)
  chosen = jnp.where(uniform < distance, other, nearest)
  return jnp.where(jnp.isfinite(wide) & (wide != x), chosen, nearest)


def landing_update(param: jax.Array, update: jax.Array, target: jax.Array) -> jax.Array:
  """The update that ``optax.apply_updates`` adds to ``param`` to land on ``target``.

  That is ``target - param``, exact whenever ``target`` is within a factor two
  of ``param`` (Sterbenz) or ``param = 0``. Where ``param`` is infinite or NaN
  (minus itself is NaN) ``update`` passes through, so ``apply_updates`` gives
  what it gives without the transform.
  """
  difference = (target.astype(jnp.float32) - param.astype(jnp.float32)).astype(update.dtype)
  return jnp.where(jnp.isfinite(param), difference, update)


def check_params(owner: str, params: Any) -> None:
  """Raises if ``update`` was not given the params."""
  if params is None:
    raise ValueError(f"{owner}: update needs the params (update(updates, state, params))")


class StochasticRoundingState(NamedTuple):
  """State of :func:`stochastic_rounding`.

  Attributes:
    count: number of updates rounded so far (int32, saturating); with the
      seed it keys the random bits, so a resumed run repeats itself.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax


def step_key(seed: int, count: jax.Array) -> jax.Array:
  """The random key of step ``count`` of a run seeded with ``seed``."""
  return jax.random.fold_in(jax.random.key(seed), count)


def check_seed(owner: str, name: str, seed: Any) -> None:
  """Checks that ``seed`` is a Python int in ``[0, 2**32)``."""
  if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
    raise ValueError(f"{owner}({name}={seed!r}): {name} must be an int in [0, 2**32)")


def check_optimizer(owner: str, optimizer: Any, example: str) -> None:
  """Raises if ``optimizer`` is not the optimizer a rounding wrapper wraps.

  ``example`` is a call of the wrapper, for the message. The rounding
  transforms were once links of a chain, where a misplaced one (first instead
  of last) rounded the gradients instead of the final updates and the weights
  never moved; an old call now ends here.
  """
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(
      f"{owner}(optimizer={optimizer!r}): expected the optax.GradientTransformation whose "
      f"updates to round, as in {example}; the rounding must see the final updates, so it "
      "wraps the optimizer instead of being a link of a chain"
    )


def stochastic_rounding(
  optimizer: optax.GradientTransformation, seed: int = 0
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps ``optimizer`` so that bfloat16/float16 params round stochastically, unbiased.

  For each low-precision param :math:`p` and update :math:`u` of
  ``optimizer``, it computes the exact sum :math:`x = p + u` in float32,
  rounds it stochastically to the param's dtype,
  :math:`p' = \operatorname{sr}(x)` with :math:`\mathbb{E}[p'] = p + u`, and
  returns :math:`p' - p`, so that ``optax.apply_updates`` (which adds in the
  param's dtype) lands on :math:`p'`. That is exact whenever :math:`p' - p`
  is representable, which holds when :math:`p'` is within a factor two of
  :math:`p` (Sterbenz) or :math:`p = 0`: every step smaller than the weight
  itself. float32 and wider params pass through untouched.

  The rounding needs the final updates, so it wraps the optimizer rather than
  being a link of a chain (placed first in a chain, it would round the
  gradients and the weights would never move). Apply the updates it returns
  as they are: a transform chained after it changes them and undoes the
  rounding.

  The random bits are keyed by ``seed``, the step count in the state and the
  leaf's position: the same seed and state give the same rounding, so a run
  resumed from a checkpoint repeats itself.

  On XLA:CPU, float32 arithmetic flushes subnormals (below 1.2e-38) to zero,
  so bfloat16 subnormals round as zero does; float16's subnormals are normal
  float32 numbers and round as any other value.

  Args:
    optimizer: the optimizer whose updates to round (any optax
      ``GradientTransformation``).
    seed: an int in ``[0, 2**32)``; runs with different seeds round
      differently.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is
    ``(optimizer's state, StochasticRoundingState)``; its ``update`` needs
    ``params``.

  Raises:
    TypeError: ``optimizer`` is not an :class:`optax.GradientTransformation`
      (for instance the seed, as in the old ``stochastic_rounding(seed)``).
    ValueError: ``seed`` is not an int in range (at construction); ``params``
      is not given to ``update``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.stochastic_rounding(optax.sgd(1e-3), seed=0)
    >>> params = jnp.ones(10_000, jnp.bfloat16)
    >>> state = optimizer.init(params)
    >>> grads = jnp.ones(10_000, jnp.bfloat16)
    >>> updates, state = optimizer.update(grads, state, params)
    >>> new = optax.apply_updates(params, updates)  # nearest rounding would stay at 1
    >>> round(float(jnp.mean(new.astype(jnp.float32))), 4)
    0.999

  References:
    Gupta, Agrawal, Gopalakrishnan & Narayanan, *Deep Learning with Limited
    Numerical Precision*, ICML 2015, https://arxiv.org/abs/1502.02551.
  """
  owner = "stochastic_rounding"
  check_optimizer(owner, optimizer, "stochastic_rounding(adam_optax.adam(1e-3), seed=0)")
  check_seed(owner, "seed", seed)
  return optax.chain(optimizer, _rounded_stochastically(owner, seed))


def _rounded_stochastically(owner: str, seed: int) -> optax.GradientTransformation:
  """The last link of :func:`stochastic_rounding`: rounds ``params + updates``."""

  def init_fn(params: optax.Params) -> StochasticRoundingState:
    del params
    return StochasticRoundingState(count=num.zero_count())

  def update_fn(
    updates: optax.Updates, state: StochasticRoundingState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, StochasticRoundingState]:
    check_params(owner, params)
    key = step_key(seed, state.count)
    flat_params = jax.tree.leaves(params)
    params_def: Any = jax.tree.structure(params)  # PyTreeDef: jaxlib ships no stub for it
    flat_updates = params_def.flatten_up_to(updates)

    def leaf(index: int, param: jax.Array, update: jax.Array) -> jax.Array:
      if num.compute_dtype(param.dtype) == param.dtype:
        return update
      exact = param.astype(jnp.float32) + update.astype(jnp.float32)
      rounded = round_stochastically(exact, param.dtype, jax.random.fold_in(key, index))
      return landing_update(param, update, rounded)

    rounded = map(leaf, range(len(flat_params)), flat_params, flat_updates)
    new_updates = params_def.unflatten(list(rounded))
    return new_updates, StochasticRoundingState(count=num.saturating_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)
