"""Tests for greenpool/events.py and the pool's calls into it."""
from __future__ import annotations

import logging

import gevent
import pytest

from greenpool import GreenPool, PoolTimeout, events
from greenpool.errors import ConnectError

from fakes import FakeServer, assert_exact, refused_port, settle

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
def server():
    with FakeServer() as srv:
        yield srv


@pytest.fixture
def pool():
    p = GreenPool("ev", max_connections=1, checkout_timeout=1.0)
    yield p
    p.close()


@pytest.fixture
def seen():
    got = []
    events.subscribe(got.append)
    yield got
    events.unsubscribe(got.append)
    assert events.subscribed() == []


def kinds(got):
    return [e.kind for e in got]


def test_nobody_subscribed_means_an_empty_list_the_pool_shares():
    from greenpool import pool as pool_module
    assert events._subscribers == []
    assert pool_module._listeners is events._subscribers  # one list, changed in place only


def test_subscribe_is_idempotent_and_unsubscribe_reports():
    def cb(e):
        pass

    assert events.subscribe(cb) is cb
    events.subscribe(cb)
    assert events.subscribed() == [cb]
    assert events.unsubscribe(cb) is True
    assert events.unsubscribe(cb) is False
    with pytest.raises(TypeError):
        events.subscribe("not callable")  # type: ignore[arg-type]


def test_connect_checkout_checkin_reuse_close(pool, server, seen):
    conn = pool.checkout("127.0.0.1", server.port)
    pool.checkin(conn)
    conn = pool.checkout("127.0.0.1", server.port)   # the fast path
    pool.checkin(conn)
    pool.close()
    assert kinds(seen) == ["connect", "checkout", "checkin", "checkout", "checkin", "close"]
    connect = seen[0]
    assert connect.pool == "ev" and connect.key == ("127.0.0.1", server.port, "tcp")
    assert connect.seconds is not None and 0 <= connect.seconds < 1
    assert (connect.open, connect.in_use, connect.waiting) == (1, 1, 0)
    assert seen[2].in_use == 1  # emitted as it is given back
    assert seen[-1].reason == "pool stopped" and seen[-1].open == 0
    assert "checkout" in repr(seen[1]) and seen[0].as_dict()["kind"] == "connect"


def test_timeout_then_wait_carry_the_wait_time(pool, server, seen):
    conn = pool.checkout("127.0.0.1", server.port)
    with pytest.raises(PoolTimeout):
        pool.checkout("127.0.0.1", server.port, timeout=0.05)
    timeout = [e for e in seen if e.kind == "timeout"]
    assert len(timeout) == 1 and timeout[0].seconds >= 0.05 and timeout[0].waiting == 0

    def waiter():
        other = pool.checkout("127.0.0.1", server.port, timeout=5)
        pool.checkin(other)
        return other

    g = gevent.spawn(waiter)
    gevent.sleep(0.05)
    pool.checkin(conn)  # handed straight to the waiter
    assert g.get() is conn
    wait = [e for e in seen if e.kind == "wait"]
    assert len(wait) == 1 and 0.04 <= wait[0].seconds < 1, seen
    # balanced: every checkout was given back
    assert kinds(seen).count("checkout") == kinds(seen).count("checkin") == 2
    assert_exact(pool)


def test_connect_error_event():
    p = GreenPool("ev-refused", max_connections=1, connect_timeout=1.0)
    got = events.subscribe([].append)
    try:
        with pytest.raises(ConnectError):
            p.checkout("127.0.0.1", refused_port())
        (event,) = got.__self__  # type: ignore[attr-defined]
        assert event.kind == "connect_error" and event.reason and event.open == 0
    finally:
        events.unsubscribe(got)
        p.close()


def test_shared_uses_emit_checkout_and_checkin(server, seen):
    from test_pool import MuxConnector

    p = GreenPool("ev-shared", max_connections=2, connector=MuxConnector(limit=4))
    try:
        a = p.acquire_shared("127.0.0.1", server.port)
        b = p.acquire_shared("127.0.0.1", server.port)
        p.release_shared(a)
        p.release_shared(b)
        assert kinds(seen)[0] == "connect"
        assert kinds(seen).count("checkout") == 2 and kinds(seen).count("checkin") == 2
        assert_exact(p)
    finally:
        p.close()


def test_a_failing_hook_is_logged_and_ignored(pool, server, caplog):
    def broken(event):
        raise RuntimeError("hook bug")

    events.subscribe(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="greenpool.events"):
            conn = pool.checkout("127.0.0.1", server.port)
            pool.checkin(conn)
    finally:
        events.unsubscribe(broken)
    assert "hook bug" in caplog.text
    assert pool.get_stats()["free_count"] == 1


def test_a_hook_may_unsubscribe_itself(pool, server):
    calls = []

    def once(event):
        calls.append(event.kind)
        events.unsubscribe(once)

    events.subscribe(once)
    conn = pool.checkout("127.0.0.1", server.port)
    pool.checkin(conn)
    assert calls == ["connect"]


def test_log_events_is_structured(pool, server, caplog):
    cb = events.log_events(kinds=("close",))
    try:
        with caplog.at_level(logging.DEBUG, logger="greenpool"):
            conn = pool.checkout("127.0.0.1", server.port)
            conn.close("test says so")
            settle()
    finally:
        events.unsubscribe(cb)
    records = [r for r in caplog.records if getattr(r, "greenpool_event", None)]
    assert [r.greenpool_event for r in records] == ["close"]
    assert records[0].greenpool["reason"] == "test says so"
    assert records[0].greenpool["key"] == ("127.0.0.1", server.port, "tcp")
    # the pool's own debug line carries the same fields
    closing = [r for r in caplog.records if r.name == "greenpool.pool" and "closing" in r.getMessage()]
    assert closing and closing[0].greenpool_reason == "test says so"
