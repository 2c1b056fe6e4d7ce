"""Tests for greenpool/http/h2/transport.py and h2/conn.py against an in-process h2 server.

The fake server (:class:`H2FakeServer`: h2's server side over ``fakes.FakeServer``) is
scripted per test to answer, hold, reset, break framing, send GOAWAY or go silent; the
interop tests against nginx, nghttpd and hypercorn are in test_http_h2_interop.py.
"""
from __future__ import annotations

import io
import socket
import struct
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import gevent
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import pytest
from gevent.event import Event

from greenpool import GreenPool
from greenpool.errors import (
    ConnectionClosed,
    LimitExceeded,
    LocalProtocolError,
    ReadTimeout,
    RemoteProtocolError,
    WriteTimeout,
)
from greenpool.http.h2 import transport as h2transport
from greenpool.http.h2.conn import H2Config
from greenpool.http.models import Headers, Request, Timeout

from fakes import FakeServer, assert_exact, until

# ---------------------------------------------------------------------------------------------
# the scriptable HTTP/2 server


class Ctx:
    """One server-side connection."""

    def __init__(self, server: "H2FakeServer", sock: Any, index: int) -> None:
        self.server = server
        self.sock = sock
        self.index = index
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.bodies: Dict[int, bytes] = {}
        self.headers: Dict[int, List[Tuple[bytes, bytes]]] = {}
        self.silent = False      # True: answer nothing any more (not even PINGs)
        self.deaf = False        # True (with silent): read nothing any more either

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.silent:
            self.sock.sendall(data)

    def raw(self, data: bytes) -> None:
        self.flush()
        self.sock.sendall(data)

    def respond(self, sid: int, status: int = 200, body: bytes = b"",
                headers: Optional[List[Tuple[bytes, bytes]]] = None,
                trailers: Optional[List[Tuple[bytes, bytes]]] = None) -> None:
        hs = [(b":status", str(status).encode())] + list(headers or [])
        if body and not any(k == b"content-length" for k, _ in hs):
            hs.append((b"content-length", str(len(body)).encode()))
        self.h2.send_headers(sid, hs, end_stream=not body and not trailers)
        self.send_body(sid, body, end=not trailers)
        if trailers:
            self.h2.send_headers(sid, trailers, end_stream=True)
        self.flush()

    def send_body(self, sid: int, body: bytes, end: bool = True) -> None:
        """DATA within the client's windows, waiting for WINDOW_UPDATE (runs in the handler)."""
        off = 0
        while off < len(body):
            window = self.h2.local_flow_control_window(sid)
            if window <= 0:
                self.flush()
                self.server._window.wait(5)
                continue
            n = min(window, self.h2.max_outbound_frame_size, len(body) - off)
            self.h2.send_data(sid, body[off:off + n])
            off += n
            self.flush()
        if end and body:
            self.h2.end_stream(sid)
        self.flush()


Respond = Callable[[Ctx, int, List[Tuple[bytes, bytes]], bytes], None]


def ok(ctx: Ctx, sid: int, headers: List[Tuple[bytes, bytes]], body: bytes) -> None:
    ctx.respond(sid, 200, b"hello")


class H2FakeServer:
    """``respond(ctx, sid, headers, body)`` runs in its own greenlet per request."""

    def __init__(self, respond: Respond = ok, max_concurrent_streams: Optional[int] = None,
                 initial_window_size: Optional[int] = None, ssl_context: Any = None,
                 ack_data: bool = True) -> None:
        self.respond = respond
        self.ack_data = ack_data
        self.settings: Dict[int, int] = {}
        if max_concurrent_streams is not None:
            self.settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = max_concurrent_streams
        if initial_window_size is not None:
            self.settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = initial_window_size
        self.conns: List[Ctx] = []
        self.requests: List[Tuple[int, int, List[Tuple[bytes, bytes]]]] = []
        self.resets: List[Tuple[int, int, int]] = []
        self.goaways: List[Tuple[int, int]] = []     # (connection index, error code)
        self.pings = 0
        self.arrived = Event()
        self.stopping = Event()
        self._window = Event()
        self.workers: List[gevent.Greenlet] = []
        self.fake = FakeServer(self._handle, ssl_context=ssl_context)
        self.port = self.fake.port

    def _handle(self, sock: Any, server: Any) -> None:
        ctx = Ctx(self, sock, len(self.conns))
        self.conns.append(ctx)
        c = ctx.h2
        c.initiate_connection()
        if self.settings:
            c.update_settings(self.settings)
        ctx.flush()
        try:
            while True:
                if ctx.deaf:
                    self.stopping.wait()     # a black hole until the test ends
                    return
                data = sock.recv(65536)
                if not data:
                    return
                for ev in c.receive_data(data):
                    t = type(ev)
                    if t is h2.events.RequestReceived:
                        ctx.headers[ev.stream_id] = ev.headers
                        ctx.bodies[ev.stream_id] = b""
                        self.requests.append((ctx.index, ev.stream_id, ev.headers))
                        self.arrived.set()
                    elif t is h2.events.DataReceived:
                        ctx.bodies[ev.stream_id] = ctx.bodies.get(ev.stream_id, b"") + ev.data
                        if self.ack_data:
                            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif t is h2.events.StreamEnded:
                        sid = ev.stream_id
                        self.workers.append(gevent.spawn(
                            self._run, ctx, sid, ctx.headers.get(sid, []), ctx.bodies.get(sid, b"")))
                    elif t is h2.events.StreamReset:
                        self.resets.append((ctx.index, ev.stream_id, ev.error_code))
                    elif t is h2.events.WindowUpdated:
                        self._window.set()
                        self._window.clear()
                    elif t is h2.events.PingReceived:
                        self.pings += 1
                    elif t is h2.events.ConnectionTerminated:
                        self.goaways.append((ctx.index, ev.error_code))
                ctx.flush()
        finally:
            for g in self.workers:
                g.kill(block=False)

    def _run(self, ctx: Ctx, sid: int, headers: Any, body: bytes) -> None:
        try:
            self.respond(ctx, sid, headers, body)
        except (OSError, h2.exceptions.ProtocolError):
            pass

    def url(self, path: str = "/") -> str:
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self) -> None:
        self.stopping.set()
        for g in self.workers:
            g.kill(block=False)
        self.fake.stop()
        gevent.joinall(self.workers, timeout=1)

    def __enter__(self) -> "H2FakeServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def header(headers: List[Tuple[bytes, bytes]], name: bytes) -> Optional[bytes]:
    for k, v in headers:
        if k == name:
            return v
    return None


