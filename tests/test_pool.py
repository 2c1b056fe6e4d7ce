"""Tests for greenpool/pool.py: checkout/checkin, limits, waiters, every exit path, shared mode."""
from __future__ import annotations

import time

import gevent
import pytest
from gevent import Timeout

import greenpool
from greenpool import GreenPool, PoolClosed, PoolTimeout
from greenpool.connection import Connection, Connector
from greenpool.errors import CheckinError, ConnectError

from fakes import FakeServer, assert_exact, refused_port, settle


def wait_until(cond, seconds=30.0):
    """Let the hub run until ``cond()`` holds (checked every 10 ms) or ``seconds`` pass;
    returns its last value.  A busy machine only makes this take longer: verdicts are
    asserted on the state reached, never on how long it took."""
    deadline = time.monotonic() + seconds
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        gevent.sleep(0.01)

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
def server():
    with FakeServer() as srv:
        yield srv


@pytest.fixture
def server2():
    with FakeServer() as srv:
        yield srv


@pytest.fixture
def pool():
    p = GreenPool("test", max_connections=4, checkout_timeout=1.0)
    yield p
    p.close()


def roundtrip(conn: Connection, data: bytes = b"ping") -> bytes:
    conn.sock.sendall(data)
    return conn.sock.recv(100)


# -- checkout / checkin --


def test_checkout_opens_then_reuses_most_recent(pool, server):
    a = pool.checkout("127.0.0.1", server.port)
    b = pool.checkout("127.0.0.1", server.port)
    assert a is not b and roundtrip(a) == b"ping"
    pool.checkin(a)
    pool.checkin(b)
    assert pool.checkout("127.0.0.1", server.port) is b  # LIFO: warmest first
    assert pool.get_stats()["created"] == 2 and pool.get_stats()["reused"] == 1
    assert_exact(pool)


@pytest.mark.parametrize("on", [True, False])
def test_checkout_yields_once_when_its_key_is_busy(server, on):
    # rule 8: with another connection of the key in use, checkout lets the greenlets that
    # are ready run first; alone on its key (or with checkout_yield=False) it does not
    pool = GreenPool("cy", checkout_yield=on)
    a = pool.checkout("127.0.0.1", server.port)
    b = pool.checkout("127.0.0.1", server.port)
    pool.checkin(a)
    pool.checkin(b)
    ran = []
    gevent.spawn(ran.append, "alone")
    x = pool.checkout("127.0.0.1", server.port)   # the only one out: no yield
    assert x is b and ran == []
    gevent.spawn(ran.append, "busy")
    y = pool.checkout("127.0.0.1", server.port)   # x is out: yields first, if on
    assert y is a
    assert ran == (["alone", "busy"] if on else [])
    pool.checkin(x)
    pool.checkin(y)
    assert_exact(pool)
    pool.close()


@pytest.mark.parametrize("fault", [gevent.GreenletExit, Timeout])
def test_a_checkout_interrupted_while_yielding_holds_nothing(server, monkeypatch, fault):
    # a kill or a timeout that lands in the yield (rule 8) finds nothing taken yet
    import greenpool.pool as pool_module

    pool = GreenPool("cyk")
    a = pool.checkout("127.0.0.1", server.port)
    b = pool.checkout("127.0.0.1", server.port)
    pool.checkin(b)

    def interrupted(seconds):
        raise fault()

    monkeypatch.setattr(pool_module, "_sleep", interrupted)
    with pytest.raises(fault):
        pool.checkout("127.0.0.1", server.port)
    s = pool.get_stats()
    assert (s["in_use_count"], s["free_count"], pool.count()) == (1, 1, 2)
    assert_exact(pool)
    monkeypatch.undo()
    assert pool.checkout("127.0.0.1", server.port) is b
    pool.checkin(a)
    pool.checkin(b)
    assert_exact(pool)
    pool.close()


def test_with_connection_checks_in_and_closes_on_error(pool, server):
    with pool.connection("127.0.0.1", server.port) as conn:
        assert roundtrip(conn) == b"ping"
    assert pool.get_stats()["free_count"] == 1
    with pytest.raises(RuntimeError):
        with pool.connection("127.0.0.1", server.port) as conn2:
            assert conn2 is conn
            raise RuntimeError("boom")
    assert conn.closed and pool.count() == 0
    assert_exact(pool)


