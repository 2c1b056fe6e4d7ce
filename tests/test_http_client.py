"""The HTTP client against in-process fake servers: both parser backends run every test.

Every fault test ends with ``assert_exact(pool)`` and runs under ``no_leaks``.
"""
from __future__ import annotations

import gzip
import io
import json
import socket
import struct
import zlib

import gevent
import pytest
from httpfakes import CLOSE, HTTPFake, ok

import greenpool
from greenpool import errors
from greenpool.http.client import _bypass, _proxies_from_env

from fakes import assert_exact, refused_port, settle

PARSERS = ["h11", "httptools"]


@pytest.fixture(params=PARSERS)
def parser(request):
    return request.param


@pytest.fixture
def pool():
    p = greenpool.GreenPool("test-http", max_connections=10)
    yield p
    p.close()


@pytest.fixture
def client(pool, parser):
    return greenpool.Client(pool=pool, http1_parser=parser)


def echo_json(req, sock):
    body = json.dumps({"method": req.method, "target": req.target, "headers": req.headers,
                       "body": req.body.decode("latin-1")}).encode()
    return ok(body, "Content-Type: application/json")


# -- basics -------------------------------------------------------------------------------


def test_get_reuses_connection(client, pool, no_leaks):
    with HTTPFake(lambda r, s: ok(b"hi")) as srv:
        for _ in range(3):
            r = client.get(srv.url + "/x?a=1")
            assert (r.status, r.reason, r.http_version, r.content) == (200, "OK", "HTTP/1.1", b"hi")
            assert r.text == "hi" and r.ok and r.url == srv.url + "/x?a=1"
        assert srv.accepted == 1
        assert [q.n for q in srv.requests] == [1, 2, 3]
        assert pool.get_stats()["free_count"] == 1
        assert_exact(pool)


def test_request_head_and_default_headers(client, pool):
    with HTTPFake(echo_json) as srv:
        r = client.get(srv.url + "/p", params={"q": "a b"}, headers={"X-One": "1"})
        data = r.json()
        assert data["target"] == "/p?q=a+b"
        h = data["headers"]
        assert h["host"] == "127.0.0.1:%d" % srv.port
        assert h["x-one"] == "1" and h["accept"] == "*/*"
        assert "gzip" in h["accept-encoding"] and h["user-agent"].startswith("greenpool/")
        # per-request headers replace defaults by name
        h = client.get(srv.url, headers={"accept": "text/plain"}).json()["headers"]
        assert h["accept"] == "text/plain"
    assert_exact(pool)


def test_module_level_functions(parser):
    p = greenpool.start_pool("test-http-module", max_connections=4)
    try:
        with HTTPFake(echo_json) as srv:
            assert greenpool.get(srv.url, pool="test-http-module").json()["method"] == "GET"
            for name in ("post", "put", "patch", "delete", "options"):
                fn = getattr(greenpool, name)
                assert fn(srv.url, pool=p, http1_parser=parser).json()["method"] == name.upper()
            r = greenpool.head(srv.url, pool=p)
            assert r.status == 200 and r.content == b""
            r = greenpool.request("GET", srv.url, pool=p, headers=[("X-A", "1"), ("X-A", "2")])
            assert r.json()["headers"]["x-a"] in ("1", "2")
            with pytest.raises(TypeError):
                greenpool.get(srv.url, pool=p, bogus=1)
        assert_exact(p)
    finally:
        greenpool.stop_pool("test-http-module")


def test_client_base_url_headers_and_context_manager(pool, parser):
    with HTTPFake(echo_json) as srv:
        with greenpool.Client(pool=pool, base_url=srv.url + "/api/", headers={"X-C": "c"},
                              http1_parser=parser, timeout=5) as c:
            d = c.get("items").json()
            assert d["target"] == "/api/items" and d["headers"]["x-c"] == "c"
            assert "Client" in repr(c)
        assert c.closed
        with pytest.raises(errors.HTTPError):
            c.get("items")


def test_response_headers_case_insensitive_multi(client, pool):
    resp = ok(b"x", "Set-Cookie: a=1", "Set-Cookie: b=2", "X-Thing: Y")
    with HTTPFake(lambda r, s: resp) as srv:
        r = client.get(srv.url)
        assert r.headers["x-thing"] == "Y" and r.headers["X-THING"] == "Y"
        assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
        assert list(r.headers)[0] == "content-length"


