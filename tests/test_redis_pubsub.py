"""Tests for greenpool/redis/pubsub.py: PubSub and Monitor on a real redis-server,
RESP2 and RESP3, both parsers.

Every test runs under ``no_leaks`` and ends with ``assert_exact(pool)``.
"""
from __future__ import annotations

import time

import gevent
import pytest

from greenpool.errors import PoolClosed, RedisError
from greenpool.redis import RedisPool

from fakes import assert_exact
from redishelp import PARSERS, unique

pytestmark = pytest.mark.usefixtures("no_leaks")

def name(prefix: str = "ch") -> str:
    return unique("test_redis_pubsub", prefix)


def shared_ids(rp):
    return {rp.command(["CLIENT", "ID"]) for _ in range(rp.pool_size * 3)}


def next_of(ps, kind, timeout=5.0):
    """The next message of ``kind``, skipping others; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = ps.get_message(timeout=max(deadline - time.monotonic(), 0.0))
        if m is not None and m["type"] == kind:
            return m
    raise AssertionError("no %s message within %ss" % (kind, timeout))


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("parser", PARSERS)
def test_five_subscribers_one_publisher_and_patterns(redis, parser, protocol):
    ch, other = name(), name("other")
    with RedisPool(pool_size=2, port=redis.port, parser=parser, protocol=protocol) as rp:
        subs = [rp.pubsub() for _ in range(5)]
        for i, ps in enumerate(subs):
            ps.subscribe(ch)
            if i % 2:
                ps.psubscribe(ch[:-3] + "*")
        for i, ps in enumerate(subs):
            m = ps.get_message(timeout=5)
            assert m == {"type": "subscribe", "pattern": None, "channel": ch.encode(), "data": 1}
            if i % 2:
                assert ps.get_message(timeout=5)["type"] == "psubscribe"
        assert rp.info()["dedicated_in_use"] == 5
        for n in range(3):
            assert rp.command(["PUBLISH", ch, "m%d" % n]) == 5 + 2
        rp.command(["PUBLISH", other, "nobody"])
        for i, ps in enumerate(subs):
            got = []
            while True:
                m = ps.get_message(timeout=0.3)
                if m is None:
                    break
                got.append(m)
            plain = [m["data"] for m in got if m["type"] == "message"]
            assert plain == [b"m0", b"m1", b"m2"]
            assert all(m["channel"] == ch.encode() for m in got)
            patterned = [m for m in got if m["type"] == "pmessage"]
            if i % 2:
                assert [m["data"] for m in patterned] == [b"m0", b"m1", b"m2"]
                assert patterned[0]["pattern"] == (ch[:-3] + "*").encode()
            else:
                assert not patterned
        # unsubscribe: confirmations, then silence
        subs[0].unsubscribe(ch)
        assert subs[0].get_message(timeout=5) == {
            "type": "unsubscribe", "pattern": None, "channel": ch.encode(), "data": 0}
        subs[1].punsubscribe()
        assert next_of(subs[1], "punsubscribe")["data"] == 1
        rp.command(["PUBLISH", ch, "after"])
        assert subs[0].get_message(timeout=0.3) is None
        assert subs[1].get_message(timeout=5)["data"] == b"after"   # the channel, no pattern
        assert subs[1].get_message(timeout=0.3) is None
        for ps in subs:
            ps.close()
        assert rp.info()["dedicated_in_use"] == 0
        assert_exact(rp)


def test_shard_channels_decode_responses_iteration_and_ignore(redis):
    ch = name("shard")
    with RedisPool(pool_size=1, port=redis.port, decode_responses=True) as rp:
        with rp.pubsub(ignore_subscribe_messages=True) as ps:
            ps.ssubscribe(ch)
            ps.subscribe(ch + ":plain")
            gevent.sleep(0.1)
            assert rp.command(["SPUBLISH", ch, "é"]) == 1
            rp.command(["PUBLISH", ch + ":plain", "x"])
            it = iter(ps)
            assert next(it) == {"type": "smessage", "pattern": None, "channel": ch, "data": "é"}
            assert next(it)["data"] == "x"
            ps.sunsubscribe(ch)
            assert ps.shard_channels == set() and ps.channels == {ch + ":plain"}
        with pytest.raises(RedisError, match="closed"):
            ps.get_message(0.1)
        with pytest.raises(RedisError, match="closed"):
            ps.subscribe("again")
        assert rp.info()["dedicated"] == 0   # closed, not back in the pool
        assert_exact(rp)


def test_get_message_timeouts_and_no_subscription(redis):
    with RedisPool(pool_size=1, port=redis.port) as rp:
        ps = rp.pubsub()
        assert ps.get_message(timeout=0.05) is None      # nothing subscribed
        with pytest.raises(RedisError, match="subscribe first"):
            ps.get_message()
        with pytest.raises(ValueError):
            ps.subscribe()
        ps.subscribe(name())
        assert ps.get_message(timeout=2)["type"] == "subscribe"
        t0 = time.monotonic()
        assert ps.get_message(timeout=0.2) is None
        assert time.monotonic() - t0 >= 0.15
        assert ps.get_message(timeout=0) is None
        ps.close()
        assert_exact(rp)


@pytest.mark.parametrize("protocol", [2, 3])
def test_client_kill_pubsub_resubscribes_and_shared_connections_are_untouched(redis, protocol):
    ch = name("kill")
    with RedisPool(pool_size=3, port=redis.port, protocol=protocol, backoff_min=0.01,
                   backoff_max=0.2) as rp:
        before = shared_ids(rp)
        subs = [rp.pubsub() for _ in range(3)]
        for ps in subs:
            ps.subscribe(ch)
            ps.psubscribe(ch + ":*")
            assert next_of(ps, "psubscribe")["data"] == 2
        killed = redis.execute("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed == 3
        t0 = time.monotonic()
        for ps in subs:     # reconnect, subscribe again: the confirmations come back
            assert next_of(ps, "subscribe", timeout=10)["channel"] == ch.encode()
            assert next_of(ps, "psubscribe", timeout=10)["data"] == 2
        assert time.monotonic() - t0 < 2.0 * 3   # generous: backoff_max is 0.2 s
        assert rp.command(["PUBLISH", ch, "again"]) == 3
        assert rp.command(["PUBLISH", ch + ":x", "p"]) == 3
        for ps in subs:
            assert next_of(ps, "message")["data"] == b"again"
            assert next_of(ps, "pmessage")["channel"] == (ch + ":x").encode()
            assert ps.reconnects == 1
        # the shared connections saw none of it
        assert shared_ids(rp) == before
        info = rp.info()
        assert info["reconnects"] == 0 and info["active"] == 3
        for ps in subs:
            ps.close()
        assert_exact(rp)


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_silent_peer_is_noticed_by_ping(redis_factory, protocol):
    server = redis_factory()
    ch = name("silent")
    with RedisPool(pool_size=1, port=server.port, timeout=0.5, backoff_min=0.01,
                   backoff_max=0.1, protocol=protocol) as rp:
        ps = rp.pubsub(ping_interval=0.2)
        ps.subscribe(ch)
        assert ps.get_message(2)["type"] == "subscribe"
        # the answer to an idle PING is swallowed
        assert ps.get_message(0.5) is None
        assert ps._pings == 0 and ps.reconnects == 0
        first = ps._dc.conn
        # the server stops answering anyone for 1.5 s: the PING goes unanswered
        server.execute("CLIENT", "PAUSE", 1500, "ALL")
        assert next_of(ps, "subscribe", timeout=10)["channel"] == ch.encode()
        assert ps.reconnects == 1 and ps._dc.conn is not first and first.closed
        assert rp.command(["PUBLISH", ch, "back"]) == 1
        assert next_of(ps, "message")["data"] == b"back"
        ps.close()
        assert_exact(rp)


def test_server_restart_resubscribes(redis_factory):
    server = redis_factory()
    ch = name("restart")
    with RedisPool(pool_size=1, port=server.port, backoff_min=0.01, backoff_max=0.2) as rp:
        ps = rp.pubsub()
        ps.subscribe(ch)
        assert ps.get_message(2)["type"] == "subscribe"
        server.restart()
        assert next_of(ps, "subscribe", timeout=15)["channel"] == ch.encode()
        deadline = time.monotonic() + 10
        while rp.info()["active"] < 1 and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert rp.command(["PUBLISH", ch, "after restart"]) == 1
        assert next_of(ps, "message")["data"] == b"after restart"
        ps.close()
        assert_exact(rp)


def test_close_from_another_greenlet_ends_the_reader(redis):
    with RedisPool(pool_size=1, port=redis.port) as rp:
        ps = rp.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(name())
        single = gevent.spawn(ps.get_message, None)   # one reader at a time
        gevent.sleep(0.2)
        with pytest.raises(RuntimeError, match="one reader at a time"):
            ps.get_message(0.1)
        ps.close()
        assert single.get(timeout=5) is None
        assert rp.info()["dedicated"] == 0 and ps.reconnects == 0
        ps = rp.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(name())
        got = []
        reader = gevent.spawn(lambda: got.extend(ps.listen()))
        gevent.sleep(0.2)
        ps.close()
        reader.get(timeout=5)
        assert got == [] and ps.reconnects == 0
        assert rp.info()["dedicated"] == 0
        assert_exact(rp)


def test_stop_fails_a_waiting_reader_with_pool_closed(redis):
    rp = RedisPool(pool_size=1, port=redis.port)
    ps = rp.pubsub()
    ps.subscribe(name())
    assert ps.get_message(2)["type"] == "subscribe"
    g = gevent.spawn(ps.get_message, None)
    gevent.sleep(0.1)
    rp.stop()
    with pytest.raises(PoolClosed):
        g.get(timeout=5)
    ps.close()
    assert rp.get_stats()["open"] == 0
    assert_exact(rp)


def test_pubsub_connections_count_against_max_blocking(redis):
    with RedisPool(pool_size=1, port=redis.port, max_blocking=1, timeout=0.3) as rp:
        ps = rp.pubsub()
        ps.subscribe(name())
        with pytest.raises(Exception, match="max_blocking=1"):
            rp.command(["BLPOP", name("q"), 1])
        ps.close()
        assert rp.command(["BLPOP", name("q"), 0.1]) is None
        assert_exact(rp)


# -- MONITOR ------------------------------------------------------------------------------


@pytest.mark.parametrize("parser", PARSERS)
def test_monitor_lines_and_close_at_exit(redis, parser):
    k = name("mon")
    with RedisPool(pool_size=1, port=redis.port, parser=parser) as rp:
        with rp.monitor() as m:
            rp.command(["SET", k, "watched"])
            line = m.next_line(timeout=5)
            while k.encode() not in line:   # other tests' commands may show up too
                line = m.next_line(timeout=5)
            assert b'"SET"' in line and b'"watched"' in line
            assert rp.info()["dedicated_in_use"] == 1
        assert rp.info()["dedicated"] == 0
        with pytest.raises(RedisError, match="closed"):
            m.next_line(0.1)
        # iteration: leaving the loop closes it
        m = rp.monitor()
        rp.command(["GET", k])
        for line in m:
            if k.encode() in line:
                break
        assert rp.info()["dedicated"] == 0
        assert_exact(rp)