def test_repr_reads_clearly(pool, server):
    conn = pool.checkout("127.0.0.1", server.port)
    assert repr(pool) == "<GreenPool 'test' [open 1/4: 1 in use, 0 idle | 0 waiting]>"
    assert "in_use" in repr(conn) and "127.0.0.1:%d tcp" % server.port in repr(conn)
    pool.checkin(conn)
    assert repr(pool) == "<GreenPool 'test' [open 1/4: 0 in use, 1 idle | 0 waiting]>"


def test_wait_fifo_and_pool_timeout_message(server):
    pool = GreenPool("fifo", max_connections=1, checkout_timeout=5)
    held = pool.checkout("127.0.0.1", server.port)
    order = []

    def waiter(i):
        conn = pool.checkout("127.0.0.1", server.port)
        order.append(i)
        gevent.sleep(0.001)
        pool.checkin(conn)

    gs = [gevent.spawn(waiter, i) for i in range(5)]
    settle()
    assert pool.get_stats()["queue_count"] == 5
    pool.checkin(held)
    gevent.joinall(gs, raise_error=True)
    assert order == [0, 1, 2, 3, 4]
    held = pool.checkout("127.0.0.1", server.port)
    with pytest.raises(PoolTimeout) as ei:
        pool.checkout("127.0.0.1", server.port, timeout=0.05)
    msg = str(ei.value)
    assert "pool 'fifo'" in msg and "127.0.0.1:%d (tcp)" % server.port in msg
    assert "1/1 connections in use" in msg and "after waiting 0.0" in msg
    assert pool.get_stats()["timeouts"] == 1
    pool.checkin(held)
    assert_exact(pool)
    pool.close()


def test_checkout_timeout_zero_does_not_wait(server):
    pool = GreenPool("z", max_connections=1)
    held = pool.checkout("127.0.0.1", server.port)
    ran = []
    gevent.spawn(ran.append, 1)
    with pytest.raises(PoolTimeout):
        pool.checkout("127.0.0.1", server.port, timeout=0)
    assert ran == []   # it never yielded to the hub, so it did not wait at all
    assert pool.get_stats()["queue_count"] == 0 and pool.get_stats()["timeouts"] == 0
    gevent.sleep(0)
    pool.checkin(held)
    pool.close()


def test_max_per_host_caps_one_host_not_others(server, server2):
    pool = GreenPool("ph", max_connections=3, max_per_host=1, checkout_timeout=0.05)
    a = pool.checkout("127.0.0.1", server.port)
    with pytest.raises(PoolTimeout) as ei:
        pool.checkout("127.0.0.1", server.port)
    assert "(1/1 for this host)" in str(ei.value)
    b = pool.checkout("127.0.0.1", server2.port)
    assert pool.count() == 2
    assert pool.count(("127.0.0.1", server.port)) == 1
    assert pool.count(("127.0.0.1", server2.port, "tcp")) == 1
    pool.checkin(a)
    pool.checkin(b)
    assert_exact(pool)
    pool.close()


def test_full_pool_evicts_oldest_idle_of_other_hosts(server, server2):
    pool = GreenPool("evict", max_connections=2, checkout_timeout=0.5)
    a1 = pool.checkout("127.0.0.1", server.port)
    a2 = pool.checkout("127.0.0.1", server.port)
    pool.checkin(a1)
    gevent.sleep(0.01)
    pool.checkin(a2)
    b = pool.checkout("127.0.0.1", server2.port)   # no deadlock between hosts
    assert a1.closed and not a2.closed            # the oldest idle one went
    assert pool.count() == 2
    pool.checkin(b)
    assert_exact(pool)
    pool.close()


def test_waiter_for_other_host_gets_slot_when_conn_returns(server, server2):
    pool = GreenPool("x", max_connections=1, checkout_timeout=2)
    a = pool.checkout("127.0.0.1", server.port)
    g = gevent.spawn(pool.checkout, "127.0.0.1", server2.port)
    settle()
    pool.checkin(a)   # idle now, then evicted to make room for the waiter
    b = g.get(timeout=2)
    assert b.port == server2.port and a.closed
    pool.checkin(b)
    assert_exact(pool)
    pool.close()


# -- checkin decides: reuse or close --


def test_max_requests_retires_connection(server):
    pool = GreenPool("mr", max_requests=2)
    c = pool.checkout("127.0.0.1", server.port)
    pool.checkin(c)
    assert pool.checkout("127.0.0.1", server.port) is c
    pool.checkin(c)
    assert c.closed and pool.count() == 0
    assert_exact(pool)
    pool.close()


