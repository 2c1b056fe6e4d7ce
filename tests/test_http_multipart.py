"""greenpool.http.multipart and data=/files=/content=: encoded by us, parsed back by
werkzeug's multipart parser in gunicorn's app (``/multipart``)."""
from __future__ import annotations

import hashlib
import io
import json
import os

import pytest
from httpfakes import HTTPFake, ok

import greenpool
from greenpool.http.multipart import MultipartStream

from fakes import assert_exact


@pytest.fixture
def pool():
    p = greenpool.GreenPool("test-multipart", max_connections=8)
    yield p
    p.close()


class Unsized:
    """A file-like object that cannot tell its size (read only)."""

    def __init__(self, data):
        self._f = io.BytesIO(data)

    def read(self, n=-1):
        return self._f.read(n)


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def test_files_shapes_parsed_by_werkzeug(no_leaks, gunicorn, pool, tmp_path):
    path = tmp_path / "report.csv"
    path.write_bytes(b"a,b\n1,2\n")
    c = greenpool.Client(pool=pool)
    with open(path, "rb") as f:
        r = c.post(gunicorn.url + "/multipart", data={"title": "t\u00e9", "tags": ["x", "y"]}, files={
            "plain": f,
            "raw": b"\x00\x01bytes",
            "named": ("n\"q.txt", io.BytesIO(b"hello"), "text/plain"),
            "extra": ("e.bin", b"E" * 10, "application/x-e", {"X-Part": "1"}),
        })
    body = r.json()
    assert r.status == 200 and not body["chunked"] and body["content_length"] is not None
    assert body["fields"] == {"title": "t\u00e9", "tags": ["x", "y"]}
    files = body["files"]
    assert files["plain"] == {"filename": "report.csv", "content_type": "application/octet-stream",
                              "length": 8, "sha256": _sha(b"a,b\n1,2\n")}
    assert files["raw"]["filename"] == "raw" and files["raw"]["sha256"] == _sha(b"\x00\x01bytes")
    assert files["named"]["filename"] == "n\"q.txt" and files["named"]["content_type"] == "text/plain"
    assert files["extra"]["content_type"] == "application/x-e" and files["extra"]["length"] == 10
    # a list of pairs works too, and a part whose size is unknown makes the body chunked
    r = c.post(gunicorn.url + "/multipart", data=[("k", "v")], files=[("u", ("u.bin", Unsized(b"U" * 70000)))])
    body = r.json()
    assert body["chunked"] and body["files"]["u"]["length"] == 70000 and body["fields"] == {"k": "v"}
    assert_exact(pool)


def test_data_content_and_body_shapes(no_leaks, gunicorn, pool):
    c = greenpool.Client(pool=pool)
    echo = gunicorn.url + "/echo"

    def sent(**kw):
        j = c.post(echo, **kw).json()
        return j["headers"].get("content-type"), j["body"]

    assert sent(data={"a": "1", "b": ["2", "3"]}) == ("application/x-www-form-urlencoded", "a=1&b=2&b=3")
    assert sent(data=[("a", "1"), ("a", "2")]) == ("application/x-www-form-urlencoded", "a=1&a=2")
    assert sent(data=b"raw") == (None, "raw")
    assert sent(data="text \u00e9") == (None, "text \u00e9")
    assert sent(data=io.BytesIO(b"file")) == (None, "file")
    assert sent(data=iter([b"it", b"er"])) == (None, "iter")
    assert sent(content=b"c", headers={"Content-Type": "x/y"}) == ("x/y", "c")
    with pytest.raises(TypeError):
        c.post(echo, data=b"x", json={})
    with pytest.raises(TypeError):
        c.post(echo, content={"a": 1})
    with pytest.raises(TypeError):
        c.post(echo, files={"f": b"x"}, data=b"not fields")
    assert greenpool.post(echo, data={"m": "1"}, pool=pool).json()["body"] == "m=1"
    assert_exact(pool)


def test_multipart_replayed_on_307(no_leaks, pool):
    def respond(req, sock):
        if req.target == "/first":
            return ok(b"", "Location: /second", status="307 Temporary Redirect")
        return ok(json.dumps({"len": len(req.body), "sha": _sha(req.body)}).encode())

    with HTTPFake(respond) as srv:
        c = greenpool.Client(pool=pool, follow_redirects=True)
        r = c.post(srv.url + "/first", files={"f": ("f", io.BytesIO(b"Z" * 100000))})
        first, second = srv.requests
        assert first.body == second.body and r.json()["sha"] == _sha(first.body) and r.history
    assert_exact(pool)


def test_stream_unit():
    m = MultipartStream({"a": "1"}, {"f": ("x", io.BytesIO(b"data"))}, boundary=b"B")
    whole = m.read()
    assert whole.startswith(b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n")
    assert whole.endswith(b"--B--\r\n") and len(whole) == m.length and m.seekable()
    m.seek(0)
    assert b"".join(iter(lambda: m.read(7), b"")) == whole
    assert not MultipartStream(None, {"u": Unsized(b"x")}).seekable()
    assert MultipartStream(None, {"u": Unsized(b"x")}).length is None
    with pytest.raises(TypeError):
        MultipartStream(None, {"bad": 3})
    with pytest.raises(greenpool.LocalProtocolError):
        MultipartStream(None, {"f": ("x", b"1", "t/p", {"X": "a\r\nb"})})


@pytest.mark.slow
def test_200_mib_upload_streams(no_leaks, gunicorn, pool, tmp_path):
    psutil = pytest.importorskip("psutil")
    size = 200 * 1024 * 1024
    path = tmp_path / "big.bin"
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)
            digest.update(block)
    proc = psutil.Process()
    c = greenpool.Client(pool=pool, http1_parser="httptools")
    c.post(gunicorn.url + "/multipart", files={"warm": b"up"})  # imports and buffers in place
    rss_before = proc.memory_info().rss
    with open(path, "rb") as f:
        r = c.post(gunicorn.url + "/multipart", data={"field": "v"},
                   files={"big": ("big.bin", f, "application/octet-stream")}, timeout=300)
    grown = proc.memory_info().rss - rss_before
    body = r.json()
    assert body["files"]["big"]["length"] == size and body["files"]["big"]["sha256"] == digest.hexdigest()
    assert body["fields"] == {"field": "v"} and not body["chunked"]
    assert grown < 20 * 1024 * 1024, grown
    assert_exact(pool)
