"""HTTP/3 (greenpool.http.h3): Client(http3=...) against Caddy and an in-process qh3 server.

The in-process server (tests/h3servers.py) makes the faults: restart on the same port,
GOAWAY, CONNECTION_CLOSE mid-stream, a hanging stream, MAX_STREAMS=2, a short idle timeout,
0-RTT accepted or rejected.  Packet loss goes through a UDP loss relay to Caddy (qh3's own
server side wedges a stream under loss).  Fallback cases use nginx (TCP only:
its UDP port is closed, or a black hole bound on it here).  Each test ends with exact pool
books and, through ``no_leaks``, no file descriptor or greenlet left.
"""
from __future__ import annotations

import gc
import re
import socket
import ssl
import time
import weakref

import gevent
import pytest
from gevent.event import Event

pytest.importorskip("qh3")

from greenpool import Client, GreenPool  # noqa: E402
from greenpool.errors import ConnectError, ConnectionClosed, GreenPoolError, ReadTimeout, RemoteProtocolError  # noqa: E402
from greenpool.http.h3 import origins, transport  # noqa: E402
from greenpool.http.models import URL, Timeout  # noqa: E402

from fakes import assert_exact, until  # noqa: E402
from h3servers import BODY, CADDY_BODY, LOSS_SIZES, Caddy, H3Server, UdpLossProxy, pattern  # noqa: E402
from servers import SMALL_BODY  # noqa: E402

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def caddy(tls, tmp_path_factory):
    server = Caddy(tmp_path_factory.mktemp("caddy"), tls)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def h3(tls):
    server = H3Server(str(tls.cert_path), str(tls.key_path)).start()
    yield server
    server.stop()


@pytest.fixture
def pool():
    p = GreenPool("h3", max_connections=20, max_per_host=4, checkout_timeout=10.0)
    yield p
    p.close()


def client(pool, tls, http3="prior_knowledge", **kw):
    return Client(pool=pool, http3=http3, verify=str(tls.ca_path), **kw)


def all_pools(pool):
    """The pools holding the client's connections: the pool itself (a private CA's
    connections are in it, under tagged keys such as ``"quic|tls1"``)."""
    return [pool]


def quic_books(pool):
    """(open QUIC connections, their users) in the pool, every QUIC key (tagged or not)."""
    opened = users = 0
    for key, h in pool._hosts.items():
        if key[2].partition("|")[0] == "quic":
            opened += h.open
            users += sum(c.users for c in h.shared)
    assert_exact(pool)
    return opened, users


# -- the in-process server --


def test_get_post_over_one_shared_connection(no_leaks, h3, pool, tls):
    with client(pool, tls) as c:
        r = c.get(h3.url + "/")
        assert (r.status, r.http_version, r.content) == (200, "HTTP/3", BODY)
        r = c.post(h3.url + "/echo", body=b"x" * 300000)
        assert (r.status, len(r.content)) == (200, 300000)
        r = c.get(h3.url + "/n/100000")
        assert r.content == pattern(100000)
        assert h3.connections == 1
        assert quic_books(pool) == (1, 0)
    pool.close()
    assert quic_books(pool) == (0, 0)


def test_module_level_request_takes_http3(no_leaks, h3, pool, tls):
    import greenpool
    r = greenpool.request("GET", h3.url + "/", pool=pool, http3="prior_knowledge",
                          verify=str(tls.ca_path))
    assert (r.http_version, r.content) == ("HTTP/3", BODY)
    r = greenpool.post(h3.url + "/echo", body=b"abc", pool=pool, http3="prior_knowledge",
                       verify=str(tls.ca_path))
    assert (r.http_version, r.content) == ("HTTP/3", b"abc")
    assert h3.connections == 1
    pool.close()


def test_requests_adapter_takes_http3(no_leaks, h3, pool, tls):
    requests = pytest.importorskip("requests")
    from greenpool.contrib.requests import GreenPoolAdapter
    with requests.Session() as s:
        s.mount("https://", GreenPoolAdapter(pool=pool, http3="prior_knowledge"))
        r = s.get(h3.url + "/n/5000", verify=str(tls.ca_path))
        assert (r.status_code, r.content) == (200, pattern(5000))
        assert (r.raw.version, r.raw.version_string) == (30, "HTTP/3")
    assert h3.connections == 1
    pool.close()


def test_many_greenlets_multiplex_one_connection(no_leaks, h3, pool, tls):
    c = client(pool, tls)
    c.get(h3.url + "/")           # the connection exists: everyone shares it

    def one(i):
        r = c.get(h3.url + "/n/%d" % (i * 37))
        assert r.content == pattern(i * 37)
        return r.http_version
    gs = [gevent.spawn(one, i) for i in range(50)]
    assert [g.get(timeout=30) for g in gs] == ["HTTP/3"] * 50
    assert h3.connections == 1
    assert quic_books(pool) == (1, 0)


