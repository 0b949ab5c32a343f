"""`examples/data_parallel.py` as 2 cooperating processes x 4 CPU devices, vs 1 process x 8.

The two processes join through :func:`jax.distributed.initialize` (coordinator
on localhost, a free port, gloo CPU collectives) and train with a ZeRO-1 Adam
state over all 8 devices; the result must equal the same training run in this
pytest process on its 8 simulated devices. Both children are killed (SIGKILL:
JAX's preemption notifier catches SIGTERM) if they are not done in time.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "data_parallel.py"
STEPS = 10
TIMEOUT_S = 120.0


def _example():
  spec = importlib.util.spec_from_file_location("data_parallel_example", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(tmp_path: Path, *flags: str) -> tuple[Path, float]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  out = tmp_path / "two_processes.npz"
  port = _free_port()
  procs, logs = [], []
  start = time.monotonic()
  try:
    for rank in range(2):
      log = open(tmp_path / f"process{rank}.log", "w+")  # noqa: SIM115 (closed in finally)
      logs.append(log)
      command = [sys.executable, str(EXAMPLE), "--steps", str(STEPS), *flags]
      command += ["--num-processes", "2", "--process-id", str(rank)]
      command += ["--coordinator", f"localhost:{port}", "--out", str(out)]
      procs.append(
        subprocess.Popen(
          command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
      )
    for proc in procs:
      proc.wait(timeout=max(start + TIMEOUT_S - time.monotonic(), 1.0))
  except subprocess.TimeoutExpired:
    pytest.fail(f"the two processes did not finish within {TIMEOUT_S} s")
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
    for proc in procs:
      proc.wait(timeout=30)
    texts = []
    for log in logs:
      log.seek(0)
      texts.append(log.read())
      log.close()
  seconds = time.monotonic() - start
  for rank, (proc, text) in enumerate(zip(procs, texts, strict=True)):
    assert proc.returncode == 0, f"process {rank} exited with {proc.returncode}:\n{text[-3000:]}"
  assert "2 process(es), 8 devices" in texts[0]
  return out, seconds


@pytest.mark.slow
@pytest.mark.devices(8)
def test_two_processes_equal_one_process(tmp_path, x64):
  """In float64, so that the check is tight.

  The cross-process (gloo) reduction of the gradients may add the 8 partial
  sums in another order than the in-process one, and Adam turns a rounding
  difference in a near-zero gradient into a visible one (its step is about
  ``lr * sign(g)``): in float32 the two runs differ by up to ~3e-6 in the
  params after 10 steps, which says nothing. In float64 the same mechanism
  leaves ~1e-15.
  """
  assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
  out, seconds = _run_two_processes(tmp_path, "--float64")
  two = np.load(out)
  one = _example().train(STEPS, dtype=np.float64)
  assert two["losses"].dtype == np.float64
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-12, atol=0)
  for name, value in one["params"].items():
    np.testing.assert_allclose(two[f"params_{name}"], value, rtol=0, atol=1e-12)
  for name, value in one["mu"].items():
    np.testing.assert_allclose(two[f"mu_{name}"], value, rtol=0, atol=1e-12)
  print(f"2 processes x 4 devices, {STEPS} steps: {seconds:.1f} s wall")


@pytest.mark.slow
@pytest.mark.devices(8)
def test_example_single_process_report(capsys):
  _example().main(["--steps", "3"])
  text = capsys.readouterr().out
  assert "1 process(es), 8 devices" in text
  assert "state bytes per device, replicated:    595,984" in text
  assert "ZeRO-1 (over 'data'):    74,512  (8.00x less)" in text
