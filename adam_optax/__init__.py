"""adam_optax: Adam and its family as small, composable Optax transforms.

Every public function returns an :class:`optax.GradientTransformation` with a
pure ``init(params) -> state`` and ``update(grads, state, params) -> (updates,
state)``; optimizers are ``optax.chain``s of the building blocks below.
"""

from adam_optax._alias import adam as adam
from adam_optax._bias_correction import BiasCorrectionState as BiasCorrectionState
from adam_optax._bias_correction import bias_correction as bias_correction
from adam_optax._learning_rate import ScaleByLrState as ScaleByLrState
from adam_optax._learning_rate import scale_by_lr as scale_by_lr
from adam_optax._moments import ScaleByMomentsState as ScaleByMomentsState
from adam_optax._moments import scale_by_moments as scale_by_moments

__version__ = "0.1.0"

__all__ = [
  "BiasCorrectionState",
  "ScaleByLrState",
  "ScaleByMomentsState",
  "adam",
  "bias_correction",
  "scale_by_lr",
  "scale_by_moments",
]
