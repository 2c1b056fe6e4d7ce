"""Tests for greenpool/redis/cluster.py (RedisClusterPool) against real Redis Clusters
(tests/redis_servers.py): the session's 3 masters + 3 replicas for the API, a cluster of its
own for each test that reshards, fails over or kills a node.

Every test runs under ``no_leaks``; every fault test ends with ``assert_exact`` on each
node pool.
"""
from __future__ import annotations

import time

import gevent
import pytest
from faultproxy import FaultProxy

from greenpool.errors import (
    AskError,
    ClusterDownError,
    ConnectError,
    ConnectionClosed,
    GreenPoolError,
    MovedError,
    PoolClosed,
    PoolTimeout,
    ReadTimeout,
    ResponseError,
    TryAgainError,
)
from greenpool.redis import RedisPool
from greenpool.redis.cluster import RedisClusterPool, key_slot, parse_shards, parse_slots

from fakes import refused_port
from forking import fork_and_report
from redishelp import node_books, unique

pytestmark = pytest.mark.usefixtures("no_leaks")


def key(prefix: str = "k") -> str:
    """A key no other test uses (the session's cluster is shared)."""
    return unique("test_cluster", prefix)


@pytest.fixture
def cp(redis_cluster):
    pool = RedisClusterPool(redis_cluster.startup_nodes, pool_size=2, timeout=5.0)
    yield pool
    node_books(pool)
    pool.stop()


# -- unit: parsing the map --

def test_parse_shards_resp2_and_resp3_shapes():
    node = ["id", "a", "port", 7000, "ip", "127.0.0.1", "endpoint", "127.0.0.1", "role", "master",
            "replication-offset", 1, "health", "online"]
    rep = ["id", "b", "port", 7001, "ip", "127.0.0.1", "endpoint", "?", "role", "replica",
           "replication-offset", 1, "health", "online"]
    dead = ["id", "c", "port", 7002, "ip", "127.0.0.1", "endpoint", "127.0.0.1", "role",
            "replica", "replication-offset", 1, "health", "fail"]
    resp2 = [["slots", [0, 99, 200, 299], "nodes", [node, rep, dead]]]
    resp3 = [{"slots": [0, 99, 200, 299],
              "nodes": [dict(zip(n[::2], n[1::2])) for n in (node, rep, dead)]}]
    for reply in (resp2, resp3):
        [(ranges, shard)] = parse_shards(reply, "10.9.9.9")
        assert ranges == [(0, 99), (200, 299)]
        assert shard.master == ("127.0.0.1", 7000)
        assert shard.replicas == (("127.0.0.1", 7001),)   # "?" endpoint -> ip; failed left out


def test_parse_slots():
    reply = [[0, 5460, [b"127.0.0.1", 7000, b"id1"], [b"", 7003, b"id4"]],
             [5461, 16383, [b"127.0.0.1", 7001, b"id2"]]]
    got = parse_slots(reply, "127.0.0.9")
    assert [(r, s.master, s.replicas) for r, s in got] == [
        ([(0, 5460)], ("127.0.0.1", 7000), (("127.0.0.9", 7003),)),
        ([(5461, 16383)], ("127.0.0.1", 7001), ()),
    ]


def test_refused_options():
    for kw in ({"db": 1}, {"host": "x"}, {"port": 1}, {"url": "redis://x"}, {"start": "wait"}):
        with pytest.raises(ValueError):
            RedisClusterPool([("127.0.0.1", 1)], **kw)
    with pytest.raises(ValueError, match="startup_nodes"):
        RedisClusterPool([])


# -- the API against the session's cluster --

def test_key_slot_agrees_with_the_server(cp, redis_cluster):
    keys = ["k%d" % i for i in range(200)] + ["{tag}%d" % i for i in range(20)] + ["é", "", "{}x"]
    node = redis_cluster.nodes[0]
    for k in keys:
        assert key_slot(k) == int(node.execute("CLUSTER", "KEYSLOT", k)), k


def test_map_covers_every_slot_with_three_masters(cp, redis_cluster):
    info = cp.info()
    assert info["slots_covered"] == 16384
    assert len(info["masters"]) == 3
    assert sorted(cp.slots()) == sorted(
        (int(r[0]), int(r[1])) for r in redis_cluster.nodes[0].execute("CLUSTER", "SLOTS"))
    for (lo, hi), shard in cp.slots().items():
        assert shard.master == redis_cluster.owner(lo).addr
        assert len(shard.replicas) == 1


