"""Tests for greenpool/redis/dedicated.py (and scripts.py): blocking commands,
``connection()``, ``watch_transaction()``, ``register_script()`` and fork safety, on a
real redis-server.

Every test runs under ``no_leaks`` (fds, greenlets) and ends with ``assert_exact(pool)``.
Verdicts rest on order and counts; time bounds are generous (a 2 s block against GETs
that take milliseconds).
"""
from __future__ import annotations

import time

import gevent
import pytest

from greenpool.errors import (
    ConnectionClosed,
    PoolClosed,
    PoolTimeout,
    ReadTimeout,
    ResponseError,
    TransactionAborted,
)
from greenpool.redis import BLOCKING_COMMANDS, RedisPool, blocking_time
from greenpool.redis.dedicated import UNKNOWN, add_block, deadline_for

from fakes import assert_exact
from forking import fork_and_report
from redishelp import PARSERS, unique

pytestmark = pytest.mark.usefixtures("no_leaks")

def key(prefix: str = "k") -> str:
    """A key no other test uses (the session's server is shared)."""
    return unique("test_redis_dedicated", prefix)


def client_id(conn) -> int:
    return conn.command(["CLIENT", "ID"])


def assert_unwatched(rp, redis, k):
    """The dedicated connection the pool hands out next watches nothing (Redis 7.0's
    CLIENT INFO has no watch= field: a write by another client must not abort EXEC)."""
    with rp.connection() as conn:
        conn.command(["MULTI"])
        redis.execute("SET", k, "touched")
        conn.command(["PING"])
        assert conn.command(["EXEC"]) == [b"PONG"]


# -- which commands block ---------------------------------------------------------------


def test_blocking_time_classification():
    assert blocking_time(["BLPOP", "a", "b", 2]) == 2.0
    assert blocking_time(["blpop", "a", "0.5"]) == 0.5
    assert blocking_time([b"BRPOP", b"a", b"0"]) == 0.0
    assert blocking_time(["BLMOVE", "a", "b", "LEFT", "RIGHT", 3]) == 3.0
    assert blocking_time(["BRPOPLPUSH", "a", "b", 1]) == 1.0
    assert blocking_time(["BZPOPMIN", "z", 1.5]) == 1.5
    assert blocking_time(["BZPOPMAX", "z", 1]) == 1.0
    assert blocking_time(["BLMPOP", 2, 1, "a", "LEFT"]) == 2.0
    assert blocking_time(["BZMPOP", 0, 1, "z", "MIN"]) == 0.0
    assert blocking_time(["XREAD", "COUNT", 1, "BLOCK", 1500, "STREAMS", "s", "$"]) == 1.5
    assert blocking_time(["XREAD", "STREAMS", "BLOCK", "$"]) is None  # a stream named BLOCK
    assert blocking_time(["XREAD", "COUNT", 5, "STREAMS", "s", "0"]) is None
    assert blocking_time(["XREADGROUP", "GROUP", "BLOCK", "c", "BLOCK", 0, "NOACK",
                          "STREAMS", "s", ">"]) == 0.0
    assert blocking_time(["WAIT", 1, 2000]) == 2.0
    assert blocking_time(["WAITAOF", 1, 0, 250]) == 0.25
    assert blocking_time(["BLPOP", "a", "soon"]) == UNKNOWN
    assert blocking_time(["BLPOP", "a", -1]) == UNKNOWN
    assert blocking_time(["WAIT"]) == UNKNOWN
    for name in ("GET", "LPOP", "XADD", "EVAL", "SUBSCRIBE"):
        assert blocking_time([name, "x", 1]) is None
    assert blocking_time([1, 2]) is None
    assert len(BLOCKING_COMMANDS) == 12 and "XREAD" in BLOCKING_COMMANDS


