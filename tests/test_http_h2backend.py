"""Tests for greenpool.http.h2.backend: the choice of HTTP/2 core, and the HTTP/2 suite on both.

The core is chosen once per process (``GREENPOOL_H2_BACKEND``), so the HTTP/2 test files run
in this process on the core it chose (jh2 when installed) and, from
``test_http2_suite_on_the_other_core``, once more in a child pytest on the other core: every
HTTP/2 test runs on h2 and on jh2, as every HTTP/1.1 test runs on both parsers.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from greenpool.http.h2 import backend as h2backend
from greenpool.http.h2 import conn as h2conn

from servers import require_module

ROOT = Path(__file__).resolve().parent.parent
HAVE_JH2 = importlib.util.find_spec("jh2") is not None

# the HTTP/2 suite: the adapter's own files, and the HTTP/2 cases of the fault tests
H2_SUITE = [
    "tests/test_http_h2.py",
    "tests/test_http_h2_interop.py",
    "tests/test_faults.py::test_h2_holders_killed_at_random_points",
    "tests/test_faults.py::test_fork_with_http2_streams_in_flight",
]


def run_python(code: str, setting: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{h2backend.ENV_VAR: setting})
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=120)


def test_auto_prefers_jh2_and_falls_back_to_h2(monkeypatch):
    require_module("jh2", "jh2")
    for setting in (None, "", "auto", " AUTO "):
        assert h2backend.choose(setting).__name__ == "jh2"
    monkeypatch.setitem(sys.modules, "jh2", None)  # as if jh2 were not installed
    assert h2backend.choose(None).__name__ == "h2"
    assert h2backend.choose("auto").__name__ == "h2"


def test_forced_core_and_its_modules():
    require_module("jh2", "jh2")
    for name in h2backend.BACKENDS:
        core = h2backend.choose(name)
        assert core.__name__ == name
        for sub in ("config", "connection", "errors", "events", "exceptions", "settings"):
            assert getattr(core, sub).__name__ == name + "." + sub


def test_forcing_a_missing_core_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "jh2", None)
    with pytest.raises(ImportError, match=r"GREENPOOL_H2_BACKEND=jh2 but jh2 does not import.*speedups"):
        h2backend.choose("jh2")


def test_unknown_core_is_a_value_error():
    with pytest.raises(ValueError, match=r"GREENPOOL_H2_BACKEND='hyper': expected 'auto', 'h2' or 'jh2'"):
        h2backend.choose("hyper")


def test_this_process_adapter_runs_on_the_chosen_core():
    assert h2backend.name in h2backend.BACKENDS
    assert h2backend.core.__name__ == h2backend.name
    assert h2conn.h2 is h2backend.core
    assert h2conn._DataReceived is h2backend.core.events.DataReceived
    assert issubclass(h2conn._ClientConnection, h2backend.core.connection.H2Connection)
    assert h2conn.ConnectionState is h2backend.core.connection.ConnectionState
    assert h2conn.ErrorCodes is h2backend.core.errors.ErrorCodes
    expected = os.environ.get(h2backend.ENV_VAR, "auto").strip().lower()
    if expected == "auto":
        expected = "jh2" if HAVE_JH2 else "h2"
    assert h2backend.name == expected


@pytest.mark.parametrize("setting", ["h2", "jh2"])
def test_the_environment_variable_chooses_for_the_whole_adapter(setting):
    require_module("jh2", "jh2")
    code = ("from greenpool.http.h2 import backend as h2backend, conn as h2conn, transport as h2transport\n"
            "print(h2backend.name, h2conn._ClientConnection.__mro__[1].__module__,"
            " h2transport.h2.exceptions.__name__)")
    out = run_python(code, setting)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [setting, setting + ".connection", setting + ".exceptions"]


def test_bad_environment_variable_fails_the_first_http2_import():
    out = run_python("import greenpool\nfrom greenpool.http.h2 import conn as h2conn", "nope")
    assert out.returncode == 1
    assert "ValueError: GREENPOOL_H2_BACKEND='nope'" in out.stderr


@pytest.mark.slow
def test_http2_suite_on_the_other_core():
    """Every HTTP/2 test, in a child pytest, on the core this process did not choose."""
    require_module("jh2", "jh2")
    other = "h2" if h2backend.name == "jh2" else "jh2"
    env = dict(os.environ, **{h2backend.ENV_VAR: other})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", *H2_SUITE],
        env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=900)
    lines = (out.stdout + out.stderr).splitlines()
    tail = "\n".join(lines[-60:])
    assert out.returncode == 0, "HTTP/2 suite on %s failed:\n%s" % (other, tail)
    assert "greenpool HTTP/2 core: %s " % other in out.stdout, tail
    assert " passed" in lines[-1], tail