# ---------------------------------------------------------------------------------------------
# helpers


H2C = "prior_knowledge"


@pytest.fixture
def pool():
    p = GreenPool("h2test", max_connections=20, checkout_timeout=5.0)
    yield p
    p.close()


def get(pool, url, method="GET", headers=None, body=None, timeout=5.0, config=None, **kw):
    content_length = len(body) if isinstance(body, bytes) else None
    req = Request(method, url, headers, body=body, content_length=content_length)
    return h2transport.handle(pool, req, Timeout.coerce(timeout), None, {}, H2C, config, **kw)


def hold(ctx, sid, headers, body):
    """Never answer (until the test ends)."""
    gevent.sleep(30)


def held_by_path(ctx, sid, headers, body):
    path = header(headers, b":path")
    if path == b"/hold":
        gevent.sleep(30)
    elif path and path.startswith(b"/sleep/"):
        gevent.sleep(float(path.rsplit(b"/", 1)[1]))
        ctx.respond(sid, 200, b"slept")
    else:
        ctx.respond(sid, 200, b"hello")


# ---------------------------------------------------------------------------------------------
# basics


def test_get_response_headers_trailers_and_stats(pool, no_leaks):
    def respond(ctx, sid, headers, body):
        ctx.respond(sid, 200, b"hello world", headers=[(b"x-a", b"1"), (b"x-a", b"2")],
                    trailers=[(b"x-checksum", b"abc")])

    with H2FakeServer(respond) as srv:
        r = get(pool, srv.url("/p?q=1"))
        assert r.status == 200 and r.http_version == "HTTP/2" and r.reason == "OK"
        assert r.headers.get_list("x-a") == ["1", "2"]
        assert r.read() == b"hello world"
        assert r.trailers == Headers([("x-checksum", "abc")])
        (_, sid, hs), = srv.requests
        assert sid == 1
        assert hs[:4] == [(b":method", b"GET"), (b":scheme", b"http"),
                          (b":authority", b"127.0.0.1:%d" % srv.port), (b":path", b"/p?q=1")]
        stats = pool.get_stats()
        assert stats["shared_count"] == 1 and stats["shared_users"] == 0 and stats["open"] == 1
        assert_exact(pool)
        pool.close()
    assert_exact(pool)


def test_request_headers_are_validated_and_connection_specific_ones_dropped(pool, no_leaks):
    with H2FakeServer() as srv:
        r = get(pool, srv.url(), headers=[("Host", "example.org"), ("Connection", "keep-alive"),
                                          ("Keep-Alive", "5"), ("Transfer-Encoding", "chunked"),
                                          ("Upgrade", "h2c"), ("Proxy-Connection", "x"),
                                          ("TE", "gzip"), ("X-Mixed-Case", "v")])
        assert r.read() == b"hello"
        (_, _, hs), = srv.requests
        names = [k for k, _ in hs]
        assert names == [b":method", b":scheme", b":authority", b":path", b"x-mixed-case"]
        assert header(hs, b":authority") == b"example.org"
        for bad in ([("x", "a\r\nb")], [("bad name", "v")], [(":path", "/x")], [("x", " lead")]):
            with pytest.raises(LocalProtocolError):
                get(pool, srv.url(), headers=bad)
        assert len(srv.requests) == 1
        assert_exact(pool)
        pool.close()


def test_response_pseudo_headers_are_checked(pool, no_leaks):
    def respond(ctx, sid, headers, body):
        ctx.h2.send_headers(sid, [(b"x-no-status", b"1")], end_stream=True)
        ctx.flush()

    with H2FakeServer(respond) as srv:
        with pytest.raises(RemoteProtocolError):
            get(pool, srv.url())
        assert_exact(pool)
        assert pool.get_stats()["open"] == 0
        pool.close()


def test_post_body_bytes_file_and_iterable(pool, no_leaks):
    def echo(ctx, sid, headers, body):
        ctx.respond(sid, 200, body or b"-")

    with H2FakeServer(echo) as srv:
        assert get(pool, srv.url(), "POST", body=b"abc").read() == b"abc"
        assert get(pool, srv.url(), "PUT", body=io.BytesIO(b"x" * 200000)).read() == b"x" * 200000
        assert get(pool, srv.url(), "POST", body=iter([b"a", b"", b"bc"])).read() == b"abc"
        assert header(srv.requests[0][2], b"content-length") == b"3"
        assert_exact(pool)
        pool.close()


