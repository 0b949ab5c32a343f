"""The pieces of benchmarks/lm.py (the full run is `make bench-lm`, never part of the tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import lm

TINY = lm.Setup(d_model=32, layers=2, heads=2, context=16, batch=3)


def test_data_split_holds_out_whole_files():
  train, val, files = lm.load_text()
  assert len(files) > 50 and len(val) > 0.02 * len(train)
  assert train.dtype == np.uint8
  batch = lm.sample(val, TINY, np.random.default_rng(0))
  assert batch.shape == (3, 17) and batch.dtype == np.int32
  every_tenth = files[9]  # held out: its text is in the validation bytes only
  text = next(p for p in Path(lm.sysconfig.get_paths()["stdlib"]).glob(every_tenth)).read_bytes()
  assert text[:2000] in val.tobytes() and text[:2000] not in train.tobytes()


def test_jax_and_torch_models_compute_the_same_function():
  model = lm.Transformer(TINY, nnx.Rngs(0))
  _, params = nnx.split(model, nnx.Param)
  tokens = np.random.default_rng(1).integers(0, 256, (2, TINY.context)).astype(np.int32)
  jax_logits = np.asarray(model(tokens))
  copy = lm.torch_copy(TINY, params)
  with torch.no_grad():
    torch_logits = copy(torch.from_numpy(tokens).long()).numpy()
  assert jax_logits.shape == (2, TINY.context, lm.VOCAB)
  np.testing.assert_allclose(torch_logits, jax_logits, rtol=1e-4, atol=1e-4)
  causal = np.asarray(model(np.concatenate([tokens[:, :5], tokens[:, 5:] * 0], axis=1)))
  np.testing.assert_allclose(causal[:, :5], jax_logits[:, :5], rtol=1e-5, atol=1e-5)


def test_a_jax_configuration_takes_a_step():
  name = "jax quantized 4-bit"
  model = lm.Transformer(TINY, nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  optimizer, dtype = lm.jax_optimizers(TINY)[name]
  run = lm.JaxRun(name, graphdef, params, optimizer, dtype)
  train, _, _ = lm.load_text()
  batch = lm.sample(train, TINY, np.random.default_rng(0))
  first = run.step(batch)
  assert np.isfinite(first) and run.step(batch) < first
  assert jax.tree.leaves(run.params)[0].dtype == dtype
