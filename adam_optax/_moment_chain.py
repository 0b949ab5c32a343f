"""The chain of the members built from Adam's blocks plus blocks of their own.

``scale_by_moments``, ``bias_correction``, the member's own blocks, then
``add_decayed_weights`` and ``scale_by_lr``: :func:`adam_optax.adam_atan2` and
:func:`adam_optax.stable_adamw` are made here. Unlike
:func:`adam_optax._alias.adam_chain` nothing is recorded for the state
converters, which do not know these members' states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optax

from adam_optax._bias_correction import bias_correction
from adam_optax._learning_rate import scale_by_lr
from adam_optax._moments import scale_by_moments
from adam_optax._validation import check_moment_hyperparameters, check_rate
from adam_optax._weight_decay import decayed_weights


def moment_chain(
  owner: str,
  learning_rate: optax.ScalarOrSchedule,
  b1: Any,
  b2: Any,
  eps: Any,
  *,
  weight_decay: optax.ScalarOrSchedule,
  mask: Any,
  mu_dtype: Any,
  nu_dtype: Any,
  direction: Sequence[optax.GradientTransformation] = (),
) -> optax.GradientTransformation:
  """Adam's chain with ``direction`` after the bias correction, validated in ``owner``'s name.

  ``weight_decay=0`` given as a Python number leaves ``add_decayed_weights`` out
  (a traced or scheduled decay keeps it).
  """
  learning_rate = check_rate(owner, "learning_rate", learning_rate)
  weight_decay = check_rate(owner, "weight_decay", weight_decay)
  b1, b2, eps, _, mu_dtype, nu_dtype = check_moment_hyperparameters(
    owner, b1, b2, eps, 0.0, mu_dtype, nu_dtype
  )
  parts = [
    scale_by_moments(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    bias_correction(b1, b2),
    *direction,
  ]
  if not (isinstance(weight_decay, float) and weight_decay == 0.0):
    parts.append(decayed_weights(owner, weight_decay, mask))
  parts.append(scale_by_lr(learning_rate))
  return optax.chain(*parts)
