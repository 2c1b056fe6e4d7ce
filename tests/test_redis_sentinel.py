"""Tests for greenpool/redis/sentinel.py (RedisSentinelPool) against a real Sentinel group
(tests/redis_servers.py: one master, one replica, three sentinels), one per test that fails
over, shared by the module otherwise.

Every test runs under ``no_leaks``; every fault test ends with ``assert_exact`` on each
node pool.
"""
from __future__ import annotations

import time

import gevent
import pytest

from greenpool.errors import GreenPoolError, MasterNotFound, ResponseError
from greenpool.redis import RedisSentinelPool

from fakes import refused_port
from forking import child_report, fork_and_report
from redishelp import node_books, unique

pytestmark = pytest.mark.usefixtures("no_leaks")


def key(prefix: str = "k") -> str:
    return unique("test_sentinel", prefix)


@pytest.fixture
def group(sentinel_group):
    return sentinel_group


@pytest.fixture
def sp(group):
    pool = RedisSentinelPool(group.sentinel_addrs, "mymaster", pool_size=2)
    yield pool
    node_books(pool)
    pool.stop()


def test_commands_go_to_the_master(sp, group):
    assert sp.master_address == ("127.0.0.1", group.master_port())
    k = key()
    assert sp.command(["SET", k, "v"]) == b"OK"
    assert group.node_at(group.master_port()).execute("GET", k) == "v"
    assert sp.pipeline([["GET", k], ["INCR", k + "n"]]) == [b"v", 1]
    assert sp.transaction([["INCR", k + "n"], ["GET", k + "n"]]) == [2, b"2"]
    sp.noreply_command(["SET", k, "w"])
    assert sp.command(["GET", k]) == b"w"
    info = sp.info()
    assert info["master"] == "127.0.0.1:%d" % group.master_port()
    assert info["discoveries"] == 1 and info["switches"] == 0
    assert repr(sp).startswith("<RedisSentinelPool ")


def test_role_replica_reads_from_replicas(group):
    k = key("r")
    with RedisSentinelPool(group.sentinel_addrs, "mymaster", pool_size=1) as master:
        master.command(["SET", k, "v"])
        group.node_at(group.master_port()).execute("WAIT", 1, 2000)
    with RedisSentinelPool(group.sentinel_addrs, "mymaster", role="replica", pool_size=1) as rp:
        replicas = rp.replica_addresses
        assert replicas and all(r[1] != group.master_port() for r in replicas)
        assert [rp.command(["GET", k]) for _ in range(5)] == [b"v"] * 5
        replica_pool = rp.node_pools()[replicas[0]]
        assert replica_pool.info()["active"] == 1
        # writes still go to the master
        assert rp.command(["INCR", k + "n"]) == 1
        node_books(rp)


def test_readonly_reply_rediscovers_and_resends(sp, group):
    """A node believed to be the master answers READONLY: the write did not run; the pool
    asks the sentinels again and sends it to the real master."""
    replica = next(r for r in group.redis_nodes if r.port != group.master_port())
    addr = ("127.0.0.1", replica.port)
    stale = sp._pool(addr)
    sp._master = addr                       # as if the service had moved under us
    stale.command(["PING"])
    sp._checked[addr] = stale.reconnects    # its ROLE was checked before the change
    k = key("ro")
    assert sp.command(["SET", k, "v"]) == b"OK"
    assert sp.info()["readonly"] == 1
    assert sp.master_address == ("127.0.0.1", group.master_port())
    assert addr not in sp.node_pools()      # the stale node's pool was retired


def test_role_mismatch_rediscovers(sp, group):
    replica = next(r for r in group.redis_nodes if r.port != group.master_port())
    sp._master = ("127.0.0.1", replica.port)
    assert sp.command(["SET", key(), "v"]) == b"OK"
    assert sp.info()["role_mismatch"] >= 1
    assert sp.master_address == ("127.0.0.1", group.master_port())


def test_unknown_service_and_not_a_sentinel(group, redis):
    with pytest.raises(MasterNotFound, match="no service named|do not know a service"):
        RedisSentinelPool(group.sentinel_addrs, "nope", timeout=0.5)
    with pytest.raises(MasterNotFound, match="is not a Redis Sentinel"):
        RedisSentinelPool([("127.0.0.1", redis.port)], "mymaster", timeout=0.5)
    with pytest.raises(ValueError):
        RedisSentinelPool(group.sentinel_addrs, "mymaster", role="primary")
    with pytest.raises(ValueError):
        RedisSentinelPool(group.sentinel_addrs, "mymaster", host="x")


