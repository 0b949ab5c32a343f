"""Checkpointing the family with orbax: exact resumes, resharding, clear errors, killed saves.

The run is ``tests/checkpoint_run.py``: fixed per-step gradients, so a resumed
run must equal the uninterrupted one bit for bit (params and every state leaf,
dtypes included), in this process, in a fresh one, and across device counts.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adam_optax
from tests.checkpoint_run import (
  GUARDED,
  OPTIMIZERS,
  SAVED,
  STEPS,
  decay_matrices,
  gradients,
  initial_params,
  manager,
  restore,
  save,
  train,
)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180.0


def _assert_bitwise_equal(actual: Any, expected: Any) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for (path, a), e in zip(
    jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected), strict=True
  ):
    where = jax.tree_util.keystr(path)
    assert np.asarray(a).dtype == np.asarray(e).dtype, where
    assert np.asarray(a).tobytes() == np.asarray(e).tobytes(), where


def _assert_close(actual: Any, expected: Any) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=0), actual, expected)


@functools.cache  # a pure function of its arguments (no donation): one run per process
def _uninterrupted(name: str, last: int = STEPS) -> tuple[Any, Any]:
  optimizer = OPTIMIZERS[name]()
  params = initial_params()
  return train(name, optimizer, params, optimizer.init(params), 0, last)


def _child_env() -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  return env


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_in_the_same_process_is_bit_for_bit(tmp_path: Path, name: str) -> None:
  optimizer = OPTIMIZERS[name]()
  params, state = _uninterrupted(name, SAVED)
  save(tmp_path, SAVED, params, state).close()
  params, state = restore(tmp_path, SAVED, OPTIMIZERS[name]())
  resumed = train(name, optimizer, params, state, SAVED, STEPS)
  _assert_bitwise_equal(resumed, _uninterrupted(name))


def test_the_guarded_run_saw_its_nan() -> None:
  """The guarded run's state is not trivial: one step was skipped, before the save."""
  _, state = _uninterrupted(GUARDED, SAVED)
  assert int(state.skipped) == 1
  assert not np.isfinite(np.asarray(gradients(2, GUARDED)["dense"]["b"])).all()


@pytest.mark.slow
def test_resume_in_a_fresh_process_is_bit_for_bit(tmp_path: Path) -> None:
  for name in OPTIMIZERS:
    save(tmp_path / name, SAVED, *_uninterrupted(name, SAVED)).close()
  command = [sys.executable, "-m", "tests.checkpoint_run", "resume", str(tmp_path)]
  done = subprocess.run(
    command, env=_child_env(), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S
  )
  assert done.returncode == 0, done.stdout + done.stderr
  for name in OPTIMIZERS:
    _assert_bitwise_equal(restore(tmp_path / name, STEPS, OPTIMIZERS[name]()), _uninterrupted(name))


@pytest.mark.slow
def test_a_save_killed_before_its_commit_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
  command = [sys.executable, "-m", "tests.checkpoint_run", "stall", str(tmp_path)]
  child = subprocess.Popen(
    command,
    env=_child_env(),
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,
  )
  start, output = time.monotonic(), []
  try:
    assert child.stdout is not None
    for line in child.stdout:
      output.append(line)
      if line.strip() == "committing" or time.monotonic() - start > TIMEOUT_S:
        break
  finally:
    child.kill()  # SIGKILL: no handler runs, as when a machine dies
    child.wait(timeout=30)
  assert output and output[-1].strip() == "committing", "".join(output)
  # The killed step's data were written, under a temporary name, and never committed.
  leftovers = [path.name for path in tmp_path.iterdir() if "tmp" in path.name]
  assert any(name.startswith(f"{STEPS}.") for name in leftovers), sorted(tmp_path.iterdir())
  checkpoints = manager(tmp_path)
  assert checkpoints.all_steps() == [SAVED]
  restored = restore(tmp_path, SAVED, OPTIMIZERS[GUARDED]())
  _assert_bitwise_equal(restored, _uninterrupted(GUARDED, SAVED))
  # Training goes on from there, and its next save of the killed step lands.
  params, state = train(GUARDED, OPTIMIZERS[GUARDED](), *restored, SAVED, STEPS)
  save(tmp_path, STEPS, params, state).close()
  assert manager(tmp_path).all_steps() == [SAVED, STEPS]
  _assert_bitwise_equal(restore(tmp_path, STEPS, OPTIMIZERS[GUARDED]()), _uninterrupted(GUARDED))


def _loss(params: Any, grads: Any) -> jax.Array:
  """A loss whose gradient is exactly ``grads``: the step stays elementwise."""
  terms = jax.tree.map(lambda p, g: jnp.sum(p * g), params, grads)
  return jax.tree.reduce(jnp.add, terms)