def test_deadlines():
    assert deadline_for(2.0, None, 5.0) == 7.0      # block time + the pool's timeout
    assert deadline_for(2.0, 1.0, 5.0) == 3.0       # + the caller's
    assert deadline_for(0.0, None, 5.0) is None     # until something arrives
    assert deadline_for(0.0, 0.5, 5.0) == 0.5       # until the caller's own timeout
    assert deadline_for(UNKNOWN, None, 5.0) == 5.0
    assert add_block(1.0, 2.0) == 3.0 and add_block(1.0, 0.0) == 0.0
    assert add_block(UNKNOWN, UNKNOWN) == UNKNOWN and add_block(UNKNOWN, 1.0) == 1.0


# -- blocking commands never stall the shared connections ----------------------------


def _server_has(redis, name):
    try:
        return bool(redis.execute("COMMAND", "INFO", name)[0])
    except Exception:  # noqa: BLE001
        return False


def _blocking_commands(redis, k):
    """Every blocking command, each blocking 2 s on keys nobody writes."""
    stream = k + ":s"
    redis.execute("XGROUP", "CREATE", stream + "g", "grp", "$", "MKSTREAM")
    cmds = {
        "BLPOP": ["BLPOP", k + ":l1", 2],
        "BRPOP": ["BRPOP", k + ":l2", 2],
        "BLMOVE": ["BLMOVE", k + ":l3", k + ":l4", "LEFT", "RIGHT", 2],
        "BRPOPLPUSH": ["BRPOPLPUSH", k + ":l5", k + ":l6", 2],
        "BLMPOP": ["BLMPOP", 2, 1, k + ":l7", "LEFT"],
        "BZPOPMIN": ["BZPOPMIN", k + ":z1", 2],
        "BZPOPMAX": ["BZPOPMAX", k + ":z2", 2],
        "BZMPOP": ["BZMPOP", 2, 1, k + ":z3", "MIN"],
        "XREAD": ["XREAD", "BLOCK", 2000, "STREAMS", stream, "$"],
        "XREADGROUP": ["XREADGROUP", "GROUP", "grp", "c1", "BLOCK", 2000, "STREAMS",
                       stream + "g", ">"],
        "WAIT": ["WAIT", 1, 2000],   # no replica: waits the whole 2 s, returns 0
    }
    if _server_has(redis, "WAITAOF"):  # Redis >= 7.2
        cmds["WAITAOF"] = ["WAITAOF", 0, 1, 2000]
    return cmds


@pytest.mark.parametrize("strategy", ["round_robin", "random", "least_busy"])
@pytest.mark.parametrize("pool_size", [1, 4])
def test_gets_finish_while_every_blocking_command_waits(redis, strategy, pool_size):
    k = key("blk")
    cmds = _blocking_commands(redis, k)
    events = []
    with RedisPool(pool_size=pool_size, port=redis.port, strategy=strategy,
                   max_blocking=len(cmds)) as rp:
        rp.command(["SET", k, "v"])

        def block(name, args):
            value = rp.command(args)
            events.append(("blocked", name, value))

        def get():
            t0 = time.monotonic()
            assert rp.command(["GET", k]) == b"v"
            events.append(("get", time.monotonic() - t0, None))

        blockers = [gevent.spawn(block, n, a) for n, a in cmds.items()]
        gevent.sleep(0.2)   # every blocking command is on the server now
        assert rp.info()["blocking"] == len(cmds)
        assert rp.info()["dedicated_in_use"] == len(cmds)
        gets = [gevent.spawn(get) for _ in range(50)]
        gevent.joinall(gets + blockers, timeout=20, raise_error=True)
        assert [e[0] for e in events] == ["get"] * 50 + ["blocked"] * len(cmds), events
        assert max(e[1] for e in events[:50]) < 1.0, "a GET waited behind a blocking command"
        results = {name: value for _, name, value in events[50:]}
        assert results.pop("WAIT") == 0
        results.pop("WAITAOF", None)
        assert set(results.values()) == {None}, results
        info = rp.info()
        assert info["blocking"] == 0 and info["blocking_abandoned"] == 0
        assert info["dedicated"] == len(cmds) and info["dedicated_in_use"] == 0
        assert info["in_flight"] == 0 and info["active"] == pool_size
        assert_exact(rp)