def test_streams_never_exceed_max_streams(no_leaks, h3, tls):
    """qh3 allows 100 concurrent streams; 150 greenlets holding their streams on ONE
    connection (max_per_host=1) wait for a stream instead of failing."""
    p = GreenPool("h3one", max_per_host=1, checkout_timeout=30.0)
    try:
        c = client(p, tls)
        c.get(h3.url + "/")
        held = []
        all_in = Event()

        def one():
            r = c.get(h3.url + "/chunks/2", stream=True)
            held.append(r)
            if len(held) >= 100:
                all_in.set()
            all_in.wait(30)
            return r.read()
        gs = [gevent.spawn(one) for _ in range(150)]
        bodies = [g.get(timeout=60) for g in gs]
        assert bodies == [b"chunk0\nchunk1\n"] * 150
        assert h3.connections == 1
        assert h3.max_open_seen <= 100
        assert quic_books(p) == (1, 0)
    finally:
        p.close()


def test_peer_max_streams_2_is_never_exceeded(no_leaks, tls):
    """A server allowing 2 concurrent streams: 20 concurrent requests all served on one
    connection, never more than 2 open at the server, none refused and sent again."""
    p = GreenPool("h3two", max_per_host=1, checkout_timeout=30.0)
    try:
        with H3Server(str(tls.cert_path), str(tls.key_path), max_streams=2) as h3:
            c = client(p, tls)
            assert c.get(h3.url + "/").content == BODY
            gs = [gevent.spawn(c.get, h3.url + "/slow/0.02", timeout=30) for _ in range(20)]
            assert [g.get(timeout=60).content for g in gs] == [b"slow"] * 20
            assert h3.connections == 1
            assert h3.requests == 21
            assert 1 <= h3.max_open_seen <= 2
            assert h3.library_errors == 0
            route_pool = c._route(p, URL(h3.url)).pool
            assert origins.stats(route_pool)["retried"] == 0
            assert quic_books(p) == (1, 0)
    finally:
        p.close()


def test_short_peer_idle_timeout_retires_the_connection_first(no_leaks, tls):
    """The server closes a connection idle for 0.5 s: the pool retires it before that and
    the next request opens a new one without an error."""
    p = GreenPool("h3peeridle", timeout=30)
    try:
        with H3Server(str(tls.cert_path), str(tls.key_path), idle_timeout=0.5) as h3:
            c = client(p, tls)
            assert c.get(h3.url + "/").content == BODY
            gevent.sleep(1.0)
            assert quic_books(p) == (0, 0)          # retired (not closed by the server)
            assert sum(q.counters["expired"] for q in all_pools(p)) == 1
            assert c.get(h3.url + "/").content == BODY
            assert h3.connections == 2
            route_pool = c._route(p, URL(h3.url)).pool
            st = origins.stats(route_pool)
            assert (st["closed_by_peer"], st["retried"], st["dead_peer"]) == (0, 0, 0), st
            assert quic_books(p) == (1, 0)
    finally:
        p.close()


def test_streamed_body_and_early_close(no_leaks, h3, pool, tls):
    c = client(pool, tls)
    r = c.get(h3.url + "/chunks/5", stream=True)
    assert r.http_version == "HTTP/3"
    assert b"".join(r.iter_bytes()) == b"".join(b"chunk%d\n" % i for i in range(5))
    r = c.get(h3.url + "/chunks/50", stream=True)
    next(iter(r.iter_bytes()))
    r.close()                      # the stream is cancelled, the connection goes on
    assert quic_books(pool) == (1, 0)
    assert c.get(h3.url + "/").content == BODY
    assert h3.connections == 1


def test_unread_body_is_bounded(no_leaks, h3, pool, tls):
    from greenpool.errors import LimitExceeded
    from greenpool.http.models import Request
    cfg = transport.H3Config(max_stream_buffer=256 * 1024)
    opts = {"verify": str(tls.ca_path)}
    r = transport.handle(pool, Request("GET", h3.url + "/n/2000000"), Timeout(10), None, opts, cfg)
    gevent.sleep(0.5)                       # the server sends; nobody reads
    with pytest.raises(LimitExceeded):
        r.read()
    r = transport.handle(pool, Request("GET", h3.url + "/"), Timeout(10), None, opts, cfg)
    assert r.read() == BODY                 # only that stream was cancelled
    assert_exact(pool)
    pool.close()