def test_max_lifetime_retires_at_checkin_and_while_idle(server):
    pool = GreenPool("lt", max_lifetime=(0.05, 0.06))
    c = pool.checkout("127.0.0.1", server.port)
    gevent.sleep(0.07)
    pool.checkin(c)
    assert c.closed
    d = pool.checkout("127.0.0.1", server.port)
    pool.checkin(d)
    assert pool.count() == 1
    gevent.sleep(0.1)   # its own timer retires it while idle
    assert d.closed and pool.count() == 0 and pool.get_stats()["expired"] == 1
    pool.close()


def test_shrink_closes_idle_surplus_now_and_in_use_at_checkin(server):
    pool = GreenPool("shrink", max_connections=4)
    conns = [pool.checkout("127.0.0.1", server.port) for _ in range(4)]
    pool.checkin(conns[0])
    pool.checkin(conns[1])
    pool.set_max_connections(1)
    assert pool.max_connections == 1
    assert pool.count() == 2 and conns[0].closed and conns[1].closed   # idle surplus gone
    assert not conns[2].closed and not conns[3].closed                 # in use kept
    pool.checkin(conns[2])
    assert conns[2].closed
    pool.checkin(conns[3])
    assert not conns[3].closed and pool.count() == 1
    pool.set_max_connections(3)
    assert_exact(pool)
    pool.close()


def test_checkin_errors(pool, server):
    other = GreenPool("other")
    c = pool.checkout("127.0.0.1", server.port)
    with pytest.raises(CheckinError, match="does not belong"):
        other.checkin(c)
    pool.checkin(c)
    with pytest.raises(CheckinError, match="already returned"):
        pool.checkin(c)
    c.close()
    pool.checkin(c)   # a closed connection: no-op
    assert_exact(pool)
    other.close()


# -- every exit path frees the slot and wakes a waiter --


def test_connect_failure_frees_slot_and_wakes_waiter(server):
    pool = GreenPool("cf", max_connections=1, checkout_timeout=2)
    dead = refused_port()
    gate = gevent.event.Event()
    real_connect = pool.connector.connect

    def slow_refused(key, timeout, **opts):
        gate.wait()
        return real_connect(key, timeout, **opts)

    pool.connector.connect = slow_refused
    g1 = gevent.spawn(pool.checkout, "127.0.0.1", dead)
    settle()
    g2 = gevent.spawn(pool.checkout, "127.0.0.1", server.port)
    settle()
    assert pool.get_stats()["queue_count"] == 1
    gate.set()
    with pytest.raises(ConnectError, match="refused"):
        g1.get()
    conn = g2.get(timeout=2)
    assert pool.get_stats()["connect_errors"] == 1
    pool.checkin(conn)
    assert_exact(pool)
    pool.close()


def test_gevent_timeout_around_waiting_caller_cancels_waiter(server):
    pool = GreenPool("gt", max_connections=1, checkout_timeout=10)
    held = pool.checkout("127.0.0.1", server.port)
    with pytest.raises(Timeout):
        with Timeout(0.05):
            pool.checkout("127.0.0.1", server.port)
    assert pool.get_stats()["queue_count"] == 0
    pool.checkin(held)
    assert_exact(pool)
    # and around a holder inside `with pool.connection()`: closed, slot freed
    with pytest.raises(Timeout):
        with Timeout(0.05):
            with pool.connection("127.0.0.1", server.port) as conn:
                gevent.sleep(1)
    assert conn.closed and pool.count() == 0
    assert_exact(pool)
    pool.close()


def test_killed_waiter_leaves_no_trace(server):
    pool = GreenPool("kw", max_connections=1, checkout_timeout=10)
    held = pool.checkout("127.0.0.1", server.port)
    gs = [gevent.spawn(pool.checkout, "127.0.0.1", server.port) for _ in range(3)]
    settle()
    gs[1].kill()
    assert pool.get_stats()["queue_count"] == 2
    pool.checkin(held)
    c0 = gs[0].get(timeout=1)
    pool.checkin(c0)
    c2 = gs[2].get(timeout=1)
    pool.checkin(c2)
    assert_exact(pool)
    pool.close()


def test_waiter_killed_after_grant_passes_it_on(server):
    pool = GreenPool("kg", max_connections=1, checkout_timeout=10)
    held = pool.checkout("127.0.0.1", server.port)
    g1 = gevent.spawn(pool.checkout, "127.0.0.1", server.port)
    g2 = gevent.spawn(pool.checkout, "127.0.0.1", server.port)
    settle()
    g1.kill(block=False)        # queued ahead of the wake-up below
    pool.checkin(held)          # granted to g1, which dies before it can use the grant
    c = g2.get(timeout=1)
    assert g1.dead
    assert c is held
    pool.checkin(c)
    assert_exact(pool)
    pool.close()


