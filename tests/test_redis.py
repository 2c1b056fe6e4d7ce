"""Tests for greenpool/redis (RedisPool): a real redis-server for the API and faults,
fake servers for protocol garbage.

The main suite runs over both RESP parsers (the ``rp`` fixture).  Every test runs under
``no_leaks`` (fds, greenlets); every fault test ends with ``assert_exact(pool)``.
"""
from __future__ import annotations

import time

import gevent
import pytest

import greenpool
from greenpool.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    GreenPoolError,
    LimitExceeded,
    PoolClosed,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    ResponseError,
    TransactionAborted,
)
from greenpool.redis import RedisPool, parse_url
from greenpool.redis.resp import NOT_ENOUGH, Reader

from fakes import FakeServer, assert_exact, refused_port
from redishelp import PARSERS, unique

pytestmark = pytest.mark.usefixtures("no_leaks")

def key(prefix: str = "k") -> str:
    """A key no other test uses (the session's server is shared)."""
    return unique("test_redis", prefix)


@pytest.fixture(params=PARSERS)
def parser(request):
    return request.param


@pytest.fixture
def rp(redis, parser):
    pool = RedisPool(pool_size=3, port=redis.port, parser=parser, timeout=5.0)
    yield pool
    pool.stop()


def wait_for(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        gevent.sleep(0.01)


def restart_with_commands_in_flight(server, pool, at_least=10, downtime=0.3):
    """Restart ``server`` while ``at_least`` of ``pool``'s commands are surely in flight:
    CLIENT PAUSE holds every command the server receives unanswered until the stop, so
    the restart hits in-flight commands however late this process is scheduled."""
    server.execute("CLIENT", "PAUSE", 60000, "ALL")
    wait_for(lambda: pool.info()["in_flight"] >= at_least, 10, "commands held in flight")
    gevent.get_hub().threadpool.apply(server.restart, kwds={"downtime": downtime})


def wait_live(pool, timeout=5.0):
    wait_for(lambda: pool.info()["active"] == pool.pool_size and not pool.info()["connecting"],
             timeout, "all connections live")


# -- the API against a real server, both parsers --


def test_command_pipeline_transaction_noreply(rp):
    k, n = key(), key("n")
    assert rp.command(["SET", k, "v"]) == b"OK"
    assert rp.command(["GET", k]) == b"v"
    assert rp.command(("GET", key("missing"))) is None
    assert rp.command([b"INCRBY", n.encode(), 5]) == 5
    replies = rp.pipeline([["GET", k], ["INCR", n], ["HSET", k, "f", "x"], ["LRANGE", n, 0, -1]])
    assert replies[:2] == [b"v", 6]
    assert isinstance(replies[2], ResponseError) and "WRONGTYPE" in str(replies[2])
    assert isinstance(replies[3], ResponseError)
    assert rp.pipeline([]) == []
    assert rp.transaction([["INCR", n], ["GET", n]]) == [7, b"7"]
    rp.noreply_command(["SET", k, "quiet"])
    rp.noreply_pipeline([["INCR", n], ["INCR", n], ["NOSUCHCOMMAND"]])
    assert rp.command(["GET", k]) == b"quiet"
    assert rp.command(["GET", n]) == b"9"
    assert rp.command(["SET", k, "x" * 5000]) == b"OK"
    assert rp.command(["GET", k]) == b"x" * 5000
    assert_exact(rp)


def test_error_reply_raises_response_error_with_server_message(rp):
    k = key()
    rp.command(["SET", k, "v"])
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        rp.command(["LPUSH", k, "x"])
    with pytest.raises(ResponseError, match="unknown command"):
        rp.command(["NOSUCHCOMMAND", "x"])
    assert rp.command(["GET", k]) == b"v"  # still in step
    assert_exact(rp)


def test_concurrent_incrs_land_exactly(rp):
    n = key("ctr")

    def work():
        for _ in range(200):
            rp.command(["INCR", n])

    gevent.joinall([gevent.spawn(work) for _ in range(50)], raise_error=True)
    assert rp.command(["GET", n]) == b"10000"
    info = rp.info()
    assert info["in_flight"] == 0 and info["users"] == 0
    assert_exact(rp)


def test_each_caller_gets_its_own_reply(rp):
    prefix = key("own")

    def work(i):
        for j in range(50):
            k, v = "%s:%d:%d" % (prefix, i, j), "value-%d-%d" % (i, j)
            assert rp.command(["SET", k, v]) == b"OK"
            assert rp.command(["GET", k]) == v.encode()
            assert rp.pipeline([["GET", k], ["STRLEN", k]]) == [v.encode(), len(v)]

    gevent.joinall([gevent.spawn(work, i) for i in range(50)], raise_error=True)
    assert_exact(rp)


def test_transactions_and_plain_commands_never_interleave(redis, parser):
    # one connection: a command landing inside MULTI ... EXEC would get b"QUEUED"
    with RedisPool(pool_size=1, port=redis.port, parser=parser) as pool:
        n, k = key("txn"), key("plain")
        pool.command(["SET", k, "plain"])
        seen = []

        def tx():
            for _ in range(50):
                incr, got = pool.transaction([["INCR", n], ["GET", n]])
                assert got == b"%d" % incr
                seen.append(incr)

        def plain():
            for _ in range(50):
                assert pool.command(["GET", k]) == b"plain"
                assert pool.pipeline([["GET", k], ["EXISTS", k]]) == [b"plain", 1]

        gevent.joinall([gevent.spawn(tx) for _ in range(10)] + [gevent.spawn(plain) for _ in range(10)],
                       raise_error=True)
        assert sorted(seen) == list(range(1, 501))
        assert_exact(pool)


def test_transaction_execabort_and_runtime_errors(rp):
    k = key()
    rp.command(["SET", k, "text"])
    with pytest.raises(TransactionAborted, match="EXECABORT") as exc:
        rp.transaction([["SET", k, "a"], ["GET"]])  # wrong arity: rejected while queuing
    assert "wrong number of arguments" in str(exc.value)
    assert rp.command(["GET", k]) == b"text"  # nothing ran
    replies = rp.transaction([["INCR", k], ["SET", k, "b"]])  # runtime error: in place
    assert isinstance(replies[0], ResponseError) and replies[1] == b"OK"
    assert rp.command(["GET", k]) == b"b"
    assert_exact(rp)


def test_pipelines_under_concurrency(rp):
    prefix = key("pipe")

    def work(i):
        for j in range(20):
            k = "%s:%d" % (prefix, i)
            replies = rp.pipeline([["SET", k, j], ["INCR", k], ["GET", k], ["DEL", k]])
            assert replies == [b"OK", j + 1, b"%d" % (j + 1), 1]

    gevent.joinall([gevent.spawn(work, i) for i in range(50)], raise_error=True)
    assert_exact(rp)


def test_decode_responses(redis, parser):
    with RedisPool(pool_size=1, port=redis.port, parser=parser, decode_responses=True) as pool:
        k = key()
        assert pool.command(["SET", k, "héllo"]) == "OK"
        assert pool.command(["GET", k]) == "héllo"
        assert pool.pipeline([["GET", k], ["STRLEN", k]]) == ["héllo", 6]
        with pytest.raises(ResponseError, match="unknown command"):
            pool.command(["NOPE"])


def test_resp3_db_and_client_name(redis, parser):
    k = key()
    with RedisPool(pool_size=2, port=redis.port, parser=parser, protocol=3, db=3,
                   client_name="gp-resp3") as pool:
        pool.command(["HSET", k, "a", "1", "b", "2"])
        assert pool.command(["HGETALL", k]) == {b"a": b"1", b"b": b"2"}
        assert pool.command(["CLIENT", "GETNAME"]) == b"gp-resp3"
        assert b" db=3 " in pool.command(["CLIENT", "INFO"])
    with RedisPool(pool_size=1, port=redis.port, parser=parser, db=0) as pool0:
        assert pool0.command(["EXISTS", k]) == 0  # it lives in db 3
    with RedisPool(pool_size=1, url=redis.url.rsplit("/", 1)[0] + "/3", parser=parser) as pool3:
        assert pool3.command(["EXISTS", k]) == 1
        pool3.command(["DEL", k])


@pytest.mark.parametrize("strategy", ["round_robin", "random", "least_busy"])
def test_strategies(redis, strategy):
    with RedisPool(pool_size=4, port=redis.port, strategy=strategy) as pool:
        ids = [pool.command(["CLIENT", "ID"]) for _ in range(40)]
        if strategy == "round_robin":
            assert len(set(ids)) == 4
            assert ids[:4] * 10 == ids  # each in turn
        elif strategy == "random":
            assert len(set(ids)) >= 2
        assert pool.info()["strategy"] == strategy
        assert_exact(pool)


def test_info_stats_and_repr(rp):
    info = rp.info()
    for name in ("pool_size", "active", "strategy", "in_flight", "reconnects", "waiting",
                 "connect_errors", "last_error"):
        assert name in info
    assert info["pool_size"] == info["active"] == 3
    assert info["strategy"] == "round_robin" and info["reconnects"] == 0
    stats = rp.get_stats()
    assert stats["open"] == stats["shared_count"] == 3 and stats["shared_users"] == 0
    assert "3/3 live" in repr(rp)
    # in flight: a slow command keeps one caller and one reply pending
    g = gevent.spawn(rp.command, ["DEBUG", "SLEEP", "0.2"])
    gevent.sleep(0.05)
    info = rp.info()
    assert info["in_flight"] == 1 and info["users"] == 1
    assert rp.get_stats()["shared_users"] == 1
    assert g.get() == b"OK"
    assert_exact(rp)


def test_context_manager_stop_and_use_after_stop(redis):
    with RedisPool(pool_size=2, port=redis.port) as pool:
        assert pool.command(["PING"]) == b"PONG"
    assert pool.closed and pool.info()["active"] == 0
    with pytest.raises(PoolClosed):
        pool.command(["PING"])
    pool.stop()  # idempotent
    assert_exact(pool)


def test_stop_fails_in_flight_commands_with_pool_closed(redis):
    pool = RedisPool(pool_size=1, port=redis.port)
    g = gevent.spawn(pool.command, ["DEBUG", "SLEEP", "0.3"])
    gevent.sleep(0.05)
    pool.stop()
    with pytest.raises(PoolClosed, match="in flight"):
        g.get()
    assert_exact(pool)


def test_registry_start_find_stop(redis):
    pool = greenpool.start_pool("test-redis-cache", protocol="redis", pool_size=2, port=redis.port)
    try:
        assert isinstance(pool, RedisPool) and pool.name == "test-redis-cache"
        assert greenpool.find_pool("test-redis-cache") is pool
        assert greenpool.start_pool("test-redis-cache", protocol="redis") is pool
        assert pool.command(["PING"]) == b"PONG"
    finally:
        assert greenpool.stop_pool("test-redis-cache") is True
    assert greenpool.find_pool("test-redis-cache") is None
    assert pool.closed
    assert_exact(pool)


def test_auto_names_and_url():
    assert parse_url("redis://u%40x:p%3Aw@h:7000/2") == {
        "ssl": False, "host": "h", "port": 7000, "username": "u@x", "password": "p:w", "db": 2}
    assert parse_url("rediss://:pw@h") == {"ssl": True, "host": "h", "password": "pw"}
    for bad in ("http://h", "redis://h/x", "redis://h/0?timeout=1"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_auto_name(redis):
    with RedisPool(pool_size=1, port=redis.port) as a, RedisPool(pool_size=1, port=redis.port) as b:
        assert a.name != b.name and a.name.startswith("redis-")


# -- timeouts and killed callers: no desync --


def test_timeout_does_not_desync(redis, parser):
    with RedisPool(pool_size=1, port=redis.port, parser=parser) as pool:
        k = key()
        pool.command(["SET", k, "v"])
        with pytest.raises(ReadTimeout, match="within 0.1s"):
            pool.command(["DEBUG", "SLEEP", "0.3"], timeout=0.1)
        # these queue behind the sleep on the same connection and get their own replies
        assert pool.command(["GET", k]) == b"v"
        assert pool.pipeline([["ECHO", "a"], ["ECHO", "b"]]) == [b"a", b"b"]
        with pytest.raises(ReadTimeout):
            pool.pipeline([["DEBUG", "SLEEP", "0.2"], ["ECHO", "late"]], timeout=0.05)
        with pytest.raises(ReadTimeout):
            pool.transaction([["DEBUG", "SLEEP", "0.2"], ["ECHO", "late"]], timeout=0.05)
        assert pool.command(["ECHO", "in step"]) == b"in step"
        assert pool.info()["in_flight"] == 0 and pool.get_stats()["shared_users"] == 0
        assert_exact(pool)


def test_each_caller_keeps_its_own_deadline(redis):
    # one deadline timer per connection: a caller queued behind a later deadline still
    # times out at its own, in any order; one with time to spare gets its own reply
    with RedisPool(pool_size=1, port=redis.port) as pool:
        sleeper = gevent.spawn(pool.command, ["DEBUG", "SLEEP", "0.4"], timeout=5.0)
        gevent.sleep(0.02)
        ends = {}

        def short(timeout):
            t0 = time.monotonic()
            with pytest.raises(ReadTimeout, match="within %gs" % timeout):
                pool.command(["ECHO", "x"], timeout=timeout)
            ends[timeout] = time.monotonic() - t0

        gevent.joinall([gevent.spawn(short, t) for t in (0.15, 0.05, 0.1)], raise_error=True)
        for timeout, took in ends.items():
            assert timeout <= took + 0.002 and took < timeout + 0.2, ends
        assert sleeper.get() == b"OK"
        assert pool.command(["ECHO", "in step"], timeout=0.5) == b"in step"
        wait_for(lambda: pool.info()["in_flight"] == 0, what="the dropped replies")
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)


def test_killed_callers_do_not_desync(rp):
    k = key()
    rp.command(["SET", k, "v"])
    slow = [gevent.spawn(rp.command, ["DEBUG", "SLEEP", "0.1"]) for _ in range(3)]
    gevent.sleep(0.02)
    gevent.killall(slow)
    results = [rp.command(["ECHO", "e%d" % i]) for i in range(10)]
    assert results == [b"e%d" % i for i in range(10)]
    assert rp.command(["GET", k]) == b"v"
    wait_for(lambda: rp.info()["in_flight"] == 0, what="the killed callers' replies")
    assert rp.get_stats()["shared_users"] == 0
    assert_exact(rp)


def test_callers_own_gevent_timeout_propagates(rp):
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05):
            rp.command(["DEBUG", "SLEEP", "0.2"])
    assert rp.command(["PING"]) == b"PONG"
    assert_exact(rp)