@pytest.mark.parametrize("parser", PARSERS)
def test_blocking_command_gets_its_value_and_the_connection_is_reused(redis, parser):
    k = key("q")
    with RedisPool(pool_size=1, port=redis.port, parser=parser) as rp:
        g = gevent.spawn(rp.command, ["BLPOP", k, 5])
        gevent.sleep(0.1)
        assert rp.command(["RPUSH", k, "job"]) == 1
        assert g.get(timeout=5) == [k.encode(), b"job"]
        rp.command(["RPUSH", k, "job2"])
        assert rp.command(["BRPOP", k, 1]) == [k.encode(), b"job2"]
        stats = rp.get_stats()
        assert stats["open"] == 2 and stats["created"] == 2  # one shared, one dedicated, reused
        assert rp.pipeline([["RPUSH", k, "a"], ["BLPOP", k, 1], ["LLEN", k]]) == [
            1, [k.encode(), b"a"], 0]
        with pytest.raises(ResponseError, match="timeout"):
            rp.command(["BLPOP", k, "soon"])
        assert rp.info()["dedicated"] == 1
        with pytest.raises(ValueError, match="use command"):
            rp.noreply_command(["BLPOP", k, 1])
        assert_exact(rp)


def test_abandoned_blpop_leaves_the_job_in_the_list(redis):
    k = key("jobs")
    with RedisPool(pool_size=2, port=redis.port, timeout=5.0) as rp:
        t0 = time.monotonic()
        with pytest.raises(ReadTimeout, match="closed"):
            rp.command(["BLPOP", k, 0], timeout=0.5)
        assert 0.4 < time.monotonic() - t0 < 4.0
        assert rp.info()["blocking_abandoned"] == 1
        # killed while blocked
        g = gevent.spawn(rp.command, ["BLPOP", k, 0])
        gevent.sleep(0.2)
        g.kill()
        # the caller's own gevent.Timeout
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.3):
                rp.command(["BRPOP", k, 0])
        info = rp.info()
        assert info["blocking_abandoned"] == 3 and info["blocking"] == 0
        assert info["dedicated"] == 0  # every abandoned connection was closed
        # nobody is blocked on the server any more: the job stays for a real consumer
        assert redis.execute("RPUSH", k, "job") == 1
        gevent.sleep(0.2)
        assert redis.execute("LLEN", k) == 1
        assert rp.command(["LPOP", k]) == b"job"
        assert rp.get_stats()["reclaimed"] == 0
        assert_exact(rp)


def test_block_time_longer_than_the_pool_timeout_returns_none_at_the_block_time(redis):
    with RedisPool(pool_size=1, port=redis.port, timeout=0.3) as rp:
        t0 = time.monotonic()
        assert rp.command(["BLPOP", key("never"), 1.2]) is None
        assert time.monotonic() - t0 >= 1.15
        assert rp.command(["XREAD", "BLOCK", 900, "STREAMS", key("s"), "$"]) is None
        assert rp.info()["blocking_abandoned"] == 0
        assert_exact(rp)


def test_block_time_zero_waits_past_the_pool_timeout(redis):
    k = key("zero")
    with RedisPool(pool_size=1, port=redis.port, timeout=0.2) as rp:
        g = gevent.spawn(rp.command, ["BLPOP", k, 0])
        gevent.sleep(0.8)   # four pool timeouts
        assert not g.ready()
        rp.command(["RPUSH", k, "late"])
        assert g.get(timeout=5) == [k.encode(), b"late"]
        assert_exact(rp)


