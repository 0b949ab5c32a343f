"""The documentation cannot rot: every public name has its reference entry and sections,
and every Python block of the pages is a doctest that ``make test`` runs."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest

import adam_optax

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
  "api_coverage", ROOT / "docs" / "_ext" / "api_coverage.py"
)
api_coverage = importlib.util.module_from_spec(spec)
sys.modules["api_coverage"] = api_coverage
spec.loader.exec_module(api_coverage)

FUNCTIONS = [n for n in adam_optax.__all__ if not inspect.isclass(getattr(adam_optax, n))]
CLASSES = [n for n in adam_optax.__all__ if inspect.isclass(getattr(adam_optax, n))]
# Public functions that raise nothing of their own (a wrong argument type fails in Python).
RAISE_NOTHING = {"nonfinite_report"}
PAGES = [
  page
  for page in [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md")]
  if not page.is_relative_to(ROOT / "docs" / "generated")
]


def test_every_public_name_has_a_reference_entry():
  assert api_coverage.undocumented_names() == []
  documented = {
    name
    for page in (ROOT / "docs" / "api").glob("*.rst")
    for line in re.findall(r"^\s*:modules:(.*)$", page.read_text(), re.M)
    for name in api_coverage.names_in_modules(line.split())
  }
  assert documented == set(adam_optax.__all__)


def test_a_public_name_from_an_unlisted_module_is_reported(monkeypatch):
  def orphan() -> None:
    """A public function defined in a module that no reference page lists."""

  orphan.__module__ = "adam_optax._orphan"
  monkeypatch.setattr(adam_optax, "orphan", orphan, raising=False)
  monkeypatch.setattr(adam_optax, "__all__", [*adam_optax.__all__, "orphan"])
  (problem,) = api_coverage.undocumented_names()
  assert problem.startswith("adam_optax.orphan (defined in adam_optax._orphan): add `_orphan`")


def _sections(obj: object) -> set[str]:
  return set(re.findall(r"^(\w+):$", inspect.getdoc(obj) or "", re.M))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_public_functions_document_args_returns_raises_and_an_example(name):
  function = getattr(adam_optax, name)
  needed = {"Args", "Returns", "Examples"} | (set() if name in RAISE_NOTHING else {"Raises"})
  if not inspect.signature(function).parameters:
    needed.discard("Args")
  assert needed <= _sections(function), f"{name}: missing {needed - _sections(function)}"
  examples = inspect.getdoc(function).split("Examples:", 1)[1]
  assert ">>>" in examples, f"{name}: its Examples section has no doctest"
  documented = set(re.findall(r"^  (\w+)(?: \(.*\))?:", inspect.getdoc(function), re.M))
  missing = set(inspect.signature(function).parameters) - documented
  assert not missing, f"{name}: arguments without a line under Args: {missing}"


@pytest.mark.parametrize("name", CLASSES)
def test_public_classes_document_their_fields(name):
  cls = getattr(adam_optax, name)
  assert "Attributes" in _sections(cls), name
  fields = getattr(cls, "_fields", ())
  documented = set(re.findall(r"^  (\w+):", inspect.getdoc(cls), re.M))
  assert set(fields) <= documented, f"{name}: fields without a line: {set(fields) - documented}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_of_a_page_is_a_doctest(page):
  blocks = re.findall(r"^```(?:python|py|pycon)\n(.*?)^```", page.read_text(), re.M | re.S)
  for block in blocks:
    assert block.lstrip().startswith(">>>"), (
      f"{page.name}: a Python block that no test runs:\n{block}"
    )
    assert block.endswith("\n\n"), f"{page.name}: end the doctest with a blank line:\n{block}"