def test_200_keys_set_get_across_slots(cp, redis_cluster):
    ks = [key() for _ in range(200)]
    for i, k in enumerate(ks):
        assert cp.command(["SET", k, "v%d" % i]) == b"OK"
    assert [cp.command(["GET", k]) for k in ks] == [b"v%d" % i for i in range(200)]
    # they really are spread: every master holds some, each on the slot's owner
    by_node = {}
    for k in ks:
        by_node.setdefault(redis_cluster.owner(key_slot(k)).port, []).append(k)
    assert len(by_node) == 3
    for port, on in by_node.items():
        assert redis_cluster.node_at(port).execute("GET", on[0]) is not None
    assert cp.info()["moved"] == 0 and cp.info()["refreshes"] == 1
    assert len(cp.node_pools()) == 3   # masters only


def test_pipeline_of_200_gets_in_order(cp):
    ks = [key() for _ in range(200)]
    assert cp.pipeline([["SET", k, str(i)] for i, k in enumerate(ks)]) == [b"OK"] * 200
    assert cp.pipeline([["GET", k] for k in ks]) == [str(i).encode() for i in range(200)]
    mixed = cp.pipeline([["GET", ks[0]], ["INCR", ks[1]], ["LPUSH", ks[2], "x"], ["PING"]])
    assert mixed[0] == b"0" and mixed[1] == 2 and mixed[3] == b"PONG"
    assert isinstance(mixed[2], ResponseError) and "WRONGTYPE" in str(mixed[2])
    assert cp.pipeline([]) == []


def test_20_greenlets_x_50_incrs(cp):
    k = key("n")

    def work():
        for _ in range(50):
            cp.command(["INCR", k])

    gevent.joinall([gevent.spawn(work) for _ in range(20)], raise_error=True)
    assert cp.command(["GET", k]) == b"1000"


def test_hash_tag_transaction(cp):
    tag = "{%s}" % key("tx")
    assert cp.transaction([["SET", tag + "a", 1], ["INCR", tag + "a"], ["SET", tag + "b", "x"],
                           ["MGET", tag + "a", tag + "b"]]) == [b"OK", 2, b"OK", [b"2", b"x"]]


def test_cross_slot_transaction_and_multikey_refused_before_sending(cp):
    a, b = key("a"), key("b")
    assert key_slot(a) != key_slot(b)
    with pytest.raises(ValueError, match="transaction: its keys span slots %d, %d|"
                       "transaction: its keys span slots %d, %d"
                       % (min(key_slot(a), key_slot(b)), max(key_slot(a), key_slot(b)),
                          min(key_slot(a), key_slot(b)), max(key_slot(a), key_slot(b)))):
        cp.transaction([["SET", a, 1], ["SET", b, 1]])
    with pytest.raises(ValueError, match="MSET: its keys span slots"):
        cp.command(["MSET", a, 1, b, 1])
    with pytest.raises(ValueError, match=r"commands\[1\]: its keys span slots"):
        cp.pipeline([["SET", a, 1], ["DEL", a, b]])
    with pytest.raises(ValueError, match="EVAL: its keys span slots"):
        cp.command(["EVAL", "return 1", 2, a, b])
    # nothing was sent: not even the first command of the refused pipeline
    assert cp.pipeline([["EXISTS", a], ["EXISTS", b]]) == [0, 0]
    tag = "{%s}" % key()
    assert cp.command(["MSET", tag + "1", "x", tag + "2", "y"]) == b"OK"
    assert cp.command(["MGET", tag + "1", tag + "2"]) == [b"x", b"y"]


def test_keys_of_uses_the_command_table(cp):
    assert cp.keys_of(["GET", "a"]) == ["a"]
    assert cp.keys_of(["MSET", "a", 1, "b", 2]) == ["a", "b"]
    assert cp.keys_of(["EVALSHA", "f" * 40, 1, "k", "arg"]) == ["k"]
    assert cp.keys_of(["XREAD", "COUNT", 1, "STREAMS", "s1", "s2", 0, 0]) in (
        [b"s1", b"s2"], ["s1", "s2"])
    assert cp.keys_of(["OBJECT", "ENCODING", "z"]) == ["z"]
    assert cp.keys_of(["PING"]) == [] and cp.keys_of(["INFO", "server"]) == []


