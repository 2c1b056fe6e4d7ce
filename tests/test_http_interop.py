"""The HTTP/1.1 client against real servers: nginx and gunicorn (gevent worker)."""
from __future__ import annotations

import hashlib

import gevent
import pytest

import greenpool
from greenpool import errors

from fakes import assert_exact
from servers import pattern


@pytest.fixture(params=["h11", "httptools"])
def parser(request):
    return request.param


@pytest.fixture
def pool():
    p = greenpool.GreenPool("test-interop", max_connections=20)
    yield p
    p.close()


@pytest.fixture
def client(pool, parser):
    return greenpool.Client(pool=pool, http1_parser=parser, timeout=10)


# -- nginx ----------------------------------------------------------------------------------


def test_nginx_small_and_large(no_leaks, nginx, client, pool):
    r = client.get(nginx.http_url + "/")
    assert r.status == 200 and r.content == nginx.small_body
    assert client.get(nginx.http_url + "/bytes/1m").content == nginx.file_bytes("/bytes/1m")
    with client.get(nginx.http_url + "/bytes/1m", stream=True) as r:
        assert sum(len(c) for c in r.iter_bytes(65536)) == 1024 * 1024
    assert pool.count() == 1
    assert_exact(pool)


def test_nginx_gzip(nginx, client):
    r = client.get(nginx.http_url + "/")
    assert r.headers.get("content-encoding") == "gzip" and r.content == nginx.small_body
    r = greenpool.Client(pool=client.pool, decode_content=False).get(nginx.http_url + "/")
    assert r.content == nginx.small_body and "content-encoding" not in r.headers


def test_nginx_concurrency(no_leaks, nginx, client, pool):
    def worker():
        for _ in range(20):
            assert client.get(nginx.http_url + "/").content == nginx.small_body
    gevent.joinall([gevent.spawn(worker) for _ in range(30)], raise_error=True)
    assert pool.count() <= 20
    assert_exact(pool)


@pytest.mark.parametrize("stream", [False, True])
def test_nginx_max_body_size(no_leaks, nginx, pool, parser, stream):
    """A Content-Length at the limit passes and one over it fails at the head; nginx's
    gzipped answers are chunked: over the limit while reading.  Failed ones are closed."""
    at = greenpool.Client(pool=pool, http1_parser=parser, max_body_size=64 * 1024)
    assert at.get(nginx.http_url + "/bytes/64k", stream=stream).read() == nginx.file_bytes("/bytes/64k")
    under = greenpool.Client(pool=pool, http1_parser=parser, max_body_size=64 * 1024 - 1)
    with pytest.raises(errors.LimitExceeded, match="Content-Length: 65536"):
        under.get(nginx.http_url + "/bytes/64k", stream=stream).read()
    tiny = greenpool.Client(pool=pool, http1_parser=parser, max_body_size=10)
    r = tiny.get(nginx.http_url + "/", stream=True)
    assert r.headers["transfer-encoding"] == "chunked" and r.headers["content-encoding"] == "gzip"
    with pytest.raises(errors.LimitExceeded, match="max_body_size=10 .*received so far"):
        r.read()
    with pytest.raises(errors.LimitExceeded, match="max_body_size=10 .*received so far"):
        tiny.get(nginx.http_url + "/", stream=stream).read()
    assert pool.count() == 0   # each failure closed its connection (the first one's, reused)
    assert_exact(pool)
    assert at.get(nginx.http_url + "/bytes/64k").content == nginx.file_bytes("/bytes/64k")
    assert pool.count() == 1 and pool.get_stats()["in_use_count"] == 0
    assert_exact(pool)


def test_nginx_statuses_head_close_upload(nginx, client, pool):
    assert client.get(nginx.http_url + "/status/404").status == 404
    assert client.get(nginx.http_url + "/status/204").content == b""
    assert client.head(nginx.http_url + "/bytes/64k").content == b""
    r = client.get(nginx.http_url + "/close")
    assert r.content == b"closing\n" and r.headers["connection"] == "close"
    r = client.post(nginx.http_url + "/upload", body=b"x" * 100000)
    assert r.content == b"ok\n"
    r = client.get(nginx.http_url + "/redirect", follow_redirects=True)
    assert r.content == nginx.small_body and r.history[0].status == 302
    assert_exact(pool)


def test_nginx_https(no_leaks, nginx, tls, pool, parser):
    c = greenpool.Client(pool=pool, http1_parser=parser, verify=tls.ca_path)
    assert c.get(nginx.https_h1_url + "/").content == nginx.small_body
    assert c.get(nginx.https_url + "/").http_version == "HTTP/1.1"  # http2 off: no ALPN h2
    for url in (nginx.expired_url, nginx.wrong_host_url, nginx.untrusted_url):
        with pytest.raises(errors.TLSError):
            c.get(url + "/")
    assert greenpool.Client(pool=pool, verify=False).get(nginx.expired_url + "/").status == 200
    pool.close()


