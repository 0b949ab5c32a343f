"""Cautious optimizers' claim: masking the steps that oppose the gradient reaches a target
loss in fewer steps than the base optimizer (Liang et al. 2024, arXiv 2411.16085), measured
at a small scale on two tasks.

1. The character-level language model of ``benchmarks/lm.py`` (its model and data,
   imported), a small configuration: d_model 64, 2 layers, context 64, batch 16, 300 steps,
   validation loss on 4 held-out batches every 10 steps.
2. A tanh MLP (16 -> 64 -> 64 -> 1) regressing a random teacher plus label noise on
   minibatches of 32 (the network of ``benchmarks/claims_stable_adamw.py``), 400 steps,
   3 seeds; the loss on a fixed held-out set every 10 steps.

Base optimizers: AdamW (lr 3e-3 for the LM, 1e-3 for the MLP; weight decay 0.01) and Lion
(lr 3e-4 / 1e-4, weight decay 0.1); the cautious versions wrap the same optimizer's
direction, with the decay unmasked as in the paper and timm
(``chain(cautious(direction, descent=False), add_decayed_weights, scale_by_lr)``).
Same initial weights and batches. The target is the base optimizer's final evaluation loss;
reported: the steps each needs to reach it (first evaluation at or below it) and the final
losses.

    PYTHONPATH=. python benchmarks/claims_cautious.py    # ~3 min on 2 shared CPU cores
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import adam_optax

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import claims_stable_adamw as mlp  # noqa: E402
import lm  # noqa: E402

LM_SETUP = lm.Setup(d_model=64, layers=2, heads=2, context=64, batch=16, steps=300)
EVAL_EVERY = 10


def optimizers(task: str) -> dict[str, optax.GradientTransformation]:
  """AdamW and Lion, plain and cautious (decay unmasked, as in the paper)."""
  adam_lr, lion_lr = (3e-3, 3e-4) if task == "lm" else (1e-3, 1e-4)

  def chained(direction, decay, lr, caution):
    if caution:
      direction = adam_optax.cautious(direction, descent=False)
    return optax.chain(direction, adam_optax.add_decayed_weights(decay), adam_optax.scale_by_lr(lr))

  def adam_direction():
    return optax.chain(
      adam_optax.scale_by_moments(0.9, 0.999, 1e-8), adam_optax.bias_correction(0.9, 0.999)
    )

  return {
    "AdamW": chained(adam_direction(), 0.01, adam_lr, False),
    "C-AdamW": chained(adam_direction(), 0.01, adam_lr, True),
    "Lion": chained(optax.scale_by_lion(0.9, 0.99), 0.1, lion_lr, False),
    "C-Lion": chained(optax.scale_by_lion(0.9, 0.99), 0.1, lion_lr, True),
  }


def lm_curves() -> dict[str, list[float]]:
  """Validation loss every EVAL_EVERY steps, per optimizer, on the same batches."""
  train, val, _ = lm.load_text()
  rng = np.random.default_rng(LM_SETUP.seed)
  val_batches = [lm.sample(val, LM_SETUP, rng) for _ in range(4)]
  batches = [lm.sample(train, LM_SETUP, rng) for _ in range(LM_SETUP.steps)]
  graphdef, params = nnx.split(lm.Transformer(LM_SETUP, nnx.Rngs(LM_SETUP.seed)), nnx.Param)
  curves = {}
  for name, optimizer in optimizers("lm").items():
    run = lm.JaxRun(name, graphdef, params, optimizer, jnp.float32)
    curve = [run.evaluate(val_batches)]
    for step, batch in enumerate(batches, start=1):
      run.step(batch)
      if step % EVAL_EVERY == 0:
        curve.append(run.evaluate(val_batches))
    curves[name] = curve
  return curves


def mlp_curves(seed: int, steps: int = 400, batch: int = 32) -> dict[str, list[float]]:
  """Held-out loss every EVAL_EVERY steps, per optimizer, on the same minibatches."""
  teacher, student = mlp._init(jax.random.key(100 + seed)), mlp._init(jax.random.key(200 + seed))
  keys = jax.random.split(jax.random.key(300 + seed), 3)
  xs = jax.random.normal(keys[0], (steps, batch, 16))
  ys = jax.vmap(lambda x: mlp._forward(teacher, x))(xs) + 0.1 * jax.random.normal(
    keys[1], (steps, batch, 1)
  )
  x_test = jax.random.normal(keys[2], (1024, 16))
  y_test = mlp._forward(teacher, x_test)
  curves = {}
  for name, optimizer in optimizers("mlp").items():

    def step(carry, inputs, optimizer=optimizer):
      params, state = carry
      grads = jax.grad(mlp._loss)(params, *inputs)
      updates, state = optimizer.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      return (params, state), mlp._loss(params, x_test, y_test)

    run = jax.jit(lambda c, step=step: jax.lax.scan(step, c, (xs, ys)))
    _, losses = run((student, optimizer.init(student)))
    start = float(mlp._loss(student, x_test, y_test))
    curves[name] = [start, *np.asarray(losses)[EVAL_EVERY - 1 :: EVAL_EVERY].tolist()]
  return curves


def steps_to(curve: list[float], target: float) -> int | None:
  return next((i * EVAL_EVERY for i, loss in enumerate(curve) if loss <= target), None)


def compare(curves: dict[str, list[float]]) -> dict[str, dict[str, float | int | None]]:
  """Per pair (base, cautious): steps to the base's final loss, and final losses."""
  result = {}
  for base in ("AdamW", "Lion"):
    target = curves[base][-1]
    for name in (base, f"C-{base}"):
      result[name] = {
        "target": target,
        "steps_to_target": steps_to(curves[name], target),
        "final": curves[name][-1],
      }
  return result


def main() -> None:
  print(f"load before: {os.getloadavg()}, jax {jax.__version__}")
  results = {"lm": compare(lm_curves())}
  for seed in range(3):
    results[f"mlp seed {seed}"] = compare(mlp_curves(seed))
  print(f"load after: {os.getloadavg()}")
  print("| task | optimizer | target (base's final) | steps to target | final loss |")
  print("|---|---|---|---|---|")
  for task, rows in results.items():
    for name, r in rows.items():
      reached = "not reached" if r["steps_to_target"] is None else r["steps_to_target"]
      print(f"| {task} | {name} | {r['target']:.4f} | {reached} | {r['final']:.4f} |")
  out = HERE / "out"
  out.mkdir(exist_ok=True)
  (out / "claims_cautious.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