def test_max_blocking_caps_dedicated_connections_fifo(redis):
    k = key("cap")
    with RedisPool(pool_size=1, port=redis.port, max_blocking=2, timeout=5.0) as rp:
        assert rp.get_stats()["max"] == 3 and rp.get_stats()["max_per_host"] == 2
        order = []

        def pop(i):
            order.append((i, rp.command(["BLPOP", k, 0])))

        gs = []
        for i in range(4):
            gs.append(gevent.spawn(pop, i))
            gevent.sleep(0.05)
        assert rp.info()["dedicated"] == 2 and rp.get_stats()["queue_count"] == 2
        assert rp.command(["GET", k]) is None     # the shared connection is free meanwhile
        with pytest.raises(PoolTimeout, match="max_blocking=2"):
            rp.command(["BLPOP", k, 1], timeout=0.1)
        for j in range(4):
            rp.command(["RPUSH", k, "j%d" % j])
            gevent.sleep(0.1)
        gevent.joinall(gs, timeout=5, raise_error=True)
        assert [i for i, _ in order] == [0, 1, 2, 3]   # FIFO
        assert sorted(v[1] for _, v in order) == [b"j0", b"j1", b"j2", b"j3"]
        assert rp.info()["dedicated"] <= 2
        assert_exact(rp)


def test_stop_fails_a_blocked_caller_with_pool_closed(redis):
    rp = RedisPool(pool_size=1, port=redis.port)
    g = gevent.spawn(rp.command, ["BLPOP", key("stop"), 0])
    gevent.sleep(0.1)
    rp.stop()
    with pytest.raises(PoolClosed):
        g.get(timeout=5)
    assert rp.get_stats()["open"] == 0
    assert_exact(rp)


def test_blocked_connection_killed_by_the_server(redis):
    name = "gp-ded-kill-%d" % time.monotonic_ns()
    with RedisPool(pool_size=1, port=redis.port, client_name=name) as rp:
        g = gevent.spawn(rp.command, ["BLPOP", key("kill"), 0])
        gevent.sleep(0.1)
        assert redis.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 1
        with pytest.raises(ConnectionClosed):
            g.get(timeout=5)
        assert rp.info()["blocking_abandoned"] == 0
        wait = time.monotonic() + 5
        while rp.info()["active"] < 1 and time.monotonic() < wait:
            gevent.sleep(0.02)
        assert rp.command(["PING"]) == b"PONG"
        assert_exact(rp)


def test_a_server_that_stops_reading_gets_write_timeout():
    from gevent.event import Event

    from greenpool.errors import WriteTimeout

    from fakes import FakeServer

    done = Event()

    def handler(sock, server):   # answers the handshake's PING, then reads nothing more
        data = b""
        while b"PING" not in data:
            data += sock.recv(4096)
        sock.sendall(b"+PONG\r\n")
        done.wait(30)

    srv = FakeServer(handler)
    try:
        with RedisPool(pool_size=1, port=srv.port, timeout=0.3) as rp:
            with pytest.raises(WriteTimeout):
                with rp.connection() as conn:
                    conn.command(["SET", "k", b"x" * (64 << 20)])
            assert conn.closed and rp.info()["dedicated"] == 0
            assert_exact(rp)
    finally:
        done.set()
        srv.stop()


