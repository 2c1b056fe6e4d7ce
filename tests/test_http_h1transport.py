"""greenpool.http.h1.transport: one exchange on an exclusive connection."""
from __future__ import annotations

import pytest
from httpfakes import CLOSE, HTTPFake, ok

import greenpool
from greenpool import errors
from greenpool.http.h1 import transport as h1transport
from greenpool.http.h1.transport import H1Options, handle
from greenpool.http.models import Request, Timeout

from fakes import assert_exact


@pytest.fixture(params=["h11", "httptools"])
def opts(request):
    return H1Options(request.param)


@pytest.fixture
def pool():
    p = greenpool.GreenPool("test-h1t", max_connections=4)
    yield p
    p.close()


def req(url, method="GET", body=None):
    host = url.split("//")[1].split("/")[0].encode()
    return Request(method, url, body=body, content_length=len(body) if body else 0,
                   raw_headers=[(b"Host", host)])


def test_handle_stream_false_and_state_reuse(pool, opts, no_leaks):
    with HTTPFake(lambda r, s: ok(b"body")) as srv:
        r = handle(pool, req(srv.url + "/"), Timeout(), None, {}, stream=False, options=opts)
        assert r.content == b"body" and r.closed
        (conn,) = pool._hosts[("127.0.0.1", srv.port, "tcp")].idle
        st = conn.proto_state
        assert st.cycles == 1 and st.h1.backend == opts.parser
        handle(pool, req(srv.url + "/"), Timeout(), None, {}, stream=False, options=opts)
        assert conn.proto_state is st and st.cycles == 2
        assert_exact(pool)


def test_handle_with_ready_connection(pool, opts, no_leaks):
    """The HTTP/2 seam: a connection checked out elsewhere (ALPN chose http/1.1)."""
    with HTTPFake(lambda r, s: ok(b"given")) as srv:
        conn = pool.checkout("127.0.0.1", srv.port, "tcp")
        r = handle(pool, req(srv.url + "/"), Timeout(), None, {}, conn, stream=True, options=opts)
        assert pool.get_stats()["in_use_count"] == 1
        assert r.read() == b"given"
        assert pool.get_stats()["free_count"] == 1 and srv.accepted == 1
        assert_exact(pool)


def test_parser_change_gets_new_state(pool, no_leaks):
    with HTTPFake(lambda r, s: ok()) as srv:
        handle(pool, req(srv.url + "/"), Timeout(), None, {}, stream=False, options=H1Options("h11"))
        handle(pool, req(srv.url + "/"), Timeout(), None, {}, stream=False,
               options=H1Options("httptools"))
        (conn,) = pool._hosts[("127.0.0.1", srv.port, "tcp")].idle
        assert conn.proto_state.h1.backend == "httptools" and srv.accepted == 1


def test_keep_alive_timeout_margin(pool, opts):
    with HTTPFake(lambda r, s: ok(b"", "Keep-Alive: timeout=10, max=100")) as srv:
        handle(pool, req(srv.url + "/"), Timeout(), None, {}, stream=False, options=opts)
        (conn,) = pool._hosts[("127.0.0.1", srv.port, "tcp")].idle
        assert conn.idle_timeout == 9.0  # expires before the server's clock does
        assert pool._idle_timeout(conn) == 9.0


def test_socket_timeout_set_only_on_change(pool, opts):
    with HTTPFake(lambda r, s: ok()) as srv:
        handle(pool, req(srv.url + "/"), Timeout(2), None, {}, stream=False, options=opts)
        (conn,) = pool._hosts[("127.0.0.1", srv.port, "tcp")].idle
        assert conn.sock.gettimeout() == 2 and conn.proto_state.timeout == 2
        handle(pool, req(srv.url + "/"), Timeout(), None, {}, stream=False, options=opts)
        assert conn.sock.gettimeout() is None


def test_total_deadline_already_passed(pool, opts, no_leaks):
    import time
    with HTTPFake(lambda r, s: ok()) as srv:
        with pytest.raises(errors.PoolTimeout):
            handle(pool, req(srv.url + "/"), Timeout(), time.monotonic() - 1, {}, options=opts)
        assert_exact(pool)


def test_connect_timeout_passed_to_pool(pool, opts, monkeypatch):
    seen = {}
    real = pool.connector.connect

    def connect(key, timeout, **kw):
        seen["timeout"] = timeout
        return real(key, timeout, **kw)
    monkeypatch.setattr(pool.connector, "connect", connect)
    with HTTPFake(lambda r, s: ok()) as srv:
        handle(pool, req(srv.url + "/"), Timeout(connect=1.5), None, {"connect_timeout": 1.5},
               stream=False, options=opts)
    assert seen["timeout"] == 1.5


def test_stale_limit_is_bounded(pool, opts, no_leaks):
    """A server that never answers a reused connection: the fresh retry's failure is raised."""
    def respond(r, s):
        return CLOSE if r.n > 1 else ok()
    with HTTPFake(respond) as srv:
        handle(pool, req(srv.url + "/"), Timeout(), None, {}, stream=False, options=opts)
        r = handle(pool, req(srv.url + "/"), Timeout(), None, {}, stream=False, options=opts)
        assert r.status == 200 and srv.accepted == 2
        assert_exact(pool)


def test_unseekable_body_not_resent(pool, opts, no_leaks):
    def respond(r, s):
        return CLOSE if r.n > 1 else ok()
    with HTTPFake(respond) as srv:
        handle(pool, req(srv.url + "/"), Timeout(), None, {}, stream=False, options=opts)
        body = iter([b"abc"])
        r = Request("PUT", srv.url + "/", body=body, content_length=None,
                    raw_headers=[(b"Host", b"x")])
        with pytest.raises(errors.ConnectionClosed):
            handle(pool, r, Timeout(), None, {}, stream=False, options=opts)
        assert_exact(pool)


def test_options_validation():
    with pytest.raises(ValueError):
        H1Options("nope")
    with pytest.raises(ValueError):
        H1Options(max_decoded_size=-1)
    assert H1Options().parser in ("httptools", "h11")
    assert H1Options("h11").replace(expect_continue=True).expect_continue
    assert "H1Options(" in repr(H1Options())
    assert h1transport.DRAIN_LIMIT == 64 * 1024
