"""The Sphinx site in docs/ builds without a warning and documents every public name
(skipped when sphinx is not installed; it is in the ``test`` extra)."""
from __future__ import annotations

import configparser
import html
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

import greenpool
import greenpool.errors
import greenpool.redis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """The built pages' text (name -> HTML), built once with warnings as errors."""
    pytest.importorskip("sphinx")
    tmp = tmp_path_factory.mktemp("docs")
    out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
                          "-d", str(tmp / "doctrees"), str(ROOT / "docs"), str(tmp / "html")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    pages = {p.name: p.read_text() for p in (tmp / "html").glob("*.html")}
    pages["_images"] = " ".join(p.name for p in (tmp / "html" / "_images").glob("*"))
    return pages


def _ids(page: str) -> set:
    return set(re.findall(r'id="([^"]+)"', page))


def test_docs_build_without_warnings(site):
    assert "GreenPoolAdapter" in site["api.html"]


def test_every_public_name_is_documented(site):
    ids = _ids(site["api.html"])
    missing = [n for n in greenpool.__all__ if n != "__version__" and "greenpool." + n not in ids]
    assert not missing, missing
    # greenpool.redis re-exports the errors it raises: documented once, as greenpool.X
    missing = [n for n in greenpool.redis.__all__ if "greenpool.redis." + n not in ids and
               not (n in greenpool.__all__ and "greenpool." + n in ids)]
    assert not missing, missing
    missing = [n for n in greenpool.errors.__all__ if "greenpool.errors." + n not in ids
               and "greenpool." + n not in ids]
    assert not missing, missing


@pytest.mark.parametrize("name", [
    "Response.status", "Response.headers", "Response.text", "Response.json", "Response.content",
    "Response.raise_for_status", "Response.history", "Response.elapsed", "Response.status_code",
    "Response.reason", "Response.http_version", "Response.url", "Response.iter_bytes", "Response.read",
    "Client.request", "Client.get", "Client.post", "Client.put", "Client.patch", "Client.delete",
    "Client.head", "Client.options", "Client.close",
    "Headers.get", "Headers.get_list", "Headers.items", "Headers.add",
    "URL.host", "URL.port", "URL.scheme", "URL.target", "URL.join",
    "GreenPool.checkout", "GreenPool.checkin", "GreenPool.get_stats", "GreenPool.max_connections",
    "redis.RedisPool.command", "redis.RedisPool.pipeline",
])
def test_members_are_documented_with_text(site, name):
    page = site["api.html"]
    i = page.find('id="greenpool.%s"' % name)
    assert i != -1, name
    # the entry's description (<dd>) is not empty
    entry = page[i:page.find("</dd>", i)]
    text = re.sub(r"<[^>]+>", "", entry[entry.find("<dd>"):])
    assert len(text.split()) >= 2, (name, text)


def test_signatures_show_what_an_unset_keyword_means(site):
    text = html.unescape(re.sub(r"<[^>]+>", "", site["api.html"]))
    assert "object object" not in text
    assert "timeout=<the client's>" in text and "follow_redirects=<the client's>" in text
    assert "Timeout(timeout=None, *, connect=<timeout>" in text


def test_module_docstrings_are_rendered_where_referred_to(site):
    for name, page in site.items():
        assert "the module docstring" not in page, name
    refs = set(re.findall(r'href="modules\.html#module-(greenpool[\w.]*)"', site["api.html"]))
    assert {"greenpool.http.client", "greenpool.http.retry", "greenpool.http.models"} <= refs, refs
    modules = _ids(site["modules.html"]) | _ids(site["api.html"])
    assert not [r for r in refs if "module-" + r not in modules]
    # and the notes themselves are there
    assert "Retries are opt-in" in site["modules.html"]


def test_no_page_sends_readers_to_a_file_outside_the_site(site):
    for name in ("api.html", "modules.html", "operating.html", "migrating.html"):
        text = re.sub(r"<[^>]+>", "", site[name])
        assert "README.rst" not in text, name
    # the code's "see README.rst" became a link to the front page
    assert re.search(r'<a class="reference internal" href="index\.html"><span class="doc">the README</span></a>',
                     site["modules.html"]), "no link to the README"


def test_index_is_the_readme(site):
    index = site["index.html"]
    for heading in ("Set up", "Quick start", "Benchmarks", "Examples and command line"):
        assert ">%s<" % heading in index, heading
    assert 'src="_images/chart.png"' in index and "chart.png" in site["_images"]
    for page in ("api.html", "modules.html", "operating.html", "migrating.html"):
        assert 'href="%s"' % page in index


def test_tox_docs_env_and_extras():
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    assert "sphinx-build -W" in tox["testenv:docs"]["commands"]
    assert tox["testenv:docs"]["extras"].strip() == "docs"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "sphinx" in cfg["options.extras_require"]["docs"]
    assert "tox" in cfg["options.extras_require"]["dev"]
