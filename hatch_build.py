"""Builds the fused CPU kernel, ``csrc/adam_fused_cpu.cc``, into ``adam_optax/``.

Hatchling runs this hook for every wheel, editable or not (``pip install .``,
``pip install -e .``, what ``make install`` does); ``python hatch_build.py``
rebuilds the library in place (``make`` does when the source changes). When
there is no C++17 compiler, or no jaxlib to take XLA's FFI headers from, the
build is skipped and the package installs as pure Python: it then runs on the
XLA path. pip shows a build hook's output only with ``-v``, so the reason is
also written into the package (``NOTE``, next to where the library would be),
and ``fused=True`` reports it when used, with what to do.

Compiler flags, and why:

- ``-O3``: vectorises the per-element loops.
- ``-fno-math-errno``: lets ``sqrt`` be one instruction; without it the
  compiler keeps the library call (it may set ``errno``) and does not
  vectorise the loop, which then runs at half the speed.
- ``-fno-trapping-math``: floating-point exceptions are not observed, so the
  compiler may divide in every vector lane and then select (the ``eps = 0``
  guard of ``safe_ratio``); otherwise it branches around the division per
  element and the loop runs scalar, 4x slower. No result changes: every
  operation is still the IEEE operation.
- ``-ffp-contract=off``: no multiply-add is fused unless the source says so.
  The kernel reproduces XLA's results operation by operation, and fuses
  exactly where XLA does (``MulAdd`` in the source).
- never ``-ffast-math``: it reassociates, contracts and assumes no NaN or
  infinity, which would change the numbers and NaN propagation.

The library is compiled against the FFI headers of the jaxlib in the build
environment (pinned in ``[build-system]``); the FFI's ABI lets newer jaxlibs
run it, and the loader refuses it under an older one.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "csrc" / "adam_fused_cpu.cc"
LIBRARY = "_adam_fused_cpu.so"  # adam_optax/_kernel.py loads this name
NOTE = "_adam_fused_cpu.not-built.txt"  # why not, for adam_optax/_kernel.py to report
FLAGS = [
  "-std=c++17",
  "-O3",
  "-fno-math-errno",
  "-fno-trapping-math",
  "-ffp-contract=off",
  "-fPIC",
  "-shared",
]


def jaxlib_include() -> tuple[Path, str] | None:
  """jaxlib's FFI header directory and jaxlib's version, without importing it."""
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or not spec.submodule_search_locations:
    return None
  include = Path(next(iter(spec.submodule_search_locations))) / "include"
  if not (include / "xla" / "ffi" / "api" / "ffi.h").exists():
    return None
  return include, importlib.metadata.version("jaxlib")


def compile_kernel(output: Path, compiler: str | None = None) -> str | None:
  """Compiles the kernel to ``output``; returns ``None``, or why it could not.

  Args:
    output: the shared library to write.
    compiler: the C++ compiler (default: ``$CXX``, else ``c++``).
  """
  compiler = compiler or os.environ.get("CXX", "c++")
  if shutil.which(compiler) is None:
    return f"no C++ compiler ({compiler!r} not found; set CXX)"
  headers = jaxlib_include()
  if headers is None:
    return "jaxlib (for XLA's FFI headers) is not installed in the build environment"
  include, version = headers
  output.parent.mkdir(parents=True, exist_ok=True)
  command = [
    compiler,
    *FLAGS,
    "-isystem",
    str(include),
    f'-DADAM_OPTAX_JAXLIB_VERSION="{version}"',
    str(SOURCE),
    "-o",
    str(output),
  ]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    return f"{' '.join(command)} failed:\n{result.stderr[-4000:]}"
  return None


def build(output: Path, compiler: str | None = None) -> str | None:
  """:func:`compile_kernel`, recording the outcome next to ``output`` for the runtime.

  On failure the reason goes to ``output``'s directory as ``NOTE`` (and to
  stderr); on success a stale ``NOTE`` is removed. Returns the reason, or ``None``.
  """
  note = output.with_name(NOTE)
  error = compile_kernel(output, compiler)
  if error is None:
    note.unlink(missing_ok=True)
    return None
  note.parent.mkdir(parents=True, exist_ok=True)
  note.write_text(error + "\n")
  print(f"adam_optax: the fused CPU kernel was not built: {error}", file=sys.stderr)
  return error


try:
  from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script, outside a build
  BuildHookInterface = object


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc,valid-type]
  """Compiles the kernel into the wheel (in place for editable installs)."""

  PLUGIN_NAME = "custom"

  def initialize(self, version: str, build_data: dict[str, Any]) -> None:
    if self.target_name != "wheel":
      return
    if version == "editable":
      output = ROOT / "adam_optax" / LIBRARY
    else:
      output = Path(self.directory) / "kernel" / LIBRARY
    error = build(output)
    if error is not None:
      warnings.warn(
        f"adam_optax: the fused CPU kernel was not built ({error}); the package works "
        "without it, on the XLA path.",
        stacklevel=1,
      )
      if version != "editable":
        build_data["force_include"][str(output.with_name(NOTE))] = f"adam_optax/{NOTE}"
      return
    if version != "editable":
      build_data["force_include"][str(output)] = f"adam_optax/{LIBRARY}"
      build_data["pure_python"] = False
      build_data["infer_tag"] = True


if __name__ == "__main__":
  problem = build(ROOT / "adam_optax" / LIBRARY)
  if problem is not None:
    sys.exit(f"adam_optax: kernel not built: {problem}")
