"""HTTP/1.1 against hostile servers: bounded work, a fair hub, errors that say what happened.

Every case runs with both parsers (h11, httptools), through the client and a real socket:
in-process scripted servers (tests/httpfakes.py) where the point is the answer, a server in
another process where the point is that this process keeps running during a flood.  Each
test ends with the pool's books exact and (``no_leaks``) no file descriptor or greenlet left.
"""
from __future__ import annotations

import subprocess
import sys
import time

import gevent
import pytest
from httpfakes import CLOSE, HTTPFake, ok

import greenpool
from greenpool import errors
from greenpool.http.h1.conn import MAX_INTERIM_RESPONSES
from greenpool.http.models import Timeout

from fakes import assert_exact

PARSERS = ["h11", "httptools"]


@pytest.fixture(params=PARSERS)
def parser(request):
    return request.param


@pytest.fixture
def pool():
    p = greenpool.GreenPool("test-hostile-h1", max_connections=4)
    yield p
    p.close()


def client(pool, parser, **kw):
    return greenpool.Client(pool=pool, http1_parser=parser, timeout=Timeout(10.0), **kw)


def closed_after(pool, srv):
    """The connection the failure happened on was closed, nothing is left open."""
    assert pool.get_stats()["open"] == 0, pool.get_stats()
    assert_exact(pool)


# -- bounds before the final head -------------------------------------------------------------


def _flood(piece, total=8 * 1024 * 1024):
    def respond(req, sock):
        sent = 0
        try:
            while sent < total:
                sock.sendall(piece * 512)
                sent += len(piece) * 512
        except OSError:
            pass
        return CLOSE
    return respond


