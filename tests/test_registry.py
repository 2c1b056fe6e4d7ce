"""Tests for greenpool/registry.py: named pools, the default pool, fork safety."""
from __future__ import annotations

import os

import gevent
import pytest

import greenpool
from greenpool import PoolClosed, PoolError

from fakes import FakeServer, ProcessEchoServer, assert_exact

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(autouse=True)
def clean_registry():
    yield
    for name in list(greenpool.registry.all_pools()):
        if name.startswith("reg-"):
            greenpool.stop_pool(name)


def test_start_find_stop():
    assert greenpool.find_pool("reg-a") is None
    pool = greenpool.start_pool("reg-a", max_connections=7)
    assert greenpool.find_pool("reg-a") is pool and pool.name == "reg-a"
    # idempotent: the running pool is returned as it is
    assert greenpool.start_pool("reg-a", max_connections=99) is pool
    assert pool.max_connections == 7
    assert greenpool.stop_pool("reg-a") is True
    assert greenpool.find_pool("reg-a") is None and pool.closed
    assert greenpool.stop_pool("reg-a") is False
    with pytest.raises(PoolClosed, match="reg-a"):
        pool.checkout("127.0.0.1", 1)
    fresh = greenpool.start_pool("reg-a")
    assert fresh is not pool and not fresh.closed


def test_stop_pool_fails_waiters_and_closes_connections():
    with FakeServer() as srv:
        pool = greenpool.start_pool("reg-w", max_connections=1, checkout_timeout=5)
        held = pool.checkout("127.0.0.1", srv.port)
        waiter = gevent.spawn(pool.checkout, "127.0.0.1", srv.port)
        gevent.sleep(0.01)
        greenpool.stop_pool("reg-w")
        with pytest.raises(PoolClosed):
            waiter.get(timeout=1)
        assert held.closed
        assert_exact(pool)


def test_get_pool_and_unknown_names():
    assert greenpool.get_pool() is greenpool.find_pool("default")
    with pytest.raises(PoolError, match="no such pool"):
        greenpool.get_pool("reg-missing")
    with pytest.raises(ValueError, match="protocol"):
        greenpool.start_pool("reg-x", protocol="smtp")
    with pytest.raises(TypeError, match="unknown pool option"):
        greenpool.start_pool("reg-y", max_conections=3)
    assert greenpool.find_pool("reg-y") is None


def test_resolve_pool():
    from greenpool.registry import resolve_pool
    pool = greenpool.start_pool("reg-r")
    assert resolve_pool("reg-r") is pool and resolve_pool(pool) is pool
    assert resolve_pool(None) is greenpool.get_pool()
    with pytest.raises(TypeError):
        resolve_pool(3)


def test_fork_child_gets_empty_pools_and_never_touches_parent_sockets():
    """The child sees the pool empty; closing its copies sends nothing to the peer,
    so the parent's idle connection stays usable."""
    with ProcessEchoServer() as srv:
        pool = greenpool.start_pool("reg-fork")
        conn = pool.checkout("127.0.0.1", srv.port)
        busy = pool.checkout("127.0.0.1", srv.port)   # one in use at fork time too
        conn.sock.sendall(b"hi")
        assert conn.sock.recv(2) == b"hi"
        pool.checkin(conn)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report what it sees, never return into pytest
            code = 1
            try:
                child = greenpool.find_pool("reg-fork")
                ok = child is pool and child.count() == 0 and child.get_stats()["in_use_count"] == 0
                # a fresh connection in the child works and is its own
                c = child.checkout("127.0.0.1", srv.port)
                ok = ok and c is not conn and c is not busy
                c.sock.sendall(b"ch")
                ok = ok and c.sock.recv(2) == b"ch"
                child.checkin(c)
                code = 0 if ok else 2
            finally:
                os.write(w, bytes([code]))
                os._exit(code)
        os.close(w)
        status = os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        assert status == b"\x00"
        # the parent's connections are intact: same socket, still answering
        again = pool.checkout("127.0.0.1", srv.port)
        assert again is conn
        again.sock.sendall(b"ok")
        assert again.sock.recv(2) == b"ok"
        pool.checkin(again)
        pool.checkin(busy)
        assert pool.count() == 2
        assert_exact(pool)


def test_fork_under_load_parent_keeps_working():
    with ProcessEchoServer() as srv:
        pool = greenpool.start_pool("reg-fork2", max_connections=4)

        def work(n):
            for _ in range(n):
                with pool.connection("127.0.0.1", srv.port) as c:
                    c.sock.sendall(b"x")
                    assert c.sock.recv(1) == b"x"
                gevent.sleep(0)

        gs = [gevent.spawn(work, 50) for _ in range(8)]
        gevent.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if greenpool.find_pool("reg-fork2").count() == 0 else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        gevent.joinall(gs, raise_error=True)
        assert_exact(pool)
