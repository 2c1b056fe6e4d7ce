"""HTTP/2 against hostile and broken servers: bounded work, a fair hub, deadlines that hold,
dead peers noticed (greenpool/http/h2/conn.py and h2/transport.py).

The servers are in-process h2 servers scripted per test (``H2FakeServer`` from
test_http_h2.py), hand-built frames, and, where the point is that the client process keeps
running while a peer floods it, a raw-frame server in another process
(:class:`FloodServer`).  Every test ends with exact pool books and no leaked fd or greenlet.
"""
from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

import gevent
import pytest
from test_http_h2 import H2FakeServer, get, until

import greenpool
from greenpool import GreenPool
from greenpool.errors import ConnectionClosed, LimitExceeded, ReadTimeout, TimeoutException
from greenpool.http.h2 import transport as h2transport
from greenpool.http.h2.conn import H2Config
from greenpool.http.models import Request, Timeout

from fakes import FakeServer, assert_exact

H2C = "prior_knowledge"


@pytest.fixture
def pool():
    p = GreenPool("h2hostile", max_connections=20, checkout_timeout=5.0)
    yield p
    p.close()


# ---------------------------------------------------------------------------------------------
# the total deadline covers the body (stream=False), as on HTTP/1.1


def drip(ctx, sid, headers, body):
    """A head at once, then one body byte every 0.1 s for 10 s."""
    ctx.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", b"100")])
    ctx.flush()
    for _ in range(100):
        gevent.sleep(0.1)
        ctx.h2.send_data(sid, b"x")
        ctx.flush()
    ctx.h2.end_stream(sid)
    ctx.flush()


def test_total_deadline_covers_a_dripped_body(pool, no_leaks):
    with H2FakeServer(drip) as srv, greenpool.Client(pool=pool, http2=H2C) as c:
        t0 = time.monotonic()
        with pytest.raises(ReadTimeout, match="total|read") as e:
            c.get(srv.url(), timeout=Timeout(10, total=1))
        elapsed = time.monotonic() - t0
        assert isinstance(e.value, TimeoutException)
        assert 0.9 <= elapsed < 6, elapsed     # the drip alone lasts 10 s
        assert until(lambda: srv.resets)
        assert len(srv.resets) == 1            # its stream was reset, the connection stays
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        # stream=True: the total deadline ends at the head, the body reads on
        r = c.get(srv.url(), timeout=Timeout(10, total=0.5), stream=True)
        r.close()
        assert len(srv.conns) == 1
        assert_exact(pool)
        pool.close()
    assert_exact(pool)


# ---------------------------------------------------------------------------------------------
# a fair hub: a flood from another process does not stop the client process


FLOOD_SERVER = r"""
import socket, struct, sys, threading
mode = sys.argv[1]
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(8)
print(ls.getsockname()[1], flush=True)

def frame(t, f, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([t, f]) + struct.pack(">I", sid) + payload

def drain(s):
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass

def serve(s):
    s.sendall(frame(4, 0, 0, b""))
    threading.Thread(target=drain, args=(s,), daemon=True).start()
    if mode == "ping":
        one = frame(6, 0, 0, b"12345678")
    else:
        one = frame(4, 0, 0, struct.pack(">HI", 3, 100))
    batch = one * 1000
    try:
        while True:
            s.sendall(batch)
    except OSError:
        pass

while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


class FloodServer:
    """An HTTP/2 server in another process that answers the preface with SETTINGS, reads
    and drops whatever it is sent, and floods PING (``"ping"``) or SETTINGS (``"settings"``)
    frames as fast as it can; it never answers a request."""

    def __init__(self, mode: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", FLOOD_SERVER, mode],
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def url(self, path: str = "/") -> str:
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def __enter__(self) -> "FloodServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Ticker:
    """A greenlet that sleeps 10 ms in a loop and records the largest gap between its turns."""

    def __init__(self) -> None:
        self.gap = 0.0
        self.turns = 0
        self.g = gevent.spawn(self._run)

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            gevent.sleep(0.01)
            now = time.monotonic()
            self.gap = max(self.gap, now - last)
            self.turns += 1
            last = now

    def stop(self) -> None:
        self.g.kill()


@pytest.mark.parametrize("mode", ["ping", "settings"])
def test_flood_from_another_process_leaves_the_hub_fair(pool, mode, no_leaks):
    """The reader yields after a short slice of frames: under a flood of frames that each
    need an ACK, the caller's own Timeout(2) fires on time and a ticker greenlet runs."""
    with FloodServer(mode) as srv, greenpool.Client(pool=pool, http2=H2C) as c:
        ticker = Ticker()
        t0 = time.monotonic()
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(2):
                c.get(srv.url(), timeout=30)
        elapsed = time.monotonic() - t0
        ticker.stop()
        # generous bounds for busy machines; 10 s (the whole flood) before the reader yielded
        assert 2 <= elapsed < 6, elapsed
        assert ticker.gap < 2.5, ticker.gap
        # ~200 in 2 s on an idle machine, 19 seen on a busy one; none while the hub is frozen
        assert ticker.turns >= 5, ticker.turns
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        pool.close()
    assert_exact(pool)