def test_connection_close_is_honoured(client, pool, no_leaks):
    with HTTPFake(lambda r, s: ok(b"bye", "Connection: close")) as srv:
        for _ in range(2):
            assert client.get(srv.url).content == b"bye"
        assert srv.accepted == 2
        assert pool.count() == 0
    assert_exact(pool)


def test_keep_alive_timeout_lowers_idle_timeout(client, pool, no_leaks):
    with HTTPFake(lambda r, s: ok(b"k", "Keep-Alive: timeout=1")) as srv:
        client.get(srv.url)
        (conn,) = pool._hosts[("127.0.0.1", srv.port, "tcp")].idle
        assert conn.idle_timeout is not None and conn.idle_timeout <= 1
        gevent.sleep(conn.idle_timeout + 0.2)
        assert pool.count() == 0 and pool.counters["expired"] == 1
    assert_exact(pool)


def test_http10_and_close_delimited(client, pool, no_leaks):
    def respond(req, sock):
        if req.target == "/ka":
            return b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
        sock.sendall(b"HTTP/1.0 200 OK\r\n\r\nuntil close")
        return CLOSE
    with HTTPFake(respond) as srv:
        r = client.get(srv.url + "/eof")
        assert r.content == b"until close" and r.http_version == "HTTP/1.0"
        assert client.get(srv.url + "/ka").content == b"ok"
        assert pool.count() == 1  # the keep-alive 1.0 response kept its connection
    assert_exact(pool)


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(client, pool, status):
    with HTTPFake(lambda r, s: b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status) as srv:
        r = client.get(srv.url)
        assert r.status == status and r.content == b""
        assert client.get(srv.url).status == status
        assert srv.accepted == 1
    assert_exact(pool)


def test_head_has_no_body(client, pool):
    with HTTPFake(lambda r, s: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n") as srv:
        r = client.head(srv.url)
        assert r.status == 200 and r.headers["content-length"] == "100" and r.content == b""
        assert client.head(srv.url).status == 200 and srv.accepted == 1


def test_informational_then_final(client, pool):
    with HTTPFake(lambda r, s: b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"final")) as srv:
        r = client.get(srv.url)
        assert r.status == 200 and r.content == b"final"


def test_chunked_with_trailers(client, pool):
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    with HTTPFake(lambda r, s: resp) as srv:
        assert client.get(srv.url).content == b"hello world"
        r = client.get(srv.url, stream=True)
        assert list(r.iter_bytes(3)) == [b"hel", b"lo ", b"wor", b"ld"]
        assert r.trailers is None
        assert srv.accepted == 1
    assert_exact(pool)


# -- streaming ------------------------------------------------------------------------------


def test_stream_read_to_end_checks_in(client, pool, no_leaks):
    body = bytes(range(256)) * 1000
    with HTTPFake(lambda r, s: ok(body)) as srv:
        with client.get(srv.url, stream=True) as r:
            assert pool.get_stats()["in_use_count"] == 1
            got = b"".join(r.iter_raw(10000))
        assert got == body and pool.get_stats()["free_count"] == 1
        with pytest.raises(errors.StreamConsumed):
            list(r.iter_raw())
    assert_exact(pool)


def test_stream_closed_early_closes_connection(client, pool, no_leaks):
    big = b"x" * (4 * 1024 * 1024)
    with HTTPFake(lambda r, s: ok(big)) as srv:
        r = client.get(srv.url, stream=True)
        assert len(next(r.iter_raw(1000))) == 1000
        r.close()
        assert pool.count() == 0  # never a half-read socket back in the pool
        assert client.get(srv.url).content == big
        assert srv.accepted == 2
    assert_exact(pool)


def test_stream_close_drains_small_buffered_remainder(client, pool, no_leaks):
    with HTTPFake(lambda r, s: ok(b"y" * 2000)) as srv:
        r = client.get(srv.url, stream=True)
        settle(0.05)
        r.stream.read_chunk(10)  # the whole small body is in the adapter now
        r.close()
        assert pool.get_stats()["free_count"] == 1
        client.get(srv.url)
        assert srv.accepted == 1
    assert_exact(pool)


def test_dropped_response_is_released(client, pool, no_leaks):
    with HTTPFake(lambda r, s: ok(b"z" * 100000)) as srv:
        r = client.get(srv.url, stream=True)
        del r
        import gc
        gc.collect()
        assert pool.get_stats()["in_use_count"] == 0
    assert_exact(pool)