def test_nginx_keepalive_timeout_and_requests(no_leaks, nginx_factory, pool, parser):
    n = nginx_factory(keepalive_timeout="1s 1", keepalive_requests=3)
    c = greenpool.Client(pool=pool, http1_parser=parser)
    r = c.get(n.http_url + "/")
    assert r.headers.get("keep-alive") == "timeout=1"
    (conn,) = pool._hosts[("127.0.0.1", n.http_port, "tcp")].idle
    assert conn.idle_timeout is not None and conn.idle_timeout < 1
    for _ in range(10):  # keepalive_requests=3: nginx closes every third
        assert c.get(n.http_url + "/").status == 200
    gevent.sleep(1.2)
    assert pool.count() == 0  # expired before nginx closed it
    assert c.get(n.http_url + "/").status == 200
    assert_exact(pool)


def test_nginx_restart_zero_errors(no_leaks, nginx_factory, pool, parser):
    n = nginx_factory()
    c = greenpool.Client(pool=pool, http1_parser=parser)
    gevent.joinall([gevent.spawn(c.get, n.http_url + "/") for _ in range(5)], raise_error=True)
    assert pool.count() >= 1
    n.restart()
    failures = 0
    for _ in range(10):
        try:
            assert c.get(n.http_url + "/").status == 200
        except errors.GreenPoolError:
            failures += 1
    assert failures == 0
    assert_exact(pool)


# -- gunicorn -------------------------------------------------------------------------------


def test_gunicorn_echo_and_bodies(gunicorn, client, pool):
    d = client.post(gunicorn.url + "/echo?a=1", json={"k": "v"}).json()
    assert d["method"] == "POST" and d["args"] == {"a": "1"} and d["body"] == '{"k":"v"}'
    data = bytes(range(256)) * 4000
    for body in (data, iter([data[:1000], data[1000:]])):
        d = client.post(gunicorn.url + "/upload", body=body).json()
        assert d["length"] == len(data) and d["sha256"] == hashlib.sha256(data).hexdigest()
    assert client.get(gunicorn.url + "/bytes/100000").content == pattern(100000)
    assert client.get(gunicorn.url + "/chunked/50000?chunk=1000").content == pattern(50000)
    assert_exact(pool)


def test_gunicorn_gzip_deflate(gunicorn, client):
    assert client.get(gunicorn.url + "/gzip").json()["gzip"] is True
    assert client.get(gunicorn.url + "/deflate").json()["deflated"] is True
    assert client.get(gunicorn.url + "/deflate?raw=1").json()["deflated"] is True


def test_gunicorn_redirects(gunicorn, client, pool):
    r = client.get(gunicorn.url + "/redirect/3", follow_redirects=True)
    assert r.json()["path"] == "/echo" and len(r.history) == 3
    r = client.get(gunicorn.url + "/redirect/2?absolute=1", follow_redirects=True)
    assert r.status == 200 and len(r.history) == 2
    with pytest.raises(errors.TooManyRedirects):
        client.get(gunicorn.url + "/redirect/7", follow_redirects=True)
    r = client.post(gunicorn.url + "/redirect-to?url=/echo&status=303", body=b"x",
                    follow_redirects=True)
    assert r.json()["method"] == "GET"
    r = client.post(gunicorn.url + "/redirect-to?url=/echo&status=307", body=b"x",
                    follow_redirects=True)
    assert r.json()["method"] == "POST" and r.json()["body"] == "x"
    assert_exact(pool)


def test_gunicorn_retry_after(gunicorn, client, parser):
    import uuid
    url = gunicorn.url + "/retry-after?key=" + uuid.uuid4().hex
    r = client.get(url, retries=greenpool.Retry(total=2, status_forcelist=[503]))
    assert r.status == 200 and r.json()["retried"] is True


def test_gunicorn_slow_and_stall(no_leaks, gunicorn, client, pool):
    with pytest.raises(errors.ReadTimeout):
        client.get(gunicorn.url + "/slow/2", timeout=greenpool.Timeout(read=0.3))
    with pytest.raises(errors.ReadTimeout):
        client.get(gunicorn.url + "/stall-body?seconds=3", timeout=greenpool.Timeout(read=0.3))
    assert client.get(gunicorn.url + "/slow/0.1").json() == {"slept": 0.1}
    assert_exact(pool)


def test_gunicorn_close(gunicorn, client, pool):
    for _ in range(3):
        assert client.get(gunicorn.url + "/close").content == b"closing\n"
    assert pool.count() == 0


def test_gunicorn_keepalive_closes_idle(no_leaks, gunicorn_factory, pool, parser):
    g = gunicorn_factory(workers=1, keepalive=1)
    c = greenpool.Client(pool=pool, http1_parser=parser)
    failures = 0
    for i in range(6):
        try:
            assert c.get(g.url + "/echo").status == 200
        except errors.GreenPoolError:
            failures += 1
        gevent.sleep(0.6 * (i % 3))
    assert failures == 0
    assert_exact(pool)