# ---------------------------------------------------------------------------------------------
# flood limits (nghttp2's defaults): GOAWAY(ENHANCE_YOUR_CALM), close, streams fail or retry


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


DATA, HEADERS, RST_STREAM, SETTINGS, PING, CONTINUATION = 0, 1, 3, 4, 6, 9
STATUS_200 = b"\x88"       # HPACK: static table entry 8, ":status: 200"

# streams: 1 answered (closed), 3 a GET and 5 a POST in flight
FLOODS = {
    # 1,001 RST_STREAM on a closed stream: over the burst of 1,000
    "rst": frame(RST_STREAM, 0, 1, struct.pack(">I", 8)) * 1100,
    # a header block in 20 CONTINUATIONs: over 8
    "continuation": frame(HEADERS, 0, 5, STATUS_200) + frame(CONTINUATION, 0, 5, b"\x88") * 20,
    # one SETTINGS of 40 entries: over 32
    "settings": frame(SETTINGS, 0, 0, struct.pack(">HI", 3, 100) * 40),
    # a head, then 200 empty DATA frames: over 100 in a row
    "empty-data": frame(HEADERS, 4, 3, STATUS_200) + frame(DATA, 0, 3) * 200,
}


def flooder(kind):
    def respond(ctx, sid, headers, body):
        if ctx.index > 0:
            ctx.respond(sid, 200, b"fresh")
            return
        if sid == 1:
            ctx.respond(sid, 200, b"warm")
            return
        if sid == 5:
            ctx.raw(FLOODS[kind])
        gevent.sleep(10)
    return respond


@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_flood_limit_sends_goaway_and_fails_or_retries_streams(pool, kind, no_leaks):
    with H2FakeServer(flooder(kind)) as srv:
        assert get(pool, srv.url()).read() == b"warm"
        results = {}

        def call(method):
            try:
                r = get(pool, srv.url(), method=method, body=b"x" if method == "POST" else None)
                results[method] = r.read()
            except Exception as e:  # noqa: BLE001 - checked below
                results[method] = e

        g = gevent.spawn(call, "GET")
        assert until(lambda: len(srv.requests) == 2)
        p = gevent.spawn(call, "POST")
        gevent.joinall([g, p], timeout=30)
        assert g.dead and p.dead
        assert isinstance(results["POST"], LimitExceeded), results
        assert "ENHANCE_YOUR_CALM" in str(results["POST"]) or "HTTP/2" in str(results["POST"])
        if kind == "empty-data":
            assert isinstance(results["GET"], LimitExceeded), results   # it had its head
        else:
            assert results["GET"] == b"fresh", results   # no head yet: sent again elsewhere
        assert until(lambda: (0, 11) in srv.goaways)      # ENHANCE_YOUR_CALM
        assert pool.get_stats()["shared_users"] == 0
        assert get(pool, srv.url()).read() == b"fresh"
        assert_exact(pool)
        pool.close()
    assert_exact(pool)


def test_flood_limits_are_validated():
    for name in ("max_pending_acks", "max_continuations", "max_settings", "reset_burst",
                 "reset_rate", "max_empty_frames"):
        with pytest.raises(ValueError):
            H2Config(**{name: 0})