def test_killed_holder_is_reclaimed(server):
    pool = GreenPool("kh", max_connections=1, checkout_timeout=2)

    def leaky():
        pool.checkout("127.0.0.1", server.port)
        gevent.sleep(10)

    g = gevent.spawn(leaky)
    assert wait_until(lambda: len(pool._in_use) == 1)   # connected (not still connecting)
    g.kill()
    conn = pool.checkout("127.0.0.1", server.port, timeout=1)
    assert pool.get_stats()["reclaimed"] == 1
    pool.checkin(conn)
    assert_exact(pool)
    pool.close()


def test_holder_dying_while_others_wait_is_reclaimed_by_reaper(server):
    pool = GreenPool("kr", max_connections=1, checkout_timeout=3)
    holder_may_end = gevent.event.Event()

    def leaky():
        pool.checkout("127.0.0.1", server.port)
        holder_may_end.wait()   # then returns without checkin

    g = gevent.spawn(leaky)
    assert wait_until(lambda: len(pool._in_use) == 1)   # connected (not still connecting)
    w = gevent.spawn(pool.checkout, "127.0.0.1", server.port)
    settle()
    holder_may_end.set()
    g.join()
    conn = w.get(timeout=2)   # the reaper frees the slot within ~0.25 s
    pool.checkin(conn)
    assert pool.get_stats()["reclaimed"] == 1
    assert_exact(pool)
    pool.close()


def test_explicit_close_frees_slot_and_wakes(server):
    pool = GreenPool("ec", max_connections=1, checkout_timeout=2)
    held = pool.checkout("127.0.0.1", server.port)
    g = gevent.spawn(pool.checkout, "127.0.0.1", server.port)
    settle()
    held.close()
    conn = g.get(timeout=1)
    assert conn is not held
    pool.checkin(conn)
    assert_exact(pool)
    pool.close()


# -- idle connections expire themselves --


@pytest.mark.parametrize("how", ["close", "reset", "write"])
def test_idle_connection_sees_peer_and_leaves_at_once(how):
    def handler(sock, srv):
        sock.recv(10)
        srv.got.set()
        if how == "write":
            gevent.sleep(0.05)
            sock.sendall(b"unexpected")
        while sock.recv(10):
            pass

    with FakeServer(handler) as srv:
        srv.got = gevent.event.Event()
        pool = GreenPool("idle")
        c = pool.checkout("127.0.0.1", srv.port)
        c.sock.sendall(b"x")
        srv.got.wait()
        pool.checkin(c)
        assert pool.count() == 1
        if how != "write":
            srv.close_clients(reset=(how == "reset"))
        wait_until(lambda: pool.count() == 0)
        assert pool.count() == 0 and c.closed
        assert pool.get_stats()["dropped"] == 1
        assert_exact(pool)
        pool.close()


def test_checkout_never_returns_a_socket_the_peer_closed(server):
    pool = GreenPool("nc")
    c = pool.checkout("127.0.0.1", server.port)
    pool.checkin(c)
    assert wait_until(lambda: server.clients)   # let the server accept
    server.close_clients(shutdown=True)
    # no yield to the hub between the close and the checkout: the probe catches it
    time.sleep(0.02)
    d = pool.checkout("127.0.0.1", server.port)
    assert d is not c and c.closed
    assert roundtrip(d) == b"ping"
    pool.checkin(d)
    assert_exact(pool)
    pool.close()


def test_idle_timeout_and_set_timeout(server):
    pool = GreenPool("it", timeout=0.05)
    c = pool.checkout("127.0.0.1", server.port)
    pool.checkin(c)
    gevent.sleep(0.1)
    assert c.closed and pool.count() == 0
    pool.set_timeout(None)
    assert pool.timeout is None
    d = pool.checkout("127.0.0.1", server.port)
    pool.checkin(d)
    gevent.sleep(0.1)
    assert not d.closed
    pool.set_timeout(0.02)
    gevent.sleep(0.06)
    assert d.closed
    pool.close()


def test_idle_pool_does_not_keep_the_hub_alive(server):
    pool = GreenPool("ref", timeout=60)
    pool.checkin(pool.checkout("127.0.0.1", server.port))
    t0 = time.monotonic()
    gevent.wait(timeout=5, objects=[gevent.spawn(lambda: None)])
    assert time.monotonic() - t0 < 4   # generous: kept alive, it would wait the full 5 s
    pool.close()


