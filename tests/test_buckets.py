"""bucket() / BucketLayout: exact round trips, gradients, Adam on buckets, errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_optax


def _tree():
  """Mixed dtypes, a scalar, a zero-size leaf and a ``None``."""
  rng = np.random.default_rng(0)
  return {
    "dense": {
      "w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
      "b": jnp.asarray(rng.standard_normal(4), jnp.float32),
    },
    "half": jnp.asarray(rng.standard_normal((2, 5)), jnp.bfloat16),
    "scale": jnp.asarray(1.5, jnp.float32),
    "empty": jnp.zeros((0, 3), jnp.float32),
    "absent": None,
    "steps": jnp.arange(3, dtype=jnp.int32),
  }


def _float_tree():
  tree = _tree()
  del tree["steps"]
  return tree


def _loss(tree):
  dense = tree["dense"]
  hidden = jnp.tanh(dense["w"] @ dense["b"]) * tree["scale"]
  return jnp.sum(hidden**2) + jnp.sum(tree["half"].astype(jnp.float32) ** 3)


def test_round_trip_is_exact(strict_promotion):
  tree = _tree()
  buckets, layout = adam_optax.bucket(tree)
  assert sorted(buckets) == ["bfloat16", "float32", "int32"]
  assert buckets["float32"].shape == (12 + 4 + 1,)
  assert buckets["int32"].dtype == jnp.int32
  back = layout.unbucket(buckets)
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  chex.assert_trees_all_equal(back, tree)
  chex.assert_trees_all_equal_dtypes(back, tree)
  chex.assert_trees_all_equal(layout.bucket(tree), buckets)
  chex.assert_trees_all_equal(jax.jit(layout.unbucket)(buckets), tree)


def test_layout_is_hashable_and_static():
  tree = _float_tree()
  buckets, layout = adam_optax.bucket(tree)
  assert adam_optax.bucket(tree)[1] == layout
  assert hash(adam_optax.bucket(tree)[1]) == hash(layout)
  unbucket = jax.jit(lambda b, layout: layout.unbucket(b), static_argnums=1)
  chex.assert_trees_all_equal(unbucket(buckets, layout), tree)


def test_gradients_through_unbucket_equal_per_leaf_gradients():
  tree = _float_tree()
  buckets, layout = adam_optax.bucket(tree)
  grads = jax.jit(jax.grad(lambda b: _loss(layout.unbucket(b))))(buckets)
  expected = jax.grad(_loss)(tree)
  chex.assert_trees_all_close(layout.unbucket(grads), expected, rtol=1e-6)
  chex.assert_trees_all_close(grads, layout.bucket(expected), rtol=1e-6)


def test_adam_on_buckets_equals_adam_on_the_tree(strict_promotion):
  tree = _float_tree()
  buckets, layout = adam_optax.bucket(tree)
  optimizer = adam_optax.adam(1e-2)
  reference = optax.adam(1e-2)

  def run(opt, params, grad_fn):
    state = opt.init(params)
    for _ in range(5):
      updates, state = opt.update(grad_fn(params), state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  on_tree, tree_state = run(optimizer, tree, jax.grad(_loss))
  on_buckets, bucket_state = run(optimizer, buckets, jax.grad(lambda b: _loss(layout.unbucket(b))))
  chex.assert_trees_all_close(layout.unbucket(on_buckets), on_tree, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(
    layout.unbucket(bucket_state[0].mu), tree_state[0].mu, rtol=1e-5, atol=1e-7
  )
  with jax.numpy_dtype_promotion("standard"):  # optax.adam mixes float and int32
    by_optax, _ = run(reference, tree, jax.grad(_loss))
  ours = layout.unbucket(on_buckets)
  # optax computes bfloat16 leaves in bfloat16, adam_optax in float32: 1 ulp apart.
  chex.assert_trees_all_close(ours.pop("half"), by_optax.pop("half"), rtol=2**-7)
  chex.assert_trees_all_close(ours, by_optax, rtol=1e-5, atol=1e-6)


def test_donated_step_does_not_retrace():
  buckets, layout = adam_optax.bucket(_float_tree())
  optimizer = adam_optax.adam(1e-3)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state):
    grads = jax.grad(lambda b: _loss(layout.unbucket(b)))(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  donated = jax.jit(step, donate_argnums=(0, 1))
  params, state = buckets, optimizer.init(buckets)
  for _ in range(3):
    params, state = donated(params, state)
  assert int(state[0].count) == 3


def test_padding_is_zero_and_gets_zero_gradients():
  tree = {"a": jnp.ones(5, jnp.float32), "b": jnp.ones((2, 2), jnp.float32)}
  buckets, layout = adam_optax.bucket(tree, pad_to=8)
  assert buckets["float32"].shape == (16,)
  np.testing.assert_array_equal(buckets["float32"][9:], 0)
  grads = jax.grad(lambda b: sum(jnp.sum(x) for x in jax.tree.leaves(layout.unbucket(b))))(buckets)
  np.testing.assert_array_equal(grads["float32"], [1.0] * 9 + [0.0] * 7)


def test_groups_compose_with_optax_masked():
  tree = {"w": jnp.ones((2, 2), jnp.float32), "bias": jnp.ones(2, jnp.float32)}
  buckets, layout = adam_optax.bucket(
    tree, group=lambda path, leaf: "decay" if jnp.ndim(leaf) > 1 else "plain"
  )
  assert sorted(buckets) == ["decay/float32", "plain/float32"]
  decay = optax.masked(
    optax.add_decayed_weights(0.5), {"decay/float32": True, "plain/float32": False}
  )
  optimizer = optax.chain(decay, optax.sgd(1.0))
  state = optimizer.init(buckets)
  updates, _ = optimizer.update(jax.tree.map(jnp.zeros_like, buckets), state, buckets)
  by_leaf = layout.unbucket(updates)
  np.testing.assert_array_equal(by_leaf["w"], -0.5 * np.ones((2, 2)))
  np.testing.assert_array_equal(by_leaf["bias"], np.zeros(2))


@pytest.mark.devices(8)
def test_padded_buckets_take_zero1_sharding():
  devices = jax.devices()
  tree = {"a": jnp.ones(13, jnp.float32), "b": jnp.ones((3, 3), jnp.float32)}
  buckets, layout = adam_optax.bucket(tree, pad_to=len(devices))
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  params = jax.device_put(buckets, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  optimizer = adam_optax.adam(0.1)
  shardings = adam_optax.state_shardings(optimizer, params, zero1_axis="data")
  assert shardings[0].mu["float32"].spec == jax.sharding.PartitionSpec("data")
  state = adam_optax.init_sharded(optimizer, params, shardings)
  assert state[0].mu["float32"].addressable_shards[0].data.shape == (24 // len(devices),)
  updates, state = jax.jit(optimizer.update)(params, state, params)
  new_params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(layout.unbucket(new_params)["a"], 0.9 * np.ones(13), rtol=1e-6)
  # Without padding, 22 elements do not divide over 8 devices: the bucket stays whole.
  unpadded, _ = adam_optax.bucket(tree)
  whole = adam_optax.state_shardings(optimizer, unpadded, mesh, zero1_axis="data")
  assert whole[0].mu["float32"].spec == jax.sharding.PartitionSpec()


def test_empty_tree():
  buckets, layout = adam_optax.bucket({})
  assert buckets == {}
  assert layout.unbucket(buckets) == {}


@pytest.mark.parametrize(
  ("call", "error", "match"),
  [
    (lambda: adam_optax.bucket({"x": "a string"}), TypeError, r"bucket\(params=.*\['x'\]"),
    (lambda: adam_optax.bucket({"x": jnp.ones(2)}, pad_to=0), ValueError, r"pad_to=0"),
    (lambda: adam_optax.bucket({"x": jnp.ones(2)}, pad_to=2.0), ValueError, r"pad_to=2.0"),
    (
      lambda: adam_optax.bucket({"x": jnp.ones(2)}, group=lambda p, x: 1),
      TypeError,
      r"bucket\(group=",
    ),
  ],
)
def test_bucket_errors_name_the_argument(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_layout_errors_name_the_argument():
  buckets, layout = adam_optax.bucket({"x": jnp.ones(2, jnp.float32)})
  with pytest.raises(ValueError, match=r"unbucket\(buckets=.*keys"):
    layout.unbucket({"float64": buckets["float32"]})
  with pytest.raises(ValueError, match=r"unbucket\(buckets=.*float32\[2\]"):
    layout.unbucket({"float32": jnp.ones(3, jnp.float32)})
  with pytest.raises(ValueError, match=r"unbucket\(buckets=.*mapping"):
    layout.unbucket([buckets["float32"]])
  with pytest.raises(ValueError, match=r"bucket\(tree=.*structure"):
    layout.bucket({"y": jnp.ones(2, jnp.float32)})
  with pytest.raises(ValueError, match=r"bucket\(tree=.*shape"):
    layout.bucket({"x": jnp.ones(3, jnp.float32)})
  with pytest.raises(TypeError, match=r"bucket\(tree=.*dtype"):
    layout.bucket({"x": jnp.ones(2, jnp.int32)})


def test_forward_mode_through_unbucket():
  tree = _float_tree()
  buckets, layout = adam_optax.bucket(tree)
  tangents = jax.tree.map(jnp.ones_like, buckets)
  _, out = jax.jvp(lambda b: layout.unbucket(b)["dense"]["w"], (buckets,), (tangents,))
  np.testing.assert_array_equal(out, np.ones((3, 4), np.float32))
  hessian_diagonal = jax.jacfwd(jax.grad(lambda b: jnp.sum(layout.unbucket(b)["scale"] ** 3)))
  assert hessian_diagonal(buckets)["float32"]["float32"].shape == (17, 17)
