"""Checks of hyperparameters, at construction and at trace time.

Every factory validates its concrete arguments before it builds anything, so a
typo fails at the line that made the optimizer, with a message that names the
factory, the argument and the allowed range. Each check returns the value the
factory should keep: Python numbers of any kind (``Fraction``, ``np.float64``,
a huge ``int``) become a ``float``, so nothing later trips over an exotic type.

Values are checked as the arithmetic will use them, not only as Python sees
them: ``b2 = 0.99999999`` lies in ``[0, 1)`` but is 1.0 in float32, where
``1 - b2 = 0`` turns every step into ``0 / 0``. That rounding is checked at
construction when 64-bit types are off (float32 is then the only compute
precision) and otherwise at trace time, by :func:`check_in_dtype`, once the
dtype of the leaves is known.

Values that are JAX tracers (hyperparameters injected by
:func:`optax.inject_hyperparams` inside a jitted function) cannot be inspected
and pass through unchanged.
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

  A 0-d complex array with a zero imaginary part counts as real: that is what
  :func:`optax.inject_hyperparams` makes of a hyperparameter when the first
  param is complex. Integers too large for a float become ``±inf``.

  Raises:
    TypeError: if ``value`` is neither a real number nor a 0-d real array.
  """
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (bool, np.bool_)):
    raise TypeError("a bool is not a number here")
  if isinstance(value, numbers.Real):
    try:
      return float(value)
    except OverflowError:  # an int beyond float's range
      return math.inf if value > 0 else -math.inf  # type: ignore[operator]
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    array = np.asarray(value)
    if array.ndim == 0 and jnp.issubdtype(array.dtype, jnp.number):
      if np.iscomplexobj(array):
        if array.imag != 0:
          raise TypeError("a complex number is not a valid hyperparameter")
        array = array.real
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


def _kept(value: Any) -> Any:
  """What a factory keeps of a checked value: plain numbers as floats, arrays as they are."""
  if isinstance(value, numbers.Real) and not isinstance(value, np.generic):
    return concrete_scalar(value)
  return value


def _construction_dtype() -> np.dtype | None:
  """The one compute precision when 64-bit types are off; ``None`` when x64 allows two."""
  x64 = jax.dtypes.canonicalize_dtype(np.float64) == np.float64
  return None if x64 else np.dtype(np.float32)


def check_in_dtype(owner: str, name: str, value: Any, dtype: Any, *, decay: bool = False) -> None:
  """Checks that a concrete hyperparameter survives rounding to ``dtype``.

  Args:
    owner: the factory's name, for the message.
    name: the argument's name, for the message.
    value: the hyperparameter (a tracer passes unchecked).
    dtype: the real dtype the arithmetic uses.
    decay: whether ``value`` is an EMA decay, which must stay below 1.

  Raises:
    ValueError: the rounded value is infinite, or a decay rounds to 1.
  """
  number = None if isinstance(value, jax.core.Tracer) else concrete_scalar(value)
  if number is None:
    return
  dtype = np.dtype(dtype)
  with np.errstate(over="ignore"):
    rounded = float(np.asarray(number).astype(dtype))
  if decay and rounded >= 1.0:
    raise ValueError(
      f"{owner}({name}={value!r}): {name} rounds to {rounded!r} in {dtype}, the "
      f"precision the update is computed in, and 1 - {name} = 0 would make every "
      f"step 0/0; use a value below {float(np.nextafter(dtype.type(1), dtype.type(0)))!r} "
      "(or float64 params with jax_enable_x64)"
    )
  if not math.isinf(number) and math.isinf(rounded):
    raise ValueError(
      f"{owner}({name}={value!r}): {name} overflows to {rounded!r} in {dtype}, the "
      "precision the update is computed in"
    )