def test_streams_share_one_connection_and_stats_count_them(pool, no_leaks):
    release = Event()

    def respond(ctx, sid, headers, body):
        release.wait(5)
        ctx.respond(sid, 200, b"ok")

    with H2FakeServer(respond) as srv:
        gs = [gevent.spawn(lambda: get(pool, srv.url()).read()) for _ in range(10)]
        deadline = time.monotonic() + 10
        while len(srv.requests) < 10 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        stats = pool.get_stats()
        assert stats["shared_count"] == 1 and stats["shared_users"] == 10
        assert pool.host_stats("127.0.0.1", srv.port)["shared_users"] == 10
        assert stats["in_use_count"] == 1 and stats["free_count"] == 0
        assert_exact(pool)
        release.set()
        assert [g.get(timeout=5) for g in gs] == [b"ok"] * 10
        assert len(srv.conns) == 1
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        pool.close()


def test_max_concurrent_streams_opens_more_connections(no_leaks):
    pool = GreenPool("h2limit", max_connections=10)
    release = Event()

    def respond(ctx, sid, headers, body):
        release.wait(5)
        ctx.respond(sid, 200, b"ok")

    with H2FakeServer(respond, max_concurrent_streams=2) as srv:
        gs = [gevent.spawn(lambda: get(pool, srv.url()).read()) for _ in range(5)]
        deadline = time.monotonic() + 10
        while len(srv.requests) < 5 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert len(srv.conns) == 3            # ceil(5 / 2)
        assert pool.get_stats()["shared_count"] == 3
        release.set()
        assert [g.get(timeout=5) for g in gs] == [b"ok"] * 5
        assert_exact(pool)
        pool.close()


# ---------------------------------------------------------------------------------------------
# kills, timeouts, RST_STREAM for one stream only


def test_killed_greenlet_resets_only_its_stream(pool, no_leaks):
    with H2FakeServer(held_by_path) as srv:
        g = gevent.spawn(get, pool, srv.url("/hold"))
        other = gevent.spawn(lambda: get(pool, srv.url("/sleep/0.3")).read())
        deadline = time.monotonic() + 10
        while len(srv.requests) < 2 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        g.kill()
        assert other.get(timeout=5) == b"slept"
        deadline = time.monotonic() + 10
        while not srv.resets and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert [(c, s) for c, s, _ in srv.resets] == [(0, 1)]
        assert len(srv.conns) == 1 and pool.get_stats()["open"] == 1
        assert pool.get_stats()["shared_users"] == 0
        assert get(pool, srv.url()).read() == b"hello"
        assert_exact(pool)
        pool.close()


def test_callers_gevent_timeout_resets_its_stream(pool, no_leaks):
    with H2FakeServer(held_by_path) as srv:
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.2):
                get(pool, srv.url("/hold"))
        assert get(pool, srv.url()).read() == b"hello"
        assert until(lambda: srv.resets)
        assert len(srv.resets) == 1 and len(srv.conns) == 1
        assert_exact(pool)
        pool.close()


def test_read_timeout_per_stream(pool, no_leaks):
    with H2FakeServer(held_by_path) as srv:
        t0 = time.monotonic()
        with pytest.raises(ReadTimeout):
            get(pool, srv.url("/hold"), timeout=Timeout(30, read=0.2))
        assert time.monotonic() - t0 < 10           # the read timeout, not the 30 s one
        assert get(pool, srv.url()).read() == b"hello"
        assert until(lambda: srv.resets)
        assert len(srv.resets) == 1
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        pool.close()


def test_total_deadline_caps_waits(pool, no_leaks):
    with H2FakeServer(held_by_path) as srv:
        req = Request("GET", srv.url("/hold"))
        t0 = time.monotonic()
        with pytest.raises(ReadTimeout):
            h2transport.handle(pool, req, Timeout(30), time.monotonic() + 0.2, {}, H2C)
        assert time.monotonic() - t0 < 10           # the deadline, not the 30 s timeout
        assert_exact(pool)
        pool.close()


def test_streamed_body_closed_early_resets_and_releases(pool, no_leaks):
    def respond(ctx, sid, headers, body):
        ctx.respond(sid, 200, b"z" * 300000)

    with H2FakeServer(respond) as srv:
        r = get(pool, srv.url())
        assert r.stream.read_chunk(1000) == b"z" * 1000
        r.close()
        assert pool.get_stats()["shared_users"] == 0
        assert get(pool, srv.url()).read() == b"z" * 300000
        assert_exact(pool)
        pool.close()


# ---------------------------------------------------------------------------------------------
# flow control


def test_download_window_updates_as_consumed_and_memory_bounded(pool, no_leaks):
    size = 4 * 1024 * 1024
    cfg = H2Config(initial_window_size=65535, connection_window_size=65535 * 2)

    def respond(ctx, sid, headers, body):
        ctx.respond(sid, 200, b"d" * size)

    with H2FakeServer(respond) as srv:
        r = get(pool, srv.url(), config=cfg)
        got = 0
        peak = 0
        while True:
            chunk = r.stream.read_chunk(16384)
            if not chunk:
                break
            got += len(chunk)
            peak = max(peak, r.stream.st.buffered)
            if got % (512 * 1024) < 16384:
                gevent.sleep(0.01)   # a slow reader: the server must wait for window
        assert got == size and peak <= 65535
        assert_exact(pool)
        pool.close()


def test_upload_waits_for_window_updates(pool, no_leaks):
    def respond(ctx, sid, headers, body):
        ctx.respond(sid, 200, b"%d" % len(body))

    with H2FakeServer(respond, initial_window_size=16384) as srv:
        assert get(pool, srv.url(), "POST", body=b"u" * 1000000).read() == b"1000000"
        assert_exact(pool)
        pool.close()


def test_upload_write_timeout_when_no_window(pool, no_leaks):
    with H2FakeServer(hold, initial_window_size=1000, ack_data=False) as srv:
        t0 = time.monotonic()
        with pytest.raises(WriteTimeout):
            get(pool, srv.url(), "POST", body=b"u" * 200000, timeout=Timeout(30, write=0.3))
        assert time.monotonic() - t0 < 10           # the write timeout, not the 30 s one
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        pool.close()


