"""adam_optax: Adam and its family as small, composable Optax transforms.

Every public function returns an :class:`optax.GradientTransformation` with a
pure ``init(params) -> state`` and ``update(grads, state, params) -> (updates,
state)``; optimizers are ``optax.chain``s of the building blocks below.
"""

from adam_optax._adabelief import ScaleByBeliefState as ScaleByBeliefState
from adam_optax._adabelief import adabelief as adabelief
from adam_optax._adabelief import scale_by_belief as scale_by_belief
from adam_optax._adam_atan2 import adam_atan2 as adam_atan2
from adam_optax._adam_atan2 import scale_by_atan as scale_by_atan
from adam_optax._adam_mini import Blocks as Blocks
from adam_optax._adam_mini import ScaleByBlockMomentsState as ScaleByBlockMomentsState
from adam_optax._adam_mini import adam_mini as adam_mini
from adam_optax._adam_mini import adam_mini_blocks as adam_mini_blocks
from adam_optax._adam_mini import blocks_by_shape as blocks_by_shape
from adam_optax._adam_mini import scale_by_block_moments as scale_by_block_moments
from adam_optax._ademamix import ScaleByAdemamixState as ScaleByAdemamixState
from adam_optax._ademamix import ScaleBySimplifiedAdemamixState as ScaleBySimplifiedAdemamixState
from adam_optax._ademamix import ademamix as ademamix
from adam_optax._ademamix import scale_by_ademamix as scale_by_ademamix
from adam_optax._ademamix import scale_by_simplified_ademamix as scale_by_simplified_ademamix
from adam_optax._ademamix import simplified_ademamix as simplified_ademamix
from adam_optax._adopt import ScaleByAdoptState as ScaleByAdoptState
from adam_optax._adopt import adopt as adopt
from adam_optax._adopt import scale_by_adopt as scale_by_adopt
from adam_optax._alias import adam as adam
from adam_optax._bias_correction import BiasCorrectionState as BiasCorrectionState
from adam_optax._bias_correction import bias_correction as bias_correction
from adam_optax._buckets import BucketLayout as BucketLayout
from adam_optax._buckets import bucket as bucket
from adam_optax._cautious import cautious as cautious
from adam_optax._checkpoint import restore_target as restore_target
from adam_optax._family import adamax as adamax
from adam_optax._family import adamw as adamw
from adam_optax._family import amsgrad as amsgrad
from adam_optax._family import nadam as nadam
from adam_optax._family import nadamw as nadamw
from adam_optax._finite import SkipNonfiniteState as SkipNonfiniteState
from adam_optax._finite import nonfinite_report as nonfinite_report
from adam_optax._finite import skip_nonfinite as skip_nonfinite
from adam_optax._from_optax import state_from_optax as state_from_optax
from adam_optax._from_torch import state_from_torch as state_from_torch
from adam_optax._from_torch import state_to_torch as state_to_torch
from adam_optax._fused import update_and_apply as update_and_apply
from adam_optax._kahan import KahanSummationState as KahanSummationState
from adam_optax._kahan import kahan_summation as kahan_summation
from adam_optax._laprop import ScaleByLapropState as ScaleByLapropState
from adam_optax._laprop import laprop as laprop
from adam_optax._laprop import scale_by_laprop as scale_by_laprop
from adam_optax._learning_rate import ScaleByLrState as ScaleByLrState
from adam_optax._learning_rate import scale_by_lr as scale_by_lr
from adam_optax._mars import ScaleByMarsCorrectionState as ScaleByMarsCorrectionState
from adam_optax._mars import mars_adamw as mars_adamw
from adam_optax._mars import scale_by_mars_correction as scale_by_mars_correction
from adam_optax._moments import ScaleByMomentsState as ScaleByMomentsState
from adam_optax._moments import scale_by_moments as scale_by_moments
from adam_optax._quantized import QuantizedState as QuantizedState
from adam_optax._quantized import describe_quantized as describe_quantized
from adam_optax._quantized import quantized as quantized
from adam_optax._quantized_rules import QuantizedDescription as QuantizedDescription
from adam_optax._quantized_rules import quantized_maps as quantized_maps
from adam_optax._radam import radam as radam
from adam_optax._radam import scale_by_radam as scale_by_radam
from adam_optax._schedule_free import ScheduleFreeAverageState as ScheduleFreeAverageState
from adam_optax._schedule_free import schedule_free_adamw as schedule_free_adamw
from adam_optax._schedule_free import schedule_free_average as schedule_free_average
from adam_optax._schedule_free import schedule_free_eval_params as schedule_free_eval_params
from adam_optax._second_moment import ScaleBySecondMomentState as ScaleBySecondMomentState
from adam_optax._second_moment import scale_by_second_moment as scale_by_second_moment
from adam_optax._sharding import StateMemory as StateMemory
from adam_optax._sharding import init_sharded as init_sharded
from adam_optax._sharding import sharded_train_step as sharded_train_step
from adam_optax._sharding import state_memory as state_memory
from adam_optax._sharding import state_shardings as state_shardings
from adam_optax._stable_adamw import clip_by_update_rms as clip_by_update_rms
from adam_optax._stable_adamw import stable_adamw as stable_adamw
from adam_optax._stochastic_rounding import StochasticRoundingState as StochasticRoundingState
from adam_optax._stochastic_rounding import stochastic_rounding as stochastic_rounding
from adam_optax._weight_decay import AddDecayedWeightsState as AddDecayedWeightsState
from adam_optax._weight_decay import add_decayed_weights as add_decayed_weights

__version__ = "0.1.0"

__all__ = [
  "AddDecayedWeightsState",
  "BiasCorrectionState",
  "Blocks",
  "BucketLayout",
  "KahanSummationState",
  "QuantizedDescription",
  "QuantizedState",
  "ScaleByAdemamixState",
  "ScaleByAdoptState",
  "ScaleByBeliefState",
  "ScaleByBlockMomentsState",
  "ScaleByLapropState",
  "ScaleByLrState",
  "ScaleByMarsCorrectionState",
  "ScaleByMomentsState",
  "ScaleBySecondMomentState",
  "ScaleBySimplifiedAdemamixState",
  "ScheduleFreeAverageState",
  "SkipNonfiniteState",
  "StateMemory",
  "StochasticRoundingState",
  "adabelief",
  "adam",
  "adam_atan2",
  "adam_mini",
  "adam_mini_blocks",
  "adamax",
  "adamw",
  "add_decayed_weights",
  "ademamix",
  "adopt",
  "amsgrad",
  "bias_correction",
  "blocks_by_shape",
  "bucket",
  "cautious",
  "clip_by_update_rms",
  "describe_quantized",
  "init_sharded",
  "kahan_summation",
  "laprop",
  "mars_adamw",
  "nadam",
  "nadamw",
  "nonfinite_report",
  "quantized",
  "quantized_maps",
  "radam",
  "restore_target",
  "scale_by_ademamix",
  "scale_by_adopt",
  "scale_by_atan",
  "scale_by_belief",
  "scale_by_block_moments",
  "scale_by_laprop",
  "scale_by_lr",
  "scale_by_mars_correction",
  "scale_by_moments",
  "scale_by_radam",
  "scale_by_second_moment",
  "scale_by_simplified_ademamix",
  "schedule_free_adamw",
  "schedule_free_average",
  "schedule_free_eval_params",
  "sharded_train_step",
  "simplified_ademamix",
  "skip_nonfinite",
  "stable_adamw",
  "state_from_optax",
  "state_from_torch",
  "state_memory",
  "state_shardings",
  "state_to_torch",
  "stochastic_rounding",
  "update_and_apply",
]