def test_acks_owed_while_our_writer_is_blocked_are_bounded(pool, no_leaks):
    """A server that stops reading (our upload blocks on a full socket) and floods PINGs:
    the ACKs h2 queues behind the blocked write are capped at max_pending_acks (1,000);
    over it the connection closes and the upload fails with LimitExceeded."""
    def handler(sock, server):
        # a fixed receive buffer (no autotuning up to tcp_rmem's 32 MiB): the upload fills
        # it and the client's send buffer, then blocks
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.recv(65536)
        sock.sendall(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31 - 1))
                     + frame(8, 0, 0, struct.pack(">I", 2**31 - 1 - 65535))   # WINDOW_UPDATE
                     + frame(SETTINGS, 1, 0))
        sock.recv(65536)              # the request has started
        gevent.sleep(0.5)             # read nothing more: the client's write blocks
        sock.sendall(frame(PING, 0, 0, b"12345678") * 2000)
        while sock.recv(1 << 20):     # until the client closes
            pass

    with FakeServer(handler) as srv:
        url = "http://127.0.0.1:%d/" % srv.port
        t0 = time.monotonic()
        with pytest.raises(LimitExceeded, match="max_pending_acks"):
            get(pool, url, method="POST", body=b"x" * (32 * 1024 * 1024), timeout=30)
        assert time.monotonic() - t0 < 10
        assert pool.get_stats()["open"] == 0
        assert_exact(pool)
        pool.close()


# ---------------------------------------------------------------------------------------------
# dead peers: a stream's read timeout makes the connection suspect; an unanswered PING closes it


def black_hole(ctx, sid, headers, body):
    """The first connection stops reading and answering once it has two requests in flight
    (a GET and a POST); later connections answer at once."""
    if ctx.index > 0:
        ctx.respond(sid, 200, b"fresh")
        return
    ctx.seen = getattr(ctx, "seen", 0) + 1
    if ctx.seen == 2:
        ctx.silent = ctx.deaf = True
    ctx.server.stopping.wait()


def test_black_hole_peer_leaves_rotation_after_a_read_timeout(pool, no_leaks):
    with H2FakeServer(black_hole) as srv:
        post = gevent.spawn(get, pool, srv.url(), "POST", body=b"p", timeout=Timeout(30))
        assert until(lambda: len(srv.requests) == 1)
        t0 = time.monotonic()
        with pytest.raises(ReadTimeout):
            get(pool, srv.url(), timeout=Timeout(30, read=0.3))
        # at once, before the probe's verdict: lands on the suspect connection, fails with
        # ConnectionClosed when the PING goes unanswered, is sent again on a new one
        assert get(pool, srv.url(), timeout=Timeout(30)).read() == b"fresh"
        with pytest.raises(ConnectionClosed, match="stopped answering"):
            post.get(timeout=10)        # not idempotent: not sent again
        assert time.monotonic() - t0 < 10
        for _ in range(5):
            assert get(pool, srv.url(), timeout=Timeout(30, read=5)).read() == b"fresh"
        stats = pool.get_stats()
        assert stats["dead_peers"] == 1 and stats["ping_failures"] == 1, stats
        assert len(srv.conns) == 2 and stats["open"] == 1 and stats["shared_users"] == 0, stats
        assert_exact(pool)
        pool.close()
    assert_exact(pool)


def test_slow_but_alive_peer_keeps_its_connection(pool, no_leaks):
    def slow(ctx, sid, headers, body):
        gevent.sleep(0.5)
        ctx.respond(sid, 200, b"late")

    with H2FakeServer(slow) as srv:
        with pytest.raises(ReadTimeout):
            get(pool, srv.url(), timeout=Timeout(30, read=0.1))
        assert get(pool, srv.url(), timeout=Timeout(30)).read() == b"late"
        stats = pool.get_stats()
        assert stats["ping_failures"] == 0 and stats.get("dead_peers", 0) == 0, stats
        assert srv.pings >= 1 and len(srv.conns) == 1
        assert_exact(pool)
        pool.close()


# ---------------------------------------------------------------------------------------------
# GOAWAY before a failed write, over TLS too


