r"""``scale_by_moments``: Adam's moment estimates and their normalised ratio.

One leaf function serves the whole family: Adam, NAdam (``nesterov``),
AMSGrad (``amsgrad`` with the three ``nu_correction`` conventions) and AdaMax
(``infinity_norm``). The options only choose which lines of it run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_optax import _numerics as num
from adam_optax._stochastic_rounding import check_seed, round_stochastically, step_key
from adam_optax._trees import (
  check_fits_state,
  check_inexact_leaves,
  check_state_type,
  colocate,
  where,
)
from adam_optax._validation import (
  check_choice,
  check_flag,
  check_in_dtype,
  check_moment_hyperparameters,
  check_nonnegative,
  check_zero,
)

NuCorrection = Literal["downstream", "inside", "none"]
_OWNER = "scale_by_moments"


class ScaleByMomentsState(NamedTuple):
  r"""State of :func:`scale_by_moments`.

  One state type serves every option, so tools that address the state by field
  name (``optax.tree.get(state, "nu")``, sharding rules) treat the whole family
  alike. ``nu_max`` is ``None`` unless ``amsgrad=True``: ``None`` is an empty
  pytree, so Adam, NAdam and AdaMax carry no extra leaf and no extra memory.

  Attributes:
    count: number of updates applied so far (int32, saturating).
    mu: first-moment EMA :math:`m_t`, shaped like the params.
    nu: second-moment EMA :math:`v_t` (or AdaMax's weighted infinity norm
      :math:`u_t`), shaped like the params (real-valued for complex params).
    nu_max: AMSGrad's running maximum :math:`\hat v^{\max}_t` of the second
      moment (of :math:`v_t`, or of :math:`v_t / c_2(t)` with
      ``nu_correction="inside"``), in ``nu``'s dtype; ``None`` without
      ``amsgrad``.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
  mu: optax.Updates
  nu: optax.Updates
  nu_max: optax.Updates | None = None


class _StepScalars(NamedTuple):
  """The per-step scalars of :func:`scale_by_moments`'s leaf update, in one dtype."""

  keep1: jax.Array  # b1, in the compute dtype
  mix1: jax.Array  # 1 - b1
  keep2: jax.Array  # b2, real
  mix2: jax.Array  # 1 - b2
  bias2: jax.Array  # c_2(t) = 1 - b2^t
  eps: jax.Array  # eps, scaled to the second moment's units
  eps_root: jax.Array  # eps_root, likewise
  weight_mu: jax.Array  # NAdam's numerator weights (b1, 1 - b1 without nesterov)
  weight_g: jax.Array