# -- bad input --


@pytest.mark.parametrize("bad, exc", [
    ("GET k", TypeError),
    (b"GET", TypeError),
    (None, TypeError),
    ({"GET": "k"}, TypeError),
    ([], ValueError),
    (["SET", "k", None], TypeError),
    (["SET", "k", True], TypeError),
    (["SET", "k", {"a": 1}], TypeError),
    (["SET", "k", ["v"]], TypeError),
    (["SET", object(), "v"], TypeError),
])
def test_bad_commands_are_refused_before_anything_is_sent(rp, bad, exc):
    with pytest.raises(exc):
        rp.command(bad)
    with pytest.raises(exc):
        rp.pipeline([["PING"], bad])
    with pytest.raises(exc):
        rp.transaction([["PING"], bad])
    with pytest.raises(exc):
        rp.noreply_command(bad)
    assert rp.info()["in_flight"] == 0
    assert rp.command(["PING"]) == b"PONG"
    assert_exact(rp)


@pytest.mark.parametrize("cmd", [["MULTI"], ["exec"], [b"WATCH", b"k"], ["SELECT", 1],
                                 ["SUBSCRIBE", "ch"], ["client", "reply", "off"], ["AUTH", "x"]])
def test_connection_state_commands_are_refused(rp, cmd):
    with pytest.raises(ValueError, match="shared"):
        rp.command(cmd)
    with pytest.raises(ValueError, match=r"commands\[1\]"):
        rp.pipeline([["PING"], cmd])
    with pytest.raises(ValueError):
        rp.transaction([cmd])
    assert rp.command(["PING"]) == b"PONG"


