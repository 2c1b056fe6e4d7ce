"""The public signatures are typed: mypy --strict rejects a misspelled keyword in user code
(skipped when mypy is not installed), and the option TypedDicts match what they describe."""
from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
import greenpool
from greenpool.redis import RedisPool

pool = greenpool.start_pool("x", max_connections=3, timeout=5.0)
rp = greenpool.start_pool("r", protocol="redis", pool_size=2, host="127.0.0.1")
greenpool.GreenPool("y", max_per_host=2)
RedisPool(pool_size=1)
r = greenpool.get("http://127.0.0.1:1/", timeout=(1.0, 2.0), auth=("u", "p"), http2=True)
c = greenpool.Client(pool=pool, cookies={"a": "b"}, event_hooks={"response": [print]})
c.get("/x", timeout=3, data={"a": "1"}, files={"f": b"x"}, cookies={"k": "v"})
c.post("/y", json={"a": 1})
text: str = r.text
"""

TYPOS = {
    'greenpool.get("http://h/", timout=3)': "timout",
    'greenpool.Client().get("/x", timout=3)': "timout",
    'greenpool.post("http://h/", jsn={})': "jsn",
    'greenpool.Client(max_redirect=3)': "max_redirect",
    'greenpool.start_pool("x", max_conections=3)': "max_conections",
    'greenpool.GreenPool("x", max_conections=3)': "max_conections",
    'greenpool.start_pool("r", protocol="redis", pool_sise=2)': "pool_sise",
    'greenpool.request("GET", "http://h/", verfy=False)': "verfy",
}


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    try:  # run as `python -m mypy` with this interpreter: it must be importable here
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip("mypy is not installed (it is in the test extra)")
    path = tmp_path / "user.py"
    path.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           "--follow-imports=silent", "--config-file=", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "MYPYPATH": str(ROOT)})


def test_mypy_rejects_misspelled_keywords(tmp_path):
    ok = _mypy(tmp_path, GOOD)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    source = GOOD + "\n" + "\n".join(TYPOS)
    out = _mypy(tmp_path, source)
    assert out.returncode == 1, out.stdout
    for line_no, (call, word) in enumerate(TYPOS.items(), start=len(GOOD.splitlines()) + 2):
        assert ':%d: error: Unexpected keyword argument "%s"' % (line_no, word) in out.stdout, \
            (call, out.stdout)


def test_option_typeddicts_match():
    from greenpool.options import PoolOptions, PoolOptionsDict
    from greenpool.redis import RedisPool
    from greenpool.registry import RedisPoolOptionsDict
    assert set(PoolOptionsDict.__annotations__) == {f.name for f in dataclasses.fields(PoolOptions)}
    redis_params = set(inspect.signature(RedisPool.__init__).parameters) - {"self", "name", "protocol"}
    assert set(RedisPoolOptionsDict.__annotations__) == redis_params


def test_request_options_declare_every_keyword_of_request():
    """The module-level verbs take ``**kw: Unpack[RequestOptions]``: the TypedDicts must
    name exactly request()'s keywords (SendOptions without ``body``)."""
    from greenpool.http.client import RequestOptions, SendOptions, request
    params = set(inspect.signature(request).parameters) - {"method", "url"}
    assert RequestOptions.__required_keys__ | RequestOptions.__optional_keys__ == params
    assert SendOptions.__required_keys__ | SendOptions.__optional_keys__ == params - {"body"}


def test_client_request_options_declare_every_keyword_of_client_request():
    """Client.get/post/... take ``**kw: Unpack[ClientRequestOptions]``: the TypedDicts must
    name exactly Client.request()'s keywords (ClientSendOptions without ``body``)."""
    from greenpool.http.client import Client, ClientRequestOptions, ClientSendOptions
    params = set(inspect.signature(Client.request).parameters) - {"self", "method", "url"}
    assert ClientRequestOptions.__required_keys__ | ClientRequestOptions.__optional_keys__ == params
    assert ClientSendOptions.__required_keys__ | ClientSendOptions.__optional_keys__ == params - {"body"}
