"""Tests for what RedisPool's shared connections promise (greenpool/redis/connection.py,
greenpool/redis/commands.py): a caller only ever gets its own reply.

RESP3 pushes and attributes, undecodable replies, refused commands and timeouts, overdue
replies, idle pings, Unix sockets and a fair reader, against a real redis-server (DEBUG
enabled) and in-process or out-of-process fakes where a broken peer is needed.  Both RESP
parsers wherever a parser is involved.  Every test runs under ``no_leaks``; every fault
test ends with ``assert_exact(pool)``.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import time

import gevent
import pytest
from test_redis import PARSERS, fake_redis, key, wait_for

from greenpool.errors import (
    ConnectError,
    ConnectionClosed,
    LimitExceeded,
    ReadTimeout,
    ReplyDecodeError,
)
from greenpool.redis import RedisPool, parse_url
from greenpool.redis.commands import CLIENT_REFUSED, REFUSED_ON_SHARED
from greenpool.redis.connection import OVERDUE_GRACE
from greenpool.redis.resp import NOT_ENOUGH, Reader

from fakes import FakeServer, assert_exact

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(params=PARSERS)
def parser(request):
    return request.param


def unchanged(pool):
    """The pool still runs on the connections it started with."""
    info = pool.info()
    assert info["reconnects"] == 0 and info["closed_connections"] == 0, info
    assert info["active"] == pool.pool_size, info


# -- 1. RESP3 pushes and attributes never reach a caller --


@pytest.mark.parametrize("with_handler", [True, False], ids=["handler", "no-handler"])
def test_debug_protocol_push_and_attrib_never_reach_a_caller(redis, parser, with_handler):
    got = []
    kw = {"push_handler": got.append} if with_handler else {}
    with RedisPool(pool_size=1, port=redis.port, parser=parser, protocol=3, **kw) as rp:
        def work(i):
            if i % 3 == 0:
                return rp.command(["DEBUG", "PROTOCOL", "push"])
            if i % 3 == 1:
                return rp.command(["DEBUG", "PROTOCOL", "attrib"])
            return rp.command(["ECHO", "e%d" % i])

        for _ in range(3):  # all 30 in one batch on the one connection, three times
            gs = [gevent.spawn(work, i) for i in range(30)]
            gevent.joinall(gs, raise_error=True)
            for i, g in enumerate(gs):
                assert g.value == [b"Some real reply following the push reply",
                                   b"Some real reply following the attribute",
                                   b"e%d" % i][i % 3], (i, g.value)
        assert rp.pipeline([["DEBUG", "PROTOCOL", "push"], ["PING"]]) == [
            b"Some real reply following the push reply", b"PONG"]
        info = rp.info()
        if with_handler:
            assert got == [[b"server-cpu-usage", 42]] * 31
            assert (info["pushes"], info["pushes_dropped"]) == (31, 0)
        else:
            assert (info["pushes"], info["pushes_dropped"]) == (0, 31)
        unchanged(rp)
        assert_exact(rp)


def test_push_handler_errors_are_logged_not_raised(redis, parser, caplog):
    def handler(push):
        raise RuntimeError("handler bug")

    with RedisPool(pool_size=1, port=redis.port, parser=parser, protocol=3,
                   push_handler=handler) as rp:
        for _ in range(3):
            assert rp.command(["DEBUG", "PROTOCOL", "push"]).startswith(b"Some real reply")
        assert rp.command(["PING"]) == b"PONG"
        assert rp.info()["push_handler_errors"] == 3
        assert "handler bug" in caplog.text
        unchanged(rp)
        assert_exact(rp)


def test_client_tracking_invalidations_while_20_greenlets_echo(redis, parser):
    pushes = []
    keys = [key("tracked") for _ in range(5)]
    with RedisPool(pool_size=1, port=redis.port, parser=parser, protocol=3,
                   push_handler=pushes.append) as rp, RedisPool(pool_size=1, port=redis.port) as other:
        assert rp.command(["CLIENT", "TRACKING", "ON"]) == b"OK"
        for rnd in range(5):
            for k in keys:
                rp.command(["GET", k])  # now tracked: the next SET of k invalidates it
            gs = [gevent.spawn(rp.command, ["ECHO", "w%d-%d" % (rnd, i)]) for i in range(20)]
            writer = gevent.spawn(lambda r=rnd: [other.command(["SET", k, r]) for k in keys])
            more = [gevent.spawn(rp.command, ["ECHO", "x%d-%d" % (rnd, i)]) for i in range(20)]
            gevent.joinall(gs + more + [writer], raise_error=True)
            assert [g.value for g in gs] == [b"w%d-%d" % (rnd, i) for i in range(20)]
            assert [g.value for g in more] == [b"x%d-%d" % (rnd, i) for i in range(20)]
        wait_for(lambda: sum(len(p[1] or ()) for p in pushes if p[0] == b"invalidate") >= 25,
                 what="25 invalidations")
        invalidated = {k for p in pushes if p[0] == b"invalidate" for k in p[1]}
        assert invalidated == {k.encode() for k in keys}
        unchanged(rp)
        assert_exact(rp)


def test_client_tracking_needs_a_push_handler(redis):
    with RedisPool(pool_size=1, port=redis.port, protocol=3) as rp:
        with pytest.raises(ValueError, match="push_handler"):
            rp.command(["client", "tracking", "on"])
        with pytest.raises(ValueError, match="push_handler"):
            rp.pipeline([["PING"], [b"CLIENT", b"TRACKING", b"ON"]])
        assert rp.info()["in_flight"] == 0
    with pytest.raises(ValueError, match="protocol=3"):
        RedisPool(pool_size=1, port=redis.port, push_handler=print)
    with pytest.raises(TypeError, match="callable"):
        RedisPool(pool_size=1, port=redis.port, protocol=3, push_handler="print")


# -- 2. an undecodable reply fails only its own caller --


def test_undecodable_value_fails_only_its_caller(redis, parser):
    bad = key("bin")
    good = [key("txt") for _ in range(19)]
    with RedisPool(pool_size=1, port=redis.port) as raw:
        raw.command(["SET", bad, b"\xff\xfe"])
        for i, k in enumerate(good):
            raw.command(["SET", k, "v%d-é" % i])
    with RedisPool(pool_size=1, port=redis.port, parser=parser, decode_responses=True) as rp:
        for _ in range(3):
            callers = [gevent.spawn(rp.command, ["GET", k]) for k in good[:10]]
            callers.append(gevent.spawn(rp.command, ["GET", bad]))
            callers += [gevent.spawn(rp.command, ["GET", k]) for k in good[10:]]
            gevent.joinall(callers)
            failed = callers.pop(10)
            assert isinstance(failed.exception, ReplyDecodeError)
            assert "not valid utf-8" in str(failed.exception)
            assert [g.get() for g in callers] == ["v%d-é" % i for i in range(19)]
        replies = rp.pipeline([["GET", good[0]], ["GET", bad], ["MGET", bad, good[1]], ["PING"]])
        assert replies[0] == "v0-é" and replies[3] == "PONG"
        assert isinstance(replies[1], ReplyDecodeError) and isinstance(replies[2], ReplyDecodeError)
        unchanged(rp)
        assert_exact(rp)
        rp.command(["DEL", bad, *good])


# -- 5. refused commands and timeouts --

REFUSED = [
    (["SUBSCRIBE", "ch"], r"rp\.pubsub\(\)"), (["psubscribe", "c*"], r"rp\.pubsub\(\)"),
    (["SSUBSCRIBE", "ch"], r"rp\.pubsub\(\)"), (["UNSUBSCRIBE"], r"rp\.pubsub\(\)"),
    (["PUNSUBSCRIBE"], r"rp\.pubsub\(\)"), (["SUNSUBSCRIBE"], r"rp\.pubsub\(\)"),
    (["MONITOR"], r"rp\.monitor\(\)"),
    ([b"WATCH", b"k"], r"rp\.watch_transaction"), (["UNWATCH"], r"rp\.connection\(\)"),
    (["MULTI"], r"rp\.transaction\(\)"), (["exec"], r"rp\.watch_transaction"),
    (["DISCARD"], r"rp\.connection\(\)"),
    (["SYNC"], r"rp\.connection\(\)"), (["PSYNC", "?", -1], r"rp\.connection\(\)"),
    (["REPLCONF", "listening-port", 1], r"rp\.connection\(\)"),
    (["CLIENT", "TRACKING", "ON"], r"push_handler"),
    (["client", "reply", "off"], r"noreply_command"),
    (["CLIENT", "SETNAME", "x"], r"client_name=.*rp\.connection\(\)"),
    (["SELECT", 1], r"RedisPool\(db=N\).*rp\.connection\(\)"),
    (["RESET"], r"rp\.connection\(\)"), (["QUIT"], r"rp\.stop\(\)"),
    (["HELLO", 3], r"RedisPool\(protocol="), (["AUTH", "x"], r"password="),
]


def test_the_refused_table_is_complete():
    names = {args[0].upper() if isinstance(args[0], str) else args[0].decode().upper()
             for args, _ in REFUSED}
    assert set(REFUSED_ON_SHARED) == names - {"CLIENT"}
    assert set(CLIENT_REFUSED) == {"TRACKING", "REPLY", "SETNAME"}
    assert all("use " in why for why in list(REFUSED_ON_SHARED.values()) + list(CLIENT_REFUSED.values()))


@pytest.mark.parametrize("cmd,instead", REFUSED, ids=lambda x: str(x))
def test_refused_commands_name_what_to_use_instead(redis, cmd, instead):
    with RedisPool(pool_size=1, port=redis.port) as rp:
        for call in (lambda: rp.command(cmd), lambda: rp.pipeline([["PING"], cmd]),
                     lambda: rp.transaction([cmd]), lambda: rp.noreply_command(cmd)):
            with pytest.raises(ValueError, match="shared connections: .*" + instead):
                call()
        assert rp.info()["in_flight"] == 0
        assert rp.command(["PING"]) == b"PONG"
        assert rp.command(["CLIENT", "ID"]) > 0  # other CLIENT subcommands pass
        unchanged(rp)


@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.5, float("nan"), "1", True])
def test_per_call_timeout_must_be_positive(redis, bad):
    with RedisPool(pool_size=1, port=redis.port) as rp:
        for call in (lambda: rp.command(["PING"], timeout=bad),
                     lambda: rp.pipeline([["PING"]], timeout=bad),
                     lambda: rp.transaction([["PING"]], timeout=bad),
                     lambda: rp.noreply_command(["PING"], timeout=bad)):
            with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
                call()
        assert rp.info()["in_flight"] == 0
        assert rp.command(["PING"], timeout=0.5) == b"PONG"
        assert_exact(rp)


# -- 4. max_reply_size at the header; short logs --


def test_a_2_to_the_40_bulk_header_fails_at_once_and_the_connection_is_replaced(parser):
    def script(cmd):
        return b"$%d\r\nabc" % (1 << 40) if cmd[0] == b"HUGE" else b"+OK\r\n"

    with fake_redis(script) as srv:
        with RedisPool(pool_size=1, port=srv.port, parser=parser, timeout=20,
                       backoff_min=0.01) as rp:
            t0 = time.monotonic()
            with pytest.raises(LimitExceeded, match="bulk length of 1099511627776"):
                rp.command(["HUGE"])
            assert time.monotonic() - t0 < 5  # refused at its header, not at the timeout
            wait_for(lambda: rp.info()["reconnects"] == 1, what="the replacement")
            assert rp.command(["SET", "k", "v"]) == b"OK"
            assert_exact(rp)


def test_an_unsolicited_8_mib_reply_is_logged_as_a_short_prefix(parser, caplog):
    big = b"$%d\r\n%s\r\n" % (8 << 20, b"x" * (8 << 20))

    def handler(sock, server):
        first = server.accepted == 1
        while True:
            data = sock.recv(65536)
            if not data:
                return
            sock.sendall(b"+PONG\r\n" * data.count(b"PING"))
            if first:
                gevent.sleep(0.05)
                sock.sendall(big)

    caplog.set_level(logging.DEBUG, logger="greenpool")
    with FakeServer(handler) as srv:
        with RedisPool(pool_size=1, port=srv.port, parser=parser, backoff_min=0.01) as rp:
            wait_for(lambda: rp.info()["reconnects"] == 1, what="the replacement")
            assert rp.command(["PING"]) == b"PONG"
            assert_exact(rp)
    assert "nobody asked for" in caplog.text
    assert max(len(r.getMessage()) for r in caplog.records) < 2000


# -- 3. a connection whose reply is overdue leaves rotation --


def stalling_redis():
    """A fake Redis: STALL gets half a bulk reply, then the connection goes silent (it
    still reads); anything else gets +OK; PING (the handshake) +PONG."""
    def script(cmd):
        if cmd[0] == b"STALL":
            return b"$10\r\nabc"
        return b"+PONG\r\n" if cmd[0] == b"PING" else b"+OK\r\n"

    def handler(sock, server):
        reader = Reader()
        stalled = False
        while True:
            data = sock.recv(65536)
            if not data:
                return
            if stalled:
                continue
            reader.feed(data)
            out = []
            while True:
                cmd = reader.gets()
                if cmd is NOT_ENOUGH:
                    break
                out.append(script(cmd))
                if cmd[0] == b"STALL":
                    stalled = True
                    break
            sock.sendall(b"".join(out))

    return FakeServer(handler)


@pytest.mark.parametrize("retries", [0, 2])
def test_a_server_stalling_mid_reply_is_replaced_within_timeout_plus_grace(parser, retries):
    with stalling_redis() as srv:
        with RedisPool(pool_size=1, port=srv.port, parser=parser, backoff_min=0.01,
                       timeout=30, retry_reads=retries) as rp:
            stall = gevent.spawn(rp.command, ["STALL"], timeout=0.5)
            gevent.sleep(0.05)
            t0 = time.monotonic()
            writes = [gevent.spawn(rp.command, ["SET", "k%d" % i, "v"]) for i in range(5)]
            reads = [gevent.spawn(rp.command, ["GET", "k%d" % i]) for i in range(5)]
            gevent.joinall([stall] + writes + reads)
            elapsed = time.monotonic() - t0
            assert isinstance(stall.exception, ReadTimeout)
            # closed at timeout + grace (~1.5 s), far before the callers' own 30 s
            assert elapsed < 0.5 + OVERDUE_GRACE + 8, elapsed
            for g in writes:
                assert isinstance(g.exception, ConnectionClosed), g.exception
                assert "sent nothing" in str(g.exception)
            for g in reads:
                if retries:
                    assert g.get() == b"OK"  # re-sent on the replacement
                else:
                    assert isinstance(g.exception, ConnectionClosed), g.exception
            wait_for(lambda: rp.info()["active"] == 1, what="the replacement")
            info = rp.info()
            assert info["overdue_closed"] == 1 and info["reconnects"] == 1
            assert [rp.command(["SET", "k", "v"]) for _ in range(3)] == [b"OK"] * 3
            assert srv.accepted == 2
            assert_exact(rp)


def test_a_slow_reply_still_arriving_keeps_the_connection(redis, parser):
    with RedisPool(pool_size=1, port=redis.port, parser=parser) as rp:
        with pytest.raises(ReadTimeout):
            rp.command(["DEBUG", "SLEEP", "0.3"], timeout=0.1)
        assert rp.command(["ECHO", "after"]) == b"after"
        gevent.sleep(OVERDUE_GRACE + 0.2)
        unchanged(rp)
        assert rp.info()["overdue_closed"] == 0
        assert_exact(rp)


# -- 6. idle pings; Unix sockets --


def test_idle_connections_are_pinged(redis, parser):
    with RedisPool(pool_size=2, port=redis.port, parser=parser, idle_interval=0.1) as rp:
        wait_for(lambda: rp.counters["pings"] >= 6, what="idle pings")
        assert rp.command(["PING"]) == b"PONG"
        assert rp.counters["ping_failures"] == 0
        unchanged(rp)
        assert_exact(rp)


def test_an_unanswered_idle_ping_closes_and_replaces_the_connection(parser):
    def handler(sock, server):
        answered = False  # the handshake's PING only; later ones are ignored
        while True:
            data = sock.recv(65536)
            if not data:
                return
            if not answered:
                answered = True
                sock.sendall(b"+PONG\r\n")

    with FakeServer(handler) as srv:
        with RedisPool(pool_size=1, port=srv.port, parser=parser, idle_interval=0.1,
                       connect_timeout=0.3, backoff_min=0.01) as rp:
            wait_for(lambda: rp.info()["reconnects"] >= 2, timeout=10, what="two replacements")
            assert rp.counters["ping_failures"] >= 2
            assert srv.accepted >= 3
            assert_exact(rp)


def test_unix_socket_path_and_unix_url(redis, parser):
    k = key("unix")
    with RedisPool(pool_size=2, unix_socket_path=str(redis.unix_path), parser=parser) as rp:
        assert rp.command(["SET", k, "over unix"]) == b"OK"
        gs = [gevent.spawn(rp.command, ["ECHO", "u%d" % i]) for i in range(20)]
        gevent.joinall(gs, raise_error=True)
        assert [g.value for g in gs] == [b"u%d" % i for i in range(20)]
        assert rp.transport == "unix" and rp.info()["host"] == str(redis.unix_path)
        assert "unix:" in repr(rp)
        assert_exact(rp)
    with RedisPool(pool_size=1, url="unix://%s?db=2" % redis.unix_path, parser=parser) as rp:
        assert rp.db == 2
        rp.command(["SET", k, "db2"])
    with RedisPool(pool_size=1, port=redis.port, db=2) as tcp:
        assert tcp.command(["GET", k]) == b"db2"
        tcp.command(["DEL", k])
    with RedisPool(pool_size=1, port=redis.port) as tcp:
        assert tcp.command(["GET", k]) == b"over unix"
        tcp.command(["DEL", k])


def test_unix_url_parsing_and_bad_combinations(tmp_path):
    assert parse_url("unix:///run/redis/redis.sock?db=2") == {
        "unix_socket_path": "/run/redis/redis.sock", "db": 2}
    assert parse_url("unix://:s3cret@/tmp/r.sock") == {
        "unix_socket_path": "/tmp/r.sock", "password": "s3cret"}
    for bad in ("unix://host/tmp/r.sock", "unix://", "unix:///tmp/r.sock?db=x",
                "unix:///tmp/r.sock?timeout=1"):
        with pytest.raises(ValueError):
            parse_url(bad)
    with pytest.raises(ValueError, match="unix_socket_path replaces"):
        RedisPool(unix_socket_path="/tmp/x.sock", port=6379)
    with pytest.raises(ConnectError, match="nobody.sock"):
        RedisPool(pool_size=1, unix_socket_path=str(tmp_path / "nobody.sock"))


# -- 7. a fair reader --

FLOOD = r"""
import socket, sys, time
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
buf = b""
while b"PING\r\n" not in buf:  # the handshake: HELLO 3, PING
    buf += conn.recv(65536)
