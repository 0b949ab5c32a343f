"""Which public names the API reference documents: shared by the Sphinx build and the tests.

The reference pages (``docs/api/*.rst``) document public names by the private
module that defines them (``api-group`` directives with a ``:modules:`` option),
so every name in ``adam_optax.__all__`` defined in a listed module gets its
entry without anyone editing a page, and a name from a module that no page
lists is reported, with the fix. No Sphinx here: ``tests/test_docs.py`` imports
it in the test environment.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "adam_optax"


def public_names() -> dict[str, str]:
  """Every name in ``adam_optax.__all__``, mapped to the private module defining it."""
  package = importlib.import_module(PACKAGE)
  return {name: getattr(package, name).__module__ for name in package.__all__}


def names_in_modules(modules: Iterable[str], order: Iterable[str] = ()) -> list[str]:
  """The public names defined in ``modules``: those in ``order`` first, then the rest sorted."""
  modules = {f"{PACKAGE}.{m}" if not m.startswith(PACKAGE) else m for m in modules}
  found = [name for name, module in public_names().items() if module in modules]
  ranked = [name for name in order if name in found]
  return ranked + sorted(set(found) - set(ranked), key=lambda n: (n[0].isupper(), n.lower()))


def claimed_modules(pages: Iterable[Path]) -> set[str]:
  """The modules named by the ``:modules:`` options of the ``api-group`` directives in ``pages``."""
  claimed = set()
  for page in pages:
    for line in re.findall(r"^\s*:modules:(.*)$", page.read_text(), re.M):
      claimed |= {f"{PACKAGE}.{m}" for m in line.split()}
  return claimed


def undocumented_names(docs: Path = ROOT / "docs") -> list[str]:
  """Public names whose module no ``api-group`` in ``docs/api/*.rst`` claims, with the fix."""
  claimed = claimed_modules(sorted((docs / "api").glob("*.rst")))
  return [
    f"adam_optax.{name} (defined in {module}): add `{module.removeprefix(PACKAGE + '.')}` "
    "to the :modules: of an api-group directive in docs/api/*.rst"
    for name, module in public_names().items()
    if module not in claimed
  ]
