"""RedisClusterPool: Redis Cluster over one RedisPool per node.

What this owns: key slots (CRC16 with hash tags), the slot map (``CLUSTER SHARDS``, or
``CLUSTER SLOTS`` on servers without it), one :class:`~greenpool.redis.RedisPool` per node,
and the cluster's redirections.  Every byte goes through a node's RedisPool, so its caps,
timeouts, reconnects, stats and fork safety hold per node.

Rules:

1. A command goes to the master of its keys' slot (keyless commands to any master).  Keys
   are found from the server's ``COMMAND`` table (fetched once), EVAL-like ``numkeys``, or
   ``COMMAND GETKEYS`` for other commands whose keys move.  A multi-key command, a
   transaction or a watch_transaction whose keys span slots is refused with ``ValueError``
   naming the slots, before anything is sent.
2. Node pools are opened when first needed and stopped when their node leaves the map.
3. ``MOVED``: the command is re-sent to the node the reply names, and the map is refreshed
   (one refresh in flight; callers that need one meanwhile wait for it).  ``ASK``: ASKING
   plus the command go to the named node, once; the map is unchanged.  ``TRYAGAIN`` and
   ``CLUSTERDOWN``: re-sent with backoff while the command's ``timeout`` lasts.  At most
   ``max_redirects`` redirections per command.  A MOVED/ASK/TRYAGAIN/CLUSTERDOWN reply means
   the command did not run, so re-sending it is safe, writes included.
4. A node that cannot be reached (no live connection and its last connect failed, or the
   connection died under the command): the map is refreshed, then the caller gets the
   node's error, unless the command is read-only and ``retry_reads`` allows re-sending it
   (to the slot's owner in the new map).
5. A pipeline is split by node; the parts are sent concurrently; replies come back in the
   caller's order, errors in place; redirected commands in it are re-sent as in rule 3.
6. ``read_from_replicas=True``: read-only commands (:data:`~greenpool.redis.READ_ONLY_COMMANDS`)
   are spread over the slot's master and its online replicas; a replica gets ``READONLY`` in
   the same batch as the command (its connections are shared, so each read carries it).
   Pipelines and transactions go to masters.
"""
from __future__ import annotations

import itertools
import logging
import os
import random
import re
import time
import weakref
from binascii import crc_hqx as _crc_hqx
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import gevent
from gevent.event import Event

from greenpool.backoff import Backoff
from greenpool.errors import (
    AskError,
    ClusterDownError,
    ConnectError,
    ConnectionClosed,
    MovedError,
    PoolClosed,
    PoolTimeout,
    ReadError,
    RedisError,
    ResponseError,
    TransactionAborted,
    TryAgainError,
    WriteError,
)
from greenpool.redis.nodes import NodePools
from greenpool.redis.pool import RedisPool, _check_retries, is_read_only

log = logging.getLogger("greenpool.redis.cluster")

_monotonic = time.monotonic
_names = itertools.count(1)
#: a refresh asked for by an error is skipped when the map is younger than this (seconds):
#: during a failover every caller sees errors, and one map per interval is enough
_MIN_REFRESH_INTERVAL = 0.1

#: slots in a Redis Cluster
SLOTS = 16384

Addr = Tuple[str, int]


# -- key slots --

def crc16(data: bytes) -> int:
    """CRC16-CCITT (XModem), the checksum Redis Cluster hashes keys with (``binascii``'s C
    implementation: ``crc_hqx`` with an initial value of 0 is XModem)."""
    return _crc_hqx(data, 0)