# ---------------------------------------------------------------------------------------------
# faults: each fails the affected requests only, exact counts, no leaks


def _in_flight_elsewhere(pool, srv_ok):
    """A request on another (healthy) server that runs across the fault."""
    return gevent.spawn(lambda: get(pool, srv_ok.url("/sleep/0.3")).read())


def test_fault_malformed_frame(pool, no_leaks):
    def respond(ctx, sid, headers, body):
        ctx.raw(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5)   # SETTINGS of 5 bytes

    with H2FakeServer(respond) as bad, H2FakeServer(held_by_path) as good:
        other = _in_flight_elsewhere(pool, good)
        with pytest.raises(RemoteProtocolError, match="HTTP/2"):
            get(pool, bad.url())
        assert other.get(timeout=5) == b"slept"
        assert pool.count(("127.0.0.1", bad.port)) == 0
        assert pool.count(("127.0.0.1", good.port)) == 1
        assert_exact(pool)
        pool.close()


def test_fault_header_list_over_our_limit_fails_that_stream_only(pool, no_leaks):
    """10 concurrent streams, one gets a header block over our limit: RST_STREAM for it and
    LimitExceeded for its caller; the 9 others succeed on the same, still registered connection."""
    n = 10
    all_in = Event()

    def respond(ctx, sid, headers, body):
        if len(ctx.headers) >= n:
            all_in.set()
        all_in.wait(5)
        path = header(headers, b":path")
        if path == b"/big-open":      # the stream stays open: the client must reset it
            ctx.h2.send_headers(sid, [(b":status", b"200"), (b"x-big", b"v" * 10000)])
            ctx.h2.send_data(sid, b"more to come")
            ctx.flush()
            gevent.sleep(30)
        elif path == b"/big":
            ctx.respond(sid, 200, b"x", headers=[(b"x-big", b"v" * 10000)])
        else:
            gevent.sleep(0.05)      # after the oversized block: HPACK state must have survived
            ctx.respond(sid, 200, b"ok", headers=[(b"x-small", b"s")])

    def one(path):
        try:
            return get(pool, srv.url(path), config=cfg).read()
        except LimitExceeded as e:
            return e

    cfg = H2Config(max_header_list_size=4096)
    with H2FakeServer(respond) as srv:
        gs = [gevent.spawn(one, "/big-open" if i == 4 else "/") for i in range(n)]
        results = [g.get(timeout=5) for g in gs]
        errors = [r for r in results if isinstance(r, LimitExceeded)]
        assert len(errors) == 1 and results.count(b"ok") == n - 1
        assert "max_header_list_size" in str(errors[0]) and "4096" in str(errors[0])
        big_sid = next(sid for _, sid, hs in srv.requests if header(hs, b":path") == b"/big-open")
        deadline = time.monotonic() + 10
        while not srv.resets and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert srv.resets == [(0, big_sid, 8)]            # CANCEL, that stream only
        stats = pool.get_stats()
        assert stats["shared_count"] == 1 and stats["shared_users"] == 0 and stats["open"] == 1
        assert_exact(pool)
        # the same connection serves the next requests; a larger per-request limit lets it through
        assert get(pool, srv.url(), config=cfg).read() == b"ok"
        r = get(pool, srv.url("/big"), config=cfg, max_header_size=20000)
        assert r.headers["x-big"] == "v" * 10000 and r.read() == b"x"
        with pytest.raises(LimitExceeded, match="max_header_size"):
            get(pool, srv.url("/big"), max_header_size=5000)
        assert len(srv.conns) == 1 and pool.count(("127.0.0.1", srv.port)) == 1
        assert_exact(pool)
        pool.close()
    assert_exact(pool)


def test_fault_trailers_over_our_limit_fail_that_stream_only(pool, no_leaks):
    def respond(ctx, sid, headers, body):
        if header(headers, b":path") == b"/big":
            ctx.respond(sid, 200, b"body", trailers=[(b"x-t", b"t" * 10000)])
        else:
            ctx.respond(sid, 200, b"ok")

    with H2FakeServer(respond) as srv:
        r = get(pool, srv.url("/big"), max_header_size=4096)
        with pytest.raises(LimitExceeded, match="trailer list"):
            r.read()
        assert get(pool, srv.url()).read() == b"ok"
        assert len(srv.conns) == 1 and pool.get_stats()["shared_count"] == 1
        assert_exact(pool)
        pool.close()


# ---------------------------------------------------------------------------------------------
# max_body_size: per stream, like the header limits

LIMIT = 1000


def sized_by_path(ctx, sid, headers, body):
    """``/length/<n>``: n bytes with a content-length; ``/unknown/<n>``: n bytes without
    one, in DATA frames of 400, 400 and the rest, written apart, then END_STREAM after a
    pause; ``/announce/<n>``: a
    content-length of n and no body; HEAD: a content-length of 5000 and no body."""
    if header(headers, b":method") == b"HEAD":
        ctx.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", b"5000")],
                            end_stream=True)
        ctx.flush()
        return
    path = header(headers, b":path").decode()
    if path.startswith("/sleep/"):
        return held_by_path(ctx, sid, headers, body)
    _, kind, size = path.split("/")
    data = b"d" * int(size)
    if kind == "length":
        ctx.respond(sid, 200, data)
    elif kind == "announce":
        ctx.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", size.encode())])
        ctx.flush()
        gevent.sleep(30)
    else:
        ctx.h2.send_headers(sid, [(b":status", b"200")])
        ctx.flush()
        for piece in (data[:400], data[400:800], data[800:]):
            gevent.sleep(0.01)
            ctx.h2.send_data(sid, piece)
            ctx.flush()
        # still open when the client resets it: the server sees RST_STREAM (waited for, not
        # slept on: on a busy machine the reset can take a while)
        if len(data) > LIMIT:
            until(lambda: any(r[1] == sid for r in ctx.server.resets))
        ctx.h2.end_stream(sid)
        ctx.flush()


