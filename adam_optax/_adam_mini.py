r"""Adam-mini (Zhang et al., 2024): one second moment per block of parameters.

A block is a set of entries of one leaf that share a single :math:`v`, the EMA
of the mean of :math:`g^2` over the block. Which entries form a block is
decided by a rule the user can read, print and replace: a function of the
leaf's path and shape returning :class:`Blocks`. The reference implementation
(``adam_mini`` 1.1.1) decides by the parameter's *name* (``"q_proj"``,
``"embed"``, ...); here the default rule looks at the shape only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._bias_correction import bias_correction
from adam_optax._learning_rate import scale_by_lr
from adam_optax._moments import moment_options, step_scalars
from adam_optax._trees import check_fits_state, check_inexact_leaves, check_state_type, colocate
from adam_optax._trees import where as path_name
from adam_optax._validation import check_moment_hyperparameters, check_rate
from adam_optax._weight_decay import decay_blocks

_OWNER = "scale_by_block_moments"


class Blocks(NamedTuple):
  """How one leaf is cut into blocks that share a second moment.

  The leaf is viewed as an array of shape ``shape`` (same size, row-major),
  and each block is what varies along ``axes`` with the other indices fixed;
  the second moment has ``shape`` with ``axes`` set to 1.

  Attributes:
    shape: the leaf's shape, or a refinement of it (``per_head`` splits an axis).
    axes: the axes of ``shape`` that a block spans (``()``: one entry a block,
      Adam; all axes: the whole leaf one block).
  """

  shape: tuple[int, ...]
  axes: tuple[int, ...]

  @classmethod
  def whole(cls, shape: tuple[int, ...]) -> Blocks:
    """The whole leaf is one block."""
    return cls(tuple(shape), tuple(range(len(shape))))

  @classmethod
  def per_element(cls, shape: tuple[int, ...]) -> Blocks:
    """Every entry is its own block: Adam's per-coordinate second moment."""
    return cls(tuple(shape), ())

  @classmethod
  def along(cls, shape: tuple[int, ...], axis: int) -> Blocks:
    """One block per index of ``axis`` (e.g. per output neuron of a dense kernel)."""
    axis = _axis(shape, axis)
    return cls(tuple(shape), tuple(a for a in range(len(shape)) if a != axis))

  @classmethod
  def per_head(cls, shape: tuple[int, ...], heads: int, axis: int = -1) -> Blocks:
    """One block per head: ``axis`` is cut into ``heads`` equal, contiguous parts."""
    axis = _axis(shape, axis)
    if heads < 1 or shape[axis] % heads:
      raise ValueError(f"Blocks.per_head: {heads} heads do not divide axis {axis} of {shape}")
    split = (*shape[:axis], heads, shape[axis] // heads, *shape[axis + 1 :])
    return cls(split, tuple(a for a in range(len(split)) if a != axis))

  @property
  def nu_shape(self) -> tuple[int, ...]:
    """The shape of the block's second moment (``shape`` with ``axes`` set to 1)."""
    return tuple(1 if a in self.axes else n for a, n in enumerate(self.shape))

  @property
  def count(self) -> int:  # type: ignore[override]  # tuple.count is not used on it
    """The number of blocks."""
    return math.prod(self.nu_shape)


BlockRule = Callable[[tuple[Any, ...], tuple[int, ...]], Blocks]


def blocks_by_shape(path: tuple[Any, ...], shape: tuple[int, ...]) -> Blocks:
  """The default rule, by shape: vectors per entry, matrices and up per output neuron.

  Leaves of fewer than two dimensions (biases, norm scales) keep Adam's
  per-entry second moment, as the reference does for biases; every other leaf
  gets one block per index of its *last* axis, the output neurons of a dense
  kernel stored ``(in, out)`` as in Flax and Haiku (for ``(out, in)`` kernels,
  as in Equinox and torch, pass a rule with ``Blocks.along(shape, 0)``).
  Attention's per-head blocks need to know which leaves are queries and keys:
  give a rule that says so (see the docs).

  Args:
    path: the leaf's path in the params (unused by this rule).
    shape: the leaf's shape.

  Returns:
    The leaf's :class:`Blocks`.

  Raises:
    ValueError: never for a valid shape (a rule may raise for leaves it cannot cut).

  Examples:
    >>> import adam_optax
    >>> adam_optax.blocks_by_shape((), (64, 256))  # a dense kernel (in, out)
    Blocks(shape=(64, 256), axes=(0,))
    >>> adam_optax.blocks_by_shape((), (256,))  # a bias: Adam
    Blocks(shape=(256,), axes=())
  """
  del path
  if len(shape) < 2:
    return Blocks.per_element(shape)
  return Blocks.along(shape, -1)


def adam_mini_blocks(params: optax.Params, blocks: BlockRule = blocks_by_shape) -> Any:
  """The :class:`Blocks` the rule chooses for each leaf of ``params``: print it to check.

  Args:
    params: the params (or their ``jax.ShapeDtypeStruct``\\ s).
    blocks: the rule, ``(path, shape) -> Blocks``.

  Returns:
    A tree shaped like ``params`` with a :class:`Blocks` at each leaf.

  Raises:
    ValueError: the rule returned something other than a :class:`Blocks` that
      fits the leaf, named by its path.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> params = {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}
    >>> adam_optax.adam_mini_blocks(params)
    {'bias': Blocks(shape=(3,), axes=()), 'kernel': Blocks(shape=(4, 3), axes=(0,))}
  """

  def choose(path: tuple[Any, ...], leaf: Any) -> Blocks:
    shape = tuple(jnp.shape(leaf))
    chosen = blocks(path, shape)
    if not isinstance(chosen, Blocks):
      raise ValueError(
        f"adam_mini(blocks=...): the rule returned {chosen!r} for the leaf at "
        f"{path_name(path)}; expected a Blocks (e.g. Blocks.along(shape, -1))"
      )
    fits = math.prod(chosen.shape) == math.prod(shape) and all(
      0 <= a < len(chosen.shape) for a in chosen.axes
    )
    if not fits:
      raise ValueError(
        f"adam_mini(blocks=...): {chosen} does not fit the leaf at {path_name(path)} of "
        f"shape {shape} (the sizes must agree and the axes exist)"
      )
    return chosen

  return jax.tree_util.tree_map_with_path(choose, params)


class ScaleByBlockMomentsState(NamedTuple):
  """State of :func:`scale_by_block_moments`.

  Attributes:
    count: number of updates applied so far (int32, saturating).
    mu: first-moment EMA, shaped like the params.
    nu: one second-moment EMA per block: each leaf shaped as its
      ``Blocks.nu_shape`` (real; float32 for half-precision params by default).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  mu: optax.Updates
  nu: optax.Updates


def scale_by_block_moments(
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  *,
  blocks: BlockRule | None = None,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r""":func:`adam_optax.scale_by_moments` with one second moment per block.

  For a block :math:`B` of :math:`|B|` entries,

  .. math::

    m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_{B,t} = \beta_2 v_{B,t-1} + (1 - \beta_2) \frac{1}{|B|}\sum_{i \in B} |g_{i,t}|^2,

    r_{i,t} = \frac{m_{i,t}}{\sqrt{v_{B,t} + \epsilon_{root}\,c_2(t)} + \epsilon\sqrt{c_2(t)}}
    \quad (i \in B),

  so that, chained with ``bias_correction(b1, b2)``, it is Adam with
  :math:`\hat v` shared by the block. ``Blocks.per_element`` blocks give
  Adam exactly.

  Args:
    b1: decay of the first-moment EMA, in ``[0, 1)``.
    b2: decay of the block second moments, in ``[0, 1)``.
    eps: added to the root, ``>= 0``.
    eps_root: added inside the root, ``>= 0``.
    blocks: the rule ``(path, shape) -> Blocks``; ``None`` for
      :func:`blocks_by_shape`.
    mu_dtype: dtype of ``mu`` (default: the params').
    nu_dtype: dtype of ``nu`` (default: the params', float32 for half precision).

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByBlockMomentsState`.

  Raises:
    ValueError: a hyperparameter outside its range, named in the message; at
      ``init``, a rule's answer that does not fit its leaf.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> whole = lambda path, shape: adam_optax.Blocks.whole(shape)
    >>> moments = adam_optax.scale_by_block_moments(eps=0.0, blocks=whole)
    >>> ratio, state = moments.update(jnp.array([3.0, 4.0]), moments.init(jnp.zeros(2)))
    >>> state.nu.round(6)  # (1 - b2) * mean(g^2) = 0.001 * 12.5: one v for both entries
    Array([0.0125], dtype=float32)
  """
  owner = _OWNER
  b1, b2, eps, eps_root, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, eps_root, mu_dtype, nu_dtype
  )
  return _block_moments(owner, b1, b2, eps, eps_root, blocks, mu_dtype, nu_dtype)


def _block_moments(
  owner: str, b1: Any, b2: Any, eps: Any, eps_root: Any, blocks: Any, mu_dtype: Any, nu_dtype: Any
) -> optax.GradientTransformation:
  if blocks is None:
    blocks = blocks_by_shape
  if not callable(blocks):
    raise ValueError(f"{owner}(blocks={blocks!r}): blocks must be a rule (path, shape) -> Blocks")
  options = moment_options(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype)

  def init_fn(params: optax.Params) -> ScaleByBlockMomentsState:
    check_inexact_leaves(f"{owner}.init", params, "param")
    layout = adam_mini_blocks(params, blocks)

    def mu(p: Any) -> jax.Array:
      return jnp.zeros_like(p, dtype=num.state_dtype(jnp.result_type(p), mu_dtype, real=False))

    def nu(p: Any, block: Blocks) -> jax.Array:
      return jnp.zeros(block.nu_shape, num.state_dtype(jnp.result_type(p), nu_dtype, real=True))

    state = ScaleByBlockMomentsState(
      count=num.zero_count(),
      mu=jax.tree.map(mu, params),
      nu=jax.tree.map(nu, params, layout),
    )
    return colocate(state, params)

  def update_fn(
    updates: optax.Updates, state: ScaleByBlockMomentsState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScaleByBlockMomentsState]:
    check_state_type(owner, state, ScaleByBlockMomentsState)
    check_fits_state(owner, updates, state.mu, params)
    layout = adam_mini_blocks(updates, blocks)
    count = num.saturating_increment(state.count)
    scalars = functools.cache(functools.partial(step_scalars, options, count))

    def leaf(grad: Any, mu: jax.Array, nu: jax.Array, block: Blocks) -> tuple[jax.Array, ...]:
      grad = jnp.asarray(grad)
      dtype = num.compute_dtype(grad.dtype)
      real = num.real_dtype(dtype)
      k = scalars(dtype)
      g = grad.astype(dtype)
      new_mu = k.keep1 * mu.astype(dtype) + k.mix1 * g
      square = jnp.mean(num.squared_magnitude(g).reshape(block.shape), block.axes, keepdims=True)
      new_nu = k.keep2 * nu.astype(real) + k.mix2 * square.reshape(nu.shape)
      denominator = (jnp.sqrt(new_nu + k.eps_root) + k.eps).astype(dtype)
      ratio = num.safe_ratio(new_mu.reshape(block.shape), denominator.reshape(block.nu_shape))
      return (
        ratio.reshape(grad.shape).astype(grad.dtype),
        new_mu.astype(mu.dtype),
        new_nu.astype(nu.dtype),
      )

    out = jax.tree.map(leaf, updates, state.mu, state.nu, layout)

    def column(index: int) -> optax.Updates:
      return jax.tree.map(lambda _, results: results[index], updates, out)

    return column(0), ScaleByBlockMomentsState(count=count, mu=column(1), nu=column(2))

  return optax.GradientTransformation(init_fn, update_fn)


def adam_mini(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  *,
  blocks: BlockRule | None = None,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""Adam-mini (Zhang et al., 2024): AdamW with one second moment per block.

  .. math::

    \hat m_t = \frac{m_t}{1 - \beta_1^t}, \qquad
    \hat v_{B,t} = \frac{v_{B,t}}{1 - \beta_2^t}, \qquad
    \theta_{i,t} = \theta_{i,t-1} - \eta_t \left(
      \frac{\hat m_{i,t}}{\sqrt{\hat v_{B,t}} + \epsilon} + \lambda_t \theta_{i,t-1}\right)
    \quad (i \in B),

  with :math:`v_{B,t}` the EMA of the block's mean squared gradient
  (:func:`scale_by_block_moments`). It is ``optax.chain(scale_by_block_moments(...),
  bias_correction(b1, b2), add_decayed_weights(weight_decay, mask),
  scale_by_lr(learning_rate))``. The blocks come from ``blocks``, a rule of
  each leaf's path and shape (:func:`blocks_by_shape`: per entry for vectors,
  per output neuron, the last axis, for the rest); print
  :func:`adam_mini_blocks` to see them. The reference chooses blocks by
  parameter names (per head for ``q_proj``/``k_proj``, per token for
  embeddings and the output layer, per output neuron for values, attention
  projections and MLPs, per entry for biases, whole tensors otherwise); a rule
  that gives the same partition gives its trajectory (tests/test_adam_mini.py).
  The reference leaves every leaf whose name contains ``norm``, ``ln`` or
  ``bias`` undecayed: pass a ``mask`` for that.

  Defaults are the reference's (``lr=1e-3``, ``betas=(0.9, 0.999)``,
  ``eps=1e-8``, ``weight_decay=0``).

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, in ``[0, 1)``.
    b2: :math:`\beta_2`, in ``[0, 1)``.
    eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_B}`, ``>= 0``.
    blocks: the rule ``(path, shape) -> Blocks``; ``None`` for
      :func:`blocks_by_shape`. Under ``optax.inject_hyperparams`` name a rule
      in ``static_args`` (it would be taken for a schedule).
    weight_decay: :math:`\lambda`, a number ``>= 0`` or a schedule (decoupled,
      times :math:`\eta_t`, as in ``adamw``).
    mask: which leaves are decayed, as in :func:`adam_optax.adamw`.
    mu_dtype: dtype of the first moment (default: the params').
    nu_dtype: dtype of the block second moments (default: the params',
      float32 for half-precision params).

  Returns:
    An :class:`optax.GradientTransformation`; ``update`` needs ``params``
    when ``weight_decay`` is used.

  Raises:
    ValueError: a hyperparameter outside its range, named in the message; a
      ``blocks`` that is not callable; at ``init``, a rule's answer that does
      not fit its leaf.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> params = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}
    >>> optimizer = adam_optax.adam_mini(1e-3)
    >>> state = optimizer.init(params)
    >>> state[0].nu["kernel"].shape  # one second moment per output neuron
    (1, 3)

  References:
    Zhang, Chen, Li, Ding, Chen, Ye, Luo & Sun, *Adam-mini: Use Fewer Learning
    Rates To Gain More*, ICLR 2025, https://arxiv.org/abs/2406.16793.
  """
  owner = "adam_mini"
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  b1, b2, eps, _, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, 0.0, mu_dtype, nu_dtype
  )
  return optax.chain(
    _block_moments(owner, b1, b2, eps, 0.0, blocks, mu_dtype, nu_dtype),
    bias_correction(b1, b2),
    *decay_blocks(owner, weight_decay, mask),
    scale_by_lr(learning_rate),
  )


def _axis(shape: tuple[int, ...], axis: int) -> int:
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f"Blocks: axis {axis} is out of range for shape {shape}")
  return axis % len(shape)