def test_bad_options():
    for kw in ({"pool_size": 0}, {"pool_size": "2"}, {"db": -1}, {"start": "lazy"}, {"protocol": 4},
               {"parser": "fast"}, {"max_reply_size": 0}, {"timeout": 0}, {"strategy": "first"},
               {"client_name": "a b"}):
        with pytest.raises((ValueError, TypeError)):
            RedisPool(port=refused_port(), **kw)
    with pytest.raises(TypeError):
        RedisPool(port=refused_port(), password=123)


# -- faults --


def fake_redis(script):
    """A fake Redis: answers PING (the handshake) with +PONG, then ``script(command)`` bytes."""

    def handler(sock, server):
        reader = Reader()
        while True:
            data = sock.recv(65536)
            if not data:
                return
            reader.feed(data)
            out = []
            while True:
                cmd = reader.gets()
                if cmd is NOT_ENOUGH:
                    break
                out.append(b"+PONG\r\n" if cmd == [b"PING"] else script(cmd))
            sock.sendall(b"".join(out))

    return FakeServer(handler)


def test_protocol_garbage_fails_pending_and_reconnects(parser):
    with fake_redis(lambda cmd: b"?garbage\r\n" if cmd[0] == b"GARBAGE" else b"+OK\r\n") as srv:
        pool = RedisPool(pool_size=1, port=srv.port, parser=parser, backoff_min=0.01, timeout=2)
        try:
            assert pool.command(["SET", "k", "v"]) == b"OK"
            with pytest.raises(RemoteProtocolError):
                pool.command(["GARBAGE"])
            wait_live(pool)
            assert pool.command(["SET", "k", "v"]) == b"OK"
            assert pool.info()["reconnects"] == 1 and srv.accepted == 2
            assert_exact(pool)
        finally:
            pool.stop()
        assert_exact(pool)


