"""Sphinx configuration: ``tox -e docs`` (sphinx-build -W: warnings are errors)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import greenpool  # noqa: E402

project = "greenpool"
author = "greenpool contributors"
copyright = "greenpool contributors"
release = greenpool.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# optional dependencies of contrib modules: document them even when not installed
autodoc_mock_imports = [m for m in ("prometheus_client", "requests") if not __import__("importlib").util.find_spec(m)]
intersphinx_mapping = {}  # offline builds: no inventories fetched
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list = []
