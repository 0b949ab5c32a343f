"""Runs the Markdown pages here as doctests (``--doctest-glob=*.md``), as ``make test`` does.

Like ``tests/conftest.py``, it simulates 8 CPU devices (before JAX starts), so
the sharding page runs the same alone as in the whole suite. The build code
and the generated pages are not collected.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

collect_ignore = ["conf.py", "_ext", "gallery", "generated"]