def _wait_resets(srv, n=1):
    deadline = time.monotonic() + 10
    while len(srv.resets) < n and time.monotonic() < deadline:
        gevent.sleep(0.01)
    return srv.resets


def test_max_body_size_content_length_over_the_limit_fails_at_the_head(pool, no_leaks):
    """A content-length over the limit: LimitExceeded at once (no body byte awaited), that
    stream reset; a stream in flight on the same connection is not disturbed."""
    with H2FakeServer(sized_by_path) as srv:
        other = gevent.spawn(lambda: get(pool, srv.url("/sleep/0.3")).read())
        gevent.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(LimitExceeded) as info:
            get(pool, srv.url("/announce/%d" % (LIMIT + 1)), timeout=Timeout(30, read=20),
                max_body_size=LIMIT)
        assert time.monotonic() - t0 < 10           # at the head: no body byte awaited
        text = str(info.value)
        assert "max_body_size=%d" % LIMIT in text and "content-length: %d" % (LIMIT + 1) in text
        assert "stream=True" in text
        sid = next(s for _, s, hs in srv.requests if header(hs, b":path").startswith(b"/announce"))
        assert _wait_resets(srv) == [(0, sid, 8)]      # CANCEL, that stream only
        assert other.get(timeout=5) == b"slept"
        stats = pool.get_stats()
        assert len(srv.conns) == 1 and stats["open"] == 1 and stats["shared_users"] == 0
        assert_exact(pool)
        pool.close()


@pytest.mark.parametrize("stream", [False, True])
def test_max_body_size_exceeded_while_reading_resets_that_stream_only(pool, stream, no_leaks):
    with H2FakeServer(sized_by_path) as srv:
        other = gevent.spawn(lambda: get(pool, srv.url("/sleep/0.3")).read())
        got = []
        with pytest.raises(LimitExceeded, match="max_body_size=%d .*received so far" % LIMIT):
            r = get(pool, srv.url("/unknown/%d" % (LIMIT + 1)), stream=stream,
                    max_body_size=LIMIT)
            while True:
                chunk = r.stream.read_chunk(300)
                if not chunk:
                    break
                got.append(chunk)
        if stream:   # what came before the frame over the limit was delivered, no more
            assert b"".join(got) == b"d" * 800
        sid = next(s for _, s, hs in srv.requests if header(hs, b":path").startswith(b"/unknown"))
        assert _wait_resets(srv) == [(0, sid, 8)]
        assert other.get(timeout=5) == b"slept"
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        # the connection carries on: the next request at the limit passes on it
        assert get(pool, srv.url("/unknown/%d" % LIMIT), max_body_size=LIMIT).read() == b"d" * LIMIT
        assert len(srv.conns) == 1 and pool.get_stats()["open"] == 1
        assert_exact(pool)
        pool.close()


@pytest.mark.parametrize("stream", [False, True])
def test_max_body_size_exactly_at_the_limit_passes(pool, stream, no_leaks):
    with H2FakeServer(sized_by_path) as srv:
        for kind in ("length", "unknown"):
            r = get(pool, srv.url("/%s/%d" % (kind, LIMIT)), stream=stream, max_body_size=LIMIT)
            assert r.read() == b"d" * LIMIT
        assert get(pool, srv.url("/length/0"), max_body_size=0).read() == b""
        assert srv.resets == []
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        pool.close()


def test_max_body_size_through_the_client_and_validated(pool, no_leaks):
    import greenpool
    with H2FakeServer(sized_by_path) as srv:
        c = greenpool.Client(pool=pool, http2=H2C, max_body_size=LIMIT)
        assert c.get(srv.url("/unknown/%d" % LIMIT)).content == b"d" * LIMIT
        with pytest.raises(LimitExceeded, match="max_body_size=%d" % LIMIT):
            c.get(srv.url("/unknown/%d" % (LIMIT + 1)))
        with pytest.raises(LimitExceeded, match="max_body_size=%d" % LIMIT):
            c.get(srv.url("/length/%d" % (LIMIT + 1)), stream=True)
        r = c.head(srv.url("/x"))       # a HEAD's content-length announces no body
        assert r.http_version == "HTTP/2" and r.headers["content-length"] == "5000"
        unlimited = greenpool.Client(pool=pool, http2=H2C)
        assert unlimited.get(srv.url("/unknown/5000")).content == b"d" * 5000
        for bad in (-1, 1.5, "10", True):
            with pytest.raises(ValueError, match="max_body_size"):
                get(pool, srv.url("/length/1"), max_body_size=bad)
        assert len(srv.conns) == 1
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        pool.close()


def test_fault_malformed_frame_after_a_complete_response_in_the_same_read(pool, no_leaks):
    """Stream 1's complete response and a malformed frame arrive in one write: stream 1's caller
    gets its response (h2 is fed frame by frame), the others a clear RemoteProtocolError."""
    all_in = Event()
    bad_frame = b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5   # SETTINGS of 5 bytes

    def respond(ctx, sid, headers, body):
        if len(ctx.headers) >= 3:
            all_in.set()
        all_in.wait(5)
        if sid != 1:
            gevent.sleep(30)
            return
        ctx.flush()
        ctx.h2.send_headers(1, [(b":status", b"200"), (b"content-length", b"4")])
        ctx.h2.send_data(1, b"done", end_stream=True)
        ctx.sock.sendall(ctx.h2.data_to_send() + bad_frame)   # one write, one read

    def others():
        with pytest.raises(RemoteProtocolError, match="HTTP/2") as info:
            get(pool, srv.url("/other"))
        return info.value

    with H2FakeServer(respond) as srv:
        first = gevent.spawn(lambda: get(pool, srv.url("/first")))
        deadline = time.monotonic() + 10
        while not srv.requests and time.monotonic() < deadline:
            gevent.sleep(0.01)
        gs = [gevent.spawn(others) for _ in range(2)]
        r = first.get(timeout=5)
        assert r.status == 200 and r.read() == b"done"
        for g in gs:
            assert "broke the HTTP/2 protocol" in str(g.get(timeout=5))
        assert pool.count(("127.0.0.1", srv.port)) == 0
        assert_exact(pool)
        pool.close()