def test_read_and_total_timeouts_hold(no_leaks, h3, pool, tls):
    c = client(pool, tls)
    c.get(h3.url + "/")
    t0 = time.monotonic()
    with pytest.raises(ReadTimeout):
        c.get(h3.url + "/hang", timeout=Timeout(read=0.3))
    with pytest.raises(GreenPoolError):
        c.get(h3.url + "/slow/5", timeout=Timeout(total=0.4))
    assert time.monotonic() - t0 < 4.0      # far below the 5 s the server would take
    assert quic_books(pool) == (1, 0)
    assert c.get(h3.url + "/").content == BODY   # only the streams were cancelled
    assert h3.connections == 1


def test_each_waiting_caller_keeps_its_own_read_timeout(no_leaks, h3, pool, tls):
    """The callers waiting on one connection share one wait timer (armed for the earliest
    deadline): each still times out at its own read timeout, never before it, a shorter one
    that came later is not held up by the longer ones, and an answer in time is unaffected."""
    c = client(pool, tls)
    c.get(h3.url + "/")
    ended = []

    def hang(read):
        t0 = time.monotonic()
        with pytest.raises(ReadTimeout):
            c.get(h3.url + "/hang", timeout=Timeout(read=read))
        ended.append((read, time.monotonic() - t0))

    slow = gevent.spawn(c.get, h3.url + "/slow/0.2", timeout=Timeout(read=30))
    gs = [gevent.spawn(hang, 5.0)]
    gevent.sleep(0.05)
    gs += [gevent.spawn(hang, 0.3), gevent.spawn(hang, 1.0)]
    gevent.joinall(gs, timeout=30, raise_error=True)
    assert slow.get(timeout=30).content == b"slow"
    took = dict(ended)
    assert sorted(took) == [0.3, 1.0, 5.0]
    assert all(took[read] >= read for read in took), ended    # never before its own timeout
    order = [read for read, _ in ended]
    # the later, shorter wait was not held to the first one's deadline, 4.65 s after its own
    assert order.index(0.3) < order.index(5.0), ended
    proto = next(conn.proto for h in pool._hosts.values() for conn in h.shared)
    assert not proto._waiting                      # every wait took itself off
    assert quic_books(pool) == (1, 0)
    assert c.get(h3.url + "/").content == BODY      # the connection goes on
    assert h3.connections == 1


def test_a_body_that_came_with_its_head_needs_no_body_stream(no_leaks, h3, pool, tls):
    """stream=False and the whole body already in: the response holds it and the stream
    and the use are given back before the call returns; stream=True keeps a body stream."""
    c = client(pool, tls)
    r = c.get(h3.url + "/")
    assert (r.content, r.stream, r.closed) == (BODY, None, True)
    assert quic_books(pool) == (1, 0)
    r = c.get(h3.url + "/n/3000", stream=True)
    assert r.stream is not None and not r.closed
    assert r.read() == pattern(3000)
    assert quic_books(pool) == (1, 0)


@pytest.mark.parametrize("loss", [0.01, 0.05])
def test_packet_loss_each_way_no_errors(no_leaks, caddy, pool, tls, loss):
    """100 concurrent GETs and a 200 kB POST through a relay dropping ``loss`` of the
    datagrams each way: every answer complete, no error.  The server is Caddy: qh3's own
    server side wedges a stream under loss (its packet builder raises "reserved stream is
    missing" and leaves that stream's queued data unsent), which no client can recover."""
    with UdpLossProxy(caddy.port, loss) as proxy:
        c = client(pool, tls)
        url = "https://127.0.0.1:%d" % proxy.port
        # the first handshake outside the race (a lost Initial waits a PTO, past the race
        # delay, and the relay's port has no TCP to fall back to)
        route = c._route(pool, URL(url))
        route_pool = route.pool
        conn = transport.acquire(route_pool, "127.0.0.1", proxy.port, Timeout(20), None,
                                 {"verify": str(tls.ca_path), "cert": None}, transport=route.quic)
        route_pool.release_shared(conn)

        def one(size):
            r = c.get(url + "/n/%d" % size, timeout=30)
            return (r.http_version, r.content == pattern(size))
        gs = [gevent.spawn(one, size) for size in LOSS_SIZES]
        assert [g.get(timeout=60) for g in gs] == [("HTTP/3", True)] * len(LOSS_SIZES)
        r = c.post(url + "/echo", body=pattern(200000), timeout=30)
        assert (r.http_version, r.content) == ("HTTP/3", pattern(200000))
        assert proxy.dropped > 0
        assert quic_books(pool)[1] == 0
        pool.close()