# -- health pings --


class PingConnector(Connector):
    can_ping = True

    def __init__(self):
        self.pings = 0
        self.fail = False

    def ping(self, conn, timeout):
        self.pings += 1
        conn.sock.sendall(b"PING")
        if conn.sock.recv(4) != b"PING" or self.fail:
            raise ConnectionError("no pong")


def test_idle_interval_pings_with_jitter_and_closes_on_failure(server):
    connector = PingConnector()
    pool = GreenPool("ping", connector=connector, idle_interval=0.02)
    c = pool.checkout("127.0.0.1", server.port)
    pool.checkin(c)
    assert wait_until(lambda: connector.pings >= 3)
    assert not c.closed
    assert wait_until(lambda: pool.get_stats()["free_count"] == 1)   # not mid-ping
    connector.fail = True
    assert wait_until(lambda: c.closed)
    assert pool.get_stats()["ping_failures"] == 1
    assert_exact(pool)
    pool.close()


# -- prewarm --


def test_prewarm_in_background(server):
    pool = GreenPool("pw", max_connections=10)
    g = pool.prewarm("127.0.0.1", server.port, count=4)
    assert pool.count() <= 4
    assert g.get(timeout=2) == 4
    assert pool.host_stats("127.0.0.1", server.port) == {
        "active": 4, "in_use": 0, "free": 4, "queue": 0, "shared_users": 0,
        "server_idle_timeout": None, "retire_idle_after": None}
    assert pool.get_stats()["created"] == 4 and pool.get_stats()["reused"] == 0
    assert_exact(pool)
    pool.close()


def test_prewarm_count_option_on_first_use(server):
    pool = GreenPool("pwc", prewarm_count=3)
    c = pool.checkout("127.0.0.1", server.port)
    pool.checkin(c)
    assert wait_until(lambda: pool.count() >= 3)
    gevent.sleep(0.05)
    assert pool.count() == 3   # and no more
    pool.close()


def test_prewarm_backs_off_then_gives_up_with_stop():
    pool = GreenPool("pwf", backoff_type="stop")
    assert pool.prewarm("127.0.0.1", refused_port(), count=2).get(timeout=2) == 0
    assert pool.count() == 0 and pool.get_stats()["connect_errors"] == 1
    pool.close()


# -- stop / closed --


def test_close_fails_waiters_and_later_calls(server):
    pool = GreenPool("st", max_connections=1, checkout_timeout=5)
    held = pool.checkout("127.0.0.1", server.port)
    gs = [gevent.spawn(pool.checkout, "127.0.0.1", server.port) for _ in range(3)]
    settle()
    pool.close()
    for g in gs:
        with pytest.raises(PoolClosed, match="stopped"):
            g.get(timeout=1)
    assert held.closed
    with pytest.raises(PoolClosed):
        pool.checkout("127.0.0.1", server.port)
    pool.checkin(held)   # no-op after close
    assert pool.count() == 0
    assert_exact(pool)


# -- bad input --


def test_bad_arguments(pool, server):
    with pytest.raises(ValueError, match="transport"):
        pool.checkout("127.0.0.1", server.port, "udp")
    with pytest.raises(ValueError, match="port"):
        pool.checkout("127.0.0.1", 0)
    with pytest.raises(TypeError, match="port"):
        pool.checkout("127.0.0.1", "80")
    with pytest.raises(TypeError, match="host"):
        pool.checkout(None, 80)
    held = [pool.checkout("127.0.0.1", server.port) for _ in range(4)]
    with pytest.raises(TypeError, match="timeout"):
        pool.checkout("127.0.0.1", server.port, timeout="1")
    with pytest.raises(ValueError, match="max_connections"):
        pool.set_max_connections(0)
    with pytest.raises(ValueError, match="timeout"):
        pool.set_timeout(-1)
    for c in held:
        pool.checkin(c)
    assert_exact(pool)


# -- O(1) cancellation --