def test_keyless_commands_and_noreply(cp):
    assert cp.command(["PING"]) == b"PONG"
    ks = [key() for _ in range(30)]
    cp.noreply_pipeline([["SET", k, "q"] for k in ks])
    cp.noreply_command(["SET", ks[0], "first"])
    assert cp.pipeline([["GET", k] for k in ks]) == [b"first"] + [b"q"] * 29


def test_script_runs_on_its_keys_node(cp):
    script = cp.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    ks = [key("s") for _ in range(10)]       # several nodes: EVAL where the node lacks it
    assert [script(keys=[k], args=[5]) for k in ks] == [5] * 10
    assert [script(keys=[k], args=[1]) for k in ks] == [6] * 10


def test_read_from_replicas_spreads_reads(redis_cluster):
    cp = RedisClusterPool(redis_cluster.startup_nodes, pool_size=1, read_from_replicas=True)
    try:
        k = key("r")
        cp.command(["SET", k, "v"])
        owner = redis_cluster.owner(key_slot(k))
        owner.execute("WAIT", 1, 2000)
        assert [cp.command(["GET", k]) for _ in range(20)] == [b"v"] * 20
        shard = cp.slots()[next(r for r in cp.slots() if r[0] <= key_slot(k) <= r[1])]
        replica = cp.node_pools()[shard.replicas[0]]
        assert replica.info()["closed_connections"] == 0
        assert int(str(redis_cluster.node_at(shard.replicas[0][1]).execute(
            "INFO", "commandstats")).count("cmdstat_readonly")) == 1
        # writes never go to a replica
        assert [cp.command(["INCR", k + "n"]) for _ in range(10)] == list(range(1, 11))
        node_books(cp)
    finally:
        cp.stop()


@pytest.mark.parametrize("protocol", [2, 3])
def test_resp3_and_decoded_replies(redis_cluster, protocol):
    """The map (CLUSTER SHARDS as RESP3 maps) and the COMMAND table parse either way."""
    cp = RedisClusterPool(redis_cluster.startup_nodes, pool_size=1, protocol=protocol,
                          decode_responses=True)
    try:
        assert cp.info()["slots_covered"] == 16384 and len(cp.info()["masters"]) == 3
        ks = [key() for _ in range(30)]
        assert cp.pipeline([["SET", k, "é%d" % i] for i, k in enumerate(ks)]) == ["OK"] * 30
        assert cp.pipeline([["GET", k] for k in ks]) == ["é%d" % i for i in range(30)]
        assert cp.keys_of(["XREAD", "STREAMS", "s1", "0"]) == ["s1"]
        node_books(cp)
    finally:
        cp.stop()


def test_info_and_stats_per_node(cp):
    cp.command(["SET", key(), 1])
    info = cp.info()
    assert set(info["nodes"]) == set(cp.get_stats())
    for name, ni in info["nodes"].items():
        assert ni["pool_size"] == 2 and name == "%s:%d" % (ni["host"], ni["port"])
    assert repr(cp).startswith("<RedisClusterPool ") and "3 masters" in repr(cp)


def test_stop_fails_later_commands(redis_cluster):
    cp = RedisClusterPool(redis_cluster.startup_nodes, pool_size=1)
    cp.stop()
    with pytest.raises(PoolClosed):
        cp.command(["GET", "x"])
    assert cp.node_pools() == {}


def test_a_dead_startup_node_is_skipped(redis_cluster):
    cp = RedisClusterPool([("127.0.0.1", refused_port())] + redis_cluster.startup_nodes,
                          pool_size=1, connect_timeout=1.0)
    try:
        assert cp.command(["PING"]) == b"PONG"
        node_books(cp)
    finally:
        cp.stop()


def test_pointed_at_a_plain_redis_gives_a_clear_error(redis):
    with pytest.raises(ConnectError, match="cluster mode enabled"):
        RedisClusterPool([("127.0.0.1", redis.port)], pool_size=1)


