"""HTTP/2 interop: greenpool.http.h2.transport against nginx (TLS ALPN and h2c), nghttpd and
hypercorn, started on loopback by the fixtures in conftest.py.

Each test ends with exact pool counts; the 500-greenlet tests count TCP connections on our
side with psutil as well as in the pool.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import time

import gevent
import psutil
import pytest
from gevent.event import Event

from greenpool import GreenPool
from greenpool.connection import Connection
from greenpool.errors import DecodingError, LimitExceeded
from greenpool.http.h2 import transport as h2transport
from greenpool.http.h2.conn import H2Config
from greenpool.http.models import Request, Timeout

from fakes import assert_exact
from servers import SMALL_BODY, pattern

MiB = 1024 * 1024


@pytest.fixture
def pool():
    p = GreenPool("h2interop", max_connections=20, checkout_timeout=10.0)
    yield p
    p.close()


def call(pool, url, method="GET", body=None, http2="prior_knowledge", verify=None, timeout=30.0,
         config=None, headers=None):
    cl = len(body) if isinstance(body, bytes) else None
    req = Request(method, url, headers, body=body, content_length=cl)
    opts = {"verify": verify} if verify is not None else {}
    return h2transport.handle(pool, req, Timeout(timeout), None, opts, http2, config)


def tcp_connections_to(port):
    return sum(1 for c in psutil.Process().net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def many(pool, url, n, verify=None, http2="prior_knowledge"):
    """n concurrent GETs whose streams are all open at once: each greenlet holds its
    response (the stream stays in use) until every one has its head."""
    heads = []
    all_in = Event()

    def one():
        r = call(pool, url, verify=verify, http2=http2)
        heads.append(r)
        if len(heads) == n:
            all_in.set()
        all_in.wait(60)
        return r.status, len(r.read())
    gs = [gevent.spawn(one) for _ in range(n)]
    return [g.get(timeout=60) for g in gs]


# -- nginx --


def test_nginx_h2c_get_and_post(nginx, pool, no_leaks):
    r = call(pool, nginx.h2c_url + "/")
    assert (r.status, r.http_version, r.read()) == (200, "HTTP/2", SMALL_BODY)
    r = call(pool, nginx.h2c_url + "/bytes/1m")
    assert r.read() == nginx.file_bytes("/bytes/1m")
    r = call(pool, nginx.h2c_url + "/upload", "POST", body=b"x" * 300000)
    assert r.status == 200
    assert pool.get_stats()["created"] == 1
    assert_exact(pool)
    pool.close()


def test_nginx_tls_alpn_h2_is_remembered(nginx, tls, pool, no_leaks):
    ca = str(tls.ca_path)
    port = int(nginx.https_url.rsplit(":", 1)[1])
    assert h2transport.origin_protocol(pool, "127.0.0.1", port) is None
    r = call(pool, nginx.https_url + "/", http2=True, verify=ca)
    assert (r.http_version, r.read()) == ("HTTP/2", SMALL_BODY)
    assert h2transport.origin_protocol(pool, "127.0.0.1", port) == "h2"
    r = call(pool, nginx.https_url + "/data.json", http2=True, verify=ca,
             headers={"accept-encoding": "gzip"})
    json.loads(r.read())
    assert pool.get_stats()["created"] == 1 and pool.get_stats()["shared_count"] == 1
    assert_exact(pool)
    pool.close()


def test_nginx_tls_http11_only_hands_back_an_exclusive_connection(nginx, tls, pool, no_leaks):
    ca = str(tls.ca_path)
    port = int(nginx.https_h1_url.rsplit(":", 1)[1])
    conn = call(pool, nginx.https_h1_url + "/", http2=True, verify=ca)
    assert isinstance(conn, Connection) and conn.alpn_protocol() == "http/1.1"
    assert h2transport.origin_protocol(pool, "127.0.0.1", port) == "http/1.1"
    pool.checkin(conn)
    again = call(pool, nginx.https_h1_url + "/", http2=True, verify=ca)
    assert again is conn                     # no new probe: the idle HTTP/1.1 connection
    pool.checkin(again)
    assert pool.get_stats()["shared_count"] == 0
    assert_exact(pool)
    pool.close()


@pytest.mark.parametrize("limit", [100, 1000])
def test_nginx_500_concurrent_gets_connection_count(nginx_factory, limit, no_leaks):
    server = nginx_factory(http2_max_concurrent_streams=limit, keepalive_requests=100000)
    pool = GreenPool("h2many", max_connections=20, checkout_timeout=30.0)
    try:
        results = many(pool, server.h2c_url + "/", 500)
        assert results == [(200, 100)] * 500
        expected = math.ceil(500 / limit) if limit < 500 else 1
        assert pool.get_stats()["created"] == expected
        assert tcp_connections_to(server.h2c_port) == expected
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
    finally:
        pool.close()


def test_nginx_tls_500_concurrent_gets_one_connection(nginx_factory, tls, no_leaks):
    server = nginx_factory(http2_max_concurrent_streams=1000, keepalive_requests=100000)
    pool = GreenPool("h2manytls", max_connections=20, checkout_timeout=30.0)
    try:
        results = many(pool, server.https_url + "/", 500, verify=str(tls.ca_path), http2=True)
        assert results == [(200, 100)] * 500
        assert pool.get_stats()["created"] == 1
        assert tcp_connections_to(server.https_port) == 1
        assert_exact(pool)
    finally:
        pool.close()


# -- nghttpd --


def test_nghttpd_get_and_echo_upload(nghttpd, pool, no_leaks):
    r = call(pool, nghttpd.url + "/")
    assert (r.status, r.read()) == (200, SMALL_BODY)
    r = call(pool, nghttpd.url + "/bytes/1m")
    assert r.read() == pattern(MiB)
    body = bytes(range(256)) * 4096
    r = call(pool, nghttpd.url + "/", "POST", body=body)
    assert r.read() == body
    assert_exact(pool)
    pool.close()


def test_nghttpd_tls(nghttpd_tls, tls, pool, no_leaks):
    r = call(pool, nghttpd_tls.url + "/", http2=True, verify=str(tls.ca_path))
    assert (r.http_version, r.read()) == ("HTTP/2", SMALL_BODY)
    assert_exact(pool)
    pool.close()


def test_nghttpd_stream_limit_500_gets(nghttpd_factory, no_leaks):
    server = nghttpd_factory(max_concurrent_streams=100)
    pool = GreenPool("h2ng", max_connections=20, checkout_timeout=30.0)
    try:
        assert many(pool, server.url + "/", 500) == [(200, 100)] * 500
        assert pool.get_stats()["created"] == 5
        assert tcp_connections_to(server.port) == 5
        assert_exact(pool)
    finally:
        pool.close()


# -- hypercorn --


def test_hypercorn_echo_h2c_and_tls(hypercorn, tls, pool, no_leaks):
    r = call(pool, hypercorn.url + "/echo?a=1", "POST", body=b"hello",
             headers={"x-test": "1", "connection": "keep-alive"})
    data = r.json()
    assert data["http_version"] == "2" and data["body"] == "hello" and data["args"] == {"a": "1"}
    assert data["headers"]["x-test"] == "1" and "connection" not in data["headers"]
    r = call(pool, hypercorn.https_url + "/echo", http2=True, verify=str(tls.ca_path))
    assert r.json()["http_version"] == "2"
    assert_exact(pool)
    pool.close()


def test_hypercorn_64mib_upload_and_download_small_windows(hypercorn, pool, no_leaks):
    cfg = H2Config(initial_window_size=65535, connection_window_size=256 * 1024)
    size = 64 * MiB
    chunk = pattern(MiB)

    def source():
        for _ in range(64):
            yield chunk

    req = Request("POST", hypercorn.url + "/upload", body=source(), content_length=size)
    r = h2transport.handle(pool, req, Timeout(120), None, {}, "prior_knowledge", cfg)
    expect = hashlib.sha256(chunk * 64).hexdigest()
    assert r.json() == {"length": size, "sha256": expect}

    r = call(pool, hypercorn.url + "/bytes/%d" % size, config=cfg, timeout=120)
    digest = hashlib.sha256()
    got = peak = 0
    while True:
        data = r.stream.read_chunk(65536)
        if not data:
            break
        got += len(data)
        digest.update(data)
        peak = max(peak, r.stream.st.buffered)
    assert got == size and digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()
    assert peak <= 65535
    assert_exact(pool)
    pool.close()


def test_hypercorn_slow_stream_and_concurrency(hypercorn, pool, no_leaks):
    t0 = time.monotonic()
    gs = [gevent.spawn(lambda: call(pool, hypercorn.url + "/slow/1.0").json()) for _ in range(20)]
    assert [g.get(timeout=30) for g in gs] == [{"slept": 1.0}] * 20
    assert time.monotonic() - t0 < 10         # concurrent streams: one after another takes 20 s
    r = call(pool, hypercorn.url + "/stream/100000?chunk=1000")
    assert r.read() == pattern(100000)
    assert pool.get_stats()["created"] == 1
    assert_exact(pool)
    pool.close()


# -- through the public client (greenpool.request / Client) --

greenpool = pytest.importorskip("greenpool")
if not hasattr(greenpool, "request"):  # pragma: no cover - the client lands separately
    pytest.skip("greenpool.request is not there yet", allow_module_level=True)


def test_request_h2c_prior_knowledge(nginx, pool, no_leaks):
    r = greenpool.request("GET", nginx.h2c_url + "/", pool=pool, http2="prior_knowledge")
    assert (r.status, r.http_version, r.content) == (200, "HTTP/2", SMALL_BODY)
    r = greenpool.request("POST", nginx.h2c_url + "/upload", pool=pool, http2="prior_knowledge",
                          body=b"x" * 100000)
    assert r.status == 200 and r.http_version == "HTTP/2"
    assert pool.get_stats()["shared_count"] == 1 and pool.get_stats()["shared_users"] == 0
    assert_exact(pool)
    pool.close()


def test_request_http2_true_alpn_h2_and_http11(nginx, tls, pool, no_leaks):
    ca = str(tls.ca_path)
    r = greenpool.request("GET", nginx.https_url + "/", pool=pool, http2=True, verify=ca)
    assert (r.http_version, r.content) == ("HTTP/2", SMALL_BODY)
    r = greenpool.request("GET", nginx.https_h1_url + "/", pool=pool, http2=True, verify=ca)
    assert (r.http_version, r.content) == ("HTTP/1.1", SMALL_BODY)
    r = greenpool.request("GET", nginx.https_h1_url + "/", pool=pool, http2=True, verify=ca)
    assert r.http_version == "HTTP/1.1"     # (the client keeps custom-CA connections in a
    assert_exact(pool)                       # companion pool of its own)
    pool.close()


def test_client_http2_concurrent_and_json(hypercorn, pool, no_leaks):
    with greenpool.Client(pool=pool, base_url=hypercorn.url, http2="prior_knowledge") as c:
        gs = [gevent.spawn(lambda i=i: c.post("/echo", json={"i": i}).json()) for i in range(50)]
        out = [g.get(timeout=10) for g in gs]
    assert all(o["http_version"] == "2" for o in out)
    assert sorted(json.loads(o["body"])["i"] for o in out) == list(range(50))
    assert pool.get_stats()["created"] == 1
    assert_exact(pool)
    pool.close()


def test_client_h2_decode_content_and_max_decoded_size_reach_http2(nginx, pool, no_leaks):
    """Client(decode_content=..., max_decoded_size=...) options apply to HTTP/2 responses
    (nginx gzips /data.json when asked)."""
    url = nginx.h2c_url + "/data.json"
    with greenpool.Client(pool=pool, http2="prior_knowledge", decode_content=False,
                          headers={"Accept-Encoding": "gzip"}) as c:
        r = c.get(url)
        assert r.http_version == "HTTP/2" and r.headers["content-encoding"] == "gzip"
        assert r.content[:2] == b"\x1f\x8b"                 # raw, as sent
        data = json.loads(gzip.decompress(r.content))
        assert len(data["items"]) == 64
    with greenpool.Client(pool=pool, http2="prior_knowledge") as c:
        r = c.get(url)
        assert r.http_version == "HTTP/2" and r.headers["content-encoding"] == "gzip"
        assert r.json() == data                                # decoded
    with greenpool.Client(pool=pool, http2="prior_knowledge", max_decoded_size=100) as c:
        with pytest.raises(DecodingError, match="max_decoded_size=100"):
            c.get(url)
    assert pool.get_stats()["shared_count"] == 1 and pool.get_stats()["shared_users"] == 0
    assert_exact(pool)
    pool.close()


@pytest.mark.parametrize("route", ["h2c", "h2-tls"])
@pytest.mark.parametrize("stream", [False, True])
def test_client_h2_max_body_size_fails_that_stream_only(nginx, tls, pool, route, stream, no_leaks):
    """Client(max_body_size=...) reaches HTTP/2: a content-length over it fails at the head,
    a gzipped body (no content-length) over it while reading; the connection carries on."""
    import greenpool
    if route == "h2c":
        base, kw = nginx.h2c_url, {"http2": "prior_knowledge"}
    else:
        base, kw = nginx.https_url, {"http2": True, "verify": tls.ca_bundle}
    at = greenpool.Client(pool=pool, max_body_size=64 * 1024, **kw)
    r = at.get(base + "/bytes/64k", stream=stream)
    assert r.http_version == "HTTP/2" and r.read() == nginx.file_bytes("/bytes/64k")
    with pytest.raises(LimitExceeded, match="max_body_size=65536 .*content-length: 1048576"):
        at.get(base + "/bytes/1m", stream=stream).read()
    tiny = greenpool.Client(pool=pool, max_body_size=10, **kw)
    with pytest.raises(LimitExceeded, match="max_body_size=10 .*received so far"):
        tiny.get(base + "/", stream=stream).read()
    r = greenpool.Client(pool=pool, **kw).get(base + "/")
    assert r.headers["content-encoding"] == "gzip" and "content-length" not in r.headers
    assert r.content == SMALL_BODY
    used = pool  # verify=<CA> connections are the pool's too (under a tagged key)
    stats = used.get_stats()
    assert stats["shared_count"] == 1 and stats["shared_users"] == 0 and stats["open"] == 1
    assert_exact(used)
    pool.close()


def test_client_h2_max_header_size_fails_that_request_only(hypercorn, pool, no_leaks):
    """Client(max_header_size=...) reaches HTTP/2: a response head over it fails that request
    with LimitExceeded and the shared connection carries on."""
    with greenpool.Client(pool=pool, base_url=hypercorn.url, http2="prior_knowledge",
                          max_header_size=100) as c:
        with pytest.raises(LimitExceeded, match="max_header_size"):
            c.get("/echo")
    with greenpool.Client(pool=pool, base_url=hypercorn.url, http2="prior_knowledge") as c:
        assert c.post("/echo", json={"i": 1}).status == 200
    assert pool.get_stats()["created"] == 1 and pool.get_stats()["shared_count"] == 1
    assert_exact(pool)
    pool.close()


@pytest.mark.parametrize("posts", [False, True])
def test_client_h2_nginx_closing_after_keepalive_requests_loses_nothing(nginx_factory, posts,
                                                                        no_leaks):
    """nginx ends an HTTP/2 connection after ``keepalive_requests`` streams (GOAWAY, then
    close; ``http2_max_requests`` is obsolete in 1.22): streams caught writing at that moment
    (broken pipe, reset) were never processed and go again on a new connection, so 50
    greenlets x 100 requests see no error at all.  (With ``lingering_close off`` nginx
    resets at once and can drop responses it already started: not a case to retry.)"""
    server = nginx_factory(keepalive_requests=50)
    pool = GreenPool("h2maxreq", max_connections=50, checkout_timeout=30.0)
    errors = []

    def worker(c, i):
        for j in range(100):
            try:
                if posts and j % 2:
                    r = c.post("/upload", body=b"p%d-%d" % (i, j))
                    assert (r.status, r.content) == (200, b"ok\n")
                else:
                    r = c.get("/")
                    assert (r.status, r.content) == (200, SMALL_BODY)
                assert r.http_version == "HTTP/2"
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append("%s: %r" % ("POST" if posts and j % 2 else "GET", e))
    try:
        with greenpool.Client(pool=pool, base_url=server.h2c_url, http2="prior_knowledge") as c:
            gs = [gevent.spawn(worker, c, i) for i in range(50)]
            gevent.joinall(gs, timeout=120, raise_error=True)
            assert all(g.dead for g in gs)
        assert errors == []
        assert pool.get_stats()["created"] >= 5000 // 50
        gevent.sleep(0.2)
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
    finally:
        pool.close()