def test_ten_thousand_waiters_half_time_out_stays_linear(server):
    """10,000 waiters on 2 connections, the odd half with a short timeout: the even half is
    served in FIFO order, and cancelling is O(1) (entries compacted, never scanned).

    Nothing here depends on how fast the machine is: the even half waits without a
    deadline (it once had 30 s, and a busy machine made some of them time out too), the
    wait for the odd half's timeouts is a count, and "linear" is judged on this process's
    CPU time (an O(n^2) cancel costs minutes of it; other processes do not add to it)."""
    pool = GreenPool("many", max_connections=2, checkout_timeout=None)
    held = [pool.checkout("127.0.0.1", server.port) for _ in range(2)]
    served = []

    def wait(i):
        try:
            conn = pool.checkout("127.0.0.1", server.port, timeout=0.2 if i % 2 else None)
        except PoolTimeout:
            return
        served.append(i)
        pool.checkin(conn)

    cpu0 = time.process_time()
    gs = [gevent.spawn(wait, i) for i in range(10000)]
    try:
        for _ in range(12000):   # up to 10 min of 0.05 s naps: ends as soon as the count is in
            if pool.get_stats()["timeouts"] >= 5000:
                break
            gevent.sleep(0.05)   # the odd half times out
        h = pool._hosts[("127.0.0.1", server.port, "tcp")]
        assert pool.get_stats()["timeouts"] == 5000
        assert h.live == 5000 and pool.get_stats()["queue_count"] == 5000
        assert len(h.waiters) <= 4 * h.live + 64   # cancelled entries are compacted, not scanned
        for c in held:
            pool.checkin(c)
        gevent.joinall(gs, raise_error=True)
        assert sorted(served) == list(range(0, 10000, 2))
        assert served == sorted(served)  # FIFO
        assert pool.get_stats()["timeouts"] == 5000
        assert time.process_time() - cpu0 < 40
        assert_exact(pool)
    finally:
        gevent.killall(gs)
        pool.close()


# -- CoDel load shedding --


def test_queue_target_sheds_load_when_waits_stay_long(server):
    pool = GreenPool("codel", max_connections=1, checkout_timeout=5,
                     queue_target=0.02, queue_interval=0.1)
    held = pool.checkout("127.0.0.1", server.port)
    # a whole interval in which nobody is served within the target
    with pytest.raises(PoolTimeout):
        pool.checkout("127.0.0.1", server.port, timeout=0.25)
    gevent.sleep(0.1)
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout, match="load shed"):
        pool.checkout("127.0.0.1", server.port)
    assert time.monotonic() - t0 < 2.5    # dropped after 2 x queue_target, not checkout_timeout (5)
    assert pool.get_stats()["shed"] >= 1
    pool.checkin(held)
    for _ in range(3):   # fast again: back to normal after the next interval
        pool.checkin(pool.checkout("127.0.0.1", server.port))
        gevent.sleep(0.05)
    assert not pool._codel_slow
    pool.checkin(pool.checkout("127.0.0.1", server.port, timeout=1))
    pool.close()


# -- shared (multiplexed) mode --


class Mux:
    """A stand-in multiplexing protocol: up to `limit` users at once."""

    def __init__(self, limit):
        self.limit = limit
        self.alive = True
        self.closed = False

    def max_users(self):
        return self.limit

    def is_alive(self):
        return self.alive

    def close(self):
        self.closed = True


class MuxConnector(Connector):
    shared = True

    def __init__(self, limit):
        self.limit = limit
        self.opened = 0

    def connect(self, key, timeout, **opts):
        conn = super().connect(key, timeout, **opts)
        conn.proto = Mux(self.limit)
        self.opened += 1
        return conn


def test_shared_opens_another_only_when_full(server):
    connector = MuxConnector(limit=3)
    pool = GreenPool("mux", connector=connector, max_connections=10)
    gate = gevent.event.Event()
    seen = []

    def user():
        conn = pool.acquire_shared("127.0.0.1", server.port)
        seen.append(conn)
        gate.wait()
        pool.release_shared(conn)

    gs = [gevent.spawn(user) for _ in range(7)]
    assert wait_until(lambda: len(seen) == 7)
    settle()
    assert connector.opened == 3          # ceil(7 / 3), opened one at a time
    assert len(set(seen)) == 3
    stats = pool.get_stats()
    assert stats["shared_count"] == 3 and stats["shared_users"] == 7
    gate.set()
    gevent.joinall(gs, raise_error=True)
    assert pool.get_stats()["free_count"] == 3
    assert_exact(pool)
    pool.close()