def test_unsolicited_reply_is_a_protocol_error():
    def handler(sock, server):
        first = server.accepted == 1
        while True:
            data = sock.recv(65536)
            if not data:
                return
            sock.sendall(b"+PONG\r\n" * data.count(b"PING"))
            if first:  # then a reply nobody asked for
                gevent.sleep(0.05)
                sock.sendall(b"+SURPRISE\r\n")

    with FakeServer(handler) as srv:
        with RedisPool(pool_size=1, port=srv.port, backoff_min=0.01) as pool:
            wait_for(lambda: pool.info()["reconnects"] == 1, what="the replacement")
            assert pool.command(["PING"]) == b"PONG"
            assert srv.accepted == 2
            assert_exact(pool)


def test_exec_nil_is_transaction_aborted():
    replies = {b"MULTI": b"+OK\r\n", b"EXEC": b"*-1\r\n"}
    with fake_redis(lambda cmd: replies.get(cmd[0], b"+QUEUED\r\n")) as srv:
        with RedisPool(pool_size=1, port=srv.port) as pool:
            with pytest.raises(TransactionAborted, match="EXEC returned nil"):
                pool.transaction([["SET", "k", "v"]])
            assert_exact(pool)


def test_reply_over_max_reply_size(redis, parser):
    k = key("big")
    with RedisPool(pool_size=2, port=redis.port, parser=parser, max_reply_size=1000,
                   backoff_min=0.01) as pool:
        pool.command(["SET", k, "x" * 5000])
        assert pool.command(["STRLEN", k]) == 5000
        with pytest.raises(LimitExceeded, match="max_reply_size"):
            pool.command(["GET", k])
        wait_live(pool)
        assert pool.command(["GETRANGE", k, 0, 9]) == b"x" * 10
        assert pool.info()["reconnects"] == 1
        assert_exact(pool)
        pool.command(["DEL", k])


