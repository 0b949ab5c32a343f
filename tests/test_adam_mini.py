"""adam_mini against adam_mini 1.1.1 (partition by names) and a float64 evaluation of the paper.

The reference picks each tensor's blocks from its name; the torch tensors here
are named so that it picks, leaf by leaf, the partition that ``RULE`` gives by
path and shape: per token for ``embed``, per head for ``q_proj``, per output
neuron (row) for ``mlp``, per entry for ``bias``, the whole tensor for ``norm``.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from adam_mini import Adam_mini

import adam_optax
from adam_optax import Blocks
from tests.closed_loop import (
  PROBLEMS,
  assert_injected_rate_matches_schedule,
  flatten,
  run_numpy,
  run_ours,
  run_torch,
  unflatten,
)
from tests.references import normwise_error

DIM, HEADS = 4, 2  # the reference's dim and n_heads: a q_proj head is DIM * DIM / HEADS entries
SHAPES = {  # 49 entries, the size of the MLP problem
  "embed.weight": (3, 4),
  "layers.q_proj.weight": (4, 4),
  "layers.mlp.weight": (3, 4),
  "layers.mlp.bias": (3,),
  "norm.weight": (6,),
}
NO_DECAY = ("norm", "ln", "bias")  # the reference's undecayed names


def rule(path, shape):
  """The reference's partition of these leaves, chosen by our rule from the path."""
  name = path[0].key
  if "bias" in name:
    return Blocks.per_element(shape)
  if "q_proj" in name:
    return Blocks.per_head(shape, HEADS, axis=0)
  if "embed" in name or "mlp" in name:
    return Blocks.along(shape, 0)
  return Blocks.whole(shape)


MASK = {name: not any(word in name for word in NO_DECAY) for name in SHAPES}
CONFIGS = {  # (lr, b1, b2, eps, weight_decay)
  "plain": (1e-2, 0.9, 0.999, 1e-8, 0.0),
  "decay": (3e-2, 0.95, 0.99, 1e-8, 0.1),
  "eps_dominates": (1e-2, 0.9, 0.999, 1e-3, 0.0),
}


def torch_factory(lr, b1, b2, eps, weight_decay):
  def make(named):
    return Adam_mini(
      named, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, dim=DIM,
      n_heads=HEADS, verbose=False,
    )  # fmt: skip

  return make


def ours(lr, b1, b2, eps, weight_decay):
  return adam_optax.adam_mini(
    lr, b1, b2, eps, blocks=rule, weight_decay=weight_decay, mask=MASK if weight_decay else None
  )


def paper_step(lr, b1, b2, eps, weight_decay):
  """Adam-mini (Zhang et al. 2024, Algorithm 1 with AdamW's decay) in float64, per block."""
  memory: dict = {}
  blocks = {name: rule((jax.tree_util.DictKey(name),), shape) for name, shape in SHAPES.items()}

  def step(flat, g, t):
    params, grads = unflatten(flat, SHAPES), unflatten(g, SHAPES)
    if not memory:
      memory.update(m={n: np.zeros(s) for n, s in SHAPES.items()})
      memory.update(v={n: np.zeros(b.nu_shape) for n, b in blocks.items()})
    new = {}
    for name, block in blocks.items():
      grad = grads[name]
      memory["m"][name] = b1 * memory["m"][name] + (1 - b1) * grad
      square = np.mean(grad.reshape(block.shape) ** 2, axis=block.axes, keepdims=True)
      memory["v"][name] = b2 * memory["v"][name] + (1 - b2) * square
      m_hat = memory["m"][name] / -math.expm1(t * math.log(b1))
      v_hat = memory["v"][name] / -math.expm1(t * math.log(b2))
      direction = (m_hat.reshape(block.shape) / (np.sqrt(v_hat) + eps)).reshape(grad.shape)
      decay = weight_decay if MASK[name] else 0.0
      new[name] = params[name] - lr * (direction + decay * params[name])
    return flatten(new, SHAPES)

  return step


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_float32_matches_the_reference(problem, config):
  params, grad = _problem(problem)
  hyper = CONFIGS[config]
  expected, _ = run_torch(torch_factory(*hyper), params, grad, shapes=SHAPES)
  actual, _ = run_ours(ours(*hyper), params, grad, shapes=SHAPES)
  assert normwise_error(actual, expected) < 1e-5


@pytest.mark.parametrize("problem", PROBLEMS)
def test_float64_matches_the_paper(x64, problem):
  params, grad = _problem(problem)
  hyper = CONFIGS["decay"]
  expected = run_numpy(paper_step(*hyper), params, grad)
  actual, _ = run_ours(ours(*hyper), params, grad, np.float64, shapes=SHAPES)
  assert normwise_error(actual, expected) < 1e-12


def _problem(name):
  params, grad = PROBLEMS[name](49) if name != "mlp" else PROBLEMS[name]()
  assert params.size == sum(math.prod(s) for s in SHAPES.values())
  return params, grad