def test_shared_callers_wait_for_the_connection_in_its_setup(server):
    """While a shared connection's setup runs (an HTTP/2 or QUIC handshake: its slot no
    longer counts as connecting), other callers wait for it instead of opening more; when
    the setup fails, the next caller opens one again."""
    connector = MuxConnector(limit=100)
    pool = GreenPool("setup", connector=connector, max_connections=10, checkout_timeout=10)
    fail = [True]
    started = gevent.event.Event()

    def setup(conn):
        started.set()
        gevent.sleep(0.05)                 # the handshake takes a while
        if fail[0]:
            fail[0] = False
            raise ConnectError("handshake failed")

    def user():
        try:
            conn = pool.acquire_shared("127.0.0.1", server.port, "tcp", 10, setup)
        except ConnectError:
            return "failed"
        pool.release_shared(conn)
        return conn.id
    gs = [gevent.spawn(user)]
    started.wait(10)                       # the others come while its setup runs
    gs += [gevent.spawn(user) for _ in range(5)]
    got = [g.get(timeout=10) for g in gs]
    assert got.count("failed") == 1 and len(set(got) - {"failed"}) == 1, got
    assert connector.opened == 2           # the failed one, then the one everyone shared
    assert_exact(pool)
    pool.close()


@pytest.mark.parametrize("strategy", ["round_robin", "random", "least_busy"])
def test_shared_strategies_spread_users(server, strategy):
    pool = GreenPool("s-" + strategy, connector=MuxConnector(limit=1000), strategy=strategy)
    pool.prewarm("127.0.0.1", server.port, count=3).get()
    picks = []
    for _ in range(30):
        conn = pool.acquire_shared("127.0.0.1", server.port)
        picks.append(conn.id)
        if strategy != "least_busy":
            pool.release_shared(conn)
    counts = sorted(picks.count(i) for i in set(picks))
    assert len(counts) == 3
    if strategy in ("round_robin", "least_busy"):
        assert counts == [10, 10, 10]
    for h in pool._hosts.values():
        for c in list(h.shared):
            while c.users:
                pool.release_shared(c)
    assert_exact(pool)
    pool.close()


def test_h2_names_register_checkout_unregister(server):
    pool = GreenPool("h2")
    assert pool.checkout_h2("127.0.0.1", server.port, "tcp") is None
    conn = pool.checkout("127.0.0.1", server.port)
    with pytest.raises(ValueError, match="proto"):
        pool.register_h2(conn)
    conn.proto = Mux(2)
    pool.register_h2(conn)
    a = pool.checkout_h2("127.0.0.1", server.port, "tcp")
    b = pool.checkout_h2("127.0.0.1", server.port, "tcp")
    assert a is conn and b is conn
    assert pool.checkout_h2("127.0.0.1", server.port, "tcp") is None   # streams exhausted
    assert pool.get_stats()["in_use_count"] == 1
    pool.unregister_h2(conn)       # GOAWAY: no new users, finishes these
    assert pool.checkout_h2("127.0.0.1", server.port, "tcp") is None
    pool.release_shared(a)
    assert not conn.closed
    pool.release_shared(b)
    assert conn.closed and pool.count() == 0
    assert_exact(pool)
    pool.close()


def test_shared_waiters_get_freed_capacity(server):
    pool = GreenPool("sw", connector=MuxConnector(limit=1), max_connections=1, checkout_timeout=2)
    first = pool.acquire_shared("127.0.0.1", server.port)
    g = gevent.spawn(pool.acquire_shared, "127.0.0.1", server.port)
    settle()
    assert pool.get_stats()["queue_count"] == 1
    pool.release_shared(first)
    second = g.get(timeout=1)
    assert second is first and first.users == 1
    pool.release_shared(second)
    assert_exact(pool)
    pool.close()


def test_shared_waiter_whose_grant_closes_before_it_runs_gets_a_live_one(server):
    """A waiter is granted a shared connection (woken by a hub callback); the connection
    closes before the waiter runs (its reader saw the server go): the waiter is not handed
    the closed connection (no protocol any more) but a new one."""
    connector = MuxConnector(limit=1)
    pool = GreenPool("swc", connector=connector, max_connections=1, checkout_timeout=5)
    first = pool.acquire_shared("127.0.0.1", server.port)
    g = gevent.spawn(pool.acquire_shared, "127.0.0.1", server.port)
    settle()
    assert pool.get_stats()["queue_count"] == 1
    pool.release_shared(first)        # granted to the waiter, which has not run yet
    assert pool.get_stats()["queue_count"] == 0 and first.users == 1
    first.proto.alive = False         # its reader saw EOF
    first.close("reader saw EOF")
    second = g.get(timeout=5)
    assert second is not first and second.proto is not None and not second.closed
    assert connector.opened == 2 and second.users == 1
    pool.release_shared(second)
    assert_exact(pool)
    pool.close()