@pytest.mark.parametrize("parser", PARSERS)
def test_dedicated_users_killed_and_timed_out_at_random_points(redis, parser):
    """Blocking commands, connection() and watch_transaction() users killed or timed out
    at random points: the books stay exact, nothing stays in use, the pool works after."""
    import random
    rnd = random.Random(7)
    k = key("rand")
    with RedisPool(pool_size=2, port=redis.port, parser=parser, max_blocking=6) as rp:
        rp.command(["SET", k, 0])

        def incr(conn):
            v = int(conn.command(["GET", k]))
            gevent.sleep(rnd.random() * 0.01)
            return (["SET", k, v + 1] for _ in range(1))   # any iterable of commands

        def user(i):
            kind = i % 4
            if kind == 0:
                block = rnd.choice([0, 0.05, 0.2])
                # (block time 0 without a timeout would wait for ever: not here)
                rp.command(["BLPOP", k + ":q", block],
                           timeout=rnd.choice([None, 0.05, 0.3] if block else [0.05, 0.3]))
            elif kind == 1:
                with rp.connection() as conn:
                    conn.command(["SELECT", 1])
                    conn.command(["DEBUG", "SLEEP", "0.01"])
            elif kind == 2:
                rp.watch_transaction([k], incr, retries=1000)
            else:
                assert rp.command(["ECHO", "e%d" % i]) == b"e%d" % i

        for _ in range(5):
            gs = [gevent.spawn(user, i) for i in range(24)]
            gevent.sleep(rnd.random() * 0.1)
            for g in gs:
                if rnd.random() < 0.5:
                    if rnd.random() < 0.5:
                        g.kill(block=False)
                    else:
                        g.kill(gevent.Timeout(), block=False)
            gevent.joinall(gs, timeout=10)
            assert all(g.ready() for g in gs)
            for g in gs:   # anything else than a kill, our timeouts or a full pool is a bug
                if g.exception is not None:
                    assert isinstance(g.exception, (gevent.Timeout, ReadTimeout, PoolTimeout)), \
                        repr(g.exception)
            info = rp.info()
            assert info["blocking"] == 0 and info["dedicated_in_use"] == 0, info
            assert info["dedicated"] <= 6
            assert rp.get_stats()["queue_count"] == 0
            assert_exact(rp)
        assert rp.watch_transaction([k], incr) == [b"OK"]
        assert rp.command(["BLPOP", k + ":q", 0.01]) is None
        with rp.connection() as conn:
            assert conn.command(["GET", k]) is not None   # db 0 again
        assert_exact(rp)


# -- connection(): any stateful sequence, reset before reuse ------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_connection_is_reset_before_reuse(redis_factory, protocol):
    server = redis_factory(requirepass="s3cret")
    with RedisPool(pool_size=1, port=server.port, password="s3cret", db=1, protocol=protocol,
                   client_name="gp-ded") as rp:
        k = key("state")
        with rp.connection() as conn:
            first = client_id(conn)
            assert conn.command(["SELECT", 2]) in (b"OK", "OK")
            conn.command(["SET", k, "in-db-2"])
            conn.command(["CLIENT", "SETNAME", "changed"])
            conn.command(["WATCH", k])
            conn.command(["MULTI"])
            conn.command(["SET", k, "never"])
        with rp.connection() as conn:
            assert client_id(conn) == first          # reset, not reopened
            assert conn.command(["CLIENT", "GETNAME"]) == b"gp-ded"
            assert conn.command(["GET", k]) is None  # back in db 1
            info = conn.command(["CLIENT", "INFO"]).decode()
            assert "db=1" in info and "resp=%d" % protocol in info and "multi=-1" in info
            assert conn.pipeline([["SELECT", 2], ["GET", k]])[1] == b"in-db-2"
        with pytest.raises(RuntimeError):
            with rp.connection() as conn:
                raise RuntimeError("boom")
        assert conn.closed
        with rp.connection() as conn:
            assert client_id(conn) != first
        assert rp.command(["GET", k]) is None  # the shared connections: db 1 still
        assert rp.info()["dedicated"] == 1
        assert_exact(rp)


def test_connection_is_closed_where_the_server_lacks_reset(redis_factory):
    server = redis_factory(extra_args=["--rename-command", "RESET", ""])
    with RedisPool(pool_size=1, port=server.port) as rp:
        with rp.connection() as conn:
            first = client_id(conn)
            conn.command(["SELECT", 3])
        assert conn.closed and rp.info()["dedicated"] == 0
        with rp.connection() as conn:
            assert client_id(conn) != first
            assert "db=0" in conn.command(["CLIENT", "INFO"]).decode()
        # blocking commands change nothing: their connection is reused without RESET
        assert rp.command(["BLPOP", key("nr"), 0.05]) is None
        assert rp.command(["BLPOP", key("nr"), 0.05]) is None
        assert rp.get_stats()["created"] == 1 + 2 + 1
        assert_exact(rp)


