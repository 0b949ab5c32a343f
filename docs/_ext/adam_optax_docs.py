"""The documentation site's own Sphinx extension.

- ``api-group``: the reference entries of every public name (``adam_optax.__all__``)
  defined in the given private modules, so a new public name in a known module
  appears without editing any page. A public name that no page documents stops
  the build (:func:`undocumented_names` is the check; ``tests/test_docs.py``
  runs it too, without Sphinx).
- ``api-summary``: a table of every public name with its one-line summary.
- The gallery: every script in ``examples/`` is run at build time (cached by
  the hash of its inputs) and gets a page with its docstring, its source, what
  it printed and the figures it saved. Tables printed by ``benchmarks/parity.py``
  are generated the same way. The runs that are not cached run side by side.
- MathJax, from the ``sphinx-mathjax-offline`` package, is copied into the site,
  so math renders with no network.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from api_coverage import PACKAGE, ROOT, names_in_modules, public_names, undocumented_names
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

CACHE = ROOT / "build" / "docs-cache"
DOCS = ROOT / "docs"
GALLERY = DOCS / "gallery"  # generated pages and figures (gitignored)
GENERATED = DOCS / "generated"  # generated tables (gitignored)
LOGGER = logging.getLogger(__name__)


# --- The API reference ---------------------------------------------------------------


def _is_plain_class(obj: object) -> bool:
  """A class with public methods of its own (documented with ``:members:``), not a NamedTuple."""
  return inspect.isclass(obj) and not hasattr(obj, "_fields")


class ApiGroup(SphinxDirective):
  """Reference entries for the public names defined in ``:modules:``, in ``:order:`` first."""

  option_spec = {  # noqa: RUF012  (docutils' interface)
    "modules": directives.unchanged_required,
    "order": directives.unchanged,
  }

  def run(self) -> list[nodes.Node]:
    names = names_in_modules(self.options["modules"].split(), self.options.get("order", "").split())
    if not names:
      raise self.error(f"api-group: no public name is defined in {self.options['modules']}")
    package = importlib.import_module(PACKAGE)
    lines = []
    for name in names:
      obj = getattr(package, name)
      if inspect.isclass(obj):
        lines += [f".. autoclass:: {PACKAGE}.{name}"]
        lines += ["   :members:", ""] if _is_plain_class(obj) else [""]
      else:
        lines += [f".. autofunction:: {PACKAGE}.{name}", ""]
    for module in self.options["modules"].split():
      self.env.note_dependency(str(ROOT / PACKAGE / f"{module}.py"))
    container = nodes.container()
    self.state.nested_parse(StringList(lines, source="api-group"), self.content_offset, container)
    return container.children


class ApiSummary(SphinxDirective):
  """A table of every public name: the entry's link and the first line of its docstring."""

  def run(self) -> list[nodes.Node]:
    package = importlib.import_module(PACKAGE)
    lines = [f".. py:currentmodule:: {PACKAGE}", ""]  # the summaries' :func:`x` links
    lines += [".. list-table::", "   :header-rows: 1", "   :widths: 30 70", ""]
    lines += ["   * - name", "     - what it is"]
    for name in sorted(package.__all__, key=lambda n: (n[0].isupper(), n.lower())):
      summary = (inspect.getdoc(getattr(package, name)) or "").split("\n\n")[0]
      lines += [
        f"   * - :py:obj:`{name} <{PACKAGE}.{name}>`",
        f"     - {' '.join(summary.split())}",
      ]
    container = nodes.container()
    self.state.nested_parse(StringList(lines, source="api-summary"), self.content_offset, container)
    return container.children


def check_every_name_documented(app: Sphinx, env) -> None:
  """Fails the build when a public name has no entry in the built reference."""
  del app
  documented = set(env.get_domain("py").objects)
  hints = {problem.split(" ")[0]: problem for problem in undocumented_names()}
  missing = [
    hints.get(f"{PACKAGE}.{name}", f"{PACKAGE}.{name}: its api-group page is not in the build")
    for name in public_names()
    if f"{PACKAGE}.{name}" not in documented
  ]
  if missing:
    raise ExtensionError("public names without a reference entry:\n  " + "\n  ".join(missing))


