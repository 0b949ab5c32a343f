r"""Adam-atan2 (Everett et al., 2024): Adam's ratio through an arctangent, no epsilon.

``adam_atan2`` is Adam's chain with ``eps = 0`` and one block added,
:func:`scale_by_atan`, between the bias correction and the learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._moment_chain import moment_chain
from adam_optax._trees import check_inexact_leaves
from adam_optax._validation import check_nonnegative, concrete_scalar


def scale_by_atan(a: Any = 1.27, b: Any = 1.0) -> optax.GradientTransformation:
  r"""Maps each update :math:`u` to :math:`a \arctan(u / b)`, elementwise.

  .. math::

    u \mapsto a \arctan\!\left(\frac{u}{b}\right), \qquad
    \lvert a \arctan(u / b) \rvert < a \frac{\pi}{2}.

  After :func:`adam_optax.scale_by_moments` with ``eps=0`` and
  :func:`adam_optax.bias_correction`, the update is
  :math:`\hat m_t / \sqrt{\hat v_t}`, and since :math:`\sqrt{\hat v_t} > 0`
  this block turns it into Adam-atan2's
  :math:`a \operatorname{atan2}(\hat m_t, b \sqrt{\hat v_t})`. Near zero it is
  :math:`(a / b) u`; for large :math:`|u|` it saturates at :math:`a\pi/2`,
  which bounds every step without an :math:`\epsilon`. It is stateless.

  Args:
    a: :math:`a`, the output scale, a number ``>= 0`` (or a traced scalar).
    b: :math:`b`, the input scale, a number ``> 0`` (or a traced scalar).

  Returns:
    An :class:`optax.GradientTransformation` with state :class:`optax.EmptyState`.

  Raises:
    ValueError: ``a`` negative or ``b`` not positive, either not finite or not a number.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adam_optax
    >>> squash = adam_optax.scale_by_atan(a=2.0, b=1.0)
    >>> squash.update(jnp.array([0.0, 1.0, 1e9]), squash.init(jnp.zeros(3)))[0]
    Array([0.       , 1.5707963, 3.1415927], dtype=float32)

  References:
    Everett et al., *Scaling Exponents Across Parameterizations and
    Optimizers*, ICML 2024, https://arxiv.org/abs/2407.05872, Section 4.3.
  """
  return atan_transform("scale_by_atan", a, b)


def atan_transform(owner: str, a: Any, b: Any) -> optax.GradientTransformation:
  """:func:`scale_by_atan`, validated and reporting errors in ``owner``'s name."""
  a = check_nonnegative(owner, "a", a)
  b = check_nonnegative(owner, "b", b)
  if concrete_scalar(b) == 0.0:
    raise ValueError(f"{owner}(b={b!r}): b must be a finite number > 0")

  def init_fn(params: optax.Params) -> optax.EmptyState:
    del params
    return optax.EmptyState()

  def update_fn(
    updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.EmptyState]:
    del params
    check_inexact_leaves(owner, updates, "update")

    def squash(update: Any) -> jax.Array:
      update = jnp.asarray(update)
      dtype = num.compute_dtype(update.dtype)
      u = update.astype(dtype)
      return (num.scalar(a, dtype) * jnp.arctan(u / num.scalar(b, dtype))).astype(update.dtype)

    return jax.tree.map(squash, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def adam_atan2(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any = 0.9,
  b2: Any = 0.99,
  *,
  a: Any = 1.27,
  b: Any = 1.0,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""Adam-atan2 (Everett et al., 2024): Adam without :math:`\epsilon`, through an arctangent.

  .. math::

    \hat m_t = \frac{m_t}{1 - \beta_1^t}, \qquad \hat v_t = \frac{v_t}{1 - \beta_2^t},
    \qquad
    \theta_t = \theta_{t-1} - \eta_t \left(
      a \operatorname{atan2}\!\left(\hat m_t,\ b \sqrt{\hat v_t}\right)
      + \lambda_t \theta_{t-1} \right),

  with :math:`m_t, v_t` Adam's EMAs. There is no :math:`\epsilon`, so the
  trajectory is exactly invariant to the scale of the gradients (a loss
  multiplied by :math:`2^k` gives the same bits, tested for
  :math:`|k| \le 30`), and every step is bounded:
  :math:`|\Delta\theta| \le \eta\, a \pi / 2` (plus the decay).

  It is ``optax.chain(scale_by_moments(b1, b2, eps=0), bias_correction(b1,
  b2), scale_by_atan(a, b), add_decayed_weights(weight_decay, mask),
  scale_by_lr(learning_rate))``; with ``weight_decay=0`` (a Python number)
  ``add_decayed_weights`` is left out. An entry whose second moment is 0 gets
  a zero step, as :math:`\operatorname{atan2}(0, 0) = 0` (its first moment is
  0 too, unless :math:`g^2` underflowed while :math:`g` did not, below ~1e-19
  in float32, where atan2 would give :math:`\pm a\pi/2`).

  Defaults are those of ``adam_atan2_pytorch.AdamAtan2`` 0.4.1
  (:math:`\beta = (0.9, 0.99)`, :math:`a = 1.27`, :math:`b = 1`), which this
  matches step by step. Its ``weight_decay`` is the same as here (multiplied
  by the learning rate, applied to :math:`\theta_{t-1}`, as ``torch.optim.AdamW``);
  its ``decoupled_wd=True`` divides the decay by the initial learning rate,
  which is ``weight_decay / learning_rate`` here.

  Args:
    learning_rate: :math:`\eta`, a number ``>= 0`` or an optax schedule.
    b1: :math:`\beta_1`, decay of the first-moment EMA, in ``[0, 1)``.
    b2: :math:`\beta_2`, decay of the second-moment EMA, in ``[0, 1)``.
    a: :math:`a`, the scale of the arctangent's output, ``>= 0``.
    b: :math:`b`, the scale of :math:`\sqrt{\hat v_t}`, ``> 0``.
    weight_decay: :math:`\lambda`, a number ``>= 0`` or an optax schedule.
    mask: which leaves are decayed, as in :func:`adam_optax.adamw`.
    mu_dtype: dtype of the first moment in the state (default: the params').
    nu_dtype: dtype of the second moment (default: the params', float32 for
      half-precision params).

  Returns:
    An :class:`optax.GradientTransformation`; its moments are kept in a
    :class:`adam_optax.ScaleByMomentsState`.

  Raises:
    ValueError: a hyperparameter outside its range or not a number, named in
      the message; at ``init``, a ``mask`` that does not fit the params.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.adam_atan2(learning_rate=0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> updates, _ = optimizer.update(jnp.array([0.5, -3.0]), optimizer.init(params))
    >>> updates  # step 1: -lr * a * atan2(g, |g|) = -0.1 * 1.27 * pi / 4 * sign(g)
    Array([-0.09974556,  0.09974556], dtype=float32)

  References:
    Everett et al., *Scaling Exponents Across Parameterizations and
    Optimizers*, ICML 2024, https://arxiv.org/abs/2407.05872.
  """
  owner = "adam_atan2"
  return moment_chain(
    owner,
    learning_rate,
    b1,
    b2,
    0.0,
    weight_decay=weight_decay,
    mask=mask,
    mu_dtype=mu_dtype,
    nu_dtype=nu_dtype,
    direction=[atan_transform(owner, a, b)],
  )