def test_fault_oversized_frame_fails_at_its_header_after_the_frames_before_it(pool, no_leaks):
    """A frame header announcing more than our SETTINGS_MAX_FRAME_SIZE fails the connection
    at once (GOAWAY FRAME_SIZE_ERROR), without waiting for a payload that may never come;
    a response completed in the same read before it still reaches its caller."""
    oversized = struct.pack(">I", 16385)[1:] + b"\x00\x00" + struct.pack(">I", 1)   # DATA, 16385 B

    def respond(ctx, sid, headers, body):
        if header(headers, b":path") != b"/first":
            gevent.sleep(30)
            return
        ctx.flush()
        ctx.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", b"4")])
        ctx.h2.send_data(sid, b"done", end_stream=True)
        ctx.sock.sendall(ctx.h2.data_to_send() + oversized)   # one write, one read

    with H2FakeServer(respond) as srv:
        other = gevent.spawn(get, pool, srv.url("/other"), timeout=30.0)
        assert until(lambda: srv.requests)
        r = get(pool, srv.url("/first"), timeout=30.0)
        assert r.status == 200 and r.read() == b"done"
        with pytest.raises(RemoteProtocolError, match="broke the HTTP/2 protocol"):
            other.get(timeout=10)
        assert until(lambda: srv.goaways) and srv.goaways[0][1] == 6   # FRAME_SIZE_ERROR
        assert pool.count(("127.0.0.1", srv.port)) == 0
        assert_exact(pool)
        pool.close()


def test_frames_cut_anywhere_across_reads(pool, no_leaks):
    """The reader reads frame headers itself (to count frames and floods) and hands h2 the
    payloads as they come: frames and headers cut at every point, a PING among the DATA,
    still give the exact body."""
    body = bytes(range(256)) * 160          # 40960 bytes: four DATA frames

    def respond(ctx, sid, headers, body_in):
        ctx.flush()
        ctx.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % len(body))])
        ctx.h2.send_data(sid, body[:16384])
        ctx.h2.send_data(sid, body[16384:20000])
        ping = hyperframe.frame.PingFrame(0)
        ping.opaque_data = b"12345678"
        wire = ctx.h2.data_to_send() + ping.serialize()
        ctx.h2.send_data(sid, body[20000:36384])
        ctx.h2.send_data(sid, body[36384:], end_stream=True)
        wire += ctx.h2.data_to_send()
        off, step = 0, 1
        while off < len(wire):
            ctx.sock.sendall(wire[off:off + step])
            off += step
            step = step % 13 + 1 if off < 400 else 997
            gevent.sleep(0.001)

    with H2FakeServer(respond) as srv:
        for _ in range(2):
            r = get(pool, srv.url("/"), timeout=30.0)
            assert r.status == 200 and r.read() == body
        assert until(lambda: pool.get_stats()["shared_users"] == 0)
        assert len(srv.conns) == 1
        assert_exact(pool)
        pool.close()


def test_fault_flow_control_violation(pool, no_leaks):
    def respond(ctx, sid, headers, body):
        ctx.h2.send_headers(sid, [(b":status", b"200")])
        ctx.flush()
        frame = hyperframe.frame.DataFrame(sid)
        frame.data = b"x" * 16384
        ctx.raw(frame.serialize() * 5)        # 80 KiB into a 64 KiB window

    cfg = H2Config(initial_window_size=65535)
    with H2FakeServer(respond) as bad, H2FakeServer(held_by_path) as good:
        other = _in_flight_elsewhere(pool, good)
        r = get(pool, bad.url(), config=cfg)
        # consume nothing (the window cannot reopen) until the reader has seen the violation
        assert until(lambda: r.stream.st.error is not None)
        with pytest.raises(RemoteProtocolError, match="flow control"):
            r.read()
        assert other.get(timeout=5) == b"slept"
        assert pool.count(("127.0.0.1", bad.port)) == 0
        assert_exact(pool)
        pool.close()


def test_closed_streams_held_by_h2_stay_bounded_and_the_server_limit_holds(pool, no_leaks):
    """h2 forgets closed streams only when it counts the open ones, which greenpool has it do
    only once the streams held reach the server's MAX_CONCURRENT_STREAMS or HELD_STREAMS:
    what h2 holds stays under that bound, and a stream past the server's limit is refused."""
    from greenpool.http.h2 import conn as h2conn
    from greenpool.http.h2.conn import Refused

    with H2FakeServer(ok, max_concurrent_streams=1000) as srv:
        r = get(pool, srv.url())
        proto = r.stream.proto
        assert r.read() == b"hello"
        most = 0
        for _ in range(h2conn.HELD_STREAMS + 44):
            assert get(pool, srv.url()).read() == b"hello"
            most = max(most, len(proto.h2.streams))
        assert most == h2conn.HELD_STREAMS            # it did hold closed streams, up to the bound
        assert len(proto.h2.streams) < h2conn.HELD_STREAMS
        assert len(srv.conns) == 1
        assert_exact(pool)
    with H2FakeServer(hold, max_concurrent_streams=2) as srv:
        first = gevent.spawn(get, pool, srv.url())
        assert until(lambda: srv.requests)
        (conn,) = pool._hosts[("127.0.0.1", srv.port, "tcp")].shared
        proto = conn.proto
        headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
        second = proto.open_stream(headers, end_stream=True)
        with pytest.raises(Refused, match="no stream available"):
            proto.open_stream(headers, end_stream=True)      # a third: over the server's 2
        proto.release(second, reset=True)
        first.kill()
        assert_exact(pool)
        pool.close()