conn.sendall(b"%0\r\n+PONG\r\n")
push = b">2\r\n$5\r\nflood\r\n:1\r\n" * 20000
end = time.monotonic() + float(sys.argv[1])
try:
    while time.monotonic() < end:
        conn.sendall(push)
    conn.settimeout(30)
    while conn.recv(65536):
        pass
except OSError:
    pass
"""


def test_a_flooding_peer_does_not_starve_other_greenlets(parser):
    # A server in another process floods valid pushes faster than they can be parsed:
    # the reader must still yield, so a ticker keeps ticking and a timeout fires on time.
    proc = subprocess.Popen([sys.executable, "-c", FLOOD, "8"], stdout=subprocess.PIPE)
    gaps = []
    done = []

    def tick():
        last = time.monotonic()
        while not done:
            gevent.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = gevent.spawn(tick)
    try:
        port = int(proc.stdout.readline())
        gevent.sleep(0.02)
        assert gaps, "the ticker runs before the flood starts"
        # the flood starts as soon as the handshake is done, inside the constructor
        with RedisPool(pool_size=1, port=port, parser=parser, protocol=3, timeout=5) as rp:
            wait_for(lambda: rp.info()["pushes_dropped"] > 50000, timeout=5,
                     what="the flood to be under way")
            t0 = time.monotonic()
            with pytest.raises(ReadTimeout):
                rp.command(["PING"], timeout=0.3)  # never answered: the server only floods
            late = time.monotonic() - t0
            gevent.sleep(0.5)
            done.append(True)
            ticker.join()
            flooded = rp.info()["pushes_dropped"]
            # generous bounds for a busy machine; a reader that never yields holds the
            # process for the whole flood (8 s)
            assert late < 2.0, late  # 0.3 s asked
            assert len(gaps) > 20 and max(gaps) < 1.0, (len(gaps), max(gaps), flooded)
            unchanged(rp)
            assert_exact(rp)
    finally:
        done.append(True)
        ticker.join()
        proc.kill()
        proc.wait()
        proc.stdout.close()