@pytest.mark.parametrize("piece", [b"HTTP/1.1 100 Continue\r\n\r\n", b"\r\n"],
                         ids=["100-continue", "empty-lines"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_flood_before_the_final_head_is_limit_exceeded(pool, parser, piece, method, no_leaks):
    """A server that never stops sending 100 Continue heads or empty lines: LimitExceeded
    after a bounded amount (not 8 MiB later), the connection closed, never retried (the
    server answered, so the error must not say the request may be retried)."""
    with HTTPFake(_flood(piece)) as srv, client(pool, parser) as c:
        with pytest.raises(errors.LimitExceeded) as e:
            c.request(method, srv.url + "/", body=b"x" if method == "POST" else None)
        assert "retried" not in str(e.value) and "before sending any" not in str(e.value)
        assert srv.accepted == 1 and len(srv.requests) == 1
        closed_after(pool, srv)


def test_interim_responses_up_to_the_cap_pass(pool, parser, no_leaks):
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
    with HTTPFake(lambda r, s: interim * MAX_INTERIM_RESPONSES + ok(b"fine")) as srv, \
            client(pool, parser) as c:
        assert c.get(srv.url + "/").content == b"fine"
        assert pool.get_stats()["free_count"] == 1
        assert_exact(pool)


def test_one_interim_response_too_many(pool, parser, no_leaks):
    interim = b"HTTP/1.1 103 Early Hints\r\n\r\n"
    with HTTPFake(lambda r, s: interim * (MAX_INTERIM_RESPONSES + 1) + ok(b"late")) as srv, \
            client(pool, parser) as c:
        with pytest.raises(errors.LimitExceeded, match="interim"):
            c.get(srv.url + "/")
        closed_after(pool, srv)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_empty_lines_then_close_on_a_reused_connection_is_not_retried(pool, parser, method,
                                                                      no_leaks):
    """The stale keep-alive retry is for a server that sent nothing; one that sent bytes
    (even empty lines) answered: a clear error, the request is not sent again."""
    def respond(req, sock):
        if req.n == 1:
            return ok(b"first")
        sock.sendall(b"\r\n\r\n")
        return CLOSE

    with HTTPFake(respond) as srv, client(pool, parser) as c:
        assert c.get(srv.url + "/").content == b"first"
        with pytest.raises(errors.RemoteProtocolError) as e:
            c.request(method, srv.url + "/", body=b"body" if method == "POST" else None)
        assert not isinstance(e.value, errors.ConnectionClosed)
        assert "empty lines" in str(e.value) and "retried" not in str(e.value)
        assert srv.accepted == 1 and len(srv.requests) == 2
        closed_after(pool, srv)


# -- chunk framing: httptools bounded as h11 ---------------------------------------------------

CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def _endless(start, filler=b"x" * 65536, total=64 * 1024 * 1024):
    def respond(req, sock):
        sock.sendall(start)
        sent = 0
        try:
            while sent < total:
                sock.sendall(filler)
                sent += len(filler)
        except OSError:
            pass
        return CLOSE
    return respond


@pytest.mark.parametrize("stream", [False, True])
def test_two_mib_chunk_extension(pool, parser, stream, no_leaks):
    wire = CHUNKED + b"5;e=" + b"x" * (2 << 20) + b"\r\nhello\r\n0\r\n\r\n"
    with HTTPFake(lambda r, s: wire) as srv, client(pool, parser) as c:
        with pytest.raises(errors.LimitExceeded, match="max_header_size"):
            r = c.get(srv.url + "/", stream=stream)
            r.read()
        closed_after(pool, srv)


@pytest.mark.parametrize("start", [CHUNKED + b"5;e=", CHUNKED + b"2\r\nhi\r\n0\r\nX-T: "],
                         ids=["extension", "trailer-value"])
def test_endless_chunk_framing_is_limit_exceeded_not_read_timeout(pool, parser, start, no_leaks):
    """Before: read until the server stopped (67 MB), then ReadTimeout, or buffered
    without limit (33.6 MB of one trailer value).  Now: LimitExceeded after about
    max_header_size bytes."""
    with HTTPFake(_endless(start)) as srv, client(pool, parser) as c:
        with pytest.raises(errors.LimitExceeded, match="max_header_size"):
            c.get(srv.url + "/", timeout=Timeout(read=30.0))
        closed_after(pool, srv)


# -- a fair hub: a flood from another process does not stop this one -------------------------

FLOOD_SERVER = r"""
import socket, sys, threading, time
MODES = {
    "100-continue": (b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 2048),
    "empty-lines": (b"", b"\r\n" * 32768),
    "huge-body": (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", b"x" * 262144),
    "tiny-chunks": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"1;e=0123456789abcdef0123456789\r\nx\r\n" * 4096),
}
def serve(conn, mode, seconds):
    start, piece = MODES[mode]
    try:
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = conn.recv(65536)
            if not d:
                return
            buf += d
        conn.sendall(start)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(piece)
    except OSError:
        pass
    finally:
        conn.close()
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(16)
print(lst.getsockname()[1], flush=True)
while True:
    c, _ = lst.accept()
    threading.Thread(target=serve, args=(c, sys.argv[1], float(sys.argv[2])), daemon=True).start()
"""


class ProcessFloodServer:
    """A server in a child process that answers every request with an endless flood
    (for ``seconds``): this process shares nothing with it, so only our own read loop can
    keep our hub from running."""

    def __init__(self, mode, seconds=8.0):
        self.mode = mode
        self.seconds = seconds

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", FLOOD_SERVER, self.mode,
                                      str(self.seconds)], stdout=subprocess.PIPE)
        self.port = int(self.proc.stdout.readline())
        self.url = "http://127.0.0.1:%d" % self.port
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


class Ticker:
    """A greenlet that wakes every 5 ms and keeps the largest gap between its wakeups."""

    def __enter__(self):
        self.gaps = []
        self.greenlet = gevent.spawn(self._run)
        gevent.sleep(0.02)
        return self

    def _run(self):
        last = time.monotonic()
        while True:
            gevent.sleep(0.005)
            now = time.monotonic()
            self.gaps.append(now - last)
            last = now

    @property
    def largest(self):
        return max(self.gaps)

    def __exit__(self, *exc):
        self.greenlet.kill()


#: how long the ticker may go without running; a read loop that never yields stops it for
#: the whole flood (8 s).  Generous: on a machine whose cores are all busy with other
#: processes, the scheduler alone can hold this one up for most of a second.
MAX_GAP = 2.0