def test_client_kill_of_a_pool_connection(redis, parser):
    with RedisPool(pool_size=3, port=redis.port, parser=parser, backoff_min=0.01,
                   client_name="gp-kill-test") as pool:
        # a write held by CLIENT PAUSE stays in flight on its shared connection
        # (a blocking command would go to a dedicated connection)
        redis.execute("CLIENT", "PAUSE", 3000, "WRITE")
        try:
            slow = gevent.spawn(pool.command, ["SET", key("paused"), "v"])
            gevent.sleep(0.05)
            blocked_on = [c for c in pool._h.shared if c.proto.in_flight]
            assert len(blocked_on) == 1
            port = blocked_on[0].sock.getsockname()[1]
            assert redis.execute("CLIENT", "KILL", "ADDR", "127.0.0.1:%d" % port) in ("OK", 1)
            with pytest.raises(ConnectionClosed, match="may or may not have run"):
                slow.get(timeout=2)
        finally:
            redis.execute("CLIENT", "UNPAUSE")
        wait_live(pool)
        assert pool.info()["reconnects"] == 1
        assert pool.command(["CLIENT", "GETNAME"]) == b"gp-kill-test"
        ids = {pool.command(["CLIENT", "ID"]) for _ in range(6)}
        assert len(ids) == 3
        assert_exact(pool)


def test_server_restart_with_50_greenlets_mid_command(redis_factory, parser):
    server = redis_factory()
    pool = RedisPool(pool_size=4, port=server.port, parser=parser, timeout=3.0,
                     backoff_min=0.02, backoff_max=0.2)
    ok = []
    errors = []
    stop = [False]

    def work(i):
        j = 0
        while not stop[0]:
            j += 1
            k, v = "g%d" % i, "v%d-%d" % (i, j)
            try:
                if j % 2:
                    replies = pool.pipeline([["SET", k, v], ["GET", k]])
                else:
                    replies = [pool.command(["SET", k, v]), pool.command(["GET", k])]
            except GreenPoolError as e:
                errors.append(e)
                continue
            # its own reply, never another's (a GET sent on its own after the restart
            # finds the restarted server empty: None)
            assert replies == [b"OK", v.encode()] or (j % 2 == 0 and replies == [b"OK", None])
            ok.append(i)

    try:
        greenlets = [gevent.spawn(work, i) for i in range(50)]
        wait_for(lambda: len(set(ok)) == 50, 10, "a command of every greenlet before the restart")
        restart_with_commands_in_flight(server, pool)
        wait_live(pool)
        after = len(ok)
        wait_for(lambda: len(ok) >= after + 50, 10, "commands after the restart")
        stop[0] = True
        gevent.joinall(greenlets, raise_error=True)
        assert errors, "the restart failed nobody's command"
        for e in errors:
            assert isinstance(e, (ConnectionClosed, PoolTimeout, ConnectError)), repr(e)
        assert pool.info()["reconnects"] >= 4
        assert pool.info()["in_flight"] == 0
        assert_exact(pool)
    finally:
        stop[0] = True
        pool.stop()
    assert_exact(pool)