# --- Generated outputs: the gallery and the parity tables ----------------------------------


# CPython 3.11's ast.parse is not safe to call from two threads at once ("AST constructor
# recursion depth mismatch"), and run_cached runs in a thread pool.
_PARSING = threading.Lock()


def _code(path: Path) -> bytes:
  """A Python file's code without its docstrings and comments: editing the docs reruns nothing."""
  with _PARSING:
    tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    body = getattr(node, "body", None)
    first = body[0] if isinstance(body, list) and body else None
    value = first.value if isinstance(first, ast.Expr) else None
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
      body[0] = ast.Pass()
  return ast.dump(tree).encode()


def _digest(paths: Iterable[Path], argv: list[str]) -> str:
  digest = hashlib.sha256(" ".join(argv).encode())
  for path in sorted(paths):
    digest.update(str(path.relative_to(ROOT)).encode())
    digest.update(_code(path))
  return digest.hexdigest()[:16]


def run_cached(name: str, argv: list[str], inputs: Iterable[Path], timeout: float = 900) -> Path:
  """Runs ``python *argv`` from the repository root once per version of ``inputs``'s code.

  Returns the cache folder holding ``stdout.txt`` and copies of the PNG files
  the run printed the path of. A failing run fails the build.
  """
  inputs = list(inputs) + sorted((ROOT / PACKAGE).glob("*.py"))
  folder = CACHE / name / _digest(inputs, argv)
  if (folder / "stdout.txt").exists():
    return folder
  LOGGER.info(f"running {' '.join(argv)} (cached in {folder.relative_to(ROOT)})")
  env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
  with tempfile.TemporaryDirectory(prefix="adam_optax-docs-compilation-cache-") as compiled:
    # A program the run compiles again (same optimizer and shapes) is compiled once.
    env |= {
      "JAX_COMPILATION_CACHE_DIR": compiled,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    result = subprocess.run(
      [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
  if result.returncode != 0:
    raise ExtensionError(f"{' '.join(argv)} failed:\n{result.stderr[-4000:]}")
  scratch = folder.with_name(folder.name + ".tmp")
  shutil.rmtree(scratch, ignore_errors=True)
  scratch.mkdir(parents=True)
  for figure in re.findall(r"(\S+\.png)\b", result.stdout):
    shutil.copy(ROOT / figure, scratch / Path(figure).name)
  (scratch / "stdout.txt").write_text(result.stdout)
  for stale in set(folder.parent.iterdir()) - {scratch}:  # earlier versions' runs
    shutil.rmtree(stale)
  scratch.rename(folder)
  return folder


def _write_if_changed(path: Path, text: str) -> None:
  """Keeps the file's timestamp (and Sphinx's cache of it) when nothing changed."""
  if not path.exists() or path.read_text() != text:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _copy_if_changed(source: Path, target: Path) -> None:
  if not target.exists() or target.read_bytes() != source.read_bytes():
    shutil.copy(source, target)


def gallery_page(script: Path, folder: Path) -> str:
  """The reST page of one example: docstring, how to run it, output, figures, source."""
  module_doc = (inspect.cleandoc(_docstring(script)) or script.stem).split("\n", 1)
  title, body = module_doc[0].rstrip("."), (module_doc[1] if len(module_doc) > 1 else "")
  relative = script.relative_to(ROOT)
  out = (folder / "stdout.txt").read_text().rstrip()
  lines = [f".. _gallery-{script.stem}:", "", title, "=" * len(title), "", body.strip(), ""]
  lines += ["Output", "------", ""]
  lines += [
    f"What ``python {relative}`` printed when these pages were built (timings are those of "
    "the machine that built them):",
    "",
  ]
  lines += [".. code-block:: text", ""] + [f"   {line}" for line in out.splitlines()] + [""]
  for figure in sorted(folder.glob("*.png")):
    lines += [f".. image:: {script.stem}/{figure.name}", f"   :alt: {figure.stem}", ""]
  lines += [
    "Source",
    "------",
    "",
    f".. literalinclude:: ../../{relative}",
    "   :language: python",
    "",
  ]
  return "\n".join(lines)


def _docstring(script: Path) -> str:
  return ast.get_docstring(ast.parse(script.read_text())) or ""


def generate(app: Sphinx) -> None:
  """Runs the examples and the parity script (or reuses their cached runs); writes their pages.

  The runs that are not cached run side by side, one per core, the longest first.
  """
  del app
  scripts = sorted((ROOT / "examples").glob("*.py"))
  parity = ROOT / "benchmarks" / "parity.py"
  inputs = [parity, ROOT / "tests" / "references.py", ROOT / "tests" / "test_family_parity.py"]
  inputs.append(ROOT / "tests" / "test_fused.py")  # the fused table imports it
  parity_argv = [str(parity.relative_to(ROOT))]
  runs = {  # the two halves of parity.py's tables first: the longest runs
    "parity": ([*parity_argv, "--no-fused"], inputs),
    "parity-fused": ([*parity_argv, "--fused"], inputs),
  }
  runs |= {script.stem: ([str(script.relative_to(ROOT))], [script]) for script in scripts}
  with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    futures = {
      name: pool.submit(run_cached, name, argv, run_inputs)
      for name, (argv, run_inputs) in runs.items()
    }
    folders = {name: future.result() for name, future in futures.items()}
  for script in scripts:
    folder = folders[script.stem]
    _write_if_changed(GALLERY / f"{script.stem}.rst", gallery_page(script, folder))
    (GALLERY / script.stem).mkdir(parents=True, exist_ok=True)
    for figure in folder.glob("*.png"):
      _copy_if_changed(figure, GALLERY / script.stem / figure.name)
  for stale in set(GALLERY.glob("*.rst")) - {GALLERY / f"{s.stem}.rst" for s in scripts}:
    stale.unlink()
  printed = [
    (folders[name] / "stdout.txt").read_text().strip() for name in ("parity", "parity-fused")
  ]
  tables = "\n\n".join(printed).split("\n\n")
  for index, table in enumerate(tables):
    _write_if_changed(GENERATED / f"parity_{index}.md", table + "\n")


def trim_code_blocks(app: Sphinx, doctree: nodes.document) -> None:
  """Drops the blank line that ends every doctest block (doctest needs it; readers do not)."""
  del app
  for block in doctree.findall(nodes.literal_block):
    if block.rawsource.endswith("\n") and len(block.children) == 1:
      block.rawsource = block.rawsource.rstrip("\n")
      block[0] = nodes.Text(block.rawsource)


def split_unaligned_math(app: Sphinx, doctree: nodes.document) -> None:
  """Shows each blank-line-separated equation of a ``.. math::`` block on its own, centred.

  Sphinx stacks such equations in one ``aligned`` environment, which right-aligns
  an equation that has no ``&``; the docstrings mean separate displays.
  """
  del app
  for block in list(doctree.findall(nodes.math_block)):
    parts = [part.strip() for part in block.astext().split("\n\n") if part.strip()]
    if len(parts) > 1 and not any("&" in part for part in parts) and not block.get("label"):
      keep = {k: v for k, v in block.attributes.items() if k not in ("ids", "names")}
      block.replace_self([nodes.math_block(part, part, **keep) for part in parts])


# --- MathJax, offline -------------------------------------------------------------------

MATHJAX_FILES = ["tex-svg-full.js", "ui", "a11y/assistive-mml.js", "a11y/semantic-enrich.js"]


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
  """Copies MathJax 3's all-in-one TeX-to-SVG script (no web fonts needed) into ``_static``."""
  if exception is not None or app.builder.format != "html":
    return
  source = Path(importlib.import_module("sphinx-mathjax-offline").__file__).parent
  source = source / "static" / "mathjax"
  target = Path(app.outdir) / "_static" / "mathjax"
  for name in MATHJAX_FILES:
    if (source / name).is_dir():
      shutil.copytree(source / name, target / name, dirs_exist_ok=True)
    else:
      (target / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(source / name, target / name)


def setup(app: Sphinx) -> dict[str, object]:
  app.add_directive("api-group", ApiGroup)
  app.add_directive("api-summary", ApiSummary)
  app.connect("builder-inited", generate)
  app.connect("doctree-read", trim_code_blocks)
  app.connect("doctree-read", split_unaligned_math)
  app.connect("env-check-consistency", check_every_name_documented)
  app.connect("build-finished", copy_mathjax)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