@pytest.mark.parametrize("mode", ["100-continue", "empty-lines"])
def test_flood_before_the_head_from_another_process(pool, parser, mode, no_leaks):
    with ProcessFloodServer(mode) as srv, client(pool, parser) as c, Ticker() as ticker:
        with pytest.raises(errors.LimitExceeded):
            c.get(srv.url + "/")
        assert ticker.largest < MAX_GAP, ticker.largest
        closed_after(pool, srv)


@pytest.mark.parametrize("mode, stream", [("huge-body", True), ("tiny-chunks", True),
                                          ("tiny-chunks", False)])
def test_flood_of_body_from_another_process_timeout_fires_on_time(pool, parser, mode, stream,
                                                                  no_leaks):
    """A body that never ends, always ready to read: other greenlets keep running, and the
    caller's own gevent.Timeout(1) fires after about 1 s (bound generous for busy machines:
    6 s), not when the server stops (8 s)."""
    with ProcessFloodServer(mode) as srv, client(pool, parser) as c, Ticker() as ticker:
        t0 = time.monotonic()
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(1.0):
                # stream=False keeps what it reads: only the tiny-chunk flood (one byte of
                # data per 37 on the wire) is read whole, which keeps that small
                r = c.get(srv.url + "/", stream=stream)
                for _ in r.iter_bytes():
                    pass
        took = time.monotonic() - t0
        assert 0.9 < took < 6.0, took
        assert ticker.largest < MAX_GAP, ticker.largest
        closed_after(pool, srv)


# -- adaptive idle timeout: retire idle connections before the server closes them ------------


def test_adaptive_idle_timeout_against_nginx(nginx_factory, parser, no_leaks):
    """nginx closes idle connections after 1 s and does not say so (no Keep-Alive header).
    The pool sees two such closes, learns ~1 s, and from then on retires an idle connection
    before nginx would close it: a POST after an idle gap longer than nginx's timeout goes
    out on a fresh connection and succeeds, and nginx closes nothing under it."""
    n = nginx_factory(keepalive_timeout="1s")
    pool = greenpool.GreenPool("test-adaptive-nginx", max_connections=4, timeout=60)
    try:
        with client(pool, parser) as c:
            # two connections idle at once, closed by nginx after its 1 s
            gevent.joinall([gevent.spawn(c.get, n.http_url + "/") for _ in range(2)],
                           raise_error=True)
            assert pool.count() == 2 and "keep-alive" not in c.get(n.http_url + "/").headers
            deadline = time.monotonic() + 30
            while pool.count() and time.monotonic() < deadline:
                gevent.sleep(0.05)
            stats = pool.host_stats("127.0.0.1", n.http_port)
            assert pool.get_stats()["dropped"] == 2, pool.get_stats()
            learned = stats["server_idle_timeout"]
            assert learned is not None and 0.9 <= learned < 10, stats
            assert stats["retire_idle_after"] < learned
            # learned: the next idle connection leaves before nginx closes it
            assert c.get(n.http_url + "/").status == 200
            created = pool.get_stats()["created"]
            gevent.sleep(learned + 0.5)          # longer than nginx keeps it
            assert pool.count() == 0 and pool.get_stats()["expired"] == 1
            r = c.post(n.http_url + "/upload", body=b"x" * 1000)
            assert r.status == 200 and r.content == b"ok\n"
            assert pool.get_stats()["created"] == created + 1   # a fresh connection
            assert pool.get_stats()["dropped"] == 2             # nginx closed none of ours
            assert_exact(pool)
    finally:
        pool.close()


def test_keep_alive_header_is_learned_for_the_host(pool, parser, no_leaks):
    with HTTPFake(lambda r, s: ok(b"ka", "Keep-Alive: timeout=3")) as srv, \
            client(pool, parser) as c:
        assert c.get(srv.url + "/").content == b"ka"
        stats = pool.host_stats("127.0.0.1", srv.port)
        assert stats["server_idle_timeout"] == 3.0 and stats["retire_idle_after"] == 2.0
        assert_exact(pool)
