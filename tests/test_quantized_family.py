"""``quantized`` over the modern family: which moments its declared maps quantize, and training.

The maps come from ``quantized_maps()`` (no probe): each member's first moments take the signed
map, its second moments the unsigned one, and the leaves that are not moments (schedule-free's
copy of the params, MARS's previous gradient, Adam-mini's per-block second moment) stay in full
precision. An 8-bit state then trains as the float32 one does on a least-squares problem.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

import adam_optax

MEMBERS = {
  "adopt": (lambda: adam_optax.adopt(1e-2), {"mu": "signed", "nu": "unsigned"}),
  "radam": (lambda: adam_optax.radam(1e-2), {"mu": "signed", "nu": "unsigned"}),
  "adabelief": (lambda: adam_optax.adabelief(1e-2), {"mu": "signed", "nu": "unsigned"}),
  "laprop": (lambda: adam_optax.laprop(1e-2), {"mu": "signed", "nu": "unsigned"}),
  "ademamix": (
    lambda: adam_optax.ademamix(1e-2),
    {"mu": "signed", "mu_slow": "signed", "nu": "unsigned"},
  ),
  "simplified_ademamix": (
    lambda: adam_optax.simplified_ademamix(1e-3),
    {"mu": "signed", "nu": "unsigned"},
  ),
  "adam_atan2": (lambda: adam_optax.adam_atan2(1e-2), {"mu": "signed", "nu": "unsigned"}),
  "stable_adamw": (lambda: adam_optax.stable_adamw(1e-2), {"mu": "signed", "nu": "unsigned"}),
  "cautious": (
    lambda: adam_optax.cautious(adam_optax.adamw(1e-2)),
    {"mu": "signed", "nu": "unsigned"},
  ),
  "schedule_free_adamw": (
    lambda: adam_optax.schedule_free_adamw(1e-2),
    {"nu": "unsigned", "z": None},
  ),
  "adam_mini": (lambda: adam_optax.adam_mini(1e-2), {"mu": "signed", "nu": None}),
  "mars_adamw": (
    lambda: adam_optax.mars_adamw(1e-2),
    {"mu": "signed", "nu": "unsigned", "prev_grad": None},
  ),
}

PARAMS = {"w": jnp.zeros((64, 64), jnp.float32)}


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_declared_maps_of_each_member(name):
  make, expected = MEMBERS[name]
  described = adam_optax.describe_quantized(adam_optax.quantized(make()), PARAMS)
  found = {x.site.field: x.map for x in described.leaves if x.site.field in expected}
  assert found == expected, str(described)
  # Nothing else is quantized: every quantized leaf is a declared moment.
  assert {x.site.field for x in described.leaves if x.map} == {
    field for field, kind in expected.items() if kind
  }


@functools.cache
def _problem():
  keys = jax.random.split(jax.random.key(0), 3)
  inputs = jax.random.normal(keys[0], (128, 64))
  target_w = jax.random.normal(keys[1], (64, 64)) / 8
  targets = inputs @ target_w + 0.01 * jax.random.normal(keys[2], (128, 64))
  return inputs, targets


def _final_loss(optimizer: optax.GradientTransformation, steps: int = 40) -> float:
  inputs, targets = _problem()

  def loss(params):
    return jnp.mean((inputs @ params["w"] - targets) ** 2)

  @jax.jit
  def run(params):
    def step(carry, _):
      params, state = carry
      grads = jax.grad(loss)(params)
      updates, state = optimizer.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, steps)
    return loss(params)

  return float(run(PARAMS))


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_eight_bit_state_trains_like_float32(name):
  make, _ = MEMBERS[name]
  start = _final_loss(optax.sgd(0.0), steps=1)
  full = _final_loss(make())
  eight_bit = _final_loss(adam_optax.quantized(make(), bits=8))
  assert full < 0.9 * start  # the member trains on this problem at all
  assert abs(eight_bit - full) <= 0.05 * (start - full), (name, start, full, eight_bit)