def _narrow_cast(owner: str, name: str, value: Any) -> str:
  """Why a decay that is a half-precision array may be 1: ``inject_hyperparams``' cast.

  ``optax.inject_hyperparams`` turns every numeric hyperparameter, defaults
  included, into an array of the first param's dtype unless given
  ``hyperparam_dtype``; bfloat16 rounds every decay from 0.998 (``b2=0.999``
  included) to 1. Returns the explanation for the message, or ``""`` if ``value`` is not
  such an array.
  """
  dtype = getattr(value, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or np.dtype(dtype).itemsize >= 4:
    return ""
  below_one = np.nextafter(np.asarray(1, dtype), np.asarray(0, dtype)).astype(np.float64)
  halfway = float((below_one + 1) / 2)  # this and above round to 1 (1 is the even neighbour)
  return (
    f". This {name} is a {np.dtype(dtype).name} array, and in {np.dtype(dtype).name} every "
    f"{name} of {halfway!r} or more is 1: optax.inject_hyperparams casts each numeric "
    "hyperparameter, the defaults included, to the params' dtype unless told otherwise. "
    "Keep the hyperparameters in float32: optax.inject_hyperparams("
    f"adam_optax.{owner}, hyperparam_dtype=jnp.float32)(...)"
  )


def check_decay(owner: str, name: str, value: Any) -> Any:
  """Checks that an EMA decay rate lies in ``[0, 1)`` and stays below 1 once rounded."""
  expected = "a number in [0, 1)"
  number = _checked(owner, name, value, expected)
  if number is not None and not 0.0 <= number < 1.0:
    cast = _narrow_cast(owner, name, value)
    raise ValueError(f"{owner}({name}={value!r}): {name} must be {expected}{cast}")
  dtype = _construction_dtype()
  if dtype is not None:
    check_in_dtype(owner, name, value, dtype, decay=True)
  return _kept(value)


def _check_finite_nonnegative(owner: str, name: str, value: Any, expected: str) -> Any:
  number = _checked(owner, name, value, expected)
  if number is not None and not 0.0 <= number < math.inf:
    raise ValueError(f"{owner}({name}={value!r}): {name} must be {expected}")
  dtype = _construction_dtype()
  if dtype is not None:
    check_in_dtype(owner, name, value, dtype)
  return _kept(value)


def check_nonnegative(owner: str, name: str, value: Any) -> Any:
  """Checks that a stabilising constant is finite and ``>= 0``."""
  return _check_finite_nonnegative(owner, name, value, "a finite number >= 0")


def check_rate(owner: str, name: str, value: Any) -> Any:
  """Checks a learning rate (or a decay strength): a number ``>= 0`` or a schedule.

  A schedule is any callable mapping the step count to a number; it is
  evaluated inside the update, where :func:`adam_optax._scaling.step_value`
  checks what it returns.
  """
  if callable(value):
    return value
  expected = "a finite number >= 0 or a schedule (a callable step -> number)"
  return _check_finite_nonnegative(owner, name, value, expected)


def check_flag(owner: str, name: str, value: Any) -> bool:
  """Checks that a switch is a real ``bool``: ``nesterov="False"`` must not turn it on."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{owner}({name}=...): {name} must be True or False; got {_describe(value)}")
  return bool(value)


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
  if not isinstance(value, str) or value not in choices:
    expected = ", ".join(repr(choice) for choice in choices)
    raise ValueError(f"{owner}({name}={value!r}): {name} must be one of {expected}")


def check_moment_hyperparameters(
  owner: str, b1: Any, b2: Any, eps: Any, eps_root: Any, mu_dtype: Any, nu_dtype: Any
) -> tuple[Any, Any, Any, Any, np.dtype | None, np.dtype | None]:
  """``b1, b2, eps, eps_root, mu_dtype, nu_dtype`` checked, each error naming ``owner``.

  :func:`adam_optax.scale_by_moments` and the aliases that build it (whose own
  name the errors then carry) both check them here.
  """
  return (
    check_decay(owner, "b1", b1),
    check_decay(owner, "b2", b2),
    check_nonnegative(owner, "eps", eps),
    check_nonnegative(owner, "eps_root", eps_root),
    check_float_dtype(owner, "mu_dtype", mu_dtype),
    check_float_dtype(owner, "nu_dtype", nu_dtype),
  )