def _sharded_run(name: str, mesh: Any, params: Any, state: Any, first: int, last: int):
  optimizer = OPTIMIZERS[name]()
  shardings = adam_optax.state_shardings(optimizer, params, mesh, zero1_axis="data")
  replicated = NamedSharding(mesh, P())
  step = adam_optax.sharded_train_step(_loss, optimizer, mesh, shardings, replicated, donate=False)
  for index in range(first, last):
    params, state, _ = step(params, state, gradients(index, name))
  return params, state, shardings


@pytest.mark.devices(8)
@pytest.mark.slow
@pytest.mark.parametrize("devices", [4, 1])
def test_a_zero1_state_saved_on_8_devices_restores_onto_fewer(tmp_path: Path, devices: int):
  name = GUARDED
  mesh8 = jax.make_mesh((8,), ("data",))
  optimizer = OPTIMIZERS[name]()
  params = jax.device_put(initial_params(), NamedSharding(mesh8, P()))
  shardings8 = adam_optax.state_shardings(optimizer, params, mesh8, zero1_axis="data")
  state = adam_optax.init_sharded(optimizer, params, shardings8)
  params, state, _ = _sharded_run(name, mesh8, params, state, 0, SAVED)
  assert state.inner_state[0].mu["dense"]["w"].sharding.spec == P("data")
  save(tmp_path, SAVED, params, state).close()
  saved_params, saved_state = params, state
  final8 = _sharded_run(name, mesh8, params, state, SAVED, STEPS)[:2]

  mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
  abstract_params = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=NamedSharding(mesh, P())), params
  )
  shardings = adam_optax.state_shardings(optimizer, abstract_params, mesh, zero1_axis="data")
  checkpoints = manager(tmp_path)
  target = {
    "params": abstract_params,
    "opt_state": adam_optax.restore_target(
      optimizer,
      abstract_params,
      shardings,
      saved=checkpoints.item_metadata(SAVED)["opt_state"],
    ),
  }
  restored = checkpoints.restore(SAVED, args=ocp.args.StandardRestore(target))
  _assert_bitwise_equal((restored["params"], restored["opt_state"]), (saved_params, saved_state))
  for leaf, sharding in zip(
    jax.tree.leaves(restored["opt_state"]), jax.tree.leaves(shardings), strict=True
  ):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    assert set(leaf.sharding.device_set) == set(jax.devices()[:devices])
  # Training goes on from the restored state. Another device count compiles
  # another program, which may round the last bit differently (on 1 device
  # one entry of w differed by 1 ulp; on 4, none): close, not bit for bit.
  resumed = _sharded_run(name, mesh, restored["params"], restored["opt_state"], SAVED, STEPS)
  _assert_close(resumed[:2], final8)
  _assert_close(final8, _uninterrupted(name))


def _guarded_checkpoint(tmp_path: Path) -> Any:
  """The metadata of a saved guarded state (its "opt_state" item)."""
  save(tmp_path, SAVED, *_uninterrupted(GUARDED, SAVED)).close()
  return manager(tmp_path).item_metadata(SAVED)["opt_state"]


def _bf16(params: Any) -> Any:
  return jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)


def _resized(params: Any) -> Any:
  return {**params, "dense": {**params["dense"], "w": jnp.zeros((16, 4))}}


def _constant_rate() -> optax.GradientTransformation:
  return adam_optax.skip_nonfinite(adam_optax.adamw(1e-2, weight_decay=1e-2, mask=decay_matrices))


@pytest.mark.parametrize(
  ("optimizer", "transform_params", "message"),
  [
    pytest.param(
      lambda: adam_optax.adam(1e-2),
      None,
      r"only in the target: 0\.count, 0\.mu\.dense\.b.*only in the checkpoint: inner_state",
      id="plain adam",
    ),
    pytest.param(
      lambda: adam_optax.skip_nonfinite(adam_optax.amsgrad(1e-2)),
      None,
      r"only in the target: inner_state\.0\.nu_max\.dense\.b",
      id="amsgrad",
    ),
    pytest.param(
      _constant_rate,
      None,
      r"only in the checkpoint: inner_state\.3\.count\)",
      id="constant rate for a schedule",
    ),
    pytest.param(
      OPTIMIZERS[GUARDED],
      _resized,
      r"inner_state\.0\.mu\.dense\.w: float32\[16,8\] saved, float32\[16,4\] in the target",
      id="other params",
    ),
    pytest.param(
      OPTIMIZERS[GUARDED],
      _bf16,
      r"inner_state\.0\.mu\.dense\.b: float32\[8\] saved, bfloat16\[8\] in the target",
      id="bfloat16 params",
    ),
  ],
)
def test_restoring_into_another_configuration_names_the_difference(
  tmp_path: Path, optimizer: Any, transform_params: Any, message: str
) -> None:
  saved = _guarded_checkpoint(tmp_path)
  params = initial_params()
  if transform_params is not None:
    params = transform_params(params)
  with pytest.raises(ValueError, match=message):
    adam_optax.restore_target(optimizer(), params, saved=saved)