def test_tls_goaway_then_close_a_post_written_just_then_is_retried(tls, no_leaks):
    """A TLS server sends GOAWAY(last_stream_id=1) and closes its idle connection (haproxy,
    h2o, lighttpd do); a POST written on it at that instant, before the reader saw the
    GOAWAY, fails to write; what the server sent is read first, so the POST (stream 3,
    above the last stream id: never processed) is sent again on a new connection."""
    pool = GreenPool("h2tlsgoaway", max_connections=10, checkout_timeout=10.0)
    ctx_server = tls.server_context()
    ctx_server.set_alpn_protocols(["h2"])
    outcome = []

    def post():
        req = Request("POST", "https://127.0.0.1:%d/post" % srv.port, None, body=b"data",
                      content_length=4)
        try:
            r = h2transport.handle(pool, req, Timeout(10), None, {"verify": str(tls.ca_path)}, True)
            outcome.append(r.read())
        except Exception as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    def respond(ctx, sid, headers, body):
        if ctx.index > 0:
            ctx.respond(sid, 200, b"fresh:" + body)
            return
        me = gevent.getcurrent()
        if me in ctx.server.workers:    # (the server kills its workers as it closes)
            ctx.server.workers.remove(me)
        ctx.respond(sid, 200, b"first")
        gevent.sleep(0.2)               # the connection is idle now
        frame = struct.pack(">I", 8)[1:] + bytes([7, 0]) + struct.pack(">I", 0) \
            + struct.pack(">II", 1, 0)  # GOAWAY(last_stream_id=1, NO_ERROR)
        ctx.raw(frame)
        ctx.sock.shutdown(socket.SHUT_RDWR)    # the FIN goes now (close alone is deferred)
        ctx.sock.close()
        # in this greenlet, before the client's reader has run: the write fails (TLS: "EOF
        # occurred in violation of protocol") with the GOAWAY unread in the socket
        post()

    with H2FakeServer(respond, ssl_context=ctx_server) as srv:
        req = Request("GET", "https://127.0.0.1:%d/" % srv.port)
        r = h2transport.handle(pool, req, Timeout(10), None, {"verify": str(tls.ca_path)}, True)
        assert r.read() == b"first"
        deadline = time.monotonic() + 10
        while not outcome and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert outcome == [b"fresh:data"], outcome
        assert len(srv.conns) == 2
        gevent.sleep(0.05)
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        pool.close()
    assert_exact(pool)


# ---------------------------------------------------------------------------------------------
# adaptive idle timeout: a GOAWAY(NO_ERROR) at idle is an observed idle close


class IdleGoawayServer:
    """An h2c server that ends every connection with GOAWAY(NO_ERROR) once it has received
    nothing for ``idle`` seconds, then closes it (nginx's ``keepalive_timeout`` on HTTP/2).
    ``ends[i]`` says who ended connection ``i``: ``"goaway"`` (this server's idle timer)
    or ``"client"`` (EOF or a GOAWAY from the client first)."""

    def __init__(self, idle):
        self.idle = idle
        self.ends = {}
        self.requests = 0
        self.fake = FakeServer(self._handle)
        self.url = "http://127.0.0.1:%d/" % self.fake.port

    def _handle(self, sock, server):
        import h2.config
        import h2.connection
        import h2.events

        index = len(self.ends)
        self.ends[index] = None
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                 header_encoding=None))
        c.initiate_connection()
        sock.sendall(c.data_to_send())
        sock.settimeout(self.idle)
        while True:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                c.close_connection()            # GOAWAY(NO_ERROR, the last stream id)
                sock.sendall(c.data_to_send())
                self.ends[index] = "goaway"
                return
            if not data:
                self.ends[index] = "client"
                return
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    self.requests += 1
                    c.send_headers(ev.stream_id, [(b":status", b"200"),
                                                  (b"content-length", b"2")])
                    c.send_data(ev.stream_id, b"ok", end_stream=True)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.ends[index] = "client"
                    return
            sock.sendall(c.data_to_send())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fake.stop()


