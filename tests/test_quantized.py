"""quantized(): which leaves, which maps, trajectories, and the tools a state must work with."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adam_optax
from tests.references import run_optax

QuantizedArray = adam_optax.QuantizedArray


def _quantized_leaves(state) -> dict[str, QuantizedArray]:
  flat = jax.tree_util.tree_flatten_with_path(
    state, is_leaf=lambda x: isinstance(x, QuantizedArray)
  )
  return {
    jax.tree_util.keystr(path): leaf for path, leaf in flat[0] if isinstance(leaf, QuantizedArray)
  }


def _params():
  return {"w": jnp.ones((64, 96)), "b": jnp.zeros(96), "v": jnp.ones(5000, jnp.bfloat16)}


@pytest.mark.parametrize(
  ("name", "inner", "expected"),
  [
    ("adam_optax.adam", lambda: adam_optax.adam(1e-3), {"mu": True, "nu": False}),
    ("optax.adam", lambda: optax.adam(1e-3), {"mu": True, "nu": False}),
    ("amsgrad", lambda: adam_optax.amsgrad(1e-3), {"mu": True, "nu": False, "nu_max": False}),
    ("adamax", lambda: adam_optax.adamax(1e-3), {"mu": True, "nu": False}),
    ("sgd momentum", lambda: optax.sgd(1e-3, momentum=0.9), {"trace": True}),
    (
      "MultiSteps",
      lambda: optax.MultiSteps(adam_optax.adam(1e-3), 4),
      {"mu": True, "nu": False, "acc_grads": True},
    ),
  ],
)
def test_leaves_and_maps_are_chosen_by_structure_and_probe(name, inner, expected):
  params = _params()
  state = adam_optax.quantized(inner(), 8).init(params)
  found = _quantized_leaves(state)
  by_field = {}
  for path, leaf in found.items():
    field = path.rsplit(".", 1)[-1].split("[")[0]
    by_field.setdefault(field, set()).add((path.rsplit("[", 1)[-1], leaf.signed))
  assert set(by_field) == set(expected), found.keys()
  for field, signed in expected.items():  # 'w' and 'v' quantized, the 96-element 'b' is not
    assert by_field[field] == {("'w']", signed), ("'v']", signed)}
  assert {leaf.array_dtype for leaf in found.values()} == {
    np.dtype("float32"),
    np.dtype("bfloat16"),
  }
  # the abstract state (what state_shardings and orbax see) has the same structure
  assert jax.tree.structure(jax.eval_shape(adam_optax.quantized(inner(), 8).init, params)) == (
    jax.tree.structure(state)
  )


def test_small_integer_and_non_parameter_leaves_are_kept_as_they_are():
  inner = optax.inject_hyperparams(adam_optax.adam)(learning_rate=1e-3)
  state = adam_optax.quantized(inner, 4, min_size=4096).init(_params())
  inner_state = state.inner_state
  assert inner_state.count.dtype == jnp.int32
  assert inner_state.hyperparams["learning_rate"].dtype == jnp.float32
  moments = inner_state.inner_state[0]
  assert moments.count.dtype == jnp.int32 and moments.mu["b"].shape == (96,)
  assert isinstance(moments.mu["w"], QuantizedArray) and moments.mu["w"].bits == 4


def test_signed_override_by_path():
  def signed(path):
    return True if path.endswith(".nu['w']") else None

  state = adam_optax.quantized(adam_optax.adam(1e-3), signed=signed).init(_params())
  found = _quantized_leaves(state)
  assert found[".inner_state[0].nu['w']"].signed is True
  assert found[".inner_state[0].nu['v']"].signed is False


def test_shape_dependent_state_falls_back_to_the_signed_map():
  """An inner state whose structure depends on the params' sizes defeats the probe.

  Its ``sq`` is a sum of squared gradients (>= 0), yet with no probe to say so it
  gets the signed map, which represents every value.
  """

  def init(params):
    extra = {"big": jnp.zeros([])} if jax.tree.leaves(params)[0].size > 1 else {}
    return {"sq": jax.tree.map(jnp.zeros_like, params), **extra}

  def update(updates, state, params=None):
    del params
    sq = jax.tree.map(lambda s, g: s + g * g, state["sq"], updates)
    return updates, {**state, "sq": sq}

  optimizer = adam_optax.quantized(optax.GradientTransformation(init, update), 8)
  found = _quantized_leaves(optimizer.init({"w": jnp.ones(5000)}))
  assert list(found) == [".inner_state['sq']['w']"] and found[".inner_state['sq']['w']"].signed


def _regression(seed: int = 0, n: int = 4096):
  key_x, key_w = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(key_x, (256, 64))
  w_true = jax.random.normal(key_w, (64, n // 64))
  y = x @ w_true

  def loss(params):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)

  params = {"w": jnp.zeros((64, n // 64)), "b": jnp.zeros(n // 64)}
  return loss, params


def _train(optimizer, loss, params, steps: int):
  state = optimizer.init(params)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  losses = []
  for _ in range(steps):
    params, state, value = step(params, state)
    losses.append(float(value))
  return params, state, np.array(losses)


@pytest.mark.parametrize(("bits", "param_tol", "loss_tol"), [(8, 0.01, 0.01), (4, 0.15, 0.2)])
def test_trajectory_tracks_fp32_adam(bits, param_tol, loss_tol):
  """Stated tolerances over 200 steps of a 4096-parameter least-squares problem.

  Weights within ``param_tol`` (normwise) of fp32 Adam's at the end, and the loss
  within ``loss_tol`` times the initial loss of fp32 Adam's at every step. Measured:
  8 bits 0.5 % and 0.3 %; 4 bits 8 % and 14 %: 4-bit moments stop this problem
  from converging as far (its final loss is 17x fp32's, still 1/250 of the start).
  """
  loss, params = _regression()
  exact_params, _, exact = _train(adam_optax.adam(3e-2), loss, params, 200)
  optimizer = adam_optax.quantized(adam_optax.adam(3e-2), bits)
  got_params, state, got = _train(optimizer, loss, params, 200)
  assert len(_quantized_leaves(state)) == 2
  w, w_exact = np.asarray(got_params["w"]), np.asarray(exact_params["w"])
  assert np.linalg.norm(w - w_exact) <= param_tol * np.linalg.norm(w_exact)
  assert np.all(np.abs(got - exact) <= loss_tol * exact[0])
  assert got[-1] < 1e-2 * got[0]  # and it does optimise


@pytest.mark.parametrize("inner", [adam_optax.adam, optax.adam])
@pytest.mark.parametrize("bits", [8, 4])
def test_equals_inner_when_the_state_is_exactly_representable(inner, bits):
  """b1 = b2 = 0: m = g, v = g^2. With |g| constant in each block both are exact in any map."""
  rng = np.random.default_rng(0)
  magnitudes = 2.0 ** rng.integers(-8, 8, (12, 1, 1))
  block = 256 if bits == 8 else 128
  grads = [
    (magnitudes[t] * rng.choice([-1.0, 1.0], (1, 16 * block // 64, 64))).reshape(16, block)
    for t in range(12)
  ]
  grads = [np.asarray(g, np.float32) for g in grads]  # per step one magnitude, random signs
  params = np.zeros((16, block), np.float32)
  expected = run_optax(inner(1e-2, b1=0.0, b2=0.0), grads, params)
  got = run_optax(
    adam_optax.quantized(inner(1e-2, b1=0.0, b2=0.0), bits, min_size=0), grads, params
  )
  np.testing.assert_array_equal(got, expected)


def test_strict_promotion_and_no_retrace(strict_promotion):
  optimizer = adam_optax.quantized(adam_optax.adamw(1e-3, weight_decay=0.1), 8)
  params = _params()
  state = optimizer.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):
    params, state = step(params, state, grads)
  before = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), optimizer.init(params)) == before


def test_donated_step_reuses_the_state_buffers():
  optimizer = adam_optax.quantized(adam_optax.adam(1e-3), 8)
  params = _params()
  state = optimizer.init(params)

  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  donated = jax.jit(step, donate_argnums=(0, 1))
  grads = jax.tree.map(jnp.ones_like, params)
  codes = _quantized_leaves(state)[".inner_state[0].mu['w']"].codes
  params, state = donated(params, state, grads)
  assert codes.is_deleted()
  params, state = donated(params, state, grads)


def test_skip_nonfinite_keeps_the_quantized_state():
  optimizer = adam_optax.skip_nonfinite(adam_optax.quantized(adam_optax.adam(1e-2), 4))
  params = _params()
  state = optimizer.init(params)
  step = jax.jit(optimizer.update)
  good = jax.tree.map(jnp.ones_like, params)
  _, state = step(good, state, params)
  bad = dict(good, w=good["w"].at[3, 3].set(jnp.nan))
  updates, after = step(bad, state, params)
  assert int(after.skipped) == 1
  assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
  chex.assert_trees_all_equal(after.inner_state, state.inner_state)


def test_inject_hyperparams_inside_and_multisteps_outside():
  params = _params()
  inner = optax.inject_hyperparams(adam_optax.adam)(learning_rate=1e-2)
  optimizer = optax.MultiSteps(adam_optax.quantized(inner, 8), every_k_schedule=2)
  state = optimizer.init(params)
  step = jax.jit(optimizer.update)
  grads = jax.tree.map(jnp.ones_like, params)
  u1, state = step(grads, state, params)
  u2, state = step(grads, state, params)
  assert not np.any(np.asarray(u1["w"])) and np.allclose(np.asarray(u2["w"]), -1e-2, rtol=1e-3)
  state.inner_opt_state.inner_state.hyperparams["learning_rate"] = jnp.asarray(1e-3)
  _, state = step(grads, state, params)
  u4, state = step(grads, state, params)
  assert np.allclose(np.asarray(u4["w"]), -1e-3, rtol=1e-2)


def test_bucketed_params():
  tree = {"w": jnp.ones((64, 96)), "b": jnp.zeros(96)}
  buckets, layout = adam_optax.bucket(tree)
  optimizer = adam_optax.quantized(adam_optax.adam(1e-2), 8)
  state = optimizer.init(buckets)
  assert list(_quantized_leaves(state)) == [
    ".inner_state[0].mu['float32']",
    ".inner_state[0].nu['float32']",
  ]
  updates, state = jax.jit(optimizer.update)(jax.tree.map(jnp.ones_like, buckets), state)
  np.testing.assert_allclose(layout.unbucket(updates)["b"], -1e-2, rtol=1e-3)


def test_zero1_splits_the_quantized_blocks_and_matches_one_device():
  mesh = jax.make_mesh((8,), ("data",))
  loss, params = _regression(n=64 * 512)
  optimizer = adam_optax.quantized(adam_optax.adam(1e-2), 8)
  single, _, _ = _train(optimizer, loss, params, 5)
  shardings = adam_optax.state_shardings(optimizer, params, mesh, zero1_axis="data")
  quantized = _quantized_leaves(shardings)
  mu = quantized[".inner_state[0].mu['w']"]
  assert mu.codes.spec == P("data") and mu.scales.spec == P(
    "data"
  )  # 128 blocks of 256, split 8 ways
  assert shardings.inner_state[0].count.spec == P()
  replicated = NamedSharding(mesh, P())
  state = adam_optax.init_sharded(optimizer, jax.device_put(params, replicated), shardings)
  assert _quantized_leaves(state)[".inner_state[0].mu['w']"].codes.sharding == mu.codes
  memory = adam_optax.state_memory(state)
  assert memory.max_device_bytes < memory.total_bytes / 7

  step = adam_optax.sharded_train_step(lambda p, _: loss(p), optimizer, mesh, shardings, replicated)
  sharded_params = jax.device_put(params, replicated)
  for _ in range(5):
    sharded_params, state, _ = step(sharded_params, state, jnp.zeros(8))
  # The partitioned gradient reduction rounds differently; an entry at a code boundary
  # may then land one level over (a gap near the top of m's map is 1.6 %, of sqrt(v)'s
  # 0.8 %): its step moves by a few percent of lr = 1e-2.
  w, w_single = np.asarray(sharded_params["w"]), np.asarray(single["w"])
  assert np.mean(np.isclose(w, w_single, rtol=1e-5, atol=1e-6)) > 0.999
  np.testing.assert_allclose(w, w_single, atol=5e-4)
  assert jax.tree.map(lambda x: x.sharding, state) == shardings


def test_orbax_checkpoint_round_trip(tmp_path):
  import orbax.checkpoint as ocp

  optimizer = adam_optax.quantized(adam_optax.adam(1e-2), 4)
  loss, params = _regression()
  params, state, _ = _train(optimizer, loss, params, 3)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    abstract = adam_optax.restore_target(optimizer, params)
    restored = checkpointer.restore(tmp_path / "state", abstract)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  chex.assert_trees_all_equal(restored, state)
  step = jax.jit(optimizer.update)
  grads = jax.grad(loss)(params)
  chex.assert_trees_all_equal(step(grads, restored, params), step(grads, state, params))


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"bits": 5}, r"quantized\(bits=5\): bits must be 8 or 4"),
    ({"bits": True}, r"bits must be 8 or 4"),
    ({"block_size": 7}, r"quantized\(block_size=7\): block_size must be an even int >= 2"),
    ({"block_size": 0}, r"block_size must be an even int"),
    ({"min_size": -1}, r"quantized\(min_size=-1\): min_size must be an int >= 0"),
    ({"signed": "nu"}, r"quantized\(signed='nu'\): signed must be None or a function"),
  ],
)
def test_bad_arguments_raise_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    adam_optax.quantized(adam_optax.adam(1e-3), **kwargs)


def test_a_factory_instead_of_an_optimizer_is_refused():
  with pytest.raises(TypeError, match=r"quantized\(optimizer=...\): expected an optax"):
    adam_optax.quantized(adam_optax.adam)


def test_complex_moments_stay_whole_and_their_real_second_moment_is_quantized():
  params = {"c": jnp.ones(5000, jnp.complex64)}
  optimizer = adam_optax.quantized(adam_optax.adam(1e-2), 8)
  state = optimizer.init(params)
  moments = state.inner_state[0]
  assert moments.mu["c"].dtype == jnp.complex64
  assert isinstance(moments.nu["c"], QuantizedArray) and not moments.nu["c"].signed
  grads = {"c": jnp.full(5000, 1 + 1j, jnp.complex64)}
  updates, _ = jax.jit(optimizer.update)(grads, state, params)
  expected, _ = adam_optax.adam(1e-2).update(grads, adam_optax.adam(1e-2).init(params), params)
  np.testing.assert_allclose(updates["c"], expected["c"], rtol=1e-6)


def test_bits_must_be_an_int():
  with pytest.raises(ValueError, match=r"quantized\(bits=8.0\): bits must be 8 or 4"):
    adam_optax.quantized(adam_optax.adam(1e-3), bits=8.0)


def test_a_state_of_another_optimizer_is_named():
  params = _params()
  optimizer = adam_optax.quantized(adam_optax.adam(1e-3))
  with pytest.raises(TypeError, match=r"quantized.update: expected the QuantizedState"):
    optimizer.update(params, adam_optax.adam(1e-3).init(params), params)


@pytest.mark.parametrize(
  ("made_by", "message"),
  [
    ({"bits": 8}, r"at \[0\]\.mu\['v'\] was quantized with bits=8, block_size=256"),
    ({"bits": 4, "block_size": 64}, r"bits=4, block_size=64 .* this optimizer has bits=4, block"),
    ({"bits": 4, "min_size": 10}, r"at \[0\]\.mu\['b'\] was quantized .*min_size=4096"),
    (None, r"at \[0\]\.mu\['v'\] is a plain bfloat16\[5000\] array, .* unwrapped optimizer"),
  ],
)
def test_a_state_of_another_configuration_is_refused_not_continued(made_by, message):
  params = _params()
  inner = adam_optax.adam(1e-3)
  other = inner if made_by is None else adam_optax.quantized(inner, **made_by)
  state = adam_optax.QuantizedState(other.init(params)) if made_by is None else other.init(params)
  optimizer = adam_optax.quantized(inner, bits=4)
  with pytest.raises(ValueError, match=message):
    optimizer.update(params, state, params)
  with pytest.raises(ValueError, match=message):
    jax.jit(optimizer.update)(params, state, params)


@pytest.mark.parametrize("shape", [(64, 96), (64, 100), (8, 3)])  # blocks line up, do not, tiny
def test_params_split_over_an_explicit_mesh(shape):
  """Sharded params: init places the state where state_shardings does; it keeps its type."""
  mesh = jax.make_mesh((8,), ("data",))
  assert set(mesh.axis_types) == {jax.sharding.AxisType.Explicit}  # jax.make_mesh's default
  split = NamedSharding(mesh, P("data"))
  values = np.linspace(-1, 1, np.prod(shape), dtype=np.float32).reshape(shape)
  params = {"w": jax.device_put(values, split)}
  grads = {"w": jax.device_put(np.cos(7 * values), split)}
  optimizer = adam_optax.quantized(adam_optax.adam(1e-2), 8, min_size=16)
  state = optimizer.init(params)
  expected = adam_optax.state_shardings(optimizer, params)
  placed = jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim), state, expected)
  assert all(jax.tree.leaves(placed))
  step = jax.jit(optimizer.update)
  updates, new_state = step(grads, state, params)
  assert [jax.typeof(x) for x in jax.tree.leaves(new_state)] == [
    jax.typeof(x) for x in jax.tree.leaves(state)
  ]
  step(grads, new_state, params)
  assert step._cache_size() == 1  # compiled once
  local = {"w": jnp.asarray(values)}
  reference, _ = optimizer.update(
    {"w": jnp.asarray(np.cos(7 * values))}, optimizer.init(local), local
  )
  np.testing.assert_array_equal(updates["w"], reference["w"])


def test_flax_nnx_optimizer_is_refused_by_name_and_the_split_step_works():
  from flax import nnx

  model = nnx.Linear(64, 128, rngs=nnx.Rngs(0))
  optimizer = adam_optax.quantized(adam_optax.adam(1e-2), min_size=16)
  x = jnp.ones((4, 64))
  loss = lambda m: jnp.mean((m(x) - 1.0) ** 2)  # noqa: E731
  wrapped = nnx.Optimizer(model, optimizer, wrt=nnx.Param)
  nnx_step = nnx.jit(lambda m, o: o.update(m, nnx.grad(loss)(m)))
  nnx_step(model, wrapped)  # the first step runs; nnx then stores the new state as nnx.State
  with pytest.raises(
    TypeError, match=r"a State of 'codes' and 'scales' .*flax\.nnx\.Optimizer does"
  ):
    nnx_step(model, wrapped)

  graphdef, params = nnx.split(model, nnx.Param)  # the documented way: a plain optax step
  state = optimizer.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: loss(nnx.merge(graphdef, p)))(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  before = float(loss(nnx.merge(graphdef, params)))
  for _ in range(20):
    params, state = step(params, state)
  assert float(loss(nnx.merge(graphdef, params))) < 0.5 * before
  assert len(_quantized_leaves(state)) == 4  # mu and nu of the kernel and the bias