def test_server_raising_max_concurrent_streams_serves_queued_waiters_at_once(no_leaks):
    """One connection allowed, one stream per connection: three more requests queue in the
    pool; a SETTINGS raising the limit hands them streams at once (not when stream 1 ends)."""
    pool = GreenPool("h2raise", max_connections=1, checkout_timeout=5.0)
    go = Event()
    release = Event()

    def respond(ctx, sid, headers, body):
        if header(headers, b":path") == b"/first":
            go.wait(5)
            ctx.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 10})
            ctx.flush()
            release.wait(5)
        ctx.respond(sid, 200, b"ok")

    with H2FakeServer(respond, max_concurrent_streams=1) as srv:
        first = gevent.spawn(lambda: get(pool, srv.url("/first")).read())
        deadline = time.monotonic() + 10
        while not srv.requests and time.monotonic() < deadline:
            gevent.sleep(0.01)
        rest = [gevent.spawn(lambda: get(pool, srv.url("/next")).read()) for _ in range(3)]
        deadline = time.monotonic() + 10
        while pool.get_stats()["queue_count"] < 3 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert pool.get_stats()["queue_count"] == 3 and len(srv.requests) == 1
        go.set()
        assert [g.get(timeout=2) for g in rest] == [b"ok"] * 3   # while /first is still held
        assert not first.ready()
        release.set()
        assert first.get(timeout=5) == b"ok"
        assert len(srv.conns) == 1 and pool.get_stats()["queue_count"] == 0
        assert_exact(pool)
        pool.close()


def test_capacity_changed_without_waiters_is_a_no_op(pool, no_leaks):
    with H2FakeServer() as srv:
        assert get(pool, srv.url()).read() == b"hello"
        conn = pool._hosts[("127.0.0.1", srv.port, "tcp")].shared[0]
        pool.capacity_changed(conn)
        assert_exact(pool)
        pool.close()


def test_fault_rst_stream_mid_body_fails_that_stream_only(pool, no_leaks):
    def respond(ctx, sid, headers, body):
        if header(headers, b":path") == b"/reset":
            ctx.h2.send_headers(sid, [(b":status", b"200")])
            ctx.h2.send_data(sid, b"partial")
            ctx.flush()
            gevent.sleep(0.05)
            ctx.h2.reset_stream(sid, 2)   # INTERNAL_ERROR
            ctx.flush()
        else:
            held_by_path(ctx, sid, headers, body)

    with H2FakeServer(respond) as srv:
        other = gevent.spawn(lambda: get(pool, srv.url("/sleep/0.3")).read())
        r = get(pool, srv.url("/reset"))
        assert r.stream.read_chunk(100) == b"partial"
        with pytest.raises(RemoteProtocolError, match="INTERNAL_ERROR"):
            r.read()
        assert other.get(timeout=5) == b"slept"
        assert len(srv.conns) == 1 and pool.get_stats()["open"] == 1
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        pool.close()


def test_fault_goaway_with_50_streams_in_flight(no_leaks):
    pool = GreenPool("h2goaway", max_connections=10)
    n = 50
    state = {"sent": False}
    gate = Event()

    def respond(ctx, sid, headers, body):
        if ctx.index == 0:
            if len(ctx.headers) >= n and not state["sent"]:
                state["sent"] = True
                frame = hyperframe.frame.GoAwayFrame(0)
                frame.last_stream_id = 2 * 25 - 1        # streams 1..49 (25 of them) go on
                ctx.raw(frame.serialize())
                gate.set()
            gate.wait(5)
            if sid <= 49:
                gevent.sleep(0.05)
                ctx.respond(sid, 200, b"first")
            return
        ctx.respond(sid, 200, b"second")

    with H2FakeServer(respond) as srv:
        gs = [gevent.spawn(lambda: get(pool, srv.url()).read()) for _ in range(n)]
        results = [g.get(timeout=10) for g in gs]
        assert results.count(b"first") == 25 and results.count(b"second") == 25
        assert len(srv.conns) == 2
        assert until(lambda: pool.get_stats()["shared_users"] == 0)
        assert pool.get_stats()["shared_count"] == 1
        assert_exact(pool)
        pool.close()


def test_fault_tcp_close_mid_stream(pool, no_leaks):
    def respond(ctx, sid, headers, body):
        ctx.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", b"100000")])
        ctx.h2.send_data(sid, b"x" * 1000)
        ctx.flush()
        gevent.sleep(0.05)
        ctx.sock.shutdown(socket.SHUT_RDWR)

    with H2FakeServer(respond) as bad, H2FakeServer(held_by_path) as good:
        other = _in_flight_elsewhere(pool, good)
        r = get(pool, bad.url())
        with pytest.raises(ConnectionClosed):
            r.read()
        assert other.get(timeout=5) == b"slept"
        assert pool.count(("127.0.0.1", bad.port)) == 0
        assert_exact(pool)
        pool.close()