def test_connection_timeout_closes_it(redis):
    with RedisPool(pool_size=1, port=redis.port) as rp:
        with pytest.raises(ReadTimeout):
            with rp.connection() as conn:
                conn.command(["DEBUG", "SLEEP", "0.3"], timeout=0.05)
        assert conn.closed and rp.info()["dedicated"] == 0
        with rp.connection(timeout=1.0) as conn:
            assert conn.command(["PING"]) == b"PONG"
        assert_exact(rp)


def test_idle_dedicated_connections_close_themselves(redis, monkeypatch):
    from greenpool.redis import dedicated
    monkeypatch.setattr(dedicated, "DEDICATED_IDLE_TIMEOUT", 0.2)
    with RedisPool(pool_size=1, port=redis.port) as rp:
        assert rp.command(["BLPOP", key("idle"), 0.05]) is None
        assert rp.info()["dedicated"] == 1
        deadline = time.monotonic() + 5
        while rp.info()["dedicated"] and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert rp.info()["dedicated"] == 0 and rp.get_stats()["expired"] == 1
        assert rp.info()["active"] == 1   # the shared connection has no idle timeout
        assert_exact(rp)


# -- watch_transaction -----------------------------------------------------------------


@pytest.mark.parametrize("parser", PARSERS)
def test_watch_transaction_200_increments(redis, parser):
    k = key("cas")
    with RedisPool(pool_size=2, port=redis.port, parser=parser, max_blocking=20) as rp:
        rp.command(["SET", k, 0])

        def incr(conn):
            value = int(conn.command(["GET", k]))
            gevent.sleep(0)  # let the others read the same value
            return [["SET", k, value + 1]]

        def work():
            for _ in range(10):
                assert rp.watch_transaction([k], incr, retries=10000) == [b"OK"]

        gevent.joinall([gevent.spawn(work) for _ in range(20)], timeout=60, raise_error=True)
        assert rp.command(["GET", k]) == b"200"
        assert rp.info()["dedicated_in_use"] == 0
        assert_exact(rp)


def test_watch_transaction_aborts_when_the_key_always_changes(redis):
    k, out = key("hot"), key("out")
    with RedisPool(pool_size=1, port=redis.port) as rp:
        rp.command(["SET", k, 0])
        tries = []

        def fn(conn):
            tries.append(conn.command(["GET", k]))
            redis.execute("INCR", k)   # another client writes the watched key every time
            return [["SET", out, "written"], ["INCR", k]]

        with pytest.raises(TransactionAborted, match="3 tries"):
            rp.watch_transaction([k], fn, retries=2)
        assert len(tries) == 3
        assert rp.command(["GET", out]) is None and rp.command(["GET", k]) == b"3"
        # the connection went back clean and is reused
        assert_unwatched(rp, redis, k)
        assert rp.info()["dedicated"] == 1
        assert_exact(rp)


def test_watch_transaction_fn_errors_and_kills(redis):
    k = key("err")
    with RedisPool(pool_size=1, port=redis.port) as rp:
        def bad(conn):
            conn.command(["GET", k])
            raise KeyError("no such account")

        with pytest.raises(KeyError):
            rp.watch_transaction([k], bad)
        assert rp.info()["dedicated"] == 1   # UNWATCHed and kept
        assert_unwatched(rp, redis, k)

        with pytest.raises(TransactionAborted, match="EXECABORT|discarded"):
            rp.watch_transaction([k], lambda conn: [["SET", k]])   # wrong arity
        assert rp.watch_transaction([k], lambda conn: []) == []

        def slow(conn):
            gevent.sleep(5)
            return []

        g = gevent.spawn(rp.watch_transaction, [k], slow)
        gevent.sleep(0.1)
        g.kill()
        assert rp.info()["dedicated"] == 0   # killed mid-sequence: closed, not reused
        with pytest.raises(ValueError):
            rp.watch_transaction([], bad)
        assert rp.watch_transaction([k], lambda conn: [["SET", k, "x"], ["GET", k]]) == [
            b"OK", b"x"]
        assert_exact(rp)