def test_a_wake_while_the_reader_is_between_slices_is_kept(no_leaks, h3, pool, tls):
    """A watcher (datagrams, the QUIC timer, a flush) firing while the reader's slice is
    still running or yielded after a full batch runs one more slice.  It used to be
    dropped: the reader parked with a flush pending (later flush requests were no-ops) or
    the library's timer spent, and what was queued waited for the next datagram."""
    c = client(pool, tls)
    route = c._route(pool, URL(h3.url))
    route_pool = route.pool
    conn = transport.acquire(route_pool, "127.0.0.1", h3.port, Timeout(5), None,
                             {"verify": str(tls.ca_path), "cert": None}, transport=route.quic)
    proto = conn.proto
    proto._io.stop()              # only the wakes below, nothing from the network
    if proto._timer is not None:
        proto._timer.stop()
    turns = []

    def turn():
        turns.append(len(turns))
        if len(turns) == 1:
            proto._loop.run_callback(proto._wake)    # fires during this slice
            return True                               # a full batch: the reader yields
        return False
    proto._turn = turn
    try:
        proto._loop.run_callback(proto._wake)
        assert until(lambda: len(turns) >= 2)
        gevent.sleep(0.05)                            # and no third turn
        assert turns == [0, 1]
    finally:
        del proto._turn
        proto._io.start(proto._wake)
        route_pool.release_shared(conn)
    assert c.get(h3.url + "/").content == BODY          # the same connection goes on
    assert h3.connections == 1
    assert quic_books(pool) == (1, 0)
    pool.close()


def test_goaway_moves_new_requests_to_a_new_connection(no_leaks, tls, pool):
    with H3Server(str(tls.cert_path), str(tls.key_path), goaway_after=1) as h3:
        c = client(pool, tls)
        assert c.get(h3.url + "/").content == BODY
        # the GOAWAY arrives: out of rotation, closed (no users)
        assert until(lambda: quic_books(pool) == (0, 0))
        assert c.get(h3.url + "/").content == BODY
        assert h3.connections == 2          # the second one got its GOAWAY too
        assert until(lambda: quic_books(pool) == (0, 0))


def test_goaway_streams_above_its_id_are_sent_again(no_leaks, h3, pool, tls):
    c = client(pool, tls)
    assert c.get(h3.url + "/").content == BODY       # the connection exists
    gate = Event()

    def one(i):
        gate.wait()
        return c.get(h3.url + ("/goaway-first" if i == 0 else "/n/%d" % i), timeout=20).content
    gs = [gevent.spawn(one, i) for i in range(10)]
    gevent.sleep(0.01)
    gate.set()                                # the 10 requests leave in one flush
    assert [g.get(timeout=30) for g in gs] == [BODY] + [pattern(i) for i in range(1, 10)]
    route_pool = c._route(pool, URL(h3.url)).pool
    st = origins.stats(route_pool)
    assert (st["goaway"], st["retried"]) == (1, 9), st
    # exactly one new connection: the nine callers wait for the one in its handshake
    assert h3.connections == 2, repr((st, route_pool.get_stats()))
    assert quic_books(pool)[1] == 0


def test_connection_close_mid_stream_fails_only_that_request(no_leaks, h3, pool, tls):
    c = client(pool, tls)
    r = c.get(h3.url + "/close", stream=True)
    with pytest.raises(ConnectionClosed):
        r.read()
    assert quic_books(pool) == (0, 0)
    assert c.get(h3.url + "/").content == BODY
    assert h3.connections == 2


def test_server_restart_next_get_does_not_hang(no_leaks, h3, pool, tls):
    """The restarted server has forgotten the connection: the dead-peer rule ends it within
    ~dead_peer_timeout and the GET is sent again on a new connection."""
    c = client(pool, tls)
    assert c.get(h3.url + "/").content == BODY
    h3.restart()
    t0 = time.monotonic()
    assert c.get(h3.url + "/", timeout=10).content == BODY
    assert time.monotonic() - t0 < 5.0          # not QUIC's 30 s idle timeout
    assert h3.connections == 2                  # the first and the one after the restart
    assert quic_books(pool) == (1, 0)


def test_post_in_flight_on_dead_server_fails(no_leaks, h3, pool, tls):
    c = client(pool, tls)
    assert c.get(h3.url + "/").content == BODY
    h3.restart()
    with pytest.raises(ConnectionClosed):
        c.post(h3.url + "/echo", body=b"data", timeout=10)   # sent: not replayed
    assert quic_books(pool) == (0, 0)


def test_idle_connection_expires_and_closes(no_leaks, h3, tls):
    p = GreenPool("h3idle", timeout=0.3)
    try:
        c = client(p, tls)
        assert c.get(h3.url + "/").content == BODY
        assert quic_books(p)[0] == 1
        assert until(lambda: quic_books(p) == (0, 0))
        assert sum(q.counters["expired"] for q in all_pools(p)) == 1
    finally:
        p.close()