# -- faults ---------------------------------------------------------------------------------

FAULTS = {
    "malformed status line": (b"HTTP/1.1 2x0 OK\r\n\r\n", errors.RemoteProtocolError),
    "garbage": (b"SSH-2.0-OpenSSH\r\n\r\n", errors.RemoteProtocolError),
    "oversized headers": (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
                          errors.LimitExceeded),
    "too many headers": (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 300 + b"\r\n", errors.LimitExceeded),
    "invalid chunk size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
                           errors.RemoteProtocolError),
    "short body": (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", errors.RemoteProtocolError),
    "both framings": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                      errors.RemoteProtocolError),
    "truncated chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                          errors.RemoteProtocolError),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", sorted(FAULTS))
def test_malformed_responses(client, pool, no_leaks, case, stream):
    raw, exc = FAULTS[case]

    def respond(req, sock):
        sock.sendall(raw)
        return CLOSE
    with HTTPFake(respond) as srv:
        with pytest.raises(exc):
            r = client.get(srv.url, stream=stream)
            r.read()
        assert pool.count() == 0
        assert_exact(pool)


@pytest.mark.parametrize("headers", [
    {"X-Bad": "a\r\nInjected: 1"}, {"X-Bad\r\nInjected": "1"}, {"X-Bad": "a\nb"},
    {"X-Nul": "a\x00b"}, {"Bad Name": "x"},
])
def test_header_injection_rejected_before_sending(client, pool, no_leaks, headers):
    with HTTPFake(lambda r, s: ok()) as srv:
        client.get(srv.url)  # an open connection that must stay usable
        with pytest.raises(errors.LocalProtocolError):
            client.get(srv.url, headers=headers)
        assert len(srv.requests) == 1  # nothing of the bad request reached the server
        assert client.get(srv.url).status == 200 and srv.accepted == 1
    assert_exact(pool)


def test_non_latin1_header_rejected(client, pool):
    with HTTPFake(lambda r, s: ok()) as srv:
        with pytest.raises(errors.LocalProtocolError):
            client.get(srv.url, headers={"X": "snow\u2603"})
        assert srv.requests == []