# -- scripts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("parser", PARSERS)
def test_register_script_evalsha_and_noscript(redis_factory, parser):
    server = redis_factory()
    with RedisPool(pool_size=2, port=server.port, parser=parser) as rp:
        script = rp.register_script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
        k = key("sc")
        assert script(keys=[k], args=["a"]) == [k.encode(), b"a", 1]   # NOSCRIPT -> EVAL
        assert script(keys=[k], args=["b"]) == [k.encode(), b"b", 2]   # EVALSHA
        assert rp.command(["SCRIPT", "EXISTS", script.sha]) == [1]
        rp.command(["SCRIPT", "FLUSH"])
        assert script(keys=[k], args=["c"]) == [k.encode(), b"c", 3]
        rp.command(["SCRIPT", "FLUSH"])
        replies = rp.pipeline([["SET", k + ":x", 1], script.command([k], ["d"]), ["GET", k],
                               script.command([k], ["e"])])
        # the NOSCRIPT entries ran once each, as EVAL, after the rest of the batch
        assert replies == [b"OK", [k.encode(), b"d", 4], b"3", [k.encode(), b"e", 5]]
        assert rp.pipeline([script.command([k], ["f"])]) == [[k.encode(), b"f", 6]]
        rp.command(["SCRIPT", "FLUSH"])
        assert rp.transaction([script.command([k], ["g"]), ["GET", k]]) == [
            [k.encode(), b"g", 7], b"7"]
        with rp.connection() as conn:
            assert script(keys=[k], args=["h"], client=conn)[2] == 8
        bad = rp.register_script("return redis.call('NOSUCH')")
        with pytest.raises(ResponseError):
            bad()
        assert_exact(rp)


# -- fork ----------------------------------------------------------------------------------




def test_fork_dedicated_connections_and_pubsub_are_the_childs_own(redis):
    import greenpool.registry  # noqa: F401 - installs the fork handler
    ch = key("fork-ch")
    with RedisPool(pool_size=1, port=redis.port) as rp:
        ps = rp.pubsub()
        ps.subscribe(ch)
        assert ps.get_message(2)["type"] == "subscribe"
        parent_ps = ps._dc.conn.sock.getsockname()[1]
        with rp.connection() as conn:   # idle in the pool at the fork
            parent_conn = client_id(conn)

        def child():
            out = {"open_before": rp.get_stats()["open"]}
            with rp.connection() as c:
                out["conn"] = client_id(c)
            first = ps.get_message(2)   # the parent's socket is gone: subscribes again
            out["first"] = first["type"] if first else None
            out["ps_port"] = ps._dc.conn.sock.getsockname()[1]
            rp.command(["PUBLISH", ch, "from-child"])
            m = ps.get_message(2)
            out["msg"] = m["data"].decode() if m else None
            ps.close()
            return out

        report = fork_and_report(child)
        assert "error" not in report, report
        assert report["open_before"] == 0
        assert report["conn"] != parent_conn
        assert report["first"] == "subscribe" and report["msg"] == "from-child"
        assert report["ps_port"] != parent_ps
        # the parent's are untouched: same connection, still subscribed, nothing of the child's
        assert ps._dc.conn.sock.getsockname()[1] == parent_ps
        rp.command(["PUBLISH", ch, "from-parent"])
        got = [ps.get_message(2)["data"] for _ in range(2)]
        assert got == [b"from-child", b"from-parent"]   # the child published on it too
        assert ps.get_message(0.2) is None
        with rp.connection() as conn:
            assert client_id(conn) == parent_conn
        ps.close()
        assert_exact(rp)
