r"""Cautious optimizers (Liang et al., 2024): drop the part of a step that the gradient opposes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adam_optax import _numerics as num
from adam_optax._trees import check_inexact_leaves
from adam_optax._validation import check_flag

_FLOOR = 1e-3  # the least mean of the mask the rescaling divides by (timm's, the authors')


def cautious(
  optimizer: optax.GradientTransformation, *, descent: bool = True
) -> optax.GradientTransformationExtraArgs:
  r"""Keeps only the entries of each update that move along the negative gradient.

  With :math:`d_t` the direction of ``optimizer``'s update :math:`u_t`
  (:math:`u_t = -\eta_t d_t`), per tensor:

  .. math::

    \phi_t = \mathbb{1}[d_t \odot g_t > 0], \qquad
    u_t \mapsto \frac{u_t \odot \phi_t}{\max(\operatorname{mean}(\phi_t), 10^{-3})}.

  An entry whose direction disagrees with the gradient's sign is not taken;
  the rest are scaled up so that the mean step size is kept. Every step then
  satisfies :math:`\langle u_t, g_t\rangle \le 0` entry by entry (tested).

  ``descent`` states the sign convention of ``optimizer``'s updates, the rule
  that decides the mask:

  * ``True`` (default): they are descent steps, optax's convention for a
    complete optimizer (``adam_optax.adamw(...)``, ``optax.lion(...)``): the
    direction is :math:`d_t = -u_t`, so :math:`\phi_t = \mathbb{1}[u_t \odot g_t < 0]`.
  * ``False``: they are the direction itself, as a chain of blocks emits it
    before :func:`adam_optax.scale_by_lr` (``optax.chain(scale_by_moments(...),
    bias_correction(...))``): :math:`\phi_t = \mathbb{1}[u_t \odot g_t > 0]`.

  The mask applies to the whole update of ``optimizer``. Wrapping
  ``adamw(...)`` masks its weight decay too; timm's ``cadamw`` and
  pytorch-optimizer's ``cautious=True`` decay every entry, which is
  ``optax.chain(cautious(optax.chain(scale_by_moments(b1, b2, eps),
  bias_correction(b1, b2)), descent=False), add_decayed_weights(weight_decay),
  scale_by_lr(learning_rate))`` (tested against the paper's equations). The
  rescaling is timm's and the paper's, :math:`1 / \max(\operatorname{mean}
  \phi_t, 10^{-3})`; pytorch-optimizer 4.1.0 divides by
  :math:`\operatorname{mean}\phi_t + 1/n` instead (:math:`n` the tensor's
  size), a step :math:`k/(k+1)` as large for :math:`k` kept entries (tested:
  the two agree within 1e-5 on large tensors and differ by exactly that factor).

  The wrapper keeps no state: its state is ``optimizer``'s. Leaves that have
  no array (``None``, :class:`optax.MaskedNode` under ``optax.masked``) stay as
  they are; for complex leaves the agreement is :math:`\operatorname{Re}(d_t
  \bar g_t)`. On :func:`adam_optax.bucket` layouts a bucket is one tensor.

  Args:
    optimizer: the optimizer whose updates are masked.
    descent: whether ``optimizer``'s updates are descent steps (``True``) or
      directions (``False``), see above.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with ``optimizer``'s state.

  Raises:
    TypeError: ``optimizer`` is not an :class:`optax.GradientTransformation`;
      ``descent`` is not a bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import adam_optax
    >>> optimizer = adam_optax.cautious(optax.sgd(0.1, momentum=0.9))
    >>> params = jnp.zeros(4)
    >>> state = optimizer.init(params)
    >>> _, state = optimizer.update(jnp.array([1.0, 1.0, 1.0, 1.0]), state)
    >>> updates, _ = optimizer.update(jnp.array([1.0, -0.5, 1.0, 1.0]), state)
    >>> updates  # momentum still says +, the gradient says -: skipped, the rest x 4/3
    Array([-0.25333333,  0.        , -0.25333333, -0.25333333], dtype=float32)

  References:
    Liang, Chen, Liu & Liu, *Cautious Optimizers: Improving Training with One
    Line of Code*, 2024, https://arxiv.org/abs/2411.16085, Algorithm 2.
  """
  owner = "cautious"
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(
      f"{owner}(optimizer=...): expected an optax.GradientTransformation, got "
      f"{type(optimizer).__name__}"
    )
  descent = check_flag(owner, "descent", descent)
  inner = optax.with_extra_args_support(optimizer)

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    check_inexact_leaves(owner, updates, "gradient")
    new_updates, new_state = inner.update(updates, state, params, **extra_args)

    def mask(update: Any, grad: Any) -> jax.Array:
      update = jnp.asarray(update)
      if update.size == 0:
        return update
      dtype = num.compute_dtype(update.dtype)
      real = num.real_dtype(dtype)
      u = update.astype(dtype)
      agreement = jnp.real(u * jnp.conj(jnp.asarray(grad).astype(dtype)))
      keep = agreement < 0 if descent else agreement > 0
      share = jnp.maximum(jnp.mean(keep.astype(real)), jnp.asarray(_FLOOR, real))
      scaled = u * (1 / share).astype(dtype)
      return jnp.where(keep, scaled, jnp.zeros([], dtype)).astype(update.dtype)

    return jax.tree.map(mask, new_updates, updates), new_state

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)