def scale_by_moments(
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  *,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
  nesterov: bool = False,
  momentum_decay: Any = None,
  amsgrad: bool = False,
  nu_correction: NuCorrection | None = None,
  infinity_norm: bool = False,
  rounding_seed: int | None = None,
) -> optax.GradientTransformation:
  r"""Keeps Adam's moment EMAs and emits their normalised ratio.

  With :math:`c_k(t) = 1 - \beta_k^t` the bias of an EMA started at zero,

  .. math::

    m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2,

    r_t = \frac{m_t}{\sqrt{v_t + \epsilon_{root}\, c_2(t)} + \epsilon \sqrt{c_2(t)}}.

  The stabilisers are scaled by :math:`c_2(t)` so that they act on the
  bias-corrected second moment: multiplying :math:`r_t` by
  :math:`\sqrt{c_2(t)} / c_1(t)` (:func:`bias_correction`) gives exactly
  Kingma & Ba's Algorithm 1,
  :math:`\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`,
  for every :math:`\epsilon`. (A constant :math:`\epsilon` here would give
  TensorFlow's ":math:`\hat\epsilon`" variant, a different optimizer whenever
  :math:`\epsilon` matters.) Chain it with a :func:`bias_correction` that uses
  the same :math:`\beta_1, \beta_2`.

  With ``nesterov=True`` the numerator is Dozat's look-ahead moment, scaled to
  the same bias as :math:`m_t`:
  :math:`\beta_1 m_t\, c_1(t) / c_1(t+1) + (1 - \beta_1) g_t` (optax's NAdam),
  or, given ``momentum_decay`` :math:`\psi`, the same with torch's momentum
  schedule :math:`\mu_t = \beta_1 (1 - \tfrac12 \cdot 0.96^{t\psi})` in place
  of :math:`\beta_1` (``torch.optim.NAdam``; see
  :func:`adam_optax._numerics.nesterov_coefficients`).

  ``nu_correction`` says where the second moment's bias :math:`c_2(t)` is
  removed, and so which second moment :math:`s_t` the denominator
  :math:`\sqrt{s_t + \epsilon_{root}\,k_t} + \epsilon\sqrt{k_t}` uses:

  * ``"downstream"`` (default): :math:`s_t = v_t`, :math:`k_t = c_2(t)`; chain
    ``bias_correction(b1, b2)``, which multiplies by :math:`\sqrt{c_2(t)}`.
  * ``"inside"``: :math:`s_t = v_t / c_2(t)`, :math:`k_t = 1`; chain
    ``bias_correction(b1, None)``.
  * ``"none"``: :math:`s_t = v_t`, :math:`k_t = 1`; nothing corrects it.

  Without ``amsgrad`` the first two are the same optimizer. With
  ``amsgrad=True`` the denominator uses the running maximum
  :math:`s^{\max}_t = \max(s^{\max}_{t-1}, s_t)` instead of :math:`s_t`
  (Reddi, Kale & Kumar, 2018), and the three choices are the three AMSGrad
  conventions of :func:`adam_optax.amsgrad`: the maximum is taken over the raw
  :math:`v_t` and bias-corrected afterwards (torch), over :math:`\hat v_t`
  (optax), or over the uncorrected :math:`v_t` (the paper).

  With ``infinity_norm=True`` the second moment is AdaMax's exponentially
  weighted infinity norm (Kingma & Ba, Section 7.1), with :math:`\epsilon`
  inside the maximum as in ``optax.adamax`` and ``torch.optim.Adamax``:

  .. math::

    u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \qquad r_t = m_t / u_t .

  :math:`u_t` has no zero-initialisation bias, so ``nu_correction`` must be
  ``"none"`` (its default there) and ``eps_root`` must be 0; chain
  ``bias_correction(b1, None)``.

  Half-precision leaves are computed in float32 and stored back in their own
  dtype, so an all-zero float16 gradient gives a zero update, not ``0/0``; their
  second moment is kept in float32 unless ``nu_dtype`` says otherwise (see
  below). With ``eps = 0`` an entry whose second moment is 0 (no gradient yet,
  or one so small that its square underflows) gets a zero step, not ``0/0``.
  With ``rounding_seed``, moments stored in bfloat16 or float16 are rounded
  stochastically (:func:`adam_optax.stochastic_rounding`'s rounding, keyed by
  the seed, the step and the leaf), so that increments smaller than half a
  unit in the last place accumulate in expectation instead of being lost.

  Args:
    b1: decay of the first-moment EMA, in ``[0, 1)``.
    b2: decay of the second-moment EMA, in ``[0, 1)``.
    eps: added to the root of the bias-corrected second moment, ``>= 0``.
    eps_root: added inside that root, ``>= 0``; make it positive to
      differentiate through the update (the root's derivative at 0 is infinite).
    mu_dtype: precision of ``mu`` in the state (complex for complex params);
      ``None`` keeps each param's dtype.
    nu_dtype: precision of ``nu`` (and ``nu_max``) in the state (always real).
      ``None`` keeps each param's precision, except for half-precision params
      (float16, bfloat16), whose second moment is kept in float32: in float16
      :math:`(1 - \beta_2) g^2` underflows for :math:`|g|` below ~1e-3 (each
      step then grows towards :math:`\eta / \sqrt{1 - \beta_2}`) and
      :math:`g^2` overflows above 256 (the param freezes); in bfloat16 the
      8-bit mantissa cannot hold an increment of :math:`(1 - \beta_2) g^2`
      once :math:`v` is a few hundred times larger, so :math:`v` stalls. That
      costs 2 bytes per parameter more than ``optax.adam``; pass
      ``nu_dtype=jnp.bfloat16`` (or ``jnp.float16``) to store it in half
      precision anyway.
    nesterov: use Nesterov momentum (Dozat, 2016) in the numerator.
    momentum_decay: with ``nesterov``, ``None`` for optax's NAdam or
      :math:`\psi \ge 0` for torch's momentum schedule (torch's default is
      ``4e-3``).
    amsgrad: normalise by the running maximum of the second moment (AMSGrad).
    nu_correction: ``"downstream"``, ``"inside"`` or ``"none"``, see above;
      ``None`` picks ``"downstream"`` (``"none"`` with ``infinity_norm``).
    infinity_norm: use AdaMax's infinity norm instead of the second moment.
    rounding_seed: ``None`` rounds half-precision moments to nearest; an int
      in ``[0, 2**32)`` rounds them stochastically, keyed by it.

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByMomentsState`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message; an unknown ``nu_correction``; ``momentum_decay`` without
      ``nesterov``; ``infinity_norm`` with a ``nu_correction`` other than
      ``"none"`` or a nonzero ``eps_root``.
    TypeError: a flag (``nesterov``, ``amsgrad``, ``infinity_norm``) that is
      not a bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> moments = adam_optax.scale_by_moments(b1=0.9, b2=0.999, eps=0.0)
    >>> state = moments.init(jnp.zeros(2))
    >>> ratio, state = moments.update(jnp.array([0.5, -3.0]), state)
    >>> ratio  # step 1: (1 - b1) g / sqrt((1 - b2) g^2), before bias correction
    Array([ 3.1622987, -3.1622987], dtype=float32)
    >>> int(state.count), state.mu.dtype, state.nu.dtype
    (1, dtype('float32'), dtype('float32'))

  References:
    Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015,
    https://arxiv.org/abs/1412.6980.
    Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016.
    Reddi, Kale & Kumar, *On the Convergence of Adam and Beyond*, ICLR 2018,
    https://arxiv.org/abs/1904.09237.
  """
  owner = _OWNER
  b1, b2, eps, eps_root, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, eps_root, mu_dtype, nu_dtype
  )
  nesterov = check_flag(owner, "nesterov", nesterov)
  amsgrad = check_flag(owner, "amsgrad", amsgrad)
  infinity_norm = check_flag(owner, "infinity_norm", infinity_norm)
  if momentum_decay is not None:
    if not nesterov:
      raise ValueError(
        f"{owner}(momentum_decay={momentum_decay!r}): momentum_decay schedules the "
        "Nesterov momentum; pass nesterov=True with it"
      )
    momentum_decay = check_nonnegative(owner, "momentum_decay", momentum_decay)
  options = moment_options(
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype=mu_dtype,
    nu_dtype=nu_dtype,
    nesterov=nesterov,
    momentum_decay=momentum_decay,
    amsgrad=amsgrad,
    nu_correction=nu_correction,
    infinity_norm=infinity_norm,
  )
  nu_correction = options.leaf.nu_correction
  check_choice(owner, "nu_correction", nu_correction, ("downstream", "inside", "none"))
  if infinity_norm:
    if nu_correction != "none":
      raise ValueError(
        f"{owner}(infinity_norm=True, nu_correction={nu_correction!r}): the infinity "
        "norm has no zero-initialisation bias; nu_correction must be 'none'"
      )
    check_zero(owner, "eps_root", eps_root, "with infinity_norm=True (it has no root)")
  if rounding_seed is not None:
    check_seed(owner, "rounding_seed", rounding_seed)

  def init_fn(params: optax.Params) -> ScaleByMomentsState:
    check_inexact_leaves(f"{owner}.init", params, "param")

    mu = zero_moment(params, mu_dtype, real=False)
    nu = zero_moment(params, nu_dtype, real=True)
    nu_max = jax.tree.map(jnp.copy, nu) if amsgrad else None
    state = ScaleByMomentsState(count=num.zero_count(), mu=mu, nu=nu, nu_max=nu_max)
    return colocate(state, params)

  def update_fn(
    updates: optax.Updates, state: ScaleByMomentsState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScaleByMomentsState]:
    check_update(options, state, updates, params)
    count = num.saturating_increment(state.count)
    # Once per dtype, not once per leaf: built per leaf, a 4096-leaf tree traces
    # and compiles the same scalar arithmetic 4096 times (NAdam's series too).
    scalars = functools.cache(functools.partial(step_scalars, options, count))

    def store(x: jax.Array, dtype: Any, index: int, slot: int) -> jax.Array:
      """``x`` in the state's ``dtype``, rounded stochastically if so asked."""
      if rounding_seed is None or num.compute_dtype(dtype) == dtype:
        return x.astype(dtype)
      key = jax.random.fold_in(jax.random.fold_in(step_key(rounding_seed, count), index), slot)
      return round_stochastically(x.astype(jnp.float32), dtype, key)

    def leaf(index: int, grad: Any, mu: jax.Array, nu: jax.Array, nu_max: Any = None):
      keep = functools.partial(store, index=index)
      return update_leaf(options.leaf, scalars, grad, mu, nu, nu_max, store=keep)

    extra = (state.nu_max,) if amsgrad else ()
    indices = jax.tree.unflatten(jax.tree.structure(updates), range(len(jax.tree.leaves(updates))))
    out = jax.tree.map(leaf, indices, updates, state.mu, state.nu, *extra)

    def column(index: int) -> optax.Updates:  # also right for trees with no leaves
      return jax.tree.map(lambda _, results: results[index], updates, out)

    ratio, mu, nu = column(0), column(1), column(2)
    nu_max = column(3) if amsgrad else None
    return ratio, ScaleByMomentsState(count=count, mu=mu, nu=nu, nu_max=nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


def zero_moment(params: optax.Params, requested: Any, *, real: bool) -> optax.Updates:
  """A zero moment shaped (and sharded) like ``params``, in the dtype the state keeps it in.

  ``requested`` is the user's ``mu_dtype``/``nu_dtype``; ``real`` marks a second
  moment (see :func:`adam_optax._numerics.state_dtype`). Every member of the
  family that keeps parameter-shaped moments makes them here.
  """

  def zeros(param: Any) -> jax.Array:
    dtype = num.state_dtype(jnp.result_type(param), requested, real=real)
    return jnp.zeros_like(param, dtype=dtype)  # keeps the param's sharding

  return jax.tree.map(zeros, params)


class LeafOptions(NamedTuple):
  """Which lines of :func:`update_leaf` run (static: never a traced value)."""

  nesterov: bool
  amsgrad: bool
  nu_correction: NuCorrection
  infinity_norm: bool


class MomentOptions(NamedTuple):
  """One :func:`scale_by_moments`' arguments, validated (the decays may be tracers)."""

  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  momentum_decay: Any
  mu_dtype: Any
  nu_dtype: Any
  leaf: LeafOptions


def moment_options(
  b1: Any,
  b2: Any,
  eps: Any,
  eps_root: Any,
  *,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
  nesterov: bool = False,
  momentum_decay: Any = None,
  amsgrad: bool = False,
  nu_correction: NuCorrection | None = None,
  infinity_norm: bool = False,
) -> MomentOptions:
  """:func:`scale_by_moments`' arguments as it resolves them (``nu_correction``'s default)."""
  if nu_correction is None:
    nu_correction = "none" if infinity_norm else "downstream"
  leaf = LeafOptions(nesterov, amsgrad, nu_correction, infinity_norm)
  return MomentOptions(b1, b2, eps, eps_root, momentum_decay, mu_dtype, nu_dtype, leaf)


def check_update(
  options: MomentOptions, state: Any, updates: optax.Updates, params: optax.Params | None
) -> None:
  """The checks :func:`scale_by_moments`' update makes before any arithmetic.

  The fused kernel's update (:mod:`adam_optax._fused`) makes them too.
  """
  _check_state(_OWNER, state, amsgrad=options.leaf.amsgrad)
  check_fits_state(_OWNER, updates, state.mu, params)
  if params is not None:
    _check_state_dtypes(_OWNER, state, params, options.mu_dtype, options.nu_dtype)


def step_scalars(options: MomentOptions, count: jax.Array, dtype: np.dtype) -> _StepScalars:
  """Step ``count``'s scalars for leaves computed in ``dtype``.

  The chain's leaf function and the fused kernel (:mod:`adam_optax._fused`)
  both take their scalars from here.
  """
  real = num.real_dtype(dtype)
  check_in_dtype(_OWNER, "b1", options.b1, real, decay=True)
  check_in_dtype(_OWNER, "b2", options.b2, real, decay=True)
  check_in_dtype(_OWNER, "eps", options.eps, real)
  check_in_dtype(_OWNER, "eps_root", options.eps_root, real)
  keep1, mix1 = num.decay_weights(options.b1, dtype)
  keep2, mix2 = num.decay_weights(options.b2, real)
  bias2 = num.one_minus_power(options.b2, count, real)
  scale = bias2 if options.leaf.nu_correction == "downstream" else jnp.ones([], real)
  weight_mu, weight_g = keep1, mix1
  if options.leaf.nesterov:
    weights = num.nesterov_coefficients(options.b1, options.momentum_decay, count, real)
    weight_mu, weight_g = (w.astype(dtype) for w in weights)
  return _StepScalars(
    keep1=keep1,
    mix1=mix1,
    keep2=keep2,
    mix2=mix2,
    bias2=bias2,
    eps=num.scalar(options.eps, real) * jnp.sqrt(scale),
    eps_root=num.scalar(options.eps_root, real) * scale,
    weight_mu=weight_mu,
    weight_g=weight_g,
  )


def update_leaf(
  options: LeafOptions,
  scalars: Callable[[np.dtype], _StepScalars],
  grad: Any,
  mu: jax.Array,
  nu: jax.Array,
  nu_max: Any = None,
  *,
  store: Callable[..., jax.Array] | None = None,
) -> tuple[jax.Array, ...]:
  """One leaf's ``(ratio, new mu, new nu[, new nu_max])``; ``scalars(dtype)`` this step's.

  ``store(x, dtype, slot=...)`` casts a new moment to its state dtype (``None``:
  ``x.astype(dtype)``; :func:`scale_by_moments` passes its stochastic
  rounding). The fused kernel (``csrc/adam_fused_cpu.cc``) performs these
  operations in this order; keep the two in step.
  """
  if store is None:
    store = _cast
  grad = jnp.asarray(grad)  # Python floats are leaves too
  out_dtype = grad.dtype
  if jnp.iscomplexobj(mu) and not jnp.iscomplexobj(grad):  # a real gradient, complex param
    out_dtype = num.complex_dtype(out_dtype)
  dtype = num.compute_dtype(out_dtype)
  real = num.real_dtype(dtype)
  k = scalars(dtype)
  g = grad.astype(dtype)
  new_mu = k.keep1 * mu.astype(dtype) + k.mix1 * g
  if options.infinity_norm:
    new_nu = jnp.maximum(k.keep2 * nu.astype(real), jnp.abs(g) + k.eps)
  else:
    new_nu = k.keep2 * nu.astype(real) + k.mix2 * num.squared_magnitude(g)
  second = new_nu / k.bias2 if options.nu_correction == "inside" else new_nu
  kept: tuple[jax.Array, ...] = ()
  if options.amsgrad:
    second = jnp.maximum(nu_max.astype(real), second)
    kept = (store(second, nu_max.dtype, slot=2),)
  denominator = second if options.infinity_norm else jnp.sqrt(second + k.eps_root) + k.eps
  numerator = k.weight_mu * new_mu + k.weight_g * g if options.nesterov else new_mu
  ratio = num.safe_ratio(numerator, denominator.astype(dtype))
  new_mu, new_nu = store(new_mu, mu.dtype, slot=0), store(new_nu, nu.dtype, slot=1)
  return (ratio.astype(out_dtype), new_mu, new_nu, *kept)


def _cast(x: jax.Array, dtype: Any, slot: int) -> jax.Array:
  del slot
  return x.astype(dtype)


def _check_state_dtypes(
  owner: str, state: ScaleByMomentsState, params: optax.Params, mu_dtype: Any, nu_dtype: Any
) -> None:
  """Raises if the state's moments are not in the dtypes this optimizer's init would choose.

  A state restored from an optimizer of another ``mu_dtype``/``nu_dtype`` would
  otherwise carry on silently in the other precision.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  moments = (("mu", state.mu, mu_dtype, False), ("nu", state.nu, nu_dtype, True))
  for name, tree, requested, real in moments:
    for (path, param), held in zip(flat, jax.tree.leaves(tree), strict=True):
      expected = num.state_dtype(jnp.result_type(param), requested, real=real)
      if jnp.result_type(held) != expected:
        raise TypeError(
          f"{owner}.update: the state's {name} at {where(path)} is {jnp.result_type(held)}, "
          f"but this optimizer keeps it in {expected} ({name}_dtype={requested!r}). Was the "
          f"state made by an optimizer with another {name}_dtype?"
        )


def _check_state(owner: str, state: Any, *, amsgrad: bool) -> None:
  """Raises if ``state`` was not made by the ``init`` of a transform like this one."""
  check_state_type(owner, state, ScaleByMomentsState)
  has_max = state.nu_max is not None
  if amsgrad != has_max:
    made_by = "with amsgrad=True (AMSGrad)" if has_max else "without amsgrad (e.g. adam)"
    wanted = (
      "AMSGrad, which needs the running maximum nu_max"
      if amsgrad
      else "not AMSGrad and keeps no running maximum nu_max"
    )
    raise TypeError(
      f"{owner}.update: this state was made by an optimizer {made_by}, but this one is "
      f"{wanted}. Initialise the state with this optimizer's init."
    )