def test_wrong_password(no_leaks, redis_factory):
    server = redis_factory(requirepass="s3cret")
    with pytest.raises(AuthenticationError, match="WRONGPASS|invalid"):
        RedisPool(pool_size=2, port=server.port, password="wrong")
    with pytest.raises(AuthenticationError, match="NOAUTH|password"):
        RedisPool(pool_size=2, port=server.port)
    with pytest.raises(AuthenticationError):
        RedisPool(pool_size=2, port=server.port, password="wrong", protocol=3)
    # degraded: starts, keeps retrying, callers get a clear error
    pool = RedisPool(pool_size=2, port=server.port, password="wrong", start="degraded",
                     backoff_min=0.01, backoff_max=0.05)
    try:
        with pytest.raises(PoolTimeout, match="credentials"):
            pool.command(["PING"], timeout=0.2)
        assert pool.info()["active"] == 0
        assert_exact(pool)
    finally:
        pool.stop()
    for kw in ({"password": "s3cret"}, {"url": server.url}, {"password": "s3cret", "protocol": 3},
               {"username": "default", "password": "s3cret"}):
        with RedisPool(pool_size=2, port=server.port, **kw) as good:
            assert good.command(["PING"]) == b"PONG"
            assert_exact(good)


def test_unreachable_at_start_wait_fails_clearly():
    port = refused_port()
    with pytest.raises(ConnectError, match="refused"):
        RedisPool(pool_size=2, port=port, connect_timeout=1.0)


def test_unreachable_at_start_degraded_then_server_comes_up(redis_factory):
    server = redis_factory()
    server.stop()
    pool = RedisPool(pool_size=2, port=server.port, start="degraded", backoff_min=0.02,
                     backoff_max=0.1)
    try:
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout, match="refused"):
            pool.command(["PING"], timeout=0.2)
        assert time.monotonic() - t0 < 1.0
        assert pool.info()["active"] == 0 and pool.info()["connect_errors"] >= 1
        assert_exact(pool)
        # a caller waiting when the server comes up gets served
        waiter = gevent.spawn(pool.command, ["PING"], timeout=5)
        gevent.get_hub().threadpool.apply(server.start)
        assert waiter.get(timeout=5) == b"PONG"
        wait_live(pool)
        assert pool.command(["PING"]) == b"PONG"
        assert_exact(pool)
    finally:
        pool.stop()
    assert_exact(pool)


# -- opt-in retries of read-only commands --


@pytest.fixture
def sends(monkeypatch):
    """Counts, per greenlet, the commands RedisProtocol.submit really queued for sending."""
    from collections import Counter

    from greenpool.redis.connection import RedisProtocol

    counts = Counter()
    original = RedisProtocol.submit

    def spy(self, data, slot, replies, deadline):
        original(self, data, slot, replies, deadline)
        counts[gevent.getcurrent()] += 1

    monkeypatch.setattr(RedisProtocol, "submit", spy)
    return counts


def test_read_only_set_and_retry_options(redis):
    from greenpool.redis import READ_ONLY_COMMANDS, is_read_only

    for name in ("GET", "MGET", "EXISTS", "TTL", "PTTL", "STRLEN", "HGET", "HGETALL", "HMGET",
                 "LRANGE", "LLEN", "SMEMBERS", "SISMEMBER", "SCARD", "ZRANGE", "ZSCORE", "ZCARD",
                 "TYPE", "KEYS", "SCAN", "PING", "ECHO", "DBSIZE", "INFO"):
        assert name in READ_ONLY_COMMANDS
        assert is_read_only([name.lower(), "k"]) and is_read_only([name.encode(), b"k"])
    for args in (["SET", "k", "v"], ["INCR", "k"], [b"del", b"k"], ["GETDEL", "k"], ["GETEX", "k"],
                 ["BLPOP", "k", 0], ["EVAL", "return 1", 0], [1]):
        assert not is_read_only(args)
    for bad in (-1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="retry_reads"):
            RedisPool(port=refused_port(), retry_reads=bad)
    with RedisPool(pool_size=1, port=redis.port, retry_reads=2) as pool:
        assert pool.info()["retry_reads"] == 2 and pool.info()["retries"] == 0
        assert pool.command(["PING"], retries=0) == b"PONG"
        with pytest.raises(ValueError, match="retries"):
            pool.command(["PING"], retries=-1)
        assert_exact(pool)