def test_idle_connection_is_pinged_per_idle_interval(no_leaks, h3, tls):
    p = GreenPool("h3ping", idle_interval=0.2, timeout=30)
    try:
        c = client(p, tls)
        assert c.get(h3.url + "/").content == BODY
        pools = all_pools(p)
        assert until(lambda: sum(q.counters["pings"] for q in pools) >= 2)
        # a ping holds a use while it is in flight (the count is taken as it starts): each gives it back
        assert until(lambda: quic_books(p) == (1, 0))
        assert sum(q.counters["ping_failures"] for q in pools) == 0
        assert c.get(h3.url + "/").content == BODY
        assert h3.connections == 1
    finally:
        p.close()


def test_fork_with_a_post_in_flight(no_leaks, h3, tls):
    """In the child the copied POST fails at once with ConnectionClosed (the QUIC connection
    is the parent's, nothing is written to it); in the parent it completes."""
    import greenpool

    from forking import fork_and_report as _fork_and_report
    greenpool.start_pool("h3fork", max_connections=4)
    c = Client(pool="h3fork", http3="prior_knowledge", verify=str(tls.ca_path))
    try:
        assert c.get(h3.url + "/").http_version == "HTTP/3"
        post = gevent.spawn(c.post, h3.url + "/slow/0.5", b"not to be sent twice")
        gevent.sleep(0.1)

        def child():
            h3.stop()        # the parent's server copy must not serve in the child
            started = time.monotonic()
            try:
                post.get(timeout=5)
                return {"posted": "answered"}
            except ConnectionClosed as e:
                return {"posted": "ConnectionClosed: %s" % e, "waited": time.monotonic() - started}

        report = _fork_and_report(child)
        assert report["posted"].startswith("ConnectionClosed") and "parent process" in report["posted"]
        assert report["waited"] < 0.3, report
        assert post.get(timeout=5).content == b"slow"
        assert h3.connections == 1
        for p in all_pools(greenpool.find_pool("h3fork")):
            assert_exact(p)
    finally:
        greenpool.stop_pool("h3fork")


def test_pool_methods_checkout_register_unregister_h3(no_leaks, h3, pool, tls):
    assert pool.checkout_h3("127.0.0.1", h3.port) is None
    conn = transport.acquire(pool, "127.0.0.1", h3.port, Timeout(5), None, {"verify": str(tls.ca_path)})
    assert conn.key == ("127.0.0.1", h3.port, "quic") and conn.users == 1
    pool.release_shared(conn)
    again = pool.checkout_h3("127.0.0.1", h3.port)
    assert again is conn and conn.users == 1
    pool.release_shared(conn)
    pool.unregister_h3(conn)           # no users: closed at once
    assert conn.closed
    assert pool.checkout_h3("127.0.0.1", h3.port) is None
    with pytest.raises(ValueError):
        _register_tcp(pool)
    assert_exact(pool)


def _register_tcp(pool):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    try:
        conn = pool.checkout("127.0.0.1", lsock.getsockname()[1], "tcp", 1)
        try:
            pool.register_h3(conn)
        finally:
            conn.close()
    finally:
        lsock.close()


def ticket_then_close(c, pool, url):
    """The route pool of ``url`` once its session ticket has arrived (after the
    handshake) and its QUIC connections are closed: the next one resumes.  Returns the
    route pool."""
    route_pool = c._route(pool, URL(url)).pool
    assert until(lambda: origins.stats(route_pool)["session_tickets"] >= 1)
    for h in list(route_pool._hosts.values()):
        for conn in list(h.shared):
            conn.close()
    return route_pool


def test_session_ticket_resumes_the_next_connection(no_leaks, h3, pool, tls):
    c = client(pool, tls)
    assert c.get(h3.url + "/").content == BODY
    route_pool = ticket_then_close(c, pool, h3.url)
    assert c.get(h3.url + "/").content == BODY
    st = origins.stats(route_pool)
    assert (st["handshakes"], st["resumed"], st["quic_connections"]) == (2, 1, 1)
    assert h3.connections == 2


def _zero_rtt_second_connection(h3, tls):
    """A GET (a ticket arrives), the connection closed, then a GET and a POST on the next
    connection, which resumes with the ticket: returns (pool, route pool, responses)."""
    p = GreenPool("h3zero", zero_rtt=True)
    c = client(p, tls)
    assert c.get(h3.url + "/").content == BODY
    route_pool = ticket_then_close(c, p, h3.url)
    get = gevent.spawn(c.get, h3.url + "/n/3000", timeout=10)
    post = gevent.spawn(c.post, h3.url + "/echo", body=b"not in 0-RTT", timeout=10)
    return p, route_pool, (get.get(timeout=20), post.get(timeout=20))


def test_zero_rtt_accepted_sends_the_get_in_early_data(no_leaks, h3, tls):
    p, route_pool, (get, post) = _zero_rtt_second_connection(h3, tls)
    try:
        assert (get.http_version, get.content) == ("HTTP/3", pattern(3000))
        assert post.content == b"not in 0-RTT"
        assert h3.early_requests == 1            # the GET; the POST waited for 1-RTT
        st = origins.stats(route_pool)
        assert (st["zero_rtt_accepted"], st["zero_rtt_rejected"], st["resumed"]) == (1, 0, 1), st
        assert (st["handshakes"], st["retried"]) == (2, 0), st
        assert h3.connections == 2
        assert quic_books(p) == (1, 0)
    finally:
        p.close()