# -- what needs a connection of its own: routed to a node's RedisPool --

def _message(ps, kind, timeout=5.0):
    """The next message of type ``kind`` (subscribe confirmations skipped up to it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = ps.get_message(max(deadline - time.monotonic(), 0.01))
        if m is not None and m["type"] == kind:
            return m
    raise AssertionError("no %s message within %.1fs" % (kind, timeout))


def test_pubsub_routes_to_a_node(cp):
    ch = key("ch")
    with cp.pubsub() as ps:
        ps.subscribe(ch)
        assert _message(ps, "subscribe")["channel"] == ch.encode()
        # PUBLISH reaches every node over the cluster bus, whichever node gets it
        assert cp.command(["PUBLISH", ch, "hello"]) >= 0
        m = _message(ps, "message")
        assert (m["channel"], m["data"]) == (ch.encode(), b"hello")
    node_books(cp)


def test_shard_pubsub_goes_to_the_channels_node(cp, redis_cluster):
    ch = key("sch")
    with cp.pubsub(shard_channel=ch) as ps:
        ps.ssubscribe(ch)
        assert _message(ps, "ssubscribe")["channel"] == ch.encode()
        owner = redis_cluster.owner(key_slot(ch))
        assert ps._dc.conn.sock.getpeername()[1] == owner.port
        assert cp.command(["SPUBLISH", ch, "s1"]) == 1   # routed by its channel's slot
        m = _message(ps, "smessage")
        assert (m["channel"], m["data"]) == (ch.encode(), b"s1")
    node_books(cp)


def test_watch_transaction_refuses_cross_slot_and_routes(cp):
    with pytest.raises(ValueError, match="watch_transaction: its keys span slots"):
        cp.watch_transaction([key("a"), key("b")], lambda conn: [])
    k = key("w")
    cp.command(["SET", k, 1])
    seen = []

    def fn(conn):
        seen.append(conn.command(["GET", k]))
        return [["INCR", k], ["GET", k]]

    assert cp.watch_transaction([k], fn) == [2, b"2"]
    assert seen == [b"1"] and cp.command(["GET", k]) == b"2"
    node_books(cp)


def test_watch_transaction_increments_are_exact(cp):
    k = key("{w}n")
    cp.command(["SET", k, 0])

    def incr():
        for _ in range(10):
            cp.watch_transaction(
                [k], lambda conn: [["SET", k, int(conn.command(["GET", k])) + 1]], retries=100)

    gevent.joinall([gevent.spawn(incr) for _ in range(10)], raise_error=True)
    assert cp.command(["GET", k]) == b"100"
    node_books(cp)


def test_blocking_command_goes_to_the_keys_node(cp):
    k = key("bl")
    g = gevent.spawn(cp.command, ["BLPOP", k, 5])
    gevent.sleep(0.1)
    assert cp.command(["LPUSH", k, "x"]) == 1
    assert g.get(timeout=10) in ([k.encode(), b"x"], (k.encode(), b"x"))
    # a block time beyond the pool's timeout is waited in full: None at its end, no timeout
    t0 = time.monotonic()
    assert cp.command(["BLPOP", key("empty"), 1], timeout=0.3) is None
    assert time.monotonic() - t0 >= 0.9
    # shared connections stay free meanwhile
    g = gevent.spawn(cp.command, ["BLPOP", k, 10])
    gevent.sleep(0.1)
    assert [cp.command(["GET", key("g")]) for _ in range(20)] == [None] * 20
    assert not g.ready()
    g.kill()
    node_books(cp)


# -- faults: a cluster of its own --

def _slot_keys(n, owner_slots, prefix):
    """n keys whose slots fall in owner_slots."""
    out = []
    i = 0
    while len(out) < n:
        k = "%s:%d" % (prefix, i)
        if key_slot(k) in owner_slots:
            out.append(k)
        i += 1
    return out


def test_resharding_under_load_is_invisible(redis_cluster_factory):
    """Slots move from one master to another (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT
    NODE) while 50 greenlets INCR keys in them: no error reaches a caller, every count is
    exact, and both MOVED and ASK were followed."""
    cluster = redis_cluster_factory(masters=3, replicas=0)
    cp = RedisClusterPool(cluster.startup_nodes, pool_size=2, timeout=10.0)
    src, dst = cluster.nodes[0], cluster.nodes[1]
    src_id, dst_id = src.node_id(), dst.node_id()
    owned = [(int(r[0]), int(r[1])) for r in src.execute("CLUSTER", "SLOTS")
             if int(r[2][1]) == src.port]
    lo = owned[0][0]
    moving = set(range(lo, lo + 8))
    keys = _slot_keys(50, moving, "resh")
    cp.pipeline([["SET", k, 0] for k in keys])
    counts = dict.fromkeys(keys, 0)
    errors = []
    stop = [False]

    def work(k):
        while not stop[0]:
            try:
                if counts[k] % 3 == 2:
                    r = cp.pipeline([["INCR", k], ["GET", k]])
                    assert int(r[1]) == r[0], r
                    r = r[0]
                else:
                    r = cp.command(["INCR", k])
            except GreenPoolError as e:
                errors.append(e)
                return
            counts[k] += 1
            assert r == counts[k], (k, r, counts[k])
            gevent.sleep(0.001)

    def reshard():
        for slot in sorted(moving):
            dst.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            ks = src.execute("CLUSTER", "GETKEYSINSLOT", slot, 1000)
            for k in ks[: (len(ks) + 1) // 2]:
                src.execute("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", k)
            time.sleep(0.05)  # half moved: requests for moved keys get ASK
            for k in src.execute("CLUSTER", "GETKEYSINSLOT", slot, 1000):
                src.execute("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", k)
            for node in (dst, src, cluster.nodes[2]):
                node.execute("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    try:
        greenlets = [gevent.spawn(work, k) for k in keys]
        gevent.sleep(0.2)
        gevent.get_hub().threadpool.apply(reshard)
        gevent.sleep(0.3)
        stop[0] = True
        gevent.joinall(greenlets, raise_error=True)
        assert errors == []
        info = cp.info()
        assert info["moved"] > 0 and info["ask"] > 0, info
        assert cp.pipeline([["GET", k] for k in keys]) == [b"%d" % counts[k] for k in keys]
        for slot in moving:
            assert cluster.owner(slot).port == dst.port
        assert all(c > 0 for c in counts.values())
        node_books(cp)
    finally:
        stop[0] = True
        cp.stop()


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        gevent.sleep(0.01)


def _load(cp, keys, errors, stop, ok, when, trace=None):
    """Workers writing then reading their own key.  ``trace`` (optional): {"paused": [bool],
    "live": {key: (cmd, n, paused)}, "done": [(key, cmd, n, paused, reply or error)],
    "acked": {key: n of its last SET answered OK}, "tried": {key: n of its last SET}};
    ``paused`` is trace["paused"][0] when the command started."""
    def call(k, args, n):
        if trace is None:
            return cp.command(args)
        mark = (args[0], n, trace["paused"][0])
        trace["live"][k] = mark
        if args[0] == "SET":
            trace["tried"][k] = n
        try:
            reply = cp.command(args)
        except Exception as e:
            trace["done"].append((k,) + mark + (e,))
            raise
        finally:
            trace["live"].pop(k, None)
        trace["done"].append((k,) + mark + (reply,))
        if args[0] == "SET" and reply == b"OK":
            trace["acked"][k] = n
        return reply

    def work(k):
        n = 0
        while not stop[0]:
            n += 1
            try:
                assert call(k, ["SET", k, n], n) == b"OK"
                assert call(k, ["GET", k], n) == b"%d" % n
                ok.append(k)
            except (ConnectError, ConnectionClosed, ClusterDownError, PoolTimeout, ReadTimeout,
                    TryAgainError) as e:
                errors.append(e)
                when.append(time.monotonic())
                gevent.sleep(0.01)
            gevent.sleep(0.002)
    return [gevent.spawn(work, k) for k in keys]


def test_master_killed_under_load_replica_takes_over(redis_cluster_factory):
    cluster = redis_cluster_factory(masters=3, replicas=1, node_timeout_ms=1000)
    cp = RedisClusterPool(cluster.startup_nodes, pool_size=2, timeout=3.0, connect_timeout=0.5,
                          backoff_min=0.02, backoff_max=0.2)
    victim = cluster.nodes[0]
    assert victim.role() == "master"
    [replica] = cluster.replicas_of(victim)
    victim_slots = {s for r in victim.execute("CLUSTER", "SLOTS") if int(r[2][1]) == victim.port
                    for s in range(int(r[0]), int(r[1]) + 1)}
    victim_keys = _slot_keys(25, victim_slots, "kill")
    keys = victim_keys + [key() for _ in range(25)]
    errors, ok, when, stop = [], [], [], [False]
    trace = {"paused": [False], "live": {}, "done": [], "acked": {}, "tried": {}}
    try:
        greenlets = _load(cp, keys, errors, stop, ok, when, trace)
        wait_for(lambda: len(ok) >= 50, 10, "commands before the kill")
        assert not errors
        # Hold commands on the victim (CLIENT PAUSE) so the kill surely hits some, however
        # late this process is scheduled.  Only commands started after the pause's reply are
        # surely held: the pool's in_flight also counts commands the server ran before the
        # pause whose replies are still unread (Server.execute blocks this process), and
        # those legitimately succeed after the kill.
        victim_pool = cp.node_pools()[victim.addr]
        victim.execute("CLIENT", "PAUSE", 30000, "ALL")
        trace["paused"][0] = True

        def held():
            return {k: m for k, m in trace["live"].items() if m[2] and k in victim_keys}
        wait_for(lambda: len(held()) >= 5, 10, "commands held in flight")
        assert victim_pool.info()["in_flight"] >= len(held())
        held_at_kill = held()
        killed_at = time.monotonic()
        victim.kill()
        deadline = time.monotonic() + 30
        while replica.role() != "master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            gevent.sleep(0.1)
        promoted_at = time.monotonic()
        # after the promotion, every command succeeds within a short settling time
        gevent.sleep(1.5)
        settled = len(errors)
        before = len(ok)
        gevent.sleep(1.0)
        stop[0] = True
        gevent.joinall(greenlets, raise_error=True)
        assert len(errors) == settled, errors[settled:]
        assert len(ok) > before
        # every held command (never run: its master was paused until it died) failed with
        # a clear error, a write included: none was reported done or re-sent elsewhere
        for k, (cmd, n, _) in held_at_kill.items():
            [outcome] = [d[4] for d in trace["done"] if d[:4] == (k, cmd, n, True)]
            assert isinstance(outcome, ConnectionClosed), (k, cmd, n, outcome)
        assert len(errors) >= len(held_at_kill)
        # no write re-sent late: each key holds its last acknowledged value, or its last
        # attempted one when that attempt failed ("may or may not have run")
        for k in keys:
            allowed = {b"%d" % trace[d][k] for d in ("acked", "tried") if k in trace[d]}
            assert cp.command(["GET", k]) in allowed, (k, trace["acked"].get(k), trace["tried"][k])
        window = max(when) - killed_at
        print("failover window: errors from %.2fs to %.2fs after the kill; promoted after "
              "%.2fs; %d errors" % (min(when) - killed_at, window, promoted_at - killed_at,
                                    len(errors)))
        assert window < promoted_at - killed_at + 1.5
        # one map per refresh interval at most, not one per failed command
        assert cp.info()["refreshes"] <= 2 + (max(when) - killed_at) / 0.1 + 5, cp.info()
        assert victim.addr not in cp.node_pools()         # its pool stopped with the map
        assert cp.slots()[min(cp.slots(), key=lambda r: abs(r[0] - min(victim_slots)))].master \
            == replica.addr
        node_books(cp)
    finally:
        stop[0] = True
        cp.stop()


def test_manual_cluster_failover_under_load(redis_cluster_factory):
    cluster = redis_cluster_factory(masters=3, replicas=1, node_timeout_ms=1000)
    cp = RedisClusterPool(cluster.startup_nodes, pool_size=2, timeout=5.0)
    old = cluster.nodes[1]
    [replica] = cluster.replicas_of(old)
    errors, ok, when, stop = [], [], [], [False]
    keys = [key() for _ in range(30)]
    try:
        greenlets = _load(cp, keys, errors, stop, ok, when)
        gevent.sleep(0.2)
        replica.execute("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + 20
        while replica.role() != "master" or old.role() != "slave":
            assert time.monotonic() < deadline
            gevent.sleep(0.05)
        gevent.sleep(0.5)
        before = len(ok)
        gevent.sleep(0.5)
        stop[0] = True
        gevent.joinall(greenlets, raise_error=True)
        assert errors == []   # a manual failover pauses writes: MOVED, never an error
        assert len(ok) > before
        assert cp.info()["moved"] > 0
        node_books(cp)
    finally:
        stop[0] = True
        cp.stop()


def test_redirect_errors_are_typed_from_a_plain_pool(redis_cluster):
    """RedisPool pointed at one master: MOVED is a MovedError naming where to go."""
    node = redis_cluster.nodes[0]
    with RedisPool(pool_size=1, port=node.port) as rp:
        for i in range(50):
            k = "moved:%d" % i
            if redis_cluster.owner(key_slot(k)).port != node.port:
                break
        with pytest.raises(MovedError) as e:
            rp.command(["GET", k])
        assert (e.value.slot, e.value.port) == (key_slot(k), redis_cluster.owner(key_slot(k)).port)
        r = rp.pipeline([["GET", k]])
        assert isinstance(r[0], MovedError) and not isinstance(r[0], AskError)


def test_tryagain_during_a_migration_is_retried_until_it_ends(redis_cluster_factory):
    """A multi-key command whose keys are split by a migration gets TRYAGAIN; it is re-sent
    with backoff, and succeeds once the slot has moved."""
    cluster = redis_cluster_factory(masters=3, replicas=0)
    cp = RedisClusterPool(cluster.startup_nodes, pool_size=1, timeout=15.0)
    try:
        a, b = "{tryagain}a", "{tryagain}b"
        slot = key_slot(a)
        src = cluster.owner(slot)
        dst = next(n for n in cluster.nodes if n.port != src.port)
        assert cp.command(["MSET", a, 1, b, 2]) == b"OK"
        dst.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", src.node_id())
        src.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", dst.node_id())
        src.execute("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", a)
        g = gevent.spawn(cp.command, ["MGET", a, b])
        deadline = time.monotonic() + 10
        while cp.info()["tryagain"] < 2:
            assert time.monotonic() < deadline and not g.dead, (cp.info(), g.exception)
            gevent.sleep(0.01)
        src.execute("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", b)
        for node in cluster.nodes:
            node.execute("CLUSTER", "SETSLOT", slot, "NODE", dst.node_id())
        assert g.get(timeout=15) == [b"1", b"2"]
        info = cp.info()
        assert info["moved"] + info["ask"] >= 1, info
        assert cp.command(["MGET", a, b]) == [b"1", b"2"]
        node_books(cp)
    finally:
        cp.stop()


def test_fork_child_uses_its_own_connections(cp):
    ks = [key("f") for _ in range(20)]
    cp.pipeline([["SET", k, "parent"] for k in ks])

    def child():
        ok = cp.pipeline([["GET", k] for k in ks]) == [b"parent"] * 20
        return ok and all(cp.command(["SET", k, "child"]) == b"OK" for k in ks)
    assert fork_and_report(child) is True
    # the parent's connections were not touched by the child
    assert cp.pipeline([["GET", k] for k in ks]) == [b"child"] * 20
    assert all(p.info()["closed_connections"] == 0 for p in cp.node_pools().values())


def test_clusterdown_is_retried_within_the_timeout(redis_cluster_factory):
    """A master without a replica dies: the cluster says CLUSTERDOWN for every slot; a
    command waits with backoff within its timeout and succeeds once the node is back."""
    cluster = redis_cluster_factory(masters=3, replicas=0)
    cp = RedisClusterPool(cluster.startup_nodes, pool_size=1, timeout=5.0, connect_timeout=0.5,
                          backoff_min=0.02, backoff_max=0.2)
    try:
        victim, live = cluster.nodes[0], cluster.nodes[1]
        k = next(k for k in ("cd:%d" % i for i in range(1000))
                 if cluster.owner(key_slot(k)).port == live.port)
        assert cp.command(["SET", k, "v"]) == b"OK"
        victim.kill()
        deadline = time.monotonic() + 20
        while "cluster_state:fail" not in str(live.execute("CLUSTER", "INFO")):
            assert time.monotonic() < deadline
            gevent.sleep(0.1)
        with pytest.raises(ClusterDownError):
            cp.command(["GET", k], timeout=0.5)
        assert cp.info()["clusterdown"] >= 1
        g = gevent.spawn(cp.command, ["GET", k], timeout=20.0)
        gevent.sleep(0.3)
        assert not g.dead
        gevent.get_hub().threadpool.apply(victim.start)
        assert g.get(timeout=25) == b"v"
        node_books(cp)
    finally:
        cp.stop()


def _proxied_master(cluster, proxy):
    """Announce ``cluster.nodes[0]`` at ``proxy``'s port (cluster-announce-port): the slot map
    then sends every client through the proxy to it.  Its slots."""
    node = cluster.nodes[0]
    node.execute("CONFIG", "SET", "cluster-announce-port", proxy.port)
    wait_for(lambda: any(int(r[2][1]) == proxy.port for r in node.execute("CLUSTER", "SLOTS")),
             10, "the announced port in the node's own map")
    return {s for r in node.execute("CLUSTER", "SLOTS") if int(r[2][1]) == proxy.port
            for s in range(int(r[0]), int(r[1]) + 1)}


@pytest.mark.parametrize("retry_reads", [0, 1])
def test_a_read_cut_in_flight_is_sent_again_per_retry_reads(redis_cluster_factory, retry_reads):
    """A node's connection lost with a GET and a SET in flight (a proxy in front of the node
    holds their bytes, then resets every connection): the GET is sent again on the new
    connection with ``retry_reads=1`` and fails with ConnectionClosed with 0; the SET, which
    may have run, is never sent again (its value never arrived: the key keeps the old one)."""
    cluster = redis_cluster_factory(masters=3, replicas=0)
    node = cluster.nodes[0]
    with FaultProxy(node.addr) as proxy:
        [k] = _slot_keys(1, _proxied_master(cluster, proxy), "cut")
        cp = RedisClusterPool([node.addr], pool_size=1, timeout=5.0, retry_reads=retry_reads,
                              backoff_min=0.02, backoff_max=0.2)
        try:
            cp.command(["SET", k, "v1"])
            via = cp.node_pools()[("127.0.0.1", proxy.port)]
            proxy.pause()
            read = gevent.spawn(cp.command, ["GET", k])
            write = gevent.spawn(cp.command, ["SET", k, "v2"])
            wait_for(lambda: via.info()["in_flight"] == 2, 10, "both commands in flight")
            proxy.drop_all(reset=True)
            proxy.resume()
            with pytest.raises(ConnectionClosed):
                write.get(timeout=10)
            if retry_reads:
                assert read.get(timeout=10) == b"v1"
            else:
                with pytest.raises(ConnectionClosed):
                    read.get(timeout=10)
            assert cp.command(["GET", k]) == b"v1"
            assert cp.info()["retries"] == retry_reads
            node_books(cp)
        finally:
            cp.stop()


def test_cluster_slots_when_the_server_has_no_cluster_shards(redis_cluster):
    """A server without CLUSTER SHARDS (before Redis 7) answers it "unknown subcommand": the
    map comes from CLUSTER SLOTS.  A proxy in front of a real node renames the subcommand
    (SHARDS -> SHARDZ: the node's own unknown-subcommand error) and counts what it saw."""
    seen = []

    def rename(data):
        seen.append(data)
        return data.replace(b"$6\r\nSHARDS\r\n", b"$6\r\nSHARDZ\r\n")

    with FaultProxy(redis_cluster.startup_nodes[0], upstream_filter=rename) as proxy:
        cp = RedisClusterPool([("127.0.0.1", proxy.port)], pool_size=1, timeout=5.0)
        try:
            wire = b"".join(seen).upper()        # what the pool sent: SHARDS first, then SLOTS
            assert wire.index(b"$6\r\nSHARDS\r\n") < wire.index(b"$5\r\nSLOTS\r\n")
            assert cp.info()["slots_covered"] == 16384
            keys = [key("fallback") for _ in range(50)]
            cp.pipeline([["SET", k, k] for k in keys])
            assert cp.pipeline([["GET", k] for k in keys]) == [k.encode() for k in keys]
            node_books(cp)
        finally:
            cp.stop()