def test_stall_mid_body_read_timeout(client, pool, no_leaks):
    def respond(req, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
        gevent.sleep(5)
        return CLOSE
    with HTTPFake(respond) as srv:
        with pytest.raises(errors.ReadTimeout):
            client.get(srv.url, timeout=greenpool.Timeout(read=0.2))
        assert pool.count() == 0
        r = client.get(srv.url, stream=True, timeout=0.2)
        with pytest.raises(errors.ReadTimeout):
            r.read()
        assert_exact(pool)
        srv.close_clients()


def test_total_timeout(client, pool, no_leaks):
    def respond(req, sock):
        for _ in range(20):
            gevent.sleep(0.05)
        return ok()
    with HTTPFake(respond) as srv:
        with pytest.raises(errors.TimeoutException):
            client.get(srv.url, timeout=greenpool.Timeout(read=5, total=0.3))
        assert_exact(pool)
        srv.close_clients()


def test_reset_mid_body(client, pool, no_leaks):
    def respond(req, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        gevent.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return CLOSE
    with HTTPFake(respond) as srv:
        with pytest.raises((errors.ReadError, errors.RemoteProtocolError)):
            client.get(srv.url)
        assert_exact(pool)
        assert pool.count() == 0


def test_greenlet_killed_while_streaming(client, pool, no_leaks):
    def respond(req, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 10)
        gevent.sleep(5)
        return CLOSE
    with HTTPFake(respond) as srv:
        started = gevent.event.Event()

        def reader():
            r = client.get(srv.url, stream=True)
            started.set()
            for _ in r.iter_raw(5):
                pass
        g = gevent.spawn(reader)
        started.wait(2)
        settle(0.05)
        g.kill()
        assert pool.count() == 0
        assert_exact(pool)
        srv.close_clients()


def test_caller_gevent_timeout_propagates(client, pool, no_leaks):
    def respond(req, sock):
        gevent.sleep(5)
        return CLOSE
    with HTTPFake(respond) as srv:
        t = gevent.Timeout(0.1)
        with pytest.raises(gevent.Timeout) as info:
            with t:
                client.get(srv.url)
        assert info.value is t
        assert_exact(pool)
        assert pool.count() == 0
        srv.close_clients()


def test_connect_refused(client, pool, no_leaks):
    with pytest.raises(errors.ConnectError):
        client.get("http://127.0.0.1:%d/" % refused_port())
    assert_exact(pool)


def test_pool_timeout_counts(pool, parser, no_leaks):
    small = greenpool.GreenPool("tiny", max_connections=1)

    def respond(req, sock):
        gevent.sleep(0.5)
        return ok()
    try:
        c = greenpool.Client(pool=small, http1_parser=parser)
        with HTTPFake(respond) as srv:
            g = gevent.spawn(c.get, srv.url)
            settle(0.05)
            with pytest.raises(errors.PoolTimeout):
                c.get(srv.url, timeout=greenpool.Timeout(pool=0.1))
            with pytest.raises(errors.PoolTimeout):
                c.get(srv.url, timeout=greenpool.Timeout(total=0.1))
            g.get()
            assert_exact(small)
    finally:
        small.close()


# -- stale connections ----------------------------------------------------------------------


def one_per_connection(req, sock):
    """Answer the first request of each connection; close on the next without answering."""
    if req.n > 1:
        return CLOSE
    return ok(b"fresh")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_stale_connection_retried_for_idempotent(client, pool, no_leaks, method):
    with HTTPFake(one_per_connection) as srv:
        for _ in range(4):
            assert client.request(method, srv.url, body=b"data").content == b"fresh"
        assert srv.accepted >= 4
        assert_exact(pool)


def test_stale_post_not_retried_after_write(client, pool, no_leaks):
    with HTTPFake(one_per_connection) as srv:
        assert client.post(srv.url, body=b"x").status == 200
        with pytest.raises(errors.ConnectionClosed):
            client.post(srv.url, body=b"x")
        assert_exact(pool)


def test_server_closes_right_after_response(client, pool, no_leaks):
    """The server closes the keep-alive connection just after answering (no header says so)."""
    def respond(req, sock):
        sock.sendall(ok(b"bye-later"))
        gevent.sleep(0.01)
        return CLOSE
    with HTTPFake(respond) as srv:
        for i in range(10):  # GET: retried on a fresh connection whenever the race is lost
            assert client.get(srv.url).content == b"bye-later"
            if i % 3 == 0:
                settle(0.05)
        for i in range(3):  # POST after the close was seen: the idle watcher dropped it
            settle(0.05)
            assert client.post(srv.url, body=b"x").content == b"bye-later"
        assert_exact(pool)


def test_stale_after_server_restart(client, pool, no_leaks):
    from gevent.server import StreamServer
    with HTTPFake(lambda r, s: ok(b"one")) as srv:
        for _ in range(3):
            gevent.joinall([gevent.spawn(client.get, srv.url) for _ in range(3)])
        idle_before = pool.count()
        # "restart": every connection drops, a new server answers on the same port
        srv.server.stop()
        srv.close_clients(reset=True)
        srv.respond = lambda r, s: ok(b"two")
        srv.server = StreamServer(("127.0.0.1", srv.port), srv._handle)
        srv.server.start()
        errors_seen = 0
        for _ in range(5):
            try:
                assert client.get(srv.url).content == b"two"
            except errors.GreenPoolError:
                errors_seen += 1
        assert errors_seen == 0 and idle_before >= 1
        assert_exact(pool)


# -- bodies ---------------------------------------------------------------------------------


def test_request_bodies(client, pool):
    with HTTPFake(echo_json) as srv:
        d = client.post(srv.url, body=b"raw").json()
        assert d["body"] == "raw" and d["headers"]["content-length"] == "3"
        assert client.post(srv.url, body="t\u00e9xt").json()["body"] == "t\u00e9xt".encode().decode("latin-1")
        d = client.post(srv.url, json={"a": [1, 2]}).json()
        assert json.loads(d["body"]) == {"a": [1, 2]}
        assert d["headers"]["content-type"] == "application/json"
        d = client.post(srv.url, body={"k": "v w"}).json()
        assert d["body"] == "k=v+w" and "urlencoded" in d["headers"]["content-type"]
        d = client.put(srv.url, body=io.BytesIO(b"file-data")).json()
        assert d["body"] == "file-data" and d["headers"]["content-length"] == "9"
        d = client.post(srv.url, body=(c for c in [b"gen", b"", "erated"])).json()
        assert d["body"] == "generated" and d["headers"]["transfer-encoding"] == "chunked"
        d = client.post(srv.url, body=iter([b"ab"]), headers={"Content-Length": "2"}).json()
        assert d["body"] == "ab" and d["headers"]["content-length"] == "2"
        d = client.post(srv.url).json()
        assert d["headers"]["content-length"] == "0"
        assert "content-length" not in client.get(srv.url).json()["headers"]
        big = bytes(200000)
        assert len(client.post(srv.url, body=big).json()["body"]) == 200000
        with pytest.raises(TypeError):
            client.post(srv.url, body=b"x", json={})
        with pytest.raises(TypeError):
            client.post(srv.url, body=12)
    assert_exact(pool)


def test_file_body_too_short_for_declared_length(client, pool, no_leaks):
    with HTTPFake(echo_json) as srv:
        with pytest.raises(errors.LocalProtocolError):
            client.post(srv.url, body=iter([b"a"]), headers={"Content-Length": "5"})
        assert_exact(pool)
        srv.close_clients()


@pytest.mark.parametrize("answer", ["continue", "final", "silent"])
def test_expect_continue(pool, parser, answer, no_leaks):
    def hook(sock):
        if answer == "continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def respond(req, sock):
        return ok(req.body)
    c = greenpool.Client(pool=pool, http1_parser=parser, expect_continue=True)
    if answer == "final":
        def early(req_sock):
            req_sock.sendall(ok(b"rejected", status="417 Expectation Failed"))
        srv = HTTPFake(lambda r, s: CLOSE, expect_hook=early)
    else:
        srv = HTTPFake(respond, expect_hook=hook)
    with srv:
        r = c.post(srv.url, body=b"payload")
        if answer == "final":
            assert r.status == 417 and r.content == b"rejected"
            assert pool.count() == 0
        else:
            assert r.content == b"payload"
            assert srv.requests[0].headers["expect"] == "100-continue"
        assert_exact(pool)


# -- decoding -------------------------------------------------------------------------------


def test_gzip_response_and_cap(pool, parser, no_leaks):
    payload = b'{"k": "' + b"v" * 5000 + b'"}'
    z = gzip.compress(payload)
    with HTTPFake(lambda r, s: ok(z, "Content-Encoding: gzip")) as srv:
        c = greenpool.Client(pool=pool, http1_parser=parser)
        assert c.get(srv.url).content == payload
        r = c.get(srv.url, stream=True)
        assert b"".join(r.iter_bytes(100)) == payload
        raw = greenpool.Client(pool=pool, http1_parser=parser, decode_content=False)
        assert raw.get(srv.url).content == z
        small = greenpool.Client(pool=pool, http1_parser=parser, max_decoded_size=1000)
        with pytest.raises(errors.DecodingError):
            small.get(srv.url)
        with pytest.raises(errors.DecodingError):
            small.get(srv.url, stream=True).read()
        assert_exact(pool)


def test_content_encoding_over_several_fields(pool, parser, no_leaks):
    # RFC 9110 5.3: two Content-Encoding fields mean one list, in order (as HTTP/2 reads them)
    payload = b"greenpool " * 500
    z = zlib.compress(gzip.compress(payload))     # gzip applied first, then deflate
    with HTTPFake(lambda r, s: ok(z, "Content-Encoding: gzip", "Content-Encoding: deflate")) as srv:
        c = greenpool.Client(pool=pool, http1_parser=parser)
        assert c.get(srv.url).content == payload
        assert b"".join(c.get(srv.url, stream=True).iter_bytes(100)) == payload
        assert c.get(srv.url).headers["content-encoding"] == "gzip, deflate"
        assert_exact(pool)


def test_bad_gzip(client, pool):
    with HTTPFake(lambda r, s: ok(b"not gzip at all", "Content-Encoding: gzip")) as srv:
        with pytest.raises(errors.DecodingError):
            client.get(srv.url)
    assert_exact(pool)


# -- redirects ------------------------------------------------------------------------------


def test_redirect_chain_and_history(client, pool):
    def respond(req, sock):
        if req.target.startswith("/r/"):
            n = int(req.target[3:])
            loc = "/r/%d" % (n - 1) if n > 1 else "/done"
            return ok(b"moved", "Location: " + loc, status="302 Found")
        return echo_json(req, sock)
    with HTTPFake(respond) as srv:
        r = client.get(srv.url + "/r/3")
        assert r.status == 302  # not followed unless asked
        r = client.get(srv.url + "/r/3", follow_redirects=True)
        assert r.json()["target"] == "/done" and r.url == srv.url + "/done"
        assert [h.status for h in r.history] == [302, 302, 302]
        with pytest.raises(errors.TooManyRedirects):
            client.get(srv.url + "/r/3", follow_redirects=True, max_redirects=2)
        assert srv.accepted == 1  # redirect bodies were read: one connection throughout
    assert_exact(pool)


@pytest.mark.parametrize("status,method,body", [
    (301, "GET", ""), (302, "GET", ""), (303, "GET", ""), (307, "POST", "data"), (308, "POST", "data"),
])
def test_redirect_method_rules(client, pool, status, method, body):
    def respond(req, sock):
        if req.target == "/from":
            return ok(b"", "Location: /to", status="%d Moved" % status)
        return echo_json(req, sock)
    with HTTPFake(respond) as srv:
        d = client.post(srv.url + "/from", body=b"data", headers={"Content-Type": "text/plain"},
                        follow_redirects=True).json()
        assert (d["method"], d["body"]) == (method, body)
        assert ("content-type" in d["headers"]) == bool(body)


def test_redirect_303_head_stays_head(client, pool):
    def respond(req, sock):
        if req.target == "/from":
            return ok(b"", "Location: /to", status="303 See Other")
        return ok(b"", "X-Method: " + req.method)
    with HTTPFake(respond) as srv:
        assert client.head(srv.url + "/from", follow_redirects=True).headers["x-method"] == "HEAD"


def test_redirect_strips_credentials_on_host_change(client, pool):
    with HTTPFake(echo_json) as other:
        target = "http://localhost:%d/landing" % other.port

        def respond(req, sock):
            if req.target == "/same":
                return ok(b"", "Location: /landing", status="302 Found")
            if req.target == "/away":
                return ok(b"", "Location: " + target, status="302 Found")
            return echo_json(req, sock)
        with HTTPFake(respond) as srv:
            creds = {"Authorization": "Bearer s3cret", "Cookie": "sid=1", "X-Keep": "k"}
            h = client.get(srv.url + "/same", headers=creds, follow_redirects=True).json()["headers"]
            assert h["authorization"] == "Bearer s3cret" and h["cookie"] == "sid=1"
            h = client.get(srv.url + "/away", headers=creds, follow_redirects=True).json()["headers"]
            assert "authorization" not in h and "cookie" not in h and h["x-keep"] == "k"
            assert h["host"] == "localhost:%d" % other.port


def test_redirect_with_unreplayable_body_is_returned(client, pool):
    def respond(req, sock):
        return ok(b"", "Location: /to", status="307 Temporary Redirect")
    with HTTPFake(respond) as srv:
        r = client.post(srv.url, body=(b for b in [b"x"]), follow_redirects=True)
        assert r.status == 307 and r.history == []


# -- retries --------------------------------------------------------------------------------


def test_retry_on_status_with_retry_after(client, pool):
    calls = []

    def respond(req, sock):
        calls.append(req)
        if len(calls) < 3:
            return ok(b"busy", "Retry-After: 0", status="503 Service Unavailable")
        return ok(b"done")
    with HTTPFake(respond) as srv:
        r = client.get(srv.url, retries=greenpool.Retry(total=5, status_forcelist=[503]))
        assert r.content == b"done" and len(calls) == 3
        calls.clear()
        r = client.get(srv.url, retries=greenpool.Retry(total=1, status_forcelist=[503]))
        assert r.status == 503 and len(calls) == 2  # out of retries: the last response
        calls.clear()
        r = client.post(srv.url, retries=greenpool.Retry(total=5, status_forcelist=[503]))
        assert r.status == 503 and len(calls) == 1  # POST is not in allowed_methods
    assert_exact(pool)


def test_retry_on_connect_error(pool, parser, no_leaks):
    c = greenpool.Client(pool=pool, http1_parser=parser,
                         retries=greenpool.Retry(total=2, backoff_factor=0.01))
    with pytest.raises(errors.ConnectError):
        c.get("http://127.0.0.1:%d/" % refused_port())
    assert pool.counters["connect_errors"] == 3
    assert_exact(pool)


def test_retries_int(client, pool):
    n = []

    def respond(req, sock):
        n.append(1)
        if len(n) == 1:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
            gevent.sleep(1)
            return CLOSE
        return ok(b"second")
    with HTTPFake(respond) as srv:
        r = client.get(srv.url, retries=2, timeout=greenpool.Timeout(read=0.2))
        assert r.content == b"second"
        srv.close_clients()


# -- proxies and TLS ------------------------------------------------------------------------


def test_http_proxy_absolute_form(pool, parser):
    seen = []

    def respond(req, sock):
        seen.append(req)
        return ok(b"via proxy")
    with HTTPFake(respond) as proxy:
        c = greenpool.Client(pool=pool, http1_parser=parser,
                             proxy="http://user:p%40ss@127.0.0.1:" + str(proxy.port))
        r = c.get("http://example.invalid/path?q=1")
        assert r.content == b"via proxy"
        assert seen[0].target == "http://example.invalid/path?q=1"
        import base64
        assert seen[0].headers["proxy-authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()
        assert "p%40ss" not in repr(c) and "ss" not in repr(c._proxies)
        for key in pool._hosts:  # the proxied connections are in the pool, keyed with a tag
            assert "p%40ss" not in repr(key) and "user" not in repr(key)
        assert list(pool._hosts)[0][2].startswith("tcp|proxy")
        c.get("http://example.invalid/again")
        assert proxy.accepted == 1


def _connect_proxy(auth_required=None):
    """A tiny CONNECT proxy on loopback (FakeServer-based)."""
    from fakes import FakeServer
    log = []

    def handler(sock, server):
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(4096)
            if not data:
                return
            buf += data
        head = buf.split(b"\r\n\r\n")[0].decode()
        log.append(head)
        line = head.split("\r\n")[0]
        method, authority, _ = line.split(" ")
        if auth_required and ("Proxy-Authorization: " + auth_required) not in head:
            sock.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            return
        assert method == "CONNECT"
        host, port = authority.rsplit(":", 1)
        upstream = gevent.socket.create_connection(("127.0.0.1", int(port)))
        sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pipe(a, b):
            try:
                while True:
                    d = a.recv(65536)
                    if not d:
                        break
                    b.sendall(d)
            except OSError:
                pass
            finally:
                try:
                    b.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        g = gevent.spawn(pipe, upstream, sock)
        pipe(sock, upstream)
        g.join()
        upstream.close()
    return FakeServer(handler), log


def test_https_through_connect_proxy(pool, parser, tls, no_leaks):
    with HTTPFake(lambda r, s: ok(b"secret"), ssl_context=tls.server_context()) as origin:
        proxy, log = _connect_proxy(auth_required="Basic dTpw")
        with proxy:
            c = greenpool.Client(pool=pool, http1_parser=parser, verify=tls.ca_path,
                                 proxy="http://u:p@127.0.0.1:%d" % proxy.port)
            url = "https://localhost:%d/s" % origin.port
            assert c.get(url).content == b"secret"
            assert c.get(url).content == b"secret"
            assert log[0].startswith("CONNECT localhost:%d HTTP/1.1" % origin.port)
            assert len(log) == 1  # the tunnel was reused
            bad = greenpool.Client(pool=pool, http1_parser=parser, verify=tls.ca_path,
                                   proxy="http://u:wrong@127.0.0.1:%d" % proxy.port)
            with pytest.raises(errors.ConnectError) as info:
                bad.get(url)
            assert "407" in str(info.value) and "wrong" not in str(info.value)
            pool.close()


def test_https_verify_settings_use_separate_connections(pool, parser, tls, no_leaks):
    with HTTPFake(lambda r, s: ok(b"tls"), ssl_context=tls.server_context()) as origin:
        url = "https://localhost:%d/" % origin.port
        with pytest.raises(errors.TLSError):
            greenpool.Client(pool=pool, http1_parser=parser).get(url)
        insecure = greenpool.Client(pool=pool, http1_parser=parser, verify=False)
        assert insecure.get(url).content == b"tls"
        # verify=False connections are the pool's, under their own key
        assert pool.count() == 1 and pool.count(("localhost", origin.port, "ssl")) == 0
        with pytest.raises(errors.TLSError):
            greenpool.Client(pool=pool, http1_parser=parser).get(url)
        assert greenpool.Client(pool=pool, http1_parser=parser, verify=tls.ca_path).get(url).content == b"tls"
        assert pool.count() == 2 and pool.get_stats()["created"] == 2
        assert_exact(pool)
        pool.close()  # closes them all


def test_trust_env(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("http_proxy", "127.0.0.1:3129")
    monkeypatch.setenv("NO_PROXY", "internal.example, .corp")
    proxies, no_proxy = _proxies_from_env()
    assert proxies == {"http": "http://127.0.0.1:3129", "https": "http://127.0.0.1:3128"}
    assert _bypass("a.internal.example", no_proxy) and _bypass("x.corp", no_proxy)
    assert not _bypass("example.org", no_proxy)
    assert greenpool.Client(trust_env=True)._proxies
    assert not greenpool.Client()._proxies  # trust_env is off by default


def test_option_validation():
    with pytest.raises(ValueError):
        greenpool.Client(http1_parser="nope")
    with pytest.raises(ValueError):
        greenpool.Client(http2="yes")
    with pytest.raises(ValueError):
        greenpool.Client(max_redirects=-1)
    with pytest.raises(TypeError):
        greenpool.Client(pool=3)
    with pytest.raises(ValueError):
        greenpool.Client(proxy="ftp://127.0.0.1:1080")
    with pytest.raises(errors.InvalidURL):
        greenpool.get("ftp://example.org/")


# -- requests/httpx conveniences --------------------------------------------------------------


def test_event_hooks_fire_for_redirects_and_retries(pool, parser, no_leaks):
    calls = []

    def respond(req, sock):
        calls.append(req.target)
        if req.target == "/start":
            return ok(b"", "Location: /busy", status="302 Found")
        if calls.count("/busy") == 1:
            return ok(b"busy", "Retry-After: 0", status="503 Service Unavailable")
        return ok(b"done")

    seen = []
    hooks = {"request": [lambda r: seen.append(("req", r.url.path))],
             "response": [lambda r: seen.append(("resp", r.status))]}
    with HTTPFake(respond) as srv:
        c = greenpool.Client(pool=pool, http1_parser=parser, event_hooks=hooks, follow_redirects=True,
                             retries=greenpool.Retry(total=3, status_forcelist=[503]))
        assert c.get(srv.url + "/start").content == b"done"
        assert seen == [("req", "/start"), ("resp", 302), ("req", "/busy"), ("resp", 503),
                        ("req", "/busy"), ("resp", 200)]
        # the lists can be changed in place; a request hook may add a header
        c.event_hooks["request"][:] = [lambda r: r.headers.__setitem__("X-Hooked", "1")]
        c.get(srv.url + "/done")
        assert srv.requests[-1].headers["x-hooked"] == "1"
        with pytest.raises(ValueError):
            greenpool.Client(event_hooks={"send": []})
    assert_exact(pool)


def test_timeout_tuple_and_message(client, pool, no_leaks):
    def respond(req, sock):
        gevent.sleep(1)
        return ok(b"late")
    with HTTPFake(respond) as srv:
        with pytest.raises(errors.ReadTimeout):
            client.get(srv.url, timeout=(5, 0.1))
        with pytest.raises(TypeError) as info:
            client.get(srv.url, timeout="foo")
        assert "timeout timeout" not in str(info.value)
        srv.close_clients()
    assert_exact(pool)


def test_elapsed_until_the_head(no_leaks, gunicorn, pool, parser):
    c = greenpool.Client(pool=pool, http1_parser=parser)
    r = c.get(gunicorn.url + "/slow/0.3")
    assert 0.27 <= r.elapsed.total_seconds() < 5.0, r.elapsed   # 0.3 s server-side, -10%
    # the body stalls 1 s after the head: elapsed stops at the head (as requests')
    r = c.get(gunicorn.url + "/stall-body?seconds=1&size=100")
    assert len(r.content) == 100 and r.elapsed.total_seconds() < 0.9, r.elapsed
    pool.close()


def test_http2_after_http1_on_one_pool(no_leaks, nginx, tls):
    pool = greenpool.GreenPool("test-h2-after-h1", max_connections=4)
    try:
        url = nginx.https_url + "/"
        h1 = greenpool.Client(pool=pool, verify=tls.ca_bundle)
        assert h1.get(url).http_version == "HTTP/1.1"
        h2 = greenpool.Client(pool=pool, verify=tls.ca_bundle, http2=True)
        assert [h2.get(url).http_version for _ in range(3)] == ["HTTP/2"] * 3
        assert h1.get(url).http_version == "HTTP/1.1"
    finally:
        pool.close()