def test_zero_rtt_rejected_is_sent_again_at_1rtt(no_leaks, tls):
    with H3Server(str(tls.cert_path), str(tls.key_path), early_data=False) as h3:
        p, route_pool, (get, post) = _zero_rtt_second_connection(h3, tls)
        try:
            assert (get.http_version, get.content) == ("HTTP/3", pattern(3000))
            assert post.content == b"not in 0-RTT"
            assert h3.early_requests == 0
            st = origins.stats(route_pool)
            assert (st["zero_rtt_accepted"], st["zero_rtt_rejected"]) == (0, 1), st
            assert (st["handshakes"], st["retried"]) == (2, 1), st
            assert h3.connections == 2
            assert quic_books(p) == (1, 0)
        finally:
            p.close()


def test_zero_rtt_handshake_failure_fails_the_early_request(no_leaks, h3, tls):
    """The server is gone when the 0-RTT connection starts: the GET already sent in 0-RTT
    fails with a connect error (nothing listens on TCP either), the background handshake
    counts as failed, and the books are exact."""
    p = GreenPool("h3zerofail", zero_rtt=True)
    try:
        c = client(p, tls)
        assert c.get(h3.url + "/").content == BODY
        route_pool = ticket_then_close(c, p, h3.url)
        h3.stop()                      # ICMP port unreachable from now on
        with pytest.raises(ConnectError):
            c.get(h3.url + "/", timeout=Timeout(5, connect=3))
        st = origins.stats(route_pool)
        assert (st["handshakes"], st["handshake_failures"], st["zero_rtt_accepted"],
                st["zero_rtt_rejected"]) == (1, 1, 0, 0), st
        assert quic_books(p) == (0, 0)
    finally:
        p.close()


def test_zero_rtt_is_off_by_default(no_leaks, h3, pool, tls):
    c = client(pool, tls)
    assert c.get(h3.url + "/").content == BODY
    route_pool = ticket_then_close(c, pool, h3.url)
    assert c.get(h3.url + "/").content == BODY
    st = origins.stats(route_pool)
    assert (st["resumed"], st["zero_rtt_accepted"], st["zero_rtt_rejected"]) == (1, 0, 0), st
    assert h3.early_requests == 0


def test_wrong_ca_and_wrong_host_are_rejected(no_leaks, tls, pool):
    with H3Server(str(tls.untrusted_cert_path), str(tls.untrusted_key_path)) as h3:
        with pytest.raises(ConnectError):
            transport.acquire(pool, "127.0.0.1", h3.port, Timeout(5), None, {"verify": str(tls.ca_path)})
    with H3Server(str(tls.wrong_host_cert_path), str(tls.wrong_host_key_path)) as h3:
        with pytest.raises(ConnectError):
            transport.acquire(pool, "127.0.0.1", h3.port, Timeout(5), None, {"verify": str(tls.ca_path)})
    assert_exact(pool)
    assert pool.get_stats()["open"] == 0


def test_ssl_context_is_a_clear_value_error(tls):
    with pytest.raises(ValueError, match="SSLContext"):
        Client(http3=True, verify=ssl.create_default_context())
    with pytest.raises(ValueError):
        Client(http3="yes")


# -- fallback to TCP --


def test_closed_udp_port_falls_back_to_tcp_and_blocks(no_leaks, nginx, pool, tls):
    c = client(pool, tls)
    t0 = time.monotonic()
    r = c.get(nginx.https_url + "/", timeout=Timeout(connect=5))
    assert (r.status, r.content) == (200, SMALL_BODY)
    assert r.http_version == "HTTP/1.1"
    assert time.monotonic() - t0 < 2.0
    port = int(nginx.https_url.rsplit(":", 1)[1])
    route_pool = c._route(pool, URL(nginx.https_url)).pool
    assert origins.blocked(route_pool, "127.0.0.1", port)
    # served over TCP meanwhile, without trying QUIC again
    assert c.get(nginx.https_url + "/").http_version == "HTTP/1.1"
    assert quic_books(pool) == (0, 0)