def test_per_element_blocks_are_adam_bit_for_bit():
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(2)}
  grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
  mini = adam_optax.adam_mini(1e-2, blocks=lambda path, shape: Blocks.per_element(shape))
  adam = adam_optax.adam(1e-2)
  a, b = mini.init(params), adam.init(params)
  mini_update, adam_update = jax.jit(mini.update), jax.jit(adam.update)
  for _ in range(3):
    u, a = mini_update(grads, a, params)
    w, b = adam_update(grads, b, params)
    chex.assert_trees_all_equal(u, w)


def test_the_default_rule_is_by_shape_and_printable():
  params = {"dense": {"kernel": jnp.zeros((8, 5)), "bias": jnp.zeros(5)}, "scale": jnp.zeros(())}
  layout = adam_optax.adam_mini_blocks(params)
  assert layout["dense"]["kernel"] == Blocks((8, 5), (0,)) and layout["dense"]["kernel"].count == 5
  assert layout["dense"]["bias"] == Blocks((5,), ())
  assert layout["scale"] == Blocks((), ())
  assert "Blocks(shape=(8, 5), axes=(0,))" in str(layout)
  head = Blocks.per_head((8, 6), 3, axis=-1)
  assert head == Blocks((8, 3, 2), (0, 2)) and head.nu_shape == (1, 3, 1)


def test_state_is_at_least_45_percent_smaller_than_adamw_on_a_transformer_tree():
  """The LM's shapes (benchmarks/lm.py, quick size): m per entry, v per output neuron."""
  d, vocab, context, layers = 64, 256, 64, 2
  block = {
    "ln1": jnp.zeros(d), "qkv": jnp.zeros((d, 3 * d)), "proj": jnp.zeros((d, d)),
    "ln2": jnp.zeros(d), "fc": jnp.zeros((d, 4 * d)), "out": jnp.zeros((4 * d, d)),
  }  # fmt: skip
  params = {
    "embed": jnp.zeros((vocab, d)), "position": jnp.zeros((context, d)),
    "blocks": [block] * layers, "head": jnp.zeros((d, vocab)),
  }  # fmt: skip
  size = lambda state: sum(x.nbytes for x in jax.tree.leaves(state))  # noqa: E731
  mini = size(adam_optax.adam_mini(1e-3).init(params))
  adamw = size(adam_optax.adamw(1e-3).init(params))
  assert mini <= 0.55 * adamw


def test_bfloat16_params_keep_float32_block_moments_and_dtypes_are_stable(strict_promotion):
  params = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
  optimizer = adam_optax.adam_mini(1e-2, weight_decay=0.1)
  state = optimizer.init(params)
  assert state[0].nu["w"].dtype == jnp.float32 and state[0].mu["w"].dtype == jnp.bfloat16
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  updates, new_state = jax.jit(optimizer.update)(grads, state, params)
  chex.assert_trees_all_equal_dtypes(new_state, state)
  assert updates["w"].dtype == jnp.bfloat16


def test_composes_with_inject_hyperparams_multisteps_and_skip_nonfinite():
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
  loss = lambda p: jnp.sum(jnp.sin(p["w"]) ** 2) + jnp.sum(p["b"] ** 2)  # noqa: E731
  assert_injected_rate_matches_schedule(
    adam_optax.adam_mini, params, loss, static_args=("blocks",), weight_decay=0.1
  )


@pytest.mark.devices(8)
def test_zero1_shardings_and_buckets():
  mesh = jax.make_mesh((8,), ("data",))
  params = {"w": jnp.ones((16, 8)), "b": jnp.ones(8)}
  optimizer = adam_optax.adam_mini(1e-2)
  shardings = adam_optax.state_shardings(optimizer, params, mesh, zero1_axis="data")
  state = adam_optax.init_sharded(optimizer, params, shardings)
  chex.assert_trees_all_equal(state, optimizer.init(params))
  # One bucket is one leaf: the default rule gives it per-entry blocks (it is 1-d), i.e. Adam.
  buckets, _ = adam_optax.bucket(params)
  bucket_state = optimizer.init(buckets)
  assert all(
    v.shape == b.shape
    for v, b in zip(jax.tree.leaves(bucket_state[0].nu), jax.tree.leaves(buckets), strict=True)
  )


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"b1": 1.0}, r"adam_mini\(b1=1.0\)"),
    ({"eps": -1.0}, r"adam_mini\(eps=-1.0\)"),
    ({"weight_decay": -1.0}, r"adam_mini\(weight_decay=-1.0\)"),
    ({"blocks": "rows"}, r"blocks must be a rule"),
  ],
)
def test_bad_hyperparameters_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    adam_optax.adam_mini(1e-3, **kwargs)


def test_a_rule_that_does_not_fit_names_the_leaf():
  optimizer = adam_optax.adam_mini(1e-3, blocks=lambda path, shape: Blocks((5,), (0,)))
  with pytest.raises(ValueError, match=r"\['w'\] of shape \(2, 3\)"):
    optimizer.init({"w": jnp.zeros((2, 3))})
  with pytest.raises(ValueError, match="expected a Blocks"):
    adam_optax.adam_mini(1e-3, blocks=lambda path, shape: None).init({"w": jnp.zeros(2)})
  with pytest.raises(ValueError, match="do not divide"):
    Blocks.per_head((4, 6), 4)