def _b(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    return str(x).encode("ascii")


def key_slot(key: Any) -> int:
    """The slot of ``key`` (str, bytes or number): CRC16 of its hash tag (the part between
    the first ``{`` and the next ``}``, when not empty) or of the whole key, mod 16384."""
    k = _b(key)
    start = k.find(b"{")
    if start >= 0:
        end = k.find(b"}", start + 1)
        if end > start + 1:
            k = k[start + 1:end]
    return crc16(k) % SLOTS


# -- the slot map --

class Shard:
    """One master and its replicas (addresses), as the map knows them."""

    __slots__ = ("master", "replicas")

    def __init__(self, master: Addr, replicas: Sequence[Addr]) -> None:
        self.master = master
        self.replicas = tuple(replicas)

    def __repr__(self) -> str:
        return "<Shard master=%s:%d replicas=%s>" % (self.master + (
            ",".join("%s:%d" % r for r in self.replicas) or "-",))


def _s(x: Any) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _as_dict(x: Any) -> Dict[str, Any]:
    """A RESP2 flat [k, v, k, v] list or a RESP3 map -> {str: value}."""
    if isinstance(x, dict):
        return {_s(k): v for k, v in x.items()}
    return {_s(x[i]): x[i + 1] for i in range(0, len(x) - 1, 2)}


def parse_shards(reply: Any, default_host: str) -> List[Tuple[List[Tuple[int, int]], Shard]]:
    """``CLUSTER SHARDS`` -> [(slot ranges, Shard)]; nodes not ``online`` are left out
    (a failed master keeps its slots: they have no other owner until a failover)."""
    out = []
    for raw in reply:
        shard = _as_dict(raw)
        flat = [int(x) for x in shard.get("slots") or ()]
        ranges = [(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]
        master: Optional[Addr] = None
        replicas: List[Addr] = []
        for rawnode in shard.get("nodes") or ():
            node = _as_dict(rawnode)
            host = _s(node.get("endpoint") or "")
            if host in ("", "?"):
                host = _s(node.get("ip") or "") or default_host
            port = node.get("port") or node.get("tls-port")
            if port is None:
                continue
            addr = (host, int(port))
            role = _s(node.get("role"))
            health = _s(node.get("health", "online"))
            if role == "master":
                if ranges:
                    master = addr
            elif health == "online":
                replicas.append(addr)
        if master is not None and ranges:
            out.append((ranges, Shard(master, replicas)))
    return out


def parse_slots(reply: Any, default_host: str) -> List[Tuple[List[Tuple[int, int]], Shard]]:
    """``CLUSTER SLOTS`` -> [(slot ranges, Shard)]."""
    out = []
    for row in reply:
        nodes = []
        for node in row[2:]:
            host = _s(node[0]) if node[0] else default_host
            nodes.append((host if host != "?" else default_host, int(node[1])))
        if nodes:
            out.append(([(int(row[0]), int(row[1]))], Shard(nodes[0], nodes[1:])))
    return out


# -- which arguments are keys --

_EVAL_LIKE = frozenset(("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"))
_NO_ROUTE = frozenset(("ASKING", "READONLY", "READWRITE"))
_REDIRECT_IN_TEXT = re.compile(r"\b(MOVED|ASK) (\d+) (\S*):(\d+)")


class _KeySpec:
    __slots__ = ("first", "last", "step", "movable")

    def __init__(self, first: int, last: int, step: int, movable: bool) -> None:
        self.first = first
        self.last = last
        self.step = step
        self.movable = movable


def parse_command_table(reply: Any) -> Dict[str, _KeySpec]:
    """``COMMAND`` -> {NAME or NAME|SUB: where its keys are}."""
    table: Dict[str, _KeySpec] = {}

    def add(entry: Any) -> None:
        name = _s(entry[0]).upper()
        flags = {_s(f) for f in entry[2]}
        table[name] = _KeySpec(int(entry[3]), int(entry[4]), int(entry[5]), "movablekeys" in flags)
        if len(entry) > 9 and entry[9]:
            for sub in entry[9]:
                add(sub)

    for entry in reply or ():
        if isinstance(entry, (list, tuple)) and len(entry) >= 6:
            add(entry)
    return table


class ClusterScript:
    """A Lua script run with EVALSHA (EVAL the first time a node lacks it) on its keys' node."""

    def __init__(self, cluster: "RedisClusterPool", source: str) -> None:
        import hashlib
        self.cluster = cluster
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (),
                 timeout: Optional[float] = None) -> Any:
        tail = [len(keys), *keys, *args]
        try:
            return self.cluster.command(["EVALSHA", self.sha, *tail], timeout=timeout)
        except ResponseError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
        return self.cluster.command(["EVAL", self.source, *tail], timeout=timeout)


# -- the pool --

def _in_flight(e: PoolClosed) -> bool:
    """A node pool stopped under a command it had sent (RedisPool.close's message), not
    while the command waited for a connection."""
    return "in flight" in str(e)


#: RedisPool options a cluster refuses: it picks hosts and ports from the map, and a
#: cluster has only db 0
_REFUSED = {"host": "use startup_nodes=[(host, port), ...]", "port": "use startup_nodes",
            "url": "use startup_nodes", "db": "a Redis Cluster has only db 0"}


class RedisClusterPool:
    """RedisPool's API over a Redis Cluster.  See the module docstring.

    ``RedisClusterPool(startup_nodes=[(host, port), ...], pool_size=5,
    read_from_replicas=False, name=None, timeout=5.0, retry_reads=0, max_redirects=5,
    **RedisPool options)``: ``pool_size`` connections per node; the other options
    (password, username, ssl, protocol, decode_responses, parser, connect_timeout,
    backoff_*, strategy, client_name, verify, max_reply_size) go to every node's RedisPool.
    """

    def __init__(self, startup_nodes: Iterable[Tuple[str, int]], pool_size: int = 5,
                 read_from_replicas: bool = False, name: Optional[str] = None,
                 timeout: float = 5.0, retry_reads: int = 0, max_redirects: int = 5,
                 **options: Any) -> None:
        for k in options:
            if k in _REFUSED:
                raise ValueError("RedisClusterPool does not take %s=: %s" % (k, _REFUSED[k]))
        if "start" in options:
            raise ValueError("RedisClusterPool opens node pools when first needed; start= is "
                             "not an option")
        nodes = [(str(h), int(p)) for h, p in startup_nodes]
        if not nodes:
            raise ValueError("startup_nodes must name at least one (host, port) of the cluster")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError("timeout must be a number of seconds > 0, not %r" % (timeout,))
        if isinstance(max_redirects, bool) or not isinstance(max_redirects, int) or max_redirects < 0:
            raise ValueError("max_redirects must be an int >= 0, not %r" % (max_redirects,))
        self.name = name if name is not None else "redis-cluster-%d" % next(_names)
        self.startup_nodes = nodes
        self.pool_size = pool_size
        self.read_from_replicas = bool(read_from_replicas)
        self.command_timeout = float(timeout)
        self.retry_reads = _check_retries(retry_reads, "retry_reads")
        self.max_redirects = max_redirects
        self.options = dict(options)
        # a node pool with no live connection whose last connect failed counts as down
        # (rule 4) until it reconnects: retry sooner than RedisPool's default 5 s
        self.options.setdefault("backoff_max", 1.0)
        self.connect_timeout = float(options.get("connect_timeout", 5.0))
        self._nodes = NodePools(self.name, "the cluster pool")
        self._slots: List[Optional[Shard]] = [None] * SLOTS
        self._shards: List[Shard] = []
        self._commands: Dict[str, _KeySpec] = {}
        self._epoch = 0                       # bumped by every refresh
        self._refreshed_at = 0.0
        self._refreshing: Optional[Event] = None
        self._closed = False
        self._rr = itertools.count()
        self.counters = {"refreshes": 0, "moved": 0, "ask": 0, "tryagain": 0, "clusterdown": 0,
                         "node_errors": 0, "retries": 0}
        self.last_error: Optional[BaseException] = None
        # validate the node options once, with the first node's pool
        try:
            self._refresh(-1, self.connect_timeout + self.command_timeout)
            if not self._shards:
                raise ConnectError("no node of the Redis Cluster at %s answered CLUSTER SHARDS "
                                   "or CLUSTER SLOTS (last error: %s); is cluster mode enabled?"
                                   % (self._startup_text(), self.last_error))
            self._load_command_table()
        except BaseException:
            self.close()
            raise
        _after_fork.add(self)

    # -- node pools --

    def _startup_text(self) -> str:
        return ", ".join("%s:%d" % a for a in self.startup_nodes)

    def _pool(self, addr: Addr, wait: bool = False) -> RedisPool:
        """The node's pool, opened if needed: connecting in the background, or (``wait``,
        for the map) before returning, so that a dead node fails at once."""
        return self._nodes.open(addr, lambda: RedisPool(
            pool_size=self.pool_size, host=addr[0], port=addr[1],
            name="%s/%s:%d" % (self.name, addr[0], addr[1]), timeout=self.command_timeout,
            start="wait" if wait else "degraded", **self.options))

    def _usable(self, addr: Addr, wait: bool = False) -> RedisPool:
        """The node's pool; ConnectError at once when it has no live connection and its
        last connect failed (it is down: do not wait the whole timeout for it)."""
        p = self._pool(addr, wait)
        if p.last_error is not None and p.active() == 0:
            raise ConnectError("Redis Cluster node %s:%d is unreachable (%s)"
                               % (addr[0], addr[1], p.last_error))
        return p

    def _master(self, slot: Optional[int]) -> Addr:
        if slot is None:
            shards = self._shards
            if not shards:
                raise ClusterDownError("CLUSTERDOWN no slot of the cluster at %s has an owner "
                                       "in the map" % self._startup_text())
            return shards[next(self._rr) % len(shards)].master
        shard = self._slots[slot]
        if shard is None:
            raise ClusterDownError("CLUSTERDOWN Hash slot %d is not served by any node in the "
                                   "map (cluster at %s)" % (slot, self._startup_text()))
        return shard.master

    def _reader(self, slot: Optional[int]) -> Tuple[Addr, bool]:
        """Where a read-only command goes: (address, is a replica)."""
        if not self.read_from_replicas or slot is None:
            return self._master(slot), False
        shard = self._slots[slot]
        if shard is None or not shard.replicas:
            return self._master(slot), False
        i = next(self._rr) % (len(shard.replicas) + 1)
        if i == 0:
            return shard.master, False
        return shard.replicas[i - 1], True

    # -- the slot map --

    def _refresh(self, seen_epoch: int, timeout: float) -> None:
        """Refresh the map unless one finished since ``seen_epoch``; one refresh runs at a
        time and callers arriving meanwhile wait for it (up to ``timeout``)."""
        if seen_epoch != -1 and (seen_epoch != self._epoch
                                 or _monotonic() - self._refreshed_at < _MIN_REFRESH_INTERVAL):
            return
        ev = self._refreshing
        if ev is not None:
            ev.wait(timeout)
            return
        ev = self._refreshing = Event()
        try:
            self._do_refresh(timeout)
        finally:
            self._refreshing = None
            ev.set()

    def _do_refresh(self, timeout: float) -> None:
        candidates: List[Addr] = []
        for s in self._shards:
            candidates.append(s.master)
        random.shuffle(candidates)
        for a in self.startup_nodes:
            if a not in candidates:
                candidates.append(a)
        for s in self._shards:
            for r in s.replicas:
                if r not in candidates:
                    candidates.append(r)
        deadline = _monotonic() + timeout
        for addr in candidates:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                break
            try:
                shards = self._fetch_map(addr, min(remaining, self.connect_timeout + 1.0))
            except (RedisError, ConnectError, ReadError, WriteError, PoolTimeout) as e:
                if isinstance(e, PoolClosed) and self._closed:
                    raise
                self.last_error = e
                log.info("redis cluster %r: no slot map from %s:%d: %s", self.name, addr[0],
                         addr[1], e)
                continue
            if shards:
                self._install(shards)
                return
        log.warning("redis cluster %r: no node gave a slot map (last error: %s)", self.name,
                    self.last_error)

    def _fetch_map(self, addr: Addr, timeout: float) -> List[Tuple[List[Tuple[int, int]], Shard]]:
        p = self._usable(addr, wait=True)
        try:
            return parse_shards(p.command(["CLUSTER", "SHARDS"], timeout=timeout), addr[0])
        except ResponseError as e:
            if "unknown" not in str(e).lower():
                raise
        return parse_slots(p.command(["CLUSTER", "SLOTS"], timeout=timeout), addr[0])

    def _install(self, shards: List[Tuple[List[Tuple[int, int]], Shard]]) -> None:
        slots: List[Optional[Shard]] = [None] * SLOTS
        for ranges, shard in shards:
            for lo, hi in ranges:
                slots[lo:hi + 1] = [shard] * (hi - lo + 1)
        used: Set[Addr] = set()
        for _, shard in shards:
            used.add(shard.master)
            if self.read_from_replicas:
                used.update(shard.replicas)
        self._slots = slots
        self._shards = [shard for _, shard in shards]
        self._epoch += 1
        self._refreshed_at = _monotonic()
        self.counters["refreshes"] += 1
        for addr in self._nodes.retire(used):
            log.info("redis cluster %r: node %s:%d left the map; its pool stopped", self.name,
                     addr[0], addr[1])

    def _load_command_table(self) -> None:
        addr = self._master(None)
        reply = self._usable(addr).command(["COMMAND"], timeout=self.command_timeout)
        self._commands = parse_command_table(reply)

    def slots(self) -> Dict[Tuple[int, int], Shard]:
        """The map as {(first slot, last slot): Shard}, contiguous ranges merged."""
        out: Dict[Tuple[int, int], Shard] = {}
        start = 0
        cur = self._slots[0]
        for i in range(1, SLOTS + 1):
            s = self._slots[i] if i < SLOTS else None
            if i == SLOTS or s is not cur:
                if cur is not None:
                    out[(start, i - 1)] = cur
                start, cur = i, s
        return out

    def node_pools(self) -> Dict[Addr, RedisPool]:
        """The node pools open now, by (host, port)."""
        return self._nodes.copy()

    # -- keys --

    def keys_of(self, args: Sequence[Any]) -> List[Any]:
        """The key arguments of a command (from the server's COMMAND table)."""
        if not args:
            raise ValueError("a command needs at least its name")
        name = _s(args[0]).upper()
        spec = self._commands.get(name)
        if spec is not None and spec.first == 0 and len(args) > 1 and not spec.movable:
            sub = self._commands.get(name + "|" + _s(args[1]).upper())
            if sub is not None:
                spec = sub
        if name in _EVAL_LIKE:
            if len(args) < 3:
                return []
            n = int(args[2])
            return list(args[3:3 + n])
        if spec is None:
            return []
        if spec.movable:
            reply = self._pool(self._master(None)).command(["COMMAND", "GETKEYS", *args])
            return list(reply)
        if spec.first <= 0:
            return []
        last = spec.last if spec.last >= 0 else len(args) + spec.last
        return list(args[spec.first:last + 1:max(spec.step, 1)])

    def slot_of(self, args: Sequence[Any], what: str = "command") -> Optional[int]:
        """The one slot of a command's keys (None: no keys); ValueError if they span slots."""
        return self._one_slot(self.keys_of(args), what)

    @staticmethod
    def _one_slot(keys: Sequence[Any], what: str) -> Optional[int]:
        slots = {key_slot(k) for k in keys}
        if len(slots) > 1:
            raise ValueError("%s: its keys span slots %s of the Redis Cluster and cannot be sent "
                             "as one; use keys with one hash tag ({tag}) so they share a slot"
                             % (what, ", ".join(str(s) for s in sorted(slots))))
        return slots.pop() if slots else None

    # -- commands --

    def _timeout(self, timeout: Optional[float]) -> float:
        return self.command_timeout if timeout is None else float(timeout)

    def command(self, args: Sequence[Any], timeout: Optional[float] = None,
                retries: Optional[int] = None) -> Any:
        """Run one command on its keys' node; redirections are followed (see rule 3)."""
        if self._closed:
            raise PoolClosed(self.name, "the cluster pool was stopped")
        keys = self.keys_of(args)
        # one key (the usual case): its slot; the command's name is only needed for an error
        slot = key_slot(keys[0]) if len(keys) == 1 else self._one_slot(keys, _s(args[0]).upper())
        t = self._timeout(timeout)
        retries = self.retry_reads if retries is None else _check_retries(retries, "retries")
        return self._run(args, slot, _monotonic() + t, t, retries, None)

    def _run(self, args: Sequence[Any], slot: Optional[int], deadline: float, shown: float,
             retries: int, first: Optional[ResponseError]) -> Any:
        """The redirect loop of one command.  ``first``: a redirect reply already received
        (from a pipeline) to act on before sending."""
        read = is_read_only(args)
        backoff: Optional[Backoff] = None
        redirects = tries = 0
        target: Optional[Addr] = None
        asking = False
        err: Optional[ResponseError] = first
        epoch = self._epoch
        while True:
            if err is not None:
                redirects += 1
                if redirects > self.max_redirects + (1 if first is not None else 0):
                    raise err
                if isinstance(err, MovedError):
                    self.counters["moved"] += 1
                    target = (err.host or (target or self._master(slot))[0], err.port)
                    asking = False
                    self._refresh(epoch, deadline - _monotonic())
                elif isinstance(err, AskError):
                    self.counters["ask"] += 1
                    target = (err.host or (target or self._master(slot))[0], err.port)
                    asking = True
                else:  # TRYAGAIN / CLUSTERDOWN: wait, then ask the map again
                    clusterdown = isinstance(err, ClusterDownError)
                    self.counters["clusterdown" if clusterdown else "tryagain"] += 1
                    if backoff is None:
                        backoff = Backoff(0.02, 0.5, "rand_exp")
                    delay = backoff.next() or 0.5
                    if _monotonic() + delay >= deadline:
                        raise err
                    gevent.sleep(delay)
                    if clusterdown:
                        self._refresh(epoch, deadline - _monotonic())
                    target = None
                    asking = False
                    redirects -= 1      # waits are bounded by the deadline, not counted
                err = None
            epoch = self._epoch
            remaining = deadline - _monotonic()
            if remaining <= 0:
                remaining = 0.001
            replica = False
            try:
                if target is None:
                    if read:
                        addr, replica = self._reader(slot)
                    else:
                        addr = self._master(slot)
                else:
                    addr = target
                p = self._usable(addr)
                if asking:
                    value = p.pipeline([["ASKING"], args], timeout=remaining)[1]
                elif replica:
                    value = p.pipeline([["READONLY"], args], timeout=remaining)[1]
                else:
                    return p.command(args, timeout=remaining, retries=0)
                if isinstance(value, ResponseError):
                    raise value
                return value
            except (MovedError, AskError, TryAgainError, ClusterDownError) as e:
                if isinstance(e, ClusterDownError) and slot is None and target is None \
                        and not self._shards:
                    raise
                err = e
                continue
            except PoolClosed as e:
                # the node left the map while this command waited for it (not sent: go to
                # the new owner) or was in flight on it (may have run: a node error)
                if self._closed:
                    raise
                if not _in_flight(e):
                    target = None
                    asking = False
                    redirects += 1
                    if redirects > self.max_redirects or _monotonic() >= deadline:
                        raise ConnectError("the node of slot %s left the cluster's map while "
                                           "this command waited for it (%s)" % (slot, e)) from None
                    continue
                self.counters["node_errors"] += 1
                self.last_error = e
                if not (read and tries < retries and _monotonic() < deadline):
                    raise ConnectionClosed("%s (the node left the cluster's map)" % (e,)) from None
                tries += 1
                self.counters["retries"] += 1
                target = None
                asking = False
            except (ConnectError, ReadError, WriteError, PoolTimeout) as e:
                self.counters["node_errors"] += 1
                self.last_error = e
                self._refresh(epoch, max(deadline - _monotonic(), 0.001))
                if not (read and tries < retries and _monotonic() < deadline):
                    raise
                tries += 1
                self.counters["retries"] += 1
                target = None
                asking = False

    def pipeline(self, commands: Sequence[Sequence[Any]],
                 timeout: Optional[float] = None) -> List[Any]:
        """Commands split by node, the parts sent concurrently; replies in the caller's
        order with error replies in place.  A redirected command is re-sent (rule 3)."""
        if self._closed:
            raise PoolClosed(self.name, "the cluster pool was stopped")
        t = self._timeout(timeout)
        deadline = _monotonic() + t
        slots = [self.slot_of(c, "commands[%d]" % i) for i, c in enumerate(commands)]
        replies: List[Any] = [None] * len(commands)
        self._send_parts(commands, slots, list(range(len(commands))), replies, deadline)
        for i, r in enumerate(replies):
            if isinstance(r, (MovedError, AskError, TryAgainError, ClusterDownError)):
                try:
                    replies[i] = self._run(commands[i], slots[i], deadline, t, 0, r)
                except ResponseError as e:
                    replies[i] = e
        return replies

    def _send_parts(self, commands: Sequence[Sequence[Any]], slots: List[Optional[int]],
                    which: List[int], replies: List[Any], deadline: float) -> None:
        parts: Dict[Addr, List[int]] = {}
        for i in which:
            parts.setdefault(self._master(slots[i]), []).append(i)
        epoch = self._epoch

        def send(addr: Addr, idx: List[int]) -> None:
            remaining = max(deadline - _monotonic(), 0.001)
            out = self._usable(addr).pipeline([commands[i] for i in idx], timeout=remaining)
            for i, r in zip(idx, out):
                replies[i] = r

        self._fan_out(parts, send, epoch, deadline)

    def _fan_out(self, parts: Dict[Addr, List[int]], send: Callable[[Addr, List[int]], None],
                 epoch: int, deadline: float) -> None:
        """Run ``send`` per node concurrently (the last in this greenlet); the first error
        is raised after every part finished, after a map refresh for a node error."""
        items = list(parts.items())
        if not items:
            return
        greenlets = [gevent.spawn(send, a, idx) for a, idx in items[:-1]]
        error: Optional[BaseException] = None
        try:
            try:
                send(*items[-1])
            except Exception as e:  # noqa: BLE001 - raised below, after the other parts
                error = e
            gevent.joinall(greenlets)
        finally:
            gevent.killall([g for g in greenlets if not g.dead], block=True)
        for g in greenlets:
            if error is None and g.exception is not None:
                error = g.exception
        if error is not None:
            if isinstance(error, PoolClosed) and not self._closed:
                raise ConnectError("a node of this batch left the cluster's map (%s)%s" % (
                    error, "; it may have run there" if _in_flight(error) else ""))
            if isinstance(error, (ConnectError, ReadError, WriteError, PoolTimeout)):
                self.counters["node_errors"] += 1
                self.last_error = error
                self._refresh(epoch, max(deadline - _monotonic(), 0.001))
            raise error

    def transaction(self, commands: Sequence[Sequence[Any]],
                    timeout: Optional[float] = None) -> List[Any]:
        """MULTI ... EXEC on the node of the commands' one slot (ValueError when their keys
        span slots, before anything is sent).  If the slot moved meanwhile, the
        transaction (which did not run) is re-sent to its new owner."""
        if self._closed:
            raise PoolClosed(self.name, "the cluster pool was stopped")
        keys: List[Any] = []
        for c in commands:
            keys.extend(self.keys_of(c))
        slot = self._one_slot(keys, "transaction")
        t = self._timeout(timeout)
        deadline = _monotonic() + t
        backoff = Backoff(0.02, 0.5, "rand_exp")
        target: Optional[Addr] = None
        redirects = 0
        while True:
            epoch = self._epoch
            addr = target or self._master(slot)
            try:
                return self._usable(addr).transaction(
                    commands, timeout=max(deadline - _monotonic(), 0.001))
            except (TransactionAborted, MovedError, AskError, TryAgainError,
                    ClusterDownError) as e:
                # MOVED/ASK/TRYAGAIN while queuing abort the whole transaction: nothing ran
                m = _REDIRECT_IN_TEXT.search(str(e))
                text = str(e)
                if m is None and "TRYAGAIN" not in text and "CLUSTERDOWN" not in text:
                    raise
                redirects += 1
                if m is not None and m.group(1) == "MOVED" and redirects <= self.max_redirects:
                    self.counters["moved"] += 1
                    target = (m.group(3) or addr[0], int(m.group(4)))
                    self._refresh(epoch, max(deadline - _monotonic(), 0.001))
                    continue
                # ASK (the slot is migrating: ASKING cannot precede MULTI on a shared
                # connection), TRYAGAIN, CLUSTERDOWN: wait for the migration to settle
                delay = backoff.next() or 0.5
                if _monotonic() + delay >= deadline:
                    raise
                self.counters["ask" if m is not None else "tryagain"] += 1
                gevent.sleep(delay)
                self._refresh(epoch, max(deadline - _monotonic(), 0.001))
                target = None
            except PoolClosed as e:
                if self._closed:
                    raise
                if not _in_flight(e) and _monotonic() < deadline:
                    target = None       # not sent: its node left the map; try the new owner
                    continue
                raise ConnectionClosed("%s (the node left the cluster's map)" % (e,)) from None
            except (ConnectError, ReadError, WriteError, PoolTimeout) as e:
                self.counters["node_errors"] += 1
                self.last_error = e
                self._refresh(epoch, max(deadline - _monotonic(), 0.001))
                raise

    def noreply_command(self, args: Sequence[Any], timeout: Optional[float] = None) -> None:
        """Run a command without its reply on its keys' node (a redirect is not followed:
        there is no reply to see it in)."""
        self.noreply_pipeline([args], timeout)

    def noreply_pipeline(self, commands: Sequence[Sequence[Any]],
                         timeout: Optional[float] = None) -> None:
        """Commands without their replies, split by node (sent concurrently)."""
        if self._closed:
            raise PoolClosed(self.name, "the cluster pool was stopped")
        deadline = _monotonic() + self._timeout(timeout)
        slots = [self.slot_of(c, "commands[%d]" % i) for i, c in enumerate(commands)]
        parts: Dict[Addr, List[int]] = {}
        for i, s in enumerate(slots):
            parts.setdefault(self._master(s), []).append(i)

        def send(addr: Addr, idx: List[int]) -> None:
            self._usable(addr).noreply_pipeline(
                [commands[i] for i in idx], timeout=max(deadline - _monotonic(), 0.001))

        self._fan_out(parts, send, self._epoch, deadline)

    # -- what needs a connection of its own: routed to the node's RedisPool --

    def _node_method(self, addr: Addr, method: str) -> Callable[..., Any]:
        fn = getattr(self._usable(addr), method, None)
        if fn is None:
            raise NotImplementedError("RedisPool.%s() is not available in this greenpool; "
                                      "RedisClusterPool.%s() routes to it" % (method, method))
        return fn  # type: ignore[no-any-return]

    def pubsub(self, shard_channel: Any = None, **kwargs: Any) -> Any:
        """A node's RedisPool.pubsub(): any master for SUBSCRIBE/PSUBSCRIBE; the master of
        ``shard_channel``'s slot for SSUBSCRIBE (shard channels live on one shard)."""
        slot = None if shard_channel is None else key_slot(shard_channel)
        return self._node_method(self._master(slot), "pubsub")(**kwargs)

    def watch_transaction(self, keys: Sequence[Any], fn: Callable[..., Any],
                          **kwargs: Any) -> Any:
        """RedisPool.watch_transaction() on the node of ``keys``' one slot (ValueError when
        they span slots, before anything is sent)."""
        slot = self._one_slot(list(keys), "watch_transaction")
        return self._node_method(self._master(slot), "watch_transaction")(keys, fn, **kwargs)

    def register_script(self, source: str) -> ClusterScript:
        """A script called as ``script(keys=[...], args=[...])``: EVALSHA on its keys' node,
        EVAL where the node does not have it yet."""
        if not isinstance(source, str):
            raise TypeError("source must be a str, not %s" % type(source).__name__)
        return ClusterScript(self, source)

    # -- introspection and lifecycle --

    def info(self) -> Dict[str, Any]:
        """The cluster's counters, its map, and every node pool's ``info()``."""
        return {
            "name": self.name,
            "startup_nodes": list(self.startup_nodes),
            "masters": [("%s:%d" % s.master) for s in self._shards],
            "slots_covered": sum(1 for s in self._slots if s is not None),
            "read_from_replicas": self.read_from_replicas,
            "retry_reads": self.retry_reads,
            "max_redirects": self.max_redirects,
            "epoch": self._epoch,
            **self.counters,
            "last_error": None if self.last_error is None else str(self.last_error),
            "nodes": self._nodes.info(),
            "stopped": self._closed,
        }

    def get_stats(self) -> Dict[str, Dict[str, Any]]:
        """Each node pool's ``get_stats()``, by ``"host:port"``."""
        return self._nodes.stats()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop every node pool (their in-flight commands fail with PoolClosed)."""
        self._closed = True
        _after_fork.discard(self)
        self._nodes.stop()

    stop = close

    def _after_fork_in_child(self) -> None:
        # the node pools handle their own sockets (the registry forks them); a refresh the
        # parent had in flight is not ours
        self._refreshing = None

    def __enter__(self) -> "RedisClusterPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<RedisClusterPool %r [%d masters, %d node pools, %d/%d slots]%s>" % (
            self.name, len(self._shards), len(self._nodes),
            sum(1 for s in self._slots if s is not None), SLOTS,
            " stopped" if self._closed else "")


_after_fork: "weakref.WeakSet[RedisClusterPool]" = weakref.WeakSet()


def _fork_child() -> None:
    for c in list(_after_fork):
        c._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_child)


__all__ = ["RedisClusterPool", "ClusterScript", "Shard", "key_slot", "crc16", "SLOTS",
           "parse_shards", "parse_slots", "parse_command_table"]