def test_black_hole_is_served_over_tcp_after_the_race_delay(no_leaks, nginx, pool, tls):
    """The UDP port swallows every datagram, TCP works on the same port number: the first
    request is answered over TCP after the race delay, long before the 3 s handshake
    timeout (the time bound is the gap between the two, not a speed), and the origin is
    blocked when the background handshake gives up; the next request skips QUIC."""
    port = int(nginx.https_url.rsplit(":", 1)[1])
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", port))          # takes the datagrams, never answers
    try:
        c = client(pool, tls)
        t0 = time.monotonic()
        r = c.get(nginx.https_url + "/", timeout=Timeout(connect=3.0))
        waited = time.monotonic() - t0
        assert (r.http_version, r.content) == ("HTTP/1.1", SMALL_BODY)
        assert waited < 2.5, waited          # not the handshake timeout
        route_pool = c._route(pool, URL(nginx.https_url)).pool
        deadline = time.monotonic() + 15
        while not origins.blocked(route_pool, "127.0.0.1", port) and time.monotonic() < deadline:
            gevent.sleep(0.05)       # the handshake in the background gives up at connect=3
        assert origins.blocked(route_pool, "127.0.0.1", port)
        st = origins.stats(route_pool)
        assert (st["handshakes"], st["handshake_failures"], st["blocked_origins"]) == (0, 1, 1), st
        hole.setblocking(False)
        assert hole.recv(65536)              # QUIC was tried: the Initial reached the hole
        while True:                          # drain what the hole took
            try:
                hole.recv(65536)
            except BlockingIOError:
                break
        assert c.get(nginx.https_url + "/").http_version == "HTTP/1.1"
        with pytest.raises(BlockingIOError):
            hole.recv(65536)                 # blocked: no QUIC tried for the second request
        assert origins.stats(route_pool)["handshake_failures"] == 1
        assert quic_books(pool) == (0, 0)
    finally:
        hole.close()


# -- Alt-Svc --


def test_alt_svc_parsing_rules():
    p = GreenPool("altsvc")
    try:
        origins.learn(p, "a.test", 443, 'h3-29=":443", h3=":8443"; ma=60')
        assert origins.alt_svc(p, "a.test", 443) == 8443
        origins.learn(p, "a.test", 443, "clear")
        assert origins.alt_svc(p, "a.test", 443) is None
        origins.learn(p, "b.test", 443, 'h3="other.test:443"')     # another host: ignored
        assert origins.alt_svc(p, "b.test", 443) is None
        origins.learn(p, "c.test", 443, 'h2=":443", h3-29=":443"')  # no h3: nothing
        assert origins.alt_svc(p, "c.test", 443) is None
        origins.learn(p, "d.test", 443, 'h3="d.test:4433"; ma=0')   # ma=0: expired at once
        assert origins.alt_svc(p, "d.test", 443) is None
        origins.learn(p, "e.test", 443, 'h3=":443"; ma=1')
        assert origins.alt_svc(p, "e.test", 443) == 443
        origins._alt[p][("e.test", 443)] = (443, time.monotonic() - 1)  # ma ran out
        assert origins.alt_svc(p, "e.test", 443) is None
    finally:
        p.close()


def test_http3_true_uses_quic_only_after_alt_svc(no_leaks, caddy, pool, tls):
    c = client(pool, tls, http3=True)
    r = c.get(caddy.url + "/")
    assert (r.http_version, r.content) == ("HTTP/1.1", CADDY_BODY)   # learns Alt-Svc here
    r = c.get(caddy.url + "/")
    assert (r.http_version, r.content) == ("HTTP/3", CADDY_BODY)
    assert quic_books(pool) == (1, 0)


def test_alt_svc_learned_from_http2(no_leaks, caddy, pool, tls):
    c = client(pool, tls, http3=True, http2=True)
    r = c.get(caddy.url + "/")
    assert (r.http_version, r.content) == ("HTTP/2", CADDY_BODY)
    r = c.get(caddy.url + "/")
    assert (r.http_version, r.content) == ("HTTP/3", CADDY_BODY)
    assert quic_books(pool) == (1, 0)
    pool.close()


# -- Caddy --


def test_caddy_get_and_body_over_one_connection(no_leaks, caddy, pool, tls):
    c = client(pool, tls)
    r = c.get(caddy.url + "/")
    assert (r.status, r.http_version, r.content) == (200, "HTTP/3", CADDY_BODY)
    r = c.get(caddy.url + "/bytes/1m")
    assert r.content == pattern(1024 * 1024)

    def one(i):
        return c.get(caddy.url + ("/bytes/64k" if i % 5 == 0 else "/")).content
    gs = [gevent.spawn(one, i) for i in range(50)]
    for i, g in enumerate(gs):
        assert g.get(timeout=30) == (pattern(65536) if i % 5 == 0 else CADDY_BODY)
    assert quic_books(pool) == (1, 0)