def test_dead_shared_connection_is_skipped_and_replaced(server):
    connector = MuxConnector(limit=5)
    pool = GreenPool("sd", connector=connector)
    a = pool.acquire_shared("127.0.0.1", server.port)
    pool.release_shared(a)
    a.proto.alive = False     # its reader saw the peer go
    a.close("reader saw EOF")
    b = pool.acquire_shared("127.0.0.1", server.port)
    assert b is not a and connector.opened == 2
    pool.release_shared(a)    # late release of a closed one: no-op
    pool.release_shared(b)
    assert_exact(pool)
    pool.close()


def test_registry_default_pool():
    assert greenpool.get_pool() is greenpool.get_pool("default")


# -- adaptive idle timeout (rule 9) --


def _idle_pair(pool, server):
    """Two connections of one key, checked in together (idle from the same moment)."""
    a = pool.checkout("127.0.0.1", server.port)
    b = pool.checkout("127.0.0.1", server.port)
    assert wait_until(lambda: len(server.clients) == 2)
    pool.checkin(a)
    pool.checkin(b)
    return a, b


def test_adaptive_idle_timeout_learns_from_idle_closes(server):
    pool = GreenPool("adapt", timeout=60)
    a, b = _idle_pair(pool, server)
    gevent.sleep(0.7)                 # a server whose idle timeout is ~0.7 s closes them
    server.close_clients()
    assert wait_until(lambda: a.closed and b.closed)
    stats = pool.host_stats("127.0.0.1", server.port)
    learned = stats["server_idle_timeout"]
    assert 0.7 <= learned < 30, stats          # at least the idle time; generous above
    assert stats["retire_idle_after"] == pytest.approx(learned - min(1.0, learned / 2))
    assert pool.get_stats()["dropped"] == 2 and pool.get_stats()["expired"] == 0
    # from now on an idle connection leaves before the server would close it
    c = pool.checkout("127.0.0.1", server.port)
    pool.checkin(c)
    assert wait_until(lambda: c.closed)
    assert pool.get_stats()["expired"] == 1 and pool.get_stats()["dropped"] == 2
    assert_exact(pool)
    pool.close()


def test_adaptive_idle_timeout_is_not_lowered_by_one_early_close(server):
    """One idle close alone (a restart, a reset) teaches nothing; nor do closes of
    connections idle under LEARN_MIN_IDLE (a restart right after a burst of requests)."""
    from greenpool.pool import LEARN_MIN_IDLE
    pool = GreenPool("adapt1", timeout=60)
    a, b = _idle_pair(pool, server)
    server.close_clients()          # idle for ~0 s: not a keep-alive policy
    assert wait_until(lambda: a.closed and b.closed)
    assert pool.host_stats("127.0.0.1", server.port)["server_idle_timeout"] is None
    c = pool.checkout("127.0.0.1", server.port)
    assert wait_until(lambda: len(server.clients) == 1)
    pool.checkin(c)
    gevent.sleep(LEARN_MIN_IDLE + 0.1)
    server.close_clients()          # one close: not confirmed by another
    assert wait_until(lambda: c.closed)
    assert pool.host_stats("127.0.0.1", server.port)["server_idle_timeout"] is None
    assert_exact(pool)
    pool.close()


def test_adaptive_idle_timeout_off(server):
    pool = GreenPool("adapt-off", timeout=60, adaptive_idle_timeout=False)
    a, b = _idle_pair(pool, server)
    gevent.sleep(0.7)
    server.close_clients()
    assert wait_until(lambda: a.closed and b.closed)
    c = pool.checkout("127.0.0.1", server.port)
    pool.learn_server_idle_timeout(c, 2.0)
    pool.checkin(c)
    stats = pool.host_stats("127.0.0.1", server.port)
    assert stats["server_idle_timeout"] is None and stats["retire_idle_after"] is None
    assert not c.closed
    assert_exact(pool)
    pool.close()


def test_learn_server_idle_timeout_from_a_protocol(server):
    pool = GreenPool("adapt-ka", timeout=60)
    c = pool.checkout("127.0.0.1", server.port)
    pool.learn_server_idle_timeout(c, 4.0)   # e.g. HTTP/1.1 Keep-Alive: timeout=4
    pool.checkin(c)
    stats = pool.host_stats("127.0.0.1", server.port)
    assert stats["server_idle_timeout"] == 4.0 and stats["retire_idle_after"] == 3.0
    assert pool._idle_timeout(c, time.monotonic()) == 3.0
    assert_exact(pool)
    pool.close()


def test_adaptive_idle_timeout_option_validated():
    with pytest.raises(TypeError, match="adaptive_idle_timeout"):
        GreenPool("bad", adaptive_idle_timeout="yes")