def _restart_under_gets(server, pool, sends, retries):
    """50 greenlets run GET/ECHO through a server restart; returns (ok, errors, sends per call)."""
    ok, errors, per_call = [], [], []
    stop = [False]
    kw = {} if retries is None else {"retries": retries}

    def work(i):
        me = gevent.getcurrent()
        k, v = "r%d" % i, b"v%d" % i
        pool.command(["SET", k, v])
        j = 0
        while not stop[0]:
            j += 1
            token = "t%d-%d" % (i, j)
            for args, expected in ((["GET", k], (v, None)),  # None after the restart
                                   (["ECHO", token], (token.encode(),))):
                before = sends[me]
                try:
                    reply = pool.command(args, **kw)
                except GreenPoolError as e:
                    errors.append(e)
                else:
                    assert reply in expected, (args, reply)  # its own reply, never another's
                    ok.append(i)
                per_call.append(sends[me] - before)

    greenlets = [gevent.spawn(work, i) for i in range(50)]
    try:
        wait_for(lambda: len(set(ok)) == 50, 10, "a command of every greenlet before the restart")
        restart_with_commands_in_flight(server, pool)
        wait_live(pool)
        after = len(ok)
        wait_for(lambda: len(ok) >= after + 50, 10, "commands after the restart")
        stop[0] = True
        gevent.joinall(greenlets, raise_error=True)
    finally:
        stop[0] = True
        gevent.killall(greenlets)
    return ok, errors, per_call


@pytest.mark.parametrize("where", ["pool", "call"])
def test_restart_with_read_retries_all_gets_succeed(redis_factory, parser, sends, where):
    server = redis_factory()
    pool = RedisPool(pool_size=4, port=server.port, parser=parser, timeout=5.0,
                     backoff_min=0.02, backoff_max=0.2, retry_reads=5 if where == "pool" else 0)
    try:
        ok, errors, per_call = _restart_under_gets(server, pool, sends,
                                                   None if where == "pool" else 5)
        assert errors == [], errors[:3]
        assert pool.info()["retries"] > 0, "the restart re-sent nothing"
        assert max(per_call) > 1 and max(per_call) <= 6
        assert pool.info()["in_flight"] == 0
        assert_exact(pool)
    finally:
        pool.stop()
    assert_exact(pool)


def test_restart_without_retries_fails_clearly_and_resends_nothing(redis_factory, parser, sends):
    server = redis_factory()
    pool = RedisPool(pool_size=4, port=server.port, parser=parser, timeout=5.0,
                     backoff_min=0.02, backoff_max=0.2)  # retry_reads=0: the default
    try:
        ok, errors, per_call = _restart_under_gets(server, pool, sends, None)
        assert errors, "the restart failed nobody's command"
        closed = [e for e in errors if isinstance(e, ConnectionClosed)]
        assert closed and all("may or may not have run" in str(e) for e in closed), closed[:3]
        for e in errors:
            assert isinstance(e, (ConnectionClosed, PoolTimeout, ConnectError)), repr(e)
        assert max(per_call) == 1, "a command was sent twice"
        assert pool.info()["retries"] == 0
        assert_exact(pool)
    finally:
        pool.stop()
    assert_exact(pool)


def test_writes_are_never_resent_even_with_retries(redis_factory, parser, sends):
    server = redis_factory()
    ctr = "ctr"
    pool = RedisPool(pool_size=3, port=server.port, parser=parser, timeout=5.0,
                     backoff_min=0.02, backoff_max=0.2, retry_reads=5)
    ok, failed, per_call, reads = [0], [], [], [0]
    stop = [False]

    def work():
        me = gevent.getcurrent()
        while not stop[0]:
            before = sends[me]
            try:
                pool.command(["INCR", ctr], retries=5)
            except (ConnectionClosed, PoolTimeout) as e:
                failed.append(e)
            else:
                ok[0] += 1
            per_call.append(sends[me] - before)
            pool.command(["GET", ctr])  # a read: re-sent if need be, never fails here
            reads[0] += 1

    greenlets = [gevent.spawn(work) for _ in range(50)]
    try:
        gevent.sleep(0.1)
        for _ in range(30):  # until both an INCR and a GET were caught in flight
            # SKIPME (default): only the pool's connections die, mid-command
            killed = gevent.get_hub().threadpool.apply(server.execute, ("CLIENT", "KILL", "TYPE", "normal"))
            assert killed >= 1
            gevent.sleep(0.1)
            if len(failed) >= 3 and pool.info()["retries"] >= 3:
                break
        wait_live(pool)
        stop[0] = True
        gevent.joinall(greenlets, raise_error=True)
        assert failed, "no INCR was in flight when its connection was killed"
        assert all(isinstance(e, ConnectionClosed) and "not retried" in str(e)
                   for e in failed if not isinstance(e, PoolTimeout)), failed[:3]
        assert max(per_call) == 1, "an INCR was sent twice"
        value = int(pool.command(["GET", ctr]))
        # every successful INCR ran once; a failed one ran once or not at all
        assert ok[0] <= value <= ok[0] + len(failed)
        calls = server.execute("INFO", "commandstats")
        incr_calls = int(calls.split("cmdstat_incr:calls=")[1].split(",")[0])
        assert incr_calls == value <= sum(per_call)
        assert pool.info()["retries"] > 0 and reads[0] > 0
        assert pool.info()["in_flight"] == 0
        assert_exact(pool)
    finally:
        stop[0] = True
        gevent.killall(greenlets)
        pool.stop()
    assert_exact(pool)