def test_caddy_restart_next_get_succeeds_quickly(no_leaks, tls, tmp_path_factory, pool):
    server = Caddy(tmp_path_factory.mktemp("caddy-restart"), tls).start()
    try:
        c = client(pool, tls)
        assert c.get(server.url + "/").http_version == "HTTP/3"
        server.kill()
        server.start()
        t0 = time.monotonic()
        r = c.get(server.url + "/", timeout=10)
        assert (r.http_version, r.content) == ("HTTP/3", CADDY_BODY)
        assert time.monotonic() - t0 < 5.0
        assert quic_books(pool) == (1, 0)
    finally:
        server.stop()


def test_a_refused_head_fails_its_request_every_time(no_leaks, h3, pool, tls):
    """qh3's response-head check is kept per distinct list of names (h3/conn.py): a refused
    head is refused each time, with the library's reason, and never sent again; a head with
    known names still has its status checked.  A GET in flight on the same connection is
    not failed with the other's error: it is sent again on a new connection."""
    c = client(pool, tls)
    for _ in range(2):
        assert c.get(h3.url + "/").content == BODY
        for path, why in (("/upper", "uppercase"), ("/badstatus", "Invalid :status value b'2x0'")):
            seen = h3.requests
            other = gevent.spawn(c.get, h3.url + "/slow/0.2")
            assert until(lambda seen=seen: h3.requests == seen + 1)
            with pytest.raises(RemoteProtocolError, match="protocol error from the server: .*%s"
                               % re.escape(why)):
                c.get(h3.url + path)
            assert other.get(timeout=10).content == b"slow"
            assert quic_books(pool)[1] == 0


def test_a_new_pool_at_a_dead_pools_address_keeps_its_own_tickets(no_leaks, h3, tls):
    """Connection setups are cached per pool; a pool's id() is handed to the next pool
    once it is gone.  The new pool must still keep its session tickets and read its own
    options (zero_rtt), not find the dead pool's setup."""
    old = GreenPool("h3old", max_connections=20, max_per_host=4, zero_rtt=True)
    assert client(old, tls).get(h3.url + "/").content == BODY
    old.close()
    address, ref = id(old), weakref.ref(old)
    del old

    def freed():
        gc.collect()
        return ref() is None
    assert until(freed)      # once its reader greenlet ended
    # bare instances (what GreenPool() allocates before __init__) until the allocator
    # hands out the dead pool's address; that one is then made a pool
    bare = []
    for _ in range(100000):
        p = object.__new__(GreenPool)
        if id(p) == address:
            break
        bare.append(p)
    else:
        pytest.skip("the allocator never handed out the dead pool's address again")
    del bare
    p.__init__("h3new", max_connections=20, max_per_host=4)
    try:
        c = client(p, tls)
        assert c.get(h3.url + "/").content == BODY
        route_pool = ticket_then_close(c, p, h3.url)
        assert c.get(h3.url + "/").content == BODY
        st = origins.stats(route_pool)
        assert (st["resumed"], st["zero_rtt_accepted"]) == (1, 0), st
        assert_exact(p)
    finally:
        p.close()


def _resume_through_a_lost_server_flight(pool, tls, server_port):
    """A GET (a ticket arrives), the connection closed, then a GET on a new connection
    whose second and third datagrams from the server are lost (a relay in between)."""
    with UdpLossProxy(server_port, 0.0, plan=lambda route, way, i: route == 2 and way == "down"
                      and i in (1, 2)) as proxy:
        c = client(pool, tls)
        url = "https://127.0.0.1:%d" % proxy.port
        assert c.get(url + "/").content == BODY
        route_pool = ticket_then_close(c, pool, url)
        r = c.get(url + "/n/3000", timeout=Timeout(20, connect=20))
        assert (r.http_version, r.content) == ("HTTP/3", pattern(3000))
        assert proxy.dropped == 2
        return origins.stats(route_pool), len(proxy.routes)


def test_resumption_without_zero_rtt_survives_a_lost_server_flight(no_leaks, h3, pool, tls):
    st, routes = _resume_through_a_lost_server_flight(pool, tls, h3.port)
    assert (st["resumed"], st["handshake_failures"], st["retried"], routes) == (1, 0, 0, 2), st
    assert_exact(pool)


def test_a_zero_rtt_handshake_the_library_fails_is_retried_on_a_full_handshake(no_leaks, h3, tls):
    """qh3 2.1 fails every send of a 0-RTT client once datagrams of the server's first
    flight are lost (tests/test_http_h3_conn.py).  The connection closes at once, the early
    GET is sent again on a new connection, and the ticket that failed is forgotten: that
    one is a full handshake."""
    p = GreenPool("h3zerolost", zero_rtt=True, checkout_timeout=10.0)
    try:
        st, routes = _resume_through_a_lost_server_flight(p, tls, h3.port)
        assert (st["handshake_failures"], st["retried"], st["resumed"], st["handshakes"],
                routes) == (1, 1, 0, 2, 3), st
        assert quic_books(p) == (1, 0)
    finally:
        p.close()