def test_a_dead_sentinel_is_skipped(group):
    sentinels = [("127.0.0.1", refused_port())] + group.sentinel_addrs
    with RedisSentinelPool(sentinels, "mymaster", pool_size=1, sentinel_timeout=0.5) as sp:
        assert sp.command(["PING"]) == b"PONG"
        assert sp.sentinels[0] != sentinels[0]   # the one that answered moved to the front


def test_sentinel_failover_under_load(sentinel_factory):
    """SENTINEL FAILOVER while 20 greenlets write: writes follow the new master, no
    READONLY (or any error) reaches a caller, no acknowledged write is lost."""
    g = sentinel_factory()
    old = g.master_port()
    sp = RedisSentinelPool(g.sentinel_addrs, "mymaster", pool_size=2, timeout=15.0)
    acked, errors, stop = [], [], [False]
    counter = key("n")

    def work(i):
        n = 0
        while not stop[0]:
            n += 1
            k = "%s:%d:%d" % (counter, i, n)
            try:
                assert sp.command(["SET", k, n]) == b"OK"
                acked.append(k)
                sp.command(["INCR", counter])
                acked.append(None)
            except GreenPoolError as e:
                errors.append(e)
            gevent.sleep(0.002)

    try:
        greenlets = [gevent.spawn(work, i) for i in range(20)]
        gevent.sleep(0.3)
        g.sentinels[0].execute("SENTINEL", "FAILOVER", "mymaster")
        deadline = time.monotonic() + 20
        while sp.master_address[1] == old:
            assert time.monotonic() < deadline, "the pool never moved to the new master"
            gevent.sleep(0.05)
        assert sp.master_address[1] == g.master_port() != old
        before = len(acked)
        gevent.sleep(0.5)
        stop[0] = True
        gevent.joinall(greenlets, raise_error=True)
        assert errors == [], errors[:5]
        assert len(acked) > before
        assert not any(isinstance(e, ResponseError) for e in errors)
        # every acknowledged write is on the new master
        keys = [k for k in acked if k is not None]
        incrs = sum(1 for k in acked if k is None)
        present = sp.pipeline([["EXISTS", k] for k in keys])
        assert sum(present) == len(keys), "%d acknowledged writes lost" % (len(keys) - sum(present))
        assert int(sp.command(["GET", counter])) == incrs
        assert ("127.0.0.1", old) not in sp.node_pools()   # old master's connections retired
        info = sp.info()
        assert info["switches"] == 1 and info["readonly"] == 0
        node_books(sp)
    finally:
        stop[0] = True
        sp.stop()


def test_master_killed_sentinel_promotes_and_the_pool_follows(sentinel_factory):
    g = sentinel_factory()
    old = g.master_port()
    sp = RedisSentinelPool(g.sentinel_addrs, "mymaster", pool_size=2, timeout=3.0,
                           connect_timeout=0.5, backoff_min=0.02, backoff_max=0.2)
    ok, errors, when, stop = [], [], [], [False]

    def work(i):
        n = 0
        while not stop[0]:
            n += 1
            try:
                assert sp.command(["SET", "kill:%d" % i, n]) == b"OK"
                ok.append(i)
            except GreenPoolError as e:
                assert not isinstance(e, ResponseError), e      # never READONLY
                errors.append(e)
                when.append(time.monotonic())
            gevent.sleep(0.005)

    try:
        greenlets = [gevent.spawn(work, i) for i in range(20)]
        gevent.sleep(0.3)
        killed = time.monotonic()
        g.node_at(old).kill()
        deadline = time.monotonic() + 30
        while sp.master_address[1] == old:
            assert time.monotonic() < deadline, "the pool never moved to the new master"
            gevent.sleep(0.05)
        moved = time.monotonic()
        gevent.sleep(0.5)
        settled, before = len(errors), len(ok)
        gevent.sleep(0.5)
        stop[0] = True
        gevent.joinall(greenlets, raise_error=True)
        assert len(errors) == settled and len(ok) > before
        print("sentinel failover after a kill: the pool moved %.2fs after it; errors until "
              "%.2fs; %d errors" % (moved - killed, (max(when) - killed) if when else 0,
                                    len(errors)))
        assert ("127.0.0.1", old) not in sp.node_pools()
        assert sp.info()["switches"] == 1
        node_books(sp)
    finally:
        stop[0] = True
        sp.stop()


