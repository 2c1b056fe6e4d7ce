"""Sphinx configuration: ``tox -e docs`` (sphinx-build -W: warnings are errors).

Two hooks keep the rendered API honest without touching the code's docstrings:

* defaults that are private sentinels (``timeout=_UNSET``: "not given") render as what
  they mean (``<the client's>``, ``<timeout>``) instead of ``<object object at 0x...>``;
* "see the module docstring" becomes a link to that module's page in :doc:`modules`, where
  every module docstring is rendered; "README.rst" becomes a link to the front page, which
  is the README.
"""
import os
import re
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

_SENTINEL = re.compile(r"(\w+)=<object object(?: at 0x[0-9a-fA-F]+)?>")
# (the documented name ends with, the parameter or None for any): what "not given" means there
_SENTINEL_MEANS = {
    ("Client.request", None): "<the client's>",
    ("Timeout", "timeout"): "None",
    ("Timeout", None): "<timeout>",
}


def _sentinel_defaults(app, what, name, obj, options, signature, return_annotation):
    def shown(m):
        for (end, param), text in _SENTINEL_MEANS.items():
            if name.endswith(end) and param in (None, m.group(1)):
                return "%s=%s" % (m.group(1), text)
        return "%s=<not given>" % m.group(1)

    if signature:
        signature = _SENTINEL.sub(shown, signature)
    return signature, return_annotation


_MODULE_DOCSTRING = re.compile(r"the module docstring")


_README = re.compile(r"(?<![`/\w])README\.rst(?![`\w])")


def _module_links(app, what, name, obj, options, lines):
    target = getattr(getattr(obj, "fget", obj), "__module__", None) if what != "module" else None
    for i, line in enumerate(lines):
        # the README is this site's front page
        line = _README.sub(":doc:`the README <index>`", line)
        if target and target.startswith("greenpool"):
            line = _MODULE_DOCSTRING.sub("the docstring of :mod:`%s`" % target, line)
        lines[i] = line


def setup(app):
    app.connect("autodoc-process-signature", _sentinel_defaults)
    app.connect("autodoc-process-docstring", _module_links)