def test_fault_pings_unanswered_close_the_idle_connection(no_leaks):
    pool = GreenPool("h2ping", idle_interval=0.1, connect_timeout=0.3)

    def respond(ctx, sid, headers, body):
        ctx.respond(sid, 200, b"ok")
        ctx.silent = True              # from now on: not a byte, not even a PING ACK

    with H2FakeServer(respond) as srv:
        assert get(pool, srv.url()).read() == b"ok"
        until(lambda: not pool.get_stats()["open"])
        stats = pool.get_stats()
        assert stats["open"] == 0 and stats["ping_failures"] >= 1
        assert_exact(pool)
        pool.close()


def test_idle_pings_answered_keep_the_connection(no_leaks):
    pool = GreenPool("h2ping2", idle_interval=0.1, connect_timeout=5.0)   # (the PING's timeout)
    with H2FakeServer() as srv:
        assert get(pool, srv.url()).read() == b"hello"
        until(lambda: srv.pings >= 2 and pool.get_stats()["pings"] >= 2)
        stats = pool.get_stats()
        assert stats["pings"] >= 2 and stats["ping_failures"] == 0 and stats["open"] == 1
        assert srv.pings >= 2
        assert get(pool, srv.url()).read() == b"hello"
        assert len(srv.conns) == 1
        assert_exact(pool)
        pool.close()


def test_idle_timeout_closes_shared_connection(no_leaks):
    pool = GreenPool("h2idle", timeout=0.2)
    with H2FakeServer() as srv:
        assert get(pool, srv.url()).read() == b"hello"
        assert pool.get_stats()["open"] == 1
        assert until(lambda: pool.get_stats()["open"] == 0)
        assert_exact(pool)
        pool.close()


def test_not_an_h2_server_is_a_clear_error(pool, no_leaks):
    def http11(sock, server):
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        sock.recv(65536)

    with FakeServer(http11) as srv:
        with pytest.raises(RemoteProtocolError, match="HTTP/2"):
            get(pool, "http://127.0.0.1:%d/" % srv.port)
        assert_exact(pool)
        assert pool.get_stats()["open"] == 0
        pool.close()


def test_http_origin_without_prior_knowledge_is_refused(pool):
    with pytest.raises(ValueError):
        h2transport.handle(pool, Request("GET", "http://127.0.0.1:1/"), Timeout(1), None, {}, True)


def test_h2config_validates():
    with pytest.raises(ValueError):
        H2Config(max_frame_size=10)
    with pytest.raises(ValueError):
        H2Config(initial_window_size=0)


def _goaway_then_close(per_conn: int, rst: bool,
                       writer: Optional[Callable[[], None]] = None) -> Callable[..., None]:
    """A respond() that answers ``per_conn`` streams per connection, then sends
    GOAWAY(last_stream_id = the last one answered) and closes at once (with RST if ``rst``),
    while the client keeps writing new streams: they were never processed.  ``writer()``
    then runs at once in the server's greenlet, before the client's reader had a chance to
    read the GOAWAY: a request written on the dead socket (EPIPE/ECONNRESET)."""
    def respond(ctx, sid, headers, body):
        if getattr(ctx, "gone", False):
            return
        path = header(headers, b":path") or b""
        ctx.respond(sid, 200, path + b"|" + body)
        ctx.answered = getattr(ctx, "answered", 0) + 1
        if ctx.answered == per_conn:
            ctx.gone = True
            frame = hyperframe.frame.GoAwayFrame(0)
            frame.last_stream_id = sid
            ctx.raw(frame.serialize())
            if rst:
                ctx.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ctx.sock.shutdown(socket.SHUT_RDWR)
            ctx.sock.close()
            if writer is not None:
                me = gevent.getcurrent()
                if me in ctx.server.workers:   # (the server kills its workers as it closes)
                    ctx.server.workers.remove(me)
                writer()
    return respond


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("posts", [False, True], ids=["gets", "gets+posts"])
def test_fault_goaway_and_close_while_streams_are_written_are_retried(rst, posts, no_leaks):
    """A server that sends GOAWAY(last_stream_id=N) and closes right away while more streams
    are being written (what nginx does after keepalive_requests): the streams it never
    processed (above N, or broken before any response byte on an idempotent request) are
    sent again on a new connection; no caller sees an error."""
    pool = GreenPool("h2goawayclose", max_connections=50, checkout_timeout=10.0)
    errors: List[str] = []

    def worker(i):
        for j in range(20):
            path = "/%d/%d" % (i, j)
            try:
                if posts and j % 2:
                    body = b"b%d-%d" % (i, j)
                    r = get(pool, srv.url(path), method="POST", body=body)
                    assert r.read() == path.encode() + b"|" + body
                else:
                    assert get(pool, srv.url(path)).read() == path.encode() + b"|"
            except Exception as e:  # noqa: BLE001 - collected below
                errors.append(repr(e))

    extra: List[Any] = []

    def writer():   # runs in the server greenlet right after it closed a connection
        n = len(extra)
        path = "/extra/%d" % n
        try:
            if posts and n % 2:
                r = get(pool, srv.url(path), method="POST", body=b"extra")
                extra.append(r.read() == path.encode() + b"|extra")
            else:
                extra.append(get(pool, srv.url(path)).read() == path.encode() + b"|")
        except Exception as e:  # noqa: BLE001 - collected below
            errors.append("extra: %r" % (e,))
            extra.append(False)

    with H2FakeServer(_goaway_then_close(40, rst, writer)) as srv:
        gs = [gevent.spawn(worker, i) for i in range(20)]
        gevent.joinall(gs, timeout=60, raise_error=True)
        assert sorted(set(errors)) == [] and len(errors) == 0
        assert extra and all(extra)
        assert len(srv.conns) >= 400 // 40
        assert until(lambda: pool.get_stats()["shared_users"] == 0)
        assert_exact(pool)
        pool.close()
