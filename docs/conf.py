"""Sphinx configuration of the documentation site (``make docs`` builds it into ``site/``).

Sphinx rather than MkDocs because the docstrings are Google style with reST
markup (``.. math::``, ``:func:``), which napoleon and autodoc render as they
are; the narrative pages are Markdown (MyST), doctested by ``make test``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]

import adam_optax  # noqa: E402

project = "adam_optax"
author = "adam_optax developers"
copyright = "2026, adam_optax developers"
release = version = adam_optax.__version__

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx_copybutton",
  "adam_optax_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "conftest.py", "**/README.md"]
templates_path: list[str] = []

# Strict: every reference to an adam_optax name must resolve (other libraries'
# names are not linked: there is no network to fetch their inventories from).
nitpicky = True
nitpick_ignore_regex = [
  (r"py:.*", r"(optax|jax|jaxlib|numpy|np|jnp|torch|chex|flax|equinox|typing|collections)(\..*)?"),
  (r"py:.*", r"(Any|Callable|Sequence|Mapping|Literal|PyTree|AxisNames|NuCorrection|Check)"),
  (r"py:.*", r"(Schedule|ScalarOrSchedule|Updates|Params|OptState|Array|ArrayTree)"),
  (r"py:.*", r"(Mesh|Indices|Axes)"),  # type aliases and jax's Mesh, unqualified in signatures
  (r"py:.*", r"adam_optax\._.*"),  # private helpers that docstrings name but the site does not show
]

# Markdown pages: $...$ and $$...$$ math, ::: fences, anchors for ## headings.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# The API reference: Google-style docstrings, in source order.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = [("References", "notes_style")]
autodoc_member_order = "bysource"
# Signatures without annotations: most hyperparameters are annotated ``Any`` (they
# may be tracers) and optax's aliases expand into long unions; the Args say what
# each accepts.
autodoc_typehints = "none"
autodoc_preserve_defaults = True
python_use_unqualified_type_names = True
add_module_names = False
toc_object_entries_show_parents = "hide"

# Math: MathJax 3 from the sphinx-mathjax-offline package, copied into the site
# by adam_optax_docs (SVG output: no web fonts, works from file://).
mathjax_path = "mathjax/tex-svg-full.js"

html_theme = "furo"
html_title = f"adam_optax {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_copy_source = False
html_theme_options = {"navigation_with_keys": True}

# Copy buttons copy the code without prompts or output.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True
