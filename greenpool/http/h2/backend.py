"""Which HTTP/2 core the HTTP/2 adapter runs on: hyper-h2, or jh2 when installed.

What this owns: the one choice of the sans-IO HTTP/2 state machine behind
:mod:`greenpool.http.h2.conn` and :mod:`greenpool.http.h2.transport`, and the
names they take from it.  Nothing else in greenpool imports ``h2`` or ``jh2``.

* **The cores.**  ``h2`` (hyper-h2, pure Python) is always installed and is the
  default.  ``jh2`` is a maintained fork of h2 with a compiled HPACK and frame
  core and the same API under another package name; the ``speedups`` extra
  installs it, and then it is chosen.
* **The choice** is made once per process, at the first HTTP/2 connection
  (when this module is first imported), from the environment variable
  ``GREENPOOL_H2_BACKEND``: ``auto`` (the default, also when unset or empty)
  takes jh2 when it imports and h2 otherwise; ``h2`` or ``jh2`` force one.
  Forcing jh2 when it is not installed raises ``ImportError``; any other value
  raises ``ValueError``.  It is process-wide on purpose: one core per process
  keeps one set of classes, and both cores behave alike.
* **The names.**  :data:`core` is the chosen package with its ``config``,
  ``connection``, ``errors``, ``events``, ``exceptions`` and ``settings``
  modules loaded (``core.events.DataReceived`` is jh2's class when jh2 runs);
  :data:`name` says which (``"h2"`` or ``"jh2"``), :data:`version` its version.
  ``InvalidPaddingError`` and ``RstStreamFrame`` are its frame layer's
  (hyperframe, which jh2 vendors).  Type checking sees h2's declarations, which jh2 shares.
* **Differences** between the cores that the adapter would meet belong here,
  not scattered in it.  The HTTP/2 test suite runs on both
  (``tests/test_http_h2backend.py`` runs it again on the core a test run did
  not choose); no difference has needed handling so far.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING, Optional, Tuple

ENV_VAR = "GREENPOOL_H2_BACKEND"
"""The environment variable that chooses the core: ``auto``, ``h2`` or ``jh2``."""

BACKENDS: Tuple[str, ...] = ("h2", "jh2")
"""The cores greenpool runs on, pure Python first."""

_MODULES = ("config", "connection", "errors", "events", "exceptions", "settings")


def _load(package: str) -> ModuleType:
    """Import ``package`` and the modules the adapter uses; return the package."""
    mod = importlib.import_module(package)
    for sub in _MODULES:
        importlib.import_module(package + "." + sub)
    return mod


def choose(setting: Optional[str]) -> ModuleType:
    """The core for a value of ``GREENPOOL_H2_BACKEND`` (None: unset).

    ``auto`` prefers jh2 and falls back to h2 when jh2 does not import;
    ``h2`` and ``jh2`` force one.
    """
    value = (setting or "auto").strip().lower()
    if value == "auto":
        try:
            return _load("jh2")
        except ImportError:
            return _load("h2")
    if value not in BACKENDS:
        raise ValueError("%s=%r: expected 'auto', 'h2' or 'jh2'" % (ENV_VAR, setting))
    try:
        return _load(value)
    except ImportError as e:
        raise ImportError(
            "%s=%s but %s does not import (%s): install it (pip install "
            "'greenpool[speedups]' brings jh2) or unset %s" % (ENV_VAR, value, value, e, ENV_VAR)
        ) from e


if TYPE_CHECKING:
    import h2 as core  # the cores share h2's API: type checking uses h2's declarations
    import h2.config  # noqa: F401
    import h2.connection  # noqa: F401
    import h2.errors  # noqa: F401
    import h2.events  # noqa: F401
    import h2.exceptions  # noqa: F401
    import h2.settings  # noqa: F401
    from h2.connection import ConnectionState as ConnectionState
    from h2.errors import ErrorCodes as ErrorCodes
    from hyperframe.exceptions import InvalidPaddingError as InvalidPaddingError
    from hyperframe.frame import RstStreamFrame as RstStreamFrame
else:
    core = choose(os.environ.get(ENV_VAR))
    ConnectionState = core.connection.ConnectionState
    ErrorCodes = core.errors.ErrorCodes
    # the frame layer's names (hyperframe's, vendored by jh2), as the connection module uses them
    InvalidPaddingError = core.connection.InvalidPaddingError
    RstStreamFrame = core.connection.RstStreamFrame

name: str = core.__name__
"""The chosen core's package name: ``"h2"`` or ``"jh2"``."""

version: str = getattr(core, "__version__", "?")
"""The chosen core's version string."""

__all__ = ["BACKENDS", "ENV_VAR", "ConnectionState", "ErrorCodes", "InvalidPaddingError",
           "RstStreamFrame", "choose", "core", "name", "version"]
