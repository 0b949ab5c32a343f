r"""Reddi, Kale & Kumar (2018): Adam fails where AMSGrad converges.

The online problem of their Theorem 1: on :math:`x \in [-1, 1]`,

    f_t(x) = C x   if t mod 3 == 1,   else  -x,      with C = 3,

so the average loss is :math:`(C - 2) x / 3` and the optimum is :math:`x = -1`.
With :math:`\beta_1 = 0`, :math:`\beta_2 = 1 / (1 + C^2)` and
:math:`\eta_t = \alpha / \sqrt t`, Adam's large but rare gradient is normalised
away, the frequent small ones win, and Adam drifts to :math:`x = +1`, the worst
point. AMSGrad's running maximum remembers the large gradient and converges to
:math:`-1`. Each step is projected back onto :math:`[-1, 1]`.

Run it as a script: it prints the final :math:`x` of each optimizer and saves a
plot of :math:`x_t` (``--out``, by default ``examples/out/amsgrad_counterexample.png``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_optax

C = 3.0
B2_THEOREM1 = 1.0 / (1.0 + C**2)
ALPHA = 0.5
STEPS = 3000


def theorem1_gradient(t: jax.Array) -> jax.Array:
  r""":math:`f_t'(x)` of Theorem 1: ``C`` when ``t mod 3 == 1``, else ``-1`` (t from 1)."""
  return jnp.where(t % 3 == 1, jnp.float32(C), jnp.float32(-1.0))


def synthetic_gradient(t: jax.Array) -> jax.Array:
  r""":math:`f_t'(x)` of Section 5: ``1010`` when ``t mod 101 == 1``, else ``-10``."""
  return jnp.where(t % 101 == 1, jnp.float32(1010.0), jnp.float32(-10.0))


def inverse_sqrt_schedule(alpha: float) -> optax.Schedule:
  r"""The paper's :math:`\eta_t = \alpha / \sqrt t` as an optax schedule (count = t - 1)."""
  return lambda count: jnp.float32(alpha) * jax.lax.rsqrt((count + 1).astype(jnp.float32))


def run_projected(
  optimizer: optax.GradientTransformation,
  gradient: Callable[[jax.Array], jax.Array],
  steps: int,
) -> np.ndarray:
  r"""Online projected descent from ``x = 0``: :math:`x_t = \Pi_{[-1, 1]}(x_{t-1} + u_t)`."""
  x = jnp.zeros([], jnp.float32)

  def step(carry, t):
    x, state = carry
    updates, state = optimizer.update(gradient(t), state, x)
    x = jnp.clip(x + updates, -1.0, 1.0)
    return (x, state), x

  _, xs = jax.jit(lambda: jax.lax.scan(step, (x, optimizer.init(x)), jnp.arange(1, steps + 1)))()
  return np.asarray(xs)


def theorem1_optimizers(alpha: float = ALPHA) -> dict[str, optax.GradientTransformation]:
  """Adam and AMSGrad (paper convention) with Theorem 1's hyperparameters."""
  lr = inverse_sqrt_schedule(alpha)
  return {
    "Adam": adam_optax.adam(lr, b1=0.0, b2=B2_THEOREM1),
    "AMSGrad": adam_optax.amsgrad(lr, b1=0.0, b2=B2_THEOREM1, convention="paper"),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, default=Path("examples/out/amsgrad_counterexample.png"))
  args = parser.parse_args()
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  trajectories = {
    name: run_projected(optimizer, theorem1_gradient, STEPS)
    for name, optimizer in theorem1_optimizers().items()
  }
  figure, axes = plt.subplots(figsize=(6, 3.5))
  for name, xs in trajectories.items():
    axes.plot(np.arange(1, STEPS + 1), xs, label=name)
    print(f"{name}: final x = {xs[-1]:+.4f}")
  axes.axhline(-1.0, color="gray", linestyle=":", label="optimum x = -1")
  axes.set(xlabel="t", ylabel="$x_t$", title=f"Reddi et al. (2018), Theorem 1, C = {C:g}")
  axes.legend()
  args.out.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(args.out, dpi=120, bbox_inches="tight")
  print(f"plot saved to {args.out}")


if __name__ == "__main__":
  main()