def test_pipelines_and_transactions_are_not_retried(redis_factory, sends):
    server = redis_factory()
    with RedisPool(pool_size=1, port=server.port, backoff_min=0.01, retry_reads=5) as pool:
        for run in (lambda: pool.pipeline([["GET", "a"], ["ECHO", "b"]]),
                    lambda: pool.transaction([["GET", "a"], ["ECHO", "b"]])):
            # a write held by CLIENT PAUSE: the batch queues behind it on the shared connection
            server.execute("CLIENT", "PAUSE", 3000, "WRITE")
            try:
                blocker = gevent.spawn(pool.command, ["SET", "paused", "v"])
                gevent.sleep(0.02)
                g = gevent.spawn(run)
                gevent.sleep(0.05)
                gevent.get_hub().threadpool.apply(server.execute, ("CLIENT", "KILL", "TYPE", "normal"))
                for greenlet in (blocker, g):
                    with pytest.raises(ConnectionClosed):
                        greenlet.get(timeout=3)
                    assert sends[greenlet] == 1
            finally:
                server.execute("CLIENT", "UNPAUSE")
            wait_live(pool)
        assert pool.info()["retries"] == 0
        assert_exact(pool)


# -- TLS --


def test_tls_commands_and_wrong_ca(redis_factory, tls, tmp_path, parser):
    import trustme

    from greenpool.errors import TLSError

    server = redis_factory(tls=tls)
    assert server.url.startswith("rediss://")
    with RedisPool(pool_size=2, port=server.port, ssl=True, verify=str(tls.ca_path), parser=parser,
                   backoff_min=0.01) as pool:
        k = key("tls")
        assert pool.command(["SET", k, "over tls"]) == b"OK"
        assert pool.command(["GET", k]) == b"over tls"
        assert pool.pipeline([["INCR", k + "n"], ["GET", k]]) == [1, b"over tls"]
        assert pool.transaction([["INCR", k + "n"], ["GET", k + "n"]]) == [2, b"2"]

        def work(i):
            for j in range(20):
                assert pool.command(["ECHO", "%d-%d" % (i, j)]) == b"%d-%d" % (i, j)

        gevent.joinall([gevent.spawn(work, i) for i in range(20)], raise_error=True)
        # a killed TLS connection is replaced like any other
        gevent.get_hub().threadpool.apply(server.execute, ("CLIENT", "KILL", "TYPE", "normal"))
        wait_for(lambda: pool.info()["reconnects"] >= 2, what="the TLS replacements")
        wait_live(pool)
        assert pool.command(["GET", k], retries=2) == b"over tls"
        assert_exact(pool)
    with RedisPool(pool_size=1, url=server.url, verify=str(tls.ca_path)) as pool:  # rediss://
        assert pool.transport == "ssl" and pool.command(["PING"]) == b"PONG"
        assert_exact(pool)
    other = trustme.CA(organization_name="some other CA")
    wrong_ca = tmp_path / "other-ca.pem"
    other.cert_pem.write_to_path(str(wrong_ca))
    with pytest.raises(TLSError, match="not trusted"):
        RedisPool(pool_size=2, port=server.port, ssl=True, verify=str(wrong_ca), start="wait")
    with pytest.raises(TLSError, match="not trusted"):
        RedisPool(pool_size=1, url=server.url)  # the system CAs do not know the test CA
    with pytest.raises(ConnectError):  # plain RESP to a TLS-only port
        RedisPool(pool_size=1, port=server.port, connect_timeout=2.0)


# -- the README's registry form --


def test_readme_start_pool_with_url_password_and_db(redis_factory):
    server = redis_factory(requirepass="secret")
    url = "redis://:secret@127.0.0.1:%d/2" % server.port
    with pytest.raises(AuthenticationError):
        greenpool.start_pool("cache", protocol="redis", url=url.replace("secret", "wrong"))
    assert greenpool.find_pool("cache") is None
    pool = greenpool.start_pool("cache", protocol="redis", url=url)
    try:
        assert isinstance(pool, RedisPool) and greenpool.find_pool("cache") is pool
        assert pool.db == 2 and pool.port == server.port
        assert b" db=2 " in pool.command(["CLIENT", "INFO"])
        assert pool.command(["SET", "readme", "yes"]) == b"OK"
        assert server.execute("SELECT", "2") == "OK"
        assert pool.command(["GET", "readme"]) == b"yes"
        assert greenpool.start_pool("cache", protocol="redis", url=url) is pool
        assert_exact(pool)
    finally:
        assert greenpool.stop_pool("cache") is True
    assert greenpool.find_pool("cache") is None and pool.closed
    assert_exact(pool)