def test_orbax_alone_casts_a_checkpoint_into_another_dtype_silently(tmp_path: Path) -> None:
  """Why ``restore_target(saved=...)`` checks dtypes: orbax 0.12.8 casts without a word."""
  _guarded_checkpoint(tmp_path)
  target = {
    "params": jax.eval_shape(lambda: _bf16(initial_params())),
    "opt_state": adam_optax.restore_target(OPTIMIZERS[GUARDED](), _bf16(initial_params())),
  }
  restored = manager(tmp_path).restore(SAVED, args=ocp.args.StandardRestore(target))
  assert restored["opt_state"].inner_state[0].mu["dense"]["w"].dtype == jnp.bfloat16


def test_hyperparameters_are_not_in_the_state(tmp_path: Path) -> None:
  """Other constant hyperparameters restore without error, and their new values apply."""
  saved_params, saved_state = _uninterrupted("adam", SAVED)
  save(tmp_path, SAVED, saved_params, saved_state).close()
  changed = adam_optax.adam(1e-4, b1=0.5, eps=1e-3)
  params, state = restore(tmp_path, SAVED, changed)
  _assert_bitwise_equal((params, state), (saved_params, saved_state))
  step = {
    "changed": train("adam", changed, params, state, SAVED, SAVED + 1)[0]["dense"]["w"],
    "original": train("adam", OPTIMIZERS["adam"](), params, state, SAVED, SAVED + 1)[0]["dense"][
      "w"
    ],
  }
  steps = {key: np.asarray(value - params["dense"]["w"]) for key, value in step.items()}
  np.testing.assert_array_less(np.abs(steps["changed"]), 0.1 * np.abs(steps["original"]) + 1e-12)


def test_amsgrad_conventions_share_one_layout() -> None:
  """A state-structure check cannot tell torch's nu_max (raw v) from optax's (v / c2)."""
  params = initial_params()
  saved = adam_optax.restore_target(adam_optax.amsgrad(1e-2), params)
  other = adam_optax.amsgrad(1e-2, convention="optax")
  assert adam_optax.restore_target(other, params, saved=saved) is not None


def test_an_optax_adam_checkpoint_is_another_layout_and_converts(tmp_path: Path) -> None:
  """optax.adam's (ScaleByAdamState, EmptyState) lacks the bias correction's count:
  restore it as optax's state, then ``state_from_optax`` continues the run."""
  params, old = initial_params(), optax.adam(1e-2)
  old_state = old.init(params)
  for index in range(SAVED):
    updates, old_state = old.update(gradients(index, "adam"), old_state, params)
    params = optax.apply_updates(params, updates)
  save(tmp_path, SAVED, params, old_state).close()
  saved = manager(tmp_path).item_metadata(SAVED)["opt_state"]
  with pytest.raises(ValueError, match=r"only in the target: 1\.count\)"):
    adam_optax.restore_target(adam_optax.adam(1e-2), params, saved=saved)
  target = {"params": jax.eval_shape(lambda: params), "opt_state": jax.eval_shape(old.init, params)}
  restored = manager(tmp_path).restore(SAVED, args=ocp.args.StandardRestore(target))
  state = adam_optax.state_from_optax(adam_optax.adam(1e-2), params, restored["opt_state"])
  assert int(state[1].count) == SAVED
  _assert_bitwise_equal(state[0].mu, old_state[0].mu)
  _assert_bitwise_equal(state[0].nu, old_state[0].nu)


@pytest.mark.devices(8)
def test_an_async_save_survives_the_next_donated_steps(tmp_path: Path) -> None:
  """orbax's asynchronous save copies the arrays before the next step donates them."""
  mesh = jax.make_mesh((8,), ("data",))
  optimizer = adam_optax.adam(1e-2)
  params = jax.device_put(initial_params(), NamedSharding(mesh, P()))
  shardings = adam_optax.state_shardings(optimizer, params, mesh, zero1_axis="data")
  state = adam_optax.init_sharded(optimizer, params, shardings)
  step = adam_optax.sharded_train_step(_loss, optimizer, mesh, shardings, NamedSharding(mesh, P()))
  params, state, _ = step(params, state, gradients(0, "adam"))
  expected = jax.tree.map(np.array, (params, state))  # host copies, before any donation
  checkpoints = manager(tmp_path, enable_async_checkpointing=True)
  checkpoints.save(1, args=ocp.args.StandardSave({"params": params, "opt_state": state}))
  for index in range(1, 4):  # each step donates the arrays being saved
    params, state, _ = step(params, state, gradients(index, "adam"))
  checkpoints.wait_until_finished()
  _assert_bitwise_equal(restore(tmp_path, 1, optimizer), expected)
