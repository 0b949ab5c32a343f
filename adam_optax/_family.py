r"""The rest of the Adam family: AdamW, NAdam(W), AMSGrad and AdaMax.

Each is :func:`adam_optax._alias.adam_chain` with other options: the same
:func:`adam_optax.scale_by_moments` leaf function, :func:`adam_optax.bias_correction`,
:func:`adam_optax.add_decayed_weights` and :func:`adam_optax.scale_by_lr`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import optax

from adam_optax._alias import adam_chain
from adam_optax._validation import check_choice

AmsgradConvention = Literal["torch", "optax", "paper"]

# AMSGrad convention -> (where scale_by_moments corrects v, which moments
# bias_correction corrects afterwards).
_AMSGRAD_CONVENTIONS = {
  "torch": ("downstream", (True, True)),
  "optax": ("inside", (True, False)),
  "paper": ("none", (False, False)),
}


def adamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  mu_dtype: Any = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  *,
  nesterov: bool = False,
  nu_dtype: Any = None,
  fused: bool = False,
) -> optax.GradientTransformation:
  r"""AdamW (Loshchilov & Hutter, 2019), a drop-in replacement for :func:`optax.adamw`.

  .. math::

    \theta_t = \theta_{t-1} - \eta_t \left(
      \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
      + \lambda_t \theta_{t-1} \right),

  with :math:`\hat m_t, \hat v_t` as in :func:`adam_optax.adam`. The decay is
  multiplied by the full learning rate :math:`\eta_t`, as in ``optax.adamw``
  and ``torch.optim.AdamW`` (the paper multiplies it by the schedule
  multiplier only). It is ``optax.chain(scale_by_moments(...),
  bias_correction(b1, b2), add_decayed_weights(weight_decay, mask),
  scale_by_lr(learning_rate))``.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added outside the square root, ``>= 0``.
    eps_root: :math:`\epsilon_{root}`, added inside the square root, ``>= 0``.
    mu_dtype: dtype of the first moment in the state (default: the params').
    weight_decay: :math:`\lambda`, a number ``>= 0`` or an optax schedule.
    mask: which leaves are decayed: ``None`` (all), a pytree of booleans shaped
      like (a prefix of) the params, or a callable mapping the params to one.
      The Adam step itself applies to every leaf.
    nesterov: use Nesterov momentum: this is then :func:`nadamw`.
    nu_dtype: dtype of the second moment in the state (default: the params').
    fused: let :func:`adam_optax.update_and_apply` run the step with the
      fused CPU kernel, as in :func:`adam_optax.adam`.

  Returns:
    An :class:`optax.GradientTransformation`; ``update`` needs ``params``.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message (``b1`` and ``b2`` are checked as rounded to the precision
      the update is computed in); ``weight_decay=None``; at ``init``, a
      ``mask`` that does not fit the params.
    TypeError: ``nesterov`` that is not a bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([1.0])}
    >>> optimizer = adam_optax.adamw(0.1, weight_decay=0.5, mask={"w": True, "b": False})
    >>> state = optimizer.init(params)
    >>> grads = {"w": jnp.array([0.5, -3.0]), "b": jnp.array([2.0])}
    >>> updates, state = optimizer.update(grads, state, params)
    >>> optax.apply_updates(params, updates)  # w: -0.1 * (sign(g) + 0.5 w)
    {'b': Array([0.9], dtype=float32), 'w': Array([ 0.85, -1.8 ], dtype=float32)}

  References:
    Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019,
    https://arxiv.org/abs/1711.05101.
  """
  hyperparameters = learning_rate, b1, b2, eps, eps_root, mu_dtype, nu_dtype
  return adam_chain(
    "adamw",
    *hyperparameters,
    weight_decay=weight_decay,
    mask=mask,
    nesterov=nesterov,
    fused=fused,
  )


def nadam(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  mu_dtype: Any = None,
  *,
  momentum_decay: Any = None,
  nu_dtype: Any = None,
  fused: bool = False,
) -> optax.GradientTransformation:
  r"""NAdam (Dozat, 2016) as in :func:`optax.nadam`, or as in ``torch.optim.NAdam``.

  .. math::

    \tilde m_t = \frac{\beta_1 m_t}{1 - \beta_1^{t+1}}
      + \frac{(1 - \beta_1) g_t}{1 - \beta_1^t}, \qquad
    \theta_t = \theta_{t-1} - \eta_t\,
      \frac{\tilde m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon},

  with :math:`m_t, \hat v_t` as in :func:`adam_optax.adam`. It is
  ``optax.chain(scale_by_moments(..., nesterov=True), bias_correction(b1, b2),
  scale_by_lr(learning_rate))``, i.e. ``adam(..., nesterov=True)``.

  ``torch.optim.NAdam`` is a different optimizer by default: it replaces
  :math:`\beta_1` in the look-ahead by Dozat's warming-up momentum
  :math:`\mu_t = \beta_1 (1 - \tfrac12 \cdot 0.96^{t\psi})`
  (``momentum_decay`` :math:`\psi = 0.004`) and corrects by the products
  :math:`\prod_{i \le t} \mu_i` instead of :math:`\beta_1^t` (the EMA
  :math:`m_t` itself still decays by :math:`\beta_1`). Pass
  ``momentum_decay=4e-3`` to get torch's NAdam:

  .. math::

    \theta_t = \theta_{t-1} - \eta
      \frac{\frac{1 - \mu_t}{1 - \prod_{i \le t} \mu_i} g_t
      + \frac{\mu_{t+1}}{1 - \prod_{i \le t+1} \mu_i} m_t}
      {\sqrt{\hat v_t} + \epsilon}.

  For :math:`\psi \to \infty`, :math:`\mu_t = \beta_1` and the two formulas
  agree: the tests check that ``torch.optim.NAdam(momentum_decay=1e9)``
  matches ``momentum_decay=None``, that ``momentum_decay=4e-3`` matches torch's
  default, and that the two differ. The chain is the same either way; only
  the weights of :math:`m_t` and :math:`g_t` in the numerator change.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added outside the square root, ``>= 0``.
    eps_root: :math:`\epsilon_{root}`, added inside the square root, ``>= 0``.
    mu_dtype: dtype of the first moment in the state (default: the params').
    momentum_decay: ``None`` (default) for optax's NAdam, or torch's
      :math:`\psi \ge 0` (``4e-3`` in torch) for its momentum schedule.
    nu_dtype: dtype of the second moment in the state (default: the params').
    fused: let :func:`adam_optax.update_and_apply` run the step with the
      fused CPU kernel, as in :func:`adam_optax.adam`.

  Returns:
    An :class:`optax.GradientTransformation`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message (``b1`` and ``b2`` are checked as rounded to the precision
      the update is computed in).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> params, grads = jnp.array([1.0, -2.0]), jnp.array([0.5, -3.0])
    >>> ours, theirs = adam_optax.nadam(0.1), optax.nadam(0.1)
    >>> a, _ = ours.update(grads, ours.init(params))
    >>> b, _ = theirs.update(grads, theirs.init(params))
    >>> bool(jnp.allclose(a, b))  # optax's NAdam
    True
    >>> as_torch = adam_optax.nadam(0.1, momentum_decay=4e-3)  # torch.optim.NAdam's
    >>> as_torch.update(grads, as_torch.init(params))[0]
    Array([-0.10564516,  0.10564514], dtype=float32)

  References:
    Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016,
    https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ.
  """
  hyperparameters = learning_rate, b1, b2, eps, eps_root, mu_dtype, nu_dtype
  return adam_chain(
    "nadam", *hyperparameters, nesterov=True, momentum_decay=momentum_decay, fused=fused
  )


def nadamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  mu_dtype: Any = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  *,
  momentum_decay: Any = None,
  nu_dtype: Any = None,
  fused: bool = False,
) -> optax.GradientTransformation:
  r"""NAdamW as in :func:`optax.nadamw`: :func:`nadam` with decoupled weight decay.

  .. math::

    \theta_t = \theta_{t-1} - \eta_t \left(
      \frac{\tilde m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
      + \lambda_t \theta_{t-1} \right),

  with :math:`\tilde m_t` as in :func:`nadam`; it is ``adamw(...,
  nesterov=True)``. With ``momentum_decay=4e-3`` it is
  ``torch.optim.NAdam(decoupled_weight_decay=True)``, as explained in
  :func:`nadam`.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added outside the square root, ``>= 0``.
    eps_root: :math:`\epsilon_{root}`, added inside the square root, ``>= 0``.
    mu_dtype: dtype of the first moment in the state (default: the params').
    weight_decay: :math:`\lambda`, a number ``>= 0`` or an optax schedule.
    mask: which leaves are decayed, as in :func:`adamw`.
    momentum_decay: ``None`` for optax's NAdamW, or torch's :math:`\psi`, as
      in :func:`nadam`.
    nu_dtype: dtype of the second moment in the state (default: the params').
    fused: let :func:`adam_optax.update_and_apply` run the step with the
      fused CPU kernel, as in :func:`adam_optax.adam`.

  Returns:
    An :class:`optax.GradientTransformation`; ``update`` needs ``params``.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message (``b1`` and ``b2`` are checked as rounded to the precision
      the update is computed in); ``weight_decay=None``; at ``init``, a
      ``mask`` that does not fit the params.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> params, grads = jnp.array([1.0, -2.0]), jnp.array([0.5, -3.0])
    >>> ours = adam_optax.nadamw(0.1, weight_decay=0.5)
    >>> theirs = optax.nadamw(0.1, weight_decay=0.5)
    >>> a, _ = ours.update(grads, ours.init(params), params)
    >>> b, _ = theirs.update(grads, theirs.init(params), params)
    >>> bool(jnp.allclose(a, b))
    True

  References:
    Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016.
    Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019,
    https://arxiv.org/abs/1711.05101.
  """
  hyperparameters = learning_rate, b1, b2, eps, eps_root, mu_dtype, nu_dtype
  return adam_chain(
    "nadamw",
    *hyperparameters,
    weight_decay=weight_decay,
    mask=mask,
    nesterov=True,
    momentum_decay=momentum_decay,
    fused=fused,
  )


def amsgrad(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  mu_dtype: Any = None,
  *,
  convention: AmsgradConvention = "torch",
  nu_dtype: Any = None,
  fused: bool = False,
) -> optax.GradientTransformation:
  r"""AMSGrad (Reddi, Kale & Kumar, 2018): Adam normalised by a running maximum.

  With :math:`m_t, v_t, c_k(t) = 1 - \beta_k^t` as in :func:`adam_optax.adam`,
  the three conventions in use differ in where the maximum is taken:

  * ``"torch"`` (default), as ``torch.optim.Adam(amsgrad=True)``: the maximum
    of the raw :math:`v_t`, bias-corrected afterwards.

    .. math::

      v^{\max}_t = \max(v^{\max}_{t-1}, v_t), \qquad
      \theta_t = \theta_{t-1} - \eta_t \frac{m_t / c_1(t)}
        {\sqrt{v^{\max}_t / c_2(t) + \epsilon_{root}} + \epsilon}.

    Chain: ``scale_by_moments(..., amsgrad=True)``, ``bias_correction(b1,
    b2)``, ``scale_by_lr``.

  * ``"optax"``, as ``optax.amsgrad``: the maximum of the bias-corrected
    :math:`\hat v_t = v_t / c_2(t)`.

    .. math::

      \hat v^{\max}_t = \max(\hat v^{\max}_{t-1}, \hat v_t), \qquad
      \theta_t = \theta_{t-1} - \eta_t \frac{m_t / c_1(t)}
        {\sqrt{\hat v^{\max}_t + \epsilon_{root}} + \epsilon}.

    Chain: ``scale_by_moments(..., amsgrad=True, nu_correction="inside")``,
    ``bias_correction(b1, None)``, ``scale_by_lr``.

  * ``"paper"``, Reddi et al.'s Algorithm 2 (with :math:`\beta_{1t} =
    \beta_1`), as ``optax.amsgrad(bias_correction_mu=False,
    bias_correction_nu=False)``: no bias correction at all.

    .. math::

      v^{\max}_t = \max(v^{\max}_{t-1}, v_t), \qquad
      \theta_t = \theta_{t-1} - \eta_t \frac{m_t}
        {\sqrt{v^{\max}_t + \epsilon_{root}} + \epsilon}.

    Chain: ``scale_by_moments(..., amsgrad=True, nu_correction="none")``,
    ``scale_by_lr``. The paper's :math:`\eta_t = \alpha / \sqrt t` is the
    schedule ``lambda count: alpha / jnp.sqrt(count + 1.0)``.

  Why torch's is the default: it is what users porting from PyTorch expect to
  reproduce (``optax.amsgrad`` is not that, a common surprise), and its
  maximum keeps Adam's weighting of early gradients. A raw :math:`v_t` weighs
  the first gradient by :math:`(1 - \beta_2)\beta_2^{t-1}`, as Adam does, and
  the correction by the current :math:`c_2(t)` fades as :math:`t` grows. In
  optax's convention :math:`\hat v_1 = g_1^2` is a one-sample estimate: when
  :math:`|g_1|` is above the gradients' typical size the maximum keeps it, and
  every later step stays smaller than Adam's until some :math:`\hat v_t`
  exceeds it. Each convention coincides with Adam for as long as the quantity
  it maximises does not decrease.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    eps: :math:`\epsilon`, added outside the square root, ``>= 0``.
    eps_root: :math:`\epsilon_{root}`, added inside the square root, ``>= 0``.
    mu_dtype: dtype of the first moment in the state (default: the params').
    convention: ``"torch"``, ``"optax"`` or ``"paper"``, see above.
    nu_dtype: dtype of the second moment and its maximum (default: the
      params').
    fused: let :func:`adam_optax.update_and_apply` run the step with the
      fused CPU kernel, as in :func:`adam_optax.adam`.

  Returns:
    An :class:`optax.GradientTransformation`; the state keeps the maximum in
    ``ScaleByMomentsState.nu_max``.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message (``b1`` and ``b2`` are checked as rounded to the precision
      the update is computed in); an unknown ``convention``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.amsgrad(learning_rate=0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = optimizer.init(params)
    >>> updates, state = optimizer.update(jnp.array([0.5, -3.0]), state)
    >>> optax.apply_updates(params, updates)
    Array([ 0.9, -1.9], dtype=float32)

  References:
    Reddi, Kale & Kumar, *On the Convergence of Adam and Beyond*, ICLR 2018,
    https://arxiv.org/abs/1904.09237.
  """
  check_choice("amsgrad", "convention", convention, tuple(_AMSGRAD_CONVENTIONS))
  nu_correction, correct = _AMSGRAD_CONVENTIONS[convention]
  hyperparameters = learning_rate, b1, b2, eps, eps_root, mu_dtype, nu_dtype
  return adam_chain(
    "amsgrad",
    *hyperparameters,
    correct=correct,
    amsgrad=True,
    nu_correction=nu_correction,
    fused=fused,
  )


def adamax(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  *,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
  fused: bool = False,
) -> optax.GradientTransformation:
  r"""AdaMax (Kingma & Ba, 2015, Section 7.1), as ``optax.adamax`` and ``torch.optim.Adamax``.

  Adam with the second moment replaced by an exponentially weighted infinity
  norm, which needs no bias correction:

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \\
    \theta_t &= \theta_{t-1} - \frac{\eta_t}{1 - \beta_1^t} \frac{m_t}{u_t}.

  :math:`\epsilon` sits inside the maximum, as in optax and torch (the paper
  has none). It is ``optax.chain(scale_by_moments(b1, b2, eps,
  infinity_norm=True), bias_correction(b1, None), scale_by_lr(learning_rate))``.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the infinity norm, in ``[0, 1)``.
    eps: :math:`\epsilon`, added to :math:`|g_t|` inside the maximum, ``>= 0``.
    mu_dtype: dtype of the first moment in the state (default: the params').
    nu_dtype: dtype of :math:`u_t` in the state (default: the params').
    fused: let :func:`adam_optax.update_and_apply` run the step with the
      fused CPU kernel, as in :func:`adam_optax.adam`.

  Returns:
    An :class:`optax.GradientTransformation`; :math:`u_t` is kept in
    ``ScaleByMomentsState.nu``.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message (``b1`` and ``b2`` are checked as rounded to the precision
      the update is computed in).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.adamax(learning_rate=0.1, eps=0.0)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = optimizer.init(params)
    >>> updates, state = optimizer.update(jnp.array([0.5, -3.0]), state)
    >>> optax.apply_updates(params, updates)
    Array([ 0.9, -1.9], dtype=float32)

  References:
    Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015,
    https://arxiv.org/abs/1412.6980, Section 7.1.
  """
  hyperparameters = learning_rate, b1, b2, eps, 0.0, mu_dtype, nu_dtype
  return adam_chain(
    "adamax", *hyperparameters, correct=(True, False), infinity_norm=True, fused=fused
  )