def test_goaway_at_idle_teaches_the_idle_timeout_and_idle_connections_retire_before_it(no_leaks):
    """Each connection is used once, then left idle until the server's GOAWAY(NO_ERROR)
    ends it.  One such close teaches nothing; two within 20% of each other teach the
    server's idle timeout (on a calm machine the second close does; a busy one may need a
    third or fourth, as the pool compares each close with the four before it).  From then
    on an idle connection leaves the pool before the server's timer ends it: the server sees
    the client close first."""
    idle = 2.0
    pool = GreenPool("h2idle", max_connections=4, timeout=60.0)
    with IdleGoawayServer(idle) as srv:
        key = ("127.0.0.1", srv.fake.port)
        learned = None
        closes = 0
        while learned is None and closes < 4:
            assert get(pool, srv.url, timeout=Timeout(30)).read() == b"ok"
            assert until(lambda: pool.get_stats()["open"] == 0, timeout=idle * 10)
            assert srv.ends[closes] == "goaway"     # the server ended it, the pool saw it
            closes += 1
            learned = pool.host_stats(*key)["server_idle_timeout"]
            if closes == 1:
                assert learned is None      # one close is not a timeout yet
        assert learned is not None, pool.host_stats(*key)
        stats = pool.host_stats(*key)
        assert idle * 0.5 < stats["server_idle_timeout"] < idle * 4, stats
        assert stats["retire_idle_after"] < stats["server_idle_timeout"], stats
        expired = pool.counters["expired"]
        assert get(pool, srv.url, timeout=Timeout(30)).read() == b"ok"
        assert until(lambda: srv.ends.get(closes) is not None, timeout=idle * 10)
        assert srv.ends[closes] == "client", srv.ends      # retired before the server's GOAWAY
        assert until(lambda: pool.get_stats()["open"] == 0)
        assert pool.counters["expired"] == expired + 1
        assert srv.requests == closes + 1
        assert_exact(pool)
        pool.close()
    assert_exact(pool)


def test_goaway_with_a_stream_open_teaches_nothing(no_leaks):
    """A GOAWAY while a stream is in flight is not an idle close, however long the
    connection had been open."""
    pool = GreenPool("h2idle2", max_connections=4, timeout=60.0)

    def goaway_mid_stream(ctx, sid, headers, body):
        ctx.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", b"4")])
        ctx.flush()
        gevent.sleep(0.6)                       # longer than the pool's LEARN_MIN_IDLE
        ctx.raw(frame(7, 0, 0, struct.pack(">II", sid, 0)))   # GOAWAY(NO_ERROR), hand-built
        ctx.h2.send_data(sid, b"done", end_stream=True)
        ctx.flush()

    with H2FakeServer(goaway_mid_stream) as srv:
        for _ in range(2):
            assert get(pool, srv.url(), timeout=Timeout(30)).read() == b"done"
            assert until(lambda: pool.get_stats()["open"] == 0)
        assert pool.host_stats("127.0.0.1", srv.port)["server_idle_timeout"] is None
        assert len(srv.conns) == 2
        assert_exact(pool)
        pool.close()
    assert_exact(pool)


def test_goaway_at_idle_from_nginx_teaches_the_idle_timeout(nginx_factory, no_leaks):
    """nginx ends an idle HTTP/2 connection after ``keepalive_timeout`` with GOAWAY(NO_ERROR)
    (and says nothing of it beforehand): learned after two (up to four on a busy machine)
    such closes, then the next idle connection is retired by the pool's own timer."""
    n = nginx_factory(keepalive_timeout="2s")
    pool = GreenPool("h2idle-nginx", max_connections=4, timeout=60.0)
    key = ("127.0.0.1", n.h2c_port)
    try:
        with greenpool.Client(pool=pool, http2=H2C) as c:
            closes = 0
            learned = None
            while learned is None and closes < 4:
                r = c.get(n.h2c_url + "/")
                assert r.status == 200 and r.http_version == "HTTP/2"
                assert until(lambda: pool.count() == 0, timeout=30)
                closes += 1
                learned = pool.host_stats(*key)["server_idle_timeout"]
                if closes == 1:
                    assert learned is None
            stats = pool.host_stats(*key)
            assert learned is not None and 1.0 < learned < 8, stats
            assert pool.get_stats()["expired"] == 0     # nginx ended every one so far
            assert c.get(n.h2c_url + "/").status == 200
            assert until(lambda: pool.count() == 0, timeout=30)
            assert pool.get_stats()["expired"] == 1     # this one the pool retired itself
            assert_exact(pool)
    finally:
        pool.close()
    assert_exact(pool)