def test_replica_role_rediscovers_when_the_replica_dies(sentinel_factory):
    g = sentinel_factory()
    k = key("rd")
    master = g.node_at(g.master_port())
    master.execute("SET", k, "v")
    master.execute("WAIT", 1, 2000)
    rp = RedisSentinelPool(g.sentinel_addrs, "mymaster", role="replica", pool_size=1,
                           connect_timeout=0.5, backoff_min=0.02, backoff_max=0.2)
    try:
        [replica] = rp.replica_addresses
        assert rp.command(["GET", k]) == b"v"
        g.node_at(replica[1]).kill()
        # the read in flight may fail; with retry_reads it is re-sent after re-discovery
        assert rp.command(["GET", k], retries=2) == b"v"
        assert replica not in rp.replica_addresses
        assert replica not in rp.node_pools()
        assert [rp.command(["GET", k]) for _ in range(5)] == [b"v"] * 5   # on the master now
        node_books(rp)
    finally:
        rp.stop()


def _message(ps, kind, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = ps.get_message(max(deadline - time.monotonic(), 0.01))
        if m is not None and m["type"] == kind:
            return m
    raise AssertionError("no %s message within %.1fs" % (kind, timeout))


def test_pubsub_routes_to_the_master(sp, group):
    ch = key("ch")
    with sp.pubsub() as ps:
        ps.subscribe(ch)
        assert _message(ps, "subscribe")["channel"] == ch.encode()
        assert ps._dc.conn.sock.getpeername()[1] == group.master_port()
        assert sp.command(["PUBLISH", ch, "hello"]) == 1
        m = _message(ps, "message")
        assert (m["channel"], m["data"]) == (ch.encode(), b"hello")


def test_watch_transaction_routes_to_the_master(sp, group):
    k = key("w")
    sp.command(["SET", k, 0])

    def incr():
        for _ in range(10):
            sp.watch_transaction(
                [k], lambda conn: [["SET", k, int(conn.command(["GET", k])) + 1]], retries=100)

    gevent.joinall([gevent.spawn(incr) for _ in range(10)], raise_error=True)
    assert sp.command(["GET", k]) == b"100"
    assert group.node_at(group.master_port()).execute("GET", k) == "100"


def test_register_script_follows_the_pool_and_survives_script_flush(sp, group):
    script = sp.register_script("return redis.call('INCR', KEYS[1])")
    k = key("s")
    assert script(keys=[k]) == 1
    assert script.pool is sp          # bound to the sentinel pool: it follows a failover
    sp.command(["SCRIPT", "FLUSH"])
    assert script(keys=[k]) == 2      # NOSCRIPT: sent again as EVAL
    sp.command(["SCRIPT", "FLUSH"])
    assert sp.pipeline([script.command([k]), ["GET", k]]) == [3, b"2"]
    assert sp.command(["GET", k]) == b"3"


def test_fork_child_uses_its_own_connections(sp, group):
    """Across os.fork() the child's node pools, sentinel pools and +switch-master
    listeners are its own: it runs commands on new connections; the parent's stay."""
    import greenpool.registry  # noqa: F401 - installs the fork handler

    k = key("f")
    assert sp.command(["SET", k, "parent"]) == b"OK"
    parent_id = sp.command(["CLIENT", "ID"])
    master = sp.node_pools()[sp.master_address]
    closed_before = master.info()["closed_connections"]

    def child():
        out = {"open_before": master.get_stats()["open"],
               "get": sp.command(["GET", k]).decode(),
               "id": sp.command(["CLIENT", "ID"])}
        sp.command(["SET", k, "child"])
        out["listeners"] = all(not g.dead for g in sp._listeners)
        sp.stop()
        return out
    report = child_report(fork_and_report(child))
    assert report["open_before"] == 0
    assert report["get"] == "parent" and report["id"] != parent_id
    assert report["listeners"]
    # the parent's connections were not touched: same client, nothing closed, still listening
    assert sp.command(["GET", k]) == b"child"
    assert sp.command(["CLIENT", "ID"]) == parent_id
    assert master.info()["closed_connections"] == closed_before
    assert all(not g.dead for g in sp._listeners)


def test_sentinel_password(sentinel_factory):
    g = sentinel_factory(sentinel_password="s3nt")
    with pytest.raises(MasterNotFound, match="NOAUTH|AUTH|auth"):
        RedisSentinelPool(g.sentinel_addrs, "mymaster", pool_size=1, timeout=0.5)
    with RedisSentinelPool(g.sentinel_addrs, "mymaster", pool_size=1,
                           sentinel_password="s3nt") as sp:
        assert sp.command(["SET", key(), "v"]) == b"OK"
        assert sp.master_address[1] == g.master_port()
        node_books(sp)
