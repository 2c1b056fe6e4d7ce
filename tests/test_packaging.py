"""Packaging (pyproject.toml, setup.cfg, MANIFEST.in, LICENSE): the sdist carries what its own
tests, docs and examples need, and installs into a fresh virtualenv.

Everything runs offline: ``python -m build --no-isolation`` (``python setup.py sdist`` when
``build`` is not installed) and ``pip install --no-index --no-deps --no-build-isolation`` into
a venv that sees this interpreter's packages.
"""
from __future__ import annotations

import configparser
import email
import os
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_TREES = ("greenpool/", "tests/", "examples/", "docs/", "benchmarks/")
# what pytest needs from an unpacked sdist beyond the test files themselves
MUST_SHIP = ["LICENSE", "README.rst", "pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "tox.ini",
             "tests/conftest.py", "tests/fakes.py", "tests/httpfakes.py", "tests/servers.py",
             "tests/faultproxy.py", "tests/apps/wsgi_app.py", "tests/apps/asgi_app.py",
             "docs/conf.py", "docs/index.rst", "greenpool/py.typed", "examples/fanout.py"]


def _run(cmd: List[str], cwd: Path, timeout: float = 120, env: dict = None) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, "%s\n%s\n%s" % (" ".join(cmd), out.stdout[-3000:], out.stderr[-3000:])
    return out


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist built from this tree (a copy: the build leaves no egg-info behind here)."""
    tmp = tmp_path_factory.mktemp("sdist")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".tox", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache",
        ".ruff_cache", ".pytest_cache", ".hypothesis", "results"))
    dist = tmp / "dist"
    try:
        import build  # noqa: F401
        cmd = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(dist), "."]
    except ImportError:
        cmd = [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist)]
    _run(cmd, src, env=_clean_env())
    (archive,) = dist.glob("greenpool-*.tar.gz")
    return archive


@pytest.fixture(scope="module")
def unpacked(sdist: Path) -> Path:
    target = sdist.parent / "unpacked"
    with tarfile.open(sdist) as tar:
        tar.extractall(target)
    (top,) = target.iterdir()
    return top


def _git_files() -> List[str]:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return []
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return out.stdout.splitlines() if out.returncode == 0 else []


def test_sdist_ships_every_tracked_file_of_the_package_tests_examples_docs(unpacked):
    shipped = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()}
    missing = [f for f in MUST_SHIP if f not in shipped]
    assert not missing, missing
    tracked = [f for f in _git_files() if f.startswith(SHIPPED_TREES) and (ROOT / f).is_file()]
    if not tracked:
        pytest.skip("not a git checkout: only the fixed list was checked")
    missing = [f for f in tracked if f not in shipped]
    assert not missing, missing
    assert not [f for f in shipped if "__pycache__" in f or f.endswith(".pyc")]


def test_sdist_metadata(unpacked):
    meta = email.message_from_string((unpacked / "PKG-INFO").read_text())
    assert meta["Name"] == "greenpool" and meta["License"] == "MIT"
    classifiers = meta.get_all("Classifier")
    for c in ("License :: OSI Approved :: MIT License", "Typing :: Typed", "Framework :: gevent",
              "Programming Language :: Python :: 3.9", "Programming Language :: Python :: 3.12"):
        assert c in classifiers, c
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    assert meta["Requires-Python"] == ">=3.9"
    assert "MIT License" in (unpacked / "LICENSE").read_text()
    assert "greenpool contributors" in (unpacked / "LICENSE").read_text()
    # no invented addresses: a Project-URL only once the project has a real home
    assert all("example" not in u for u in meta.get_all("Project-URL") or [])


def test_pyproject_declares_the_setuptools_build_backend():
    text = (ROOT / "pyproject.toml").read_text()
    assert "[build-system]" in text and 'build-backend = "setuptools.build_meta"' in text


def test_tox_is_in_the_dev_extra_and_build_in_test():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    names = {key: [line.split(">")[0].split("=")[0].strip() for line in extras[key].splitlines() if line.strip()]
             for key in extras}
    assert "tox" in names["dev"] and "sphinx" in names["dev"] and "pytest" in names["dev"]
    assert set(names["test"]) <= set(names["dev"])
    assert "build" in names["test"] and "sphinx" in names["test"]


@pytest.mark.slow
def test_sdist_installs_in_a_fresh_venv_and_its_tests_collect(sdist, unpacked, tmp_path):
    """pip installs the sdist (a wheel is built from it on the way) into a new venv; the
    installed package imports, its console script runs, and pytest collects the sdist's tests
    without an error."""
    pytest.importorskip("wheel")  # setuptools < 70.1 builds wheels through it
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = str(env_dir / "bin" / "python")
    env = _clean_env()
    # the venv sees this interpreter's pip and dependencies; it installs into the venv
    _run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation", str(sdist)],
         tmp_path, timeout=180, env=env)
    out = _run([py, "-c", "import greenpool, sys; print(greenpool.__file__); print(greenpool.__version__)"],
               tmp_path, env=env)
    where, version = out.stdout.split()
    assert Path(where).resolve().is_relative_to(env_dir.resolve()), where
    assert (Path(where).parent / "py.typed").exists() and (Path(where).parent / "cli" / "bench.py").exists()
    out = _run([str(env_dir / "bin" / "greenpool"), "--version"], tmp_path, env=env)
    assert out.stdout.startswith("greenpool %s " % version)
    # the unpacked sdist's own tests: every module imports (its conftest, fakes, servers, apps)
    out = _run([py, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"],
               unpacked, timeout=180, env=env)
    assert "error" not in out.stdout.splitlines()[-1].lower(), out.stdout[-2000:]
    assert " tests collected" in out.stdout.splitlines()[-1]

