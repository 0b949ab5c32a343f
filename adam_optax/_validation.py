"""Construction-time checks of hyperparameters.

Every factory validates its concrete arguments before it builds anything, so a
typo fails at the line that made the optimizer, with a message that names the
factory, the argument and the allowed range. Values that are JAX tracers (for
example hyperparameters injected by :func:`optax.inject_hyperparams` inside a
jitted function) cannot be inspected and pass through unchanged.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete_scalar(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or ``None`` if it is traced.

  Raises:
    TypeError: if ``value`` is neither a real number nor a 0-d real array.
  """
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (bool, np.bool_)):
    raise TypeError("a bool is not a number here")
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    array = np.asarray(value)
    if array.ndim == 0 and jnp.issubdtype(array.dtype, jnp.number):
      if np.iscomplexobj(array):
        raise TypeError("a complex number is not a valid hyperparameter")
      return float(array)
  raise TypeError(f"expected a real number, got {value!r} ({type(value).__name__})")


def _describe(value: Any) -> str:
  return f"{value!r} ({type(value).__name__})"


def _checked(owner: str, name: str, value: Any, expected: str) -> float | None:
  try:
    number = concrete_scalar(value)
  except TypeError:
    raise ValueError(
      f"{owner}({name}=...): {name} must be {expected}; got {_describe(value)}"
    ) from None
  if number is not None and math.isnan(number):
    raise ValueError(f"{owner}({name}=nan): {name} must be {expected}")
  return number


def check_decay(owner: str, name: str, value: Any) -> None:
  """Checks that an EMA decay rate lies in ``[0, 1)``."""
  expected = "a number in [0, 1)"
  number = _checked(owner, name, value, expected)
  if number is not None and not 0.0 <= number < 1.0:
    raise ValueError(f"{owner}({name}={value!r}): {name} must be {expected}")


def check_nonnegative(owner: str, name: str, value: Any) -> None:
  """Checks that a stabilising constant is finite and ``>= 0``."""
  expected = "a finite number >= 0"
  number = _checked(owner, name, value, expected)
  if number is not None and not 0.0 <= number < math.inf:
    raise ValueError(f"{owner}({name}={value!r}): {name} must be {expected}")


def check_rate(owner: str, name: str, value: Any) -> None:
  """Checks a learning rate (or a decay strength): a number ``>= 0`` or a schedule.

  A schedule is any callable mapping the step count to a number; it is
  evaluated inside the update and cannot be checked here.
  """
  if callable(value):
    return
  expected = "a finite number >= 0 or a schedule (a callable step -> number)"
  number = _checked(owner, name, value, expected)
  if number is not None and not 0.0 <= number < math.inf:
    raise ValueError(f"{owner}({name}={value!r}): {name} must be {expected}")


def check_float_dtype(owner: str, name: str, value: Any) -> np.dtype | None:
  """Checks an optional state dtype and returns it canonicalised."""
  if value is None:
    return None
  try:
    dtype = np.dtype(value)
  except TypeError:
    raise ValueError(
      f"{owner}({name}={value!r}): {name} must be None or a floating or "
      "complex dtype such as jnp.float32"
    ) from None
  if not jnp.issubdtype(dtype, jnp.inexact):  # np.issubdtype misses bfloat16
    raise ValueError(
      f"{owner}({name}={value!r}): {name} must be None or a floating or "
      f"complex dtype such as jnp.float32; got {dtype}"
    )
  return jax.dtypes.canonicalize_dtype(dtype)


def check_zero(owner: str, name: str, value: Any, why: str) -> None:
  """Checks that a hyperparameter that has no meaning in this configuration is 0."""
  number = _checked(owner, name, value, "0")
  if number is not None and number != 0.0:
    raise ValueError(f"{owner}({name}={value!r}): {name} must be 0 {why}")


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
  """Checks that a configuration string is one of ``choices``."""
  if value not in choices:
    expected = ", ".join(repr(choice) for choice in choices)
    raise ValueError(f"{owner}({name}={value!r}): {name} must be one of {expected}")


def check_flag(owner: str, name: str, value: Any) -> bool:
  """Checks that a switch is a real bool (not 1, ``"yes"`` or an array) and returns it."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{owner}({name}={value!r}): {name} must be True or False")
  return bool(value)
