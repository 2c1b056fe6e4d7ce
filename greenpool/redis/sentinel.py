"""RedisSentinelPool: a RedisPool that follows the master (or the replicas) Sentinel names.

What this owns: asking the sentinels where a service's master (or replicas) is, one
:class:`~greenpool.redis.RedisPool` per node in use, and moving to the new master when
Sentinel fails over.  Every command goes through a node's RedisPool.

Rules:

1. Discovery asks the sentinels in turn (``SENTINEL GET-MASTER-ADDR-BY-NAME``, or
   ``SENTINEL REPLICAS`` for ``role="replica"``); the first that answers moves to the front.
   The node it names is checked with ``ROLE`` before use, and again whenever its pool
   reconnected since the last check.  A node whose ROLE is not the one wanted (a demoted
   master, a sentinel) is not used: discovery runs again until the command's timeout.
2. Re-discovery (one at a time; callers that need it meanwhile wait for it) happens on a
   ``+switch-master`` message (one greenlet stays subscribed on each sentinel), on a READONLY
   reply, on a lost or unreachable node, and on a ROLE mismatch.  Pools of nodes no longer
   used are stopped: the old master's connections are retired.
3. A READONLY reply means the write did not run: the command (pipeline, transaction) is
   re-sent to the new master, within its timeout.  So a write never reports success from a
   node that said it is not the master.  A connection lost under a command fails it (it may
   have run), except read-only commands re-sent per ``retry_reads``.
4. ``role="replica"``: reads are spread round robin over the online replicas (``s_down``,
   ``o_down`` and ``disconnected`` ones left out); with none online, over the master.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import gevent
from gevent.event import Event

from greenpool.errors import (
    ConnectError,
    ConnectionClosed,
    GreenPoolError,
    MasterNotFound,
    PoolClosed,
    PoolTimeout,
    ReadError,
    RedisError,
    ResponseError,
    TransactionAborted,
    WriteError,
)
from greenpool.pool import GreenPool
from greenpool.redis.nodes import NodePools
from greenpool.redis.pool import RedisPool, _check_retries, is_read_only
from greenpool.redis.resp import NOT_ENOUGH, make_reader, pack_command
from greenpool.redis.scripts import Script

log = logging.getLogger("greenpool.redis.sentinel")

_monotonic = time.monotonic
_names = itertools.count(1)
Addr = Tuple[str, int]
ROLES = ("master", "replica")
_NODE_ERRORS = (ConnectError, ReadError, WriteError, PoolTimeout)
#: sentinel channels that change where the service is
_CHANNELS = ("+switch-master", "+try-failover", "+sdown", "-sdown", "+slave")
#: a discovery asked for by an error is skipped when the last one is younger than this
_MIN_DISCOVERY_INTERVAL = 0.05


def _s(x: Any) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _readonly(x: Any) -> bool:
    return isinstance(x, (ResponseError, TransactionAborted)) and "READONLY" in str(x)


class RedisSentinelPool:
    """RedisPool's API on the node Sentinel names.  See the module docstring.

    ``RedisSentinelPool(sentinels=[(host, port), ...], service_name="mymaster",
    role="master", sentinel_password=None, pool_size=5, name=None, timeout=5.0,
    retry_reads=0, sentinel_timeout=1.0, **RedisPool options)``.
    """

    def __init__(self, sentinels: Iterable[Tuple[str, int]], service_name: str,
                 role: str = "master", sentinel_password: Optional[str] = None,
                 pool_size: int = 5, name: Optional[str] = None, timeout: float = 5.0,
                 retry_reads: int = 0, sentinel_timeout: float = 1.0,
                 failover_pause: float = 10.0, **options: Any) -> None:
        for k in ("host", "port", "url", "start"):
            if k in options:
                raise ValueError("RedisSentinelPool does not take %s=: the sentinels name the "
                                 "node" % k)
        self.sentinels = [(str(h), int(p)) for h, p in sentinels]
        if not self.sentinels:
            raise ValueError("sentinels must name at least one (host, port)")
        if not isinstance(service_name, str) or not service_name:
            raise ValueError("service_name must be a non-empty str, not %r" % (service_name,))
        if role not in ROLES:
            raise ValueError("role must be 'master' or 'replica', not %r" % (role,))
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError("timeout must be a number of seconds > 0, not %r" % (timeout,))
        self.service_name = service_name
        self.role = role
        self.sentinel_password = sentinel_password
        self.pool_size = pool_size
        self.name = name if name is not None else "redis-sentinel-%d" % next(_names)
        self.command_timeout = float(timeout)
        self.sentinel_timeout = float(sentinel_timeout)
        self.failover_pause = float(failover_pause)
        self.retry_reads = _check_retries(retry_reads, "retry_reads")
        self.options = dict(options)
        # an unreachable node is skipped until its pool reconnects: sooner than 5 s
        self.options.setdefault("backoff_max", 1.0)
        self._closed = False
        self._sentinel_pools = NodePools(self.name, "the sentinel pool")
        self._nodes = NodePools(self.name, "the sentinel pool")
        self._master: Optional[Addr] = None
        self._replicas: List[Addr] = []
        self._checked: Dict[Addr, int] = {}        # node -> its pool's reconnects at ROLE check
        self._rr = itertools.count()
        self._discovering: Optional[Event] = None
        self._discovered_at = 0.0
        self.counters = {"discoveries": 0, "switches": 0, "readonly": 0, "role_mismatch": 0,
                         "node_errors": 0, "retries": 0, "messages": 0}
        self.last_error: Optional[BaseException] = None
        self._listen_pool = GreenPool(self.name + "/listen", max_connections=len(self.sentinels),
                                      connect_timeout=self.sentinel_timeout)
        self._listeners: List[gevent.Greenlet] = []
        self._trying: Set[Addr] = set()     # sentinels that announced +try-failover
        self._paused: Optional[Event] = None
        self._paused_until = 0.0
        try:
            self._discover(_monotonic() + self.command_timeout, forced=True)
        except BaseException:
            self.close()
            raise
        self._listeners = [gevent.spawn(self._listen, a) for a in self.sentinels]

    # -- sentinels --

    def _sentinel(self, addr: Addr) -> RedisPool:
        """The sentinel's pool (one connection), connected before it is returned: a dead
        sentinel fails at once (ConnectError) and the next is asked."""
        return self._sentinel_pools.open(addr, lambda: RedisPool(
            pool_size=1, host=addr[0], port=addr[1], password=self.sentinel_password,
            name="%s/sentinel/%s:%d" % (self.name, addr[0], addr[1]),
            timeout=self.sentinel_timeout, connect_timeout=self.sentinel_timeout,
            start="wait", backoff_min=0.05, backoff_max=1.0))

    def _ask(self, args: Sequence[Any]) -> Tuple[Addr, Any]:
        """Ask the sentinels in turn; the first that answers moves to the front."""
        errors = []
        for addr in list(self.sentinels):
            try:
                p = self._sentinel(addr)
                if p.last_error is not None and p.active() == 0:
                    errors.append("%s:%d: %s" % (addr[0], addr[1], p.last_error))
                    continue
                reply = p.command(args, timeout=self.sentinel_timeout)
            except ResponseError as e:
                if "unknown command" in str(e).lower() or "unknown subcommand" in str(e).lower():
                    errors.append("%s:%d is not a Redis Sentinel (%s)" % (addr[0], addr[1], e))
                else:
                    errors.append("%s:%d: %s" % (addr[0], addr[1], e))
                continue
            except GreenPoolError as e:
                if isinstance(e, PoolClosed) and self._closed:
                    raise
                errors.append("%s:%d: %s" % (addr[0], addr[1], e))
                continue
            if addr != self.sentinels[0]:
                self.sentinels.remove(addr)
                self.sentinels.insert(0, addr)
            return addr, reply
        raise MasterNotFound("no sentinel answered %s for service %r: %s" % (
            " ".join(_s(a) for a in args[:2]), self.service_name, "; ".join(errors)))

    def discover_master(self) -> Addr:
        """Where the sentinels say the master is (no ROLE check)."""
        _, reply = self._ask(["SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name])
        if not reply:
            raise MasterNotFound("the sentinels do not know a service named %r (SENTINEL "
                                 "MASTERS lists the names they monitor)" % (self.service_name,))
        return (_s(reply[0]), int(reply[1]))

    def discover_replicas(self) -> List[Addr]:
        """The online replicas the sentinels know for the service."""
        _, reply = self._ask(["SENTINEL", "REPLICAS", self.service_name])
        out = []
        for raw in reply or ():
            d = raw if isinstance(raw, dict) else {_s(raw[i]): raw[i + 1]
                                                   for i in range(0, len(raw) - 1, 2)}
            d = {_s(k): _s(v) for k, v in d.items()}
            flags = set(d.get("flags", "").split(","))
            if flags & {"s_down", "o_down", "disconnected"}:
                continue
            if d.get("master-link-status", "ok") != "ok":
                continue
            out.append((d["ip"], int(d["port"])))
        return out

    # -- node pools and discovery --

    def _pool(self, addr: Addr) -> RedisPool:
        return self._nodes.open(addr, lambda: RedisPool(
            pool_size=self.pool_size, host=addr[0], port=addr[1],
            name="%s/%s:%d" % (self.name, addr[0], addr[1]),
            timeout=self.command_timeout, start="degraded", **self.options))

    def _role_ok(self, addr: Addr, want: str, deadline: float) -> bool:
        """ROLE on the node (when its pool connected since the last check)."""
        p = self._pool(addr)
        if self._checked.get(addr) == p.reconnects and p.active():
            return True
        if p.last_error is not None and p.active() == 0:
            raise ConnectError("Redis at %s:%d is unreachable (%s)" % (addr[0], addr[1],
                                                                        p.last_error))
        reconnects = p.reconnects
        role = _s(p.command(["ROLE"], timeout=max(deadline - _monotonic(), 0.001))[0])
        if role == "sentinel":
            raise ConnectError("%s:%d is a Redis Sentinel, not a Redis server of service %r: "
                               "pass the sentinels as sentinels=" % (addr[0], addr[1],
                                                                     self.service_name))
        ok = role == want
        if ok:
            self._checked[addr] = reconnects
        else:
            self.counters["role_mismatch"] += 1
            self._checked.pop(addr, None)
            log.info("redis sentinel %r: %s:%d says ROLE %s, not %s", self.name, addr[0],
                     addr[1], role, want)
        return ok

    def _discover(self, deadline: float, forced: bool = False, seen: int = -1) -> None:
        """Find the master (and replicas); one discovery at a time, others wait for it."""
        if not forced and (seen != self.counters["discoveries"]
                           or _monotonic() - self._discovered_at < _MIN_DISCOVERY_INTERVAL):
            return
        ev = self._discovering
        if ev is not None:
            ev.wait(max(deadline - _monotonic(), 0.0))
            return
        ev = self._discovering = Event()
        try:
            self._do_discover(deadline)
        finally:
            self._discovering = None
            ev.set()

    def _replica_ok(self, addr: Addr, deadline: float) -> bool:
        try:
            return self._role_ok(addr, "slave", deadline)
        except (RedisError, ConnectError, ReadError, WriteError, PoolTimeout) as e:
            if isinstance(e, PoolClosed) and self._closed:
                raise
            log.info("redis sentinel %r: replica %s:%d left out: %s", self.name, addr[0],
                     addr[1], e)
            return False

    def _do_discover(self, deadline: float) -> None:
        delay = 0.02
        while True:
            try:
                master = self.discover_master()
                replicas = self.discover_replicas() if self.role == "replica" else []
                if self._role_ok(master, "master", deadline):
                    replicas = [r for r in replicas if self._replica_ok(r, deadline)]
                    self._install(master, replicas)
                    return
                err: BaseException = ConnectError(
                    "the sentinels name %s:%d as the master of %r, but it is not (yet) one"
                    % (master[0], master[1], self.service_name))
            except (MasterNotFound, RedisError) as e:
                if isinstance(e, ConnectError) and "is a Redis Sentinel" in str(e):
                    raise
                err = e
            except (ConnectError, ReadError, WriteError, PoolTimeout) as e:
                if isinstance(e, PoolClosed) and self._closed:
                    raise
                err = e
            self.last_error = err
            if _monotonic() + delay >= deadline:
                raise err
            gevent.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _install(self, master: Addr, replicas: List[Addr]) -> None:
        if self._master is not None and master != self._master:
            self.counters["switches"] += 1
            log.warning("redis sentinel %r: master of %r is now %s:%d (was %s:%d)", self.name,
                        self.service_name, master[0], master[1], *self._master)
        self._master = master
        self._replicas = replicas
        self.counters["discoveries"] += 1
        self._discovered_at = _monotonic()
        used = {master, *replicas}
        for addr in self._nodes.retire(used):
            self._checked.pop(addr, None)

    # -- the +switch-master listener --

    def _listen(self, addr: Addr) -> None:
        """Stay subscribed on one sentinel (one such greenlet per sentinel: a failover is
        announced by the sentinel that leads it); reconnect after a pause when it drops."""
        while not self._closed:
            try:
                self._listen_on(addr)
            except Exception as e:  # noqa: BLE001 - any failure: reconnect after a pause
                log.info("redis sentinel %r: listening on %s:%d: %s", self.name, addr[0],
                         addr[1], e)
            self._trying.discard(addr)
            self._maybe_resume()
            if not self._closed:
                gevent.sleep(0.5)

    def _listen_on(self, addr: Addr) -> None:
        conn = self._listen_pool.checkout(addr[0], addr[1], "tcp", timeout=self.sentinel_timeout)
        try:
            sock = conn.sock
            reader = make_reader("python", max_reply_size=1 << 20)
            out = b""
            if self.sentinel_password is not None:
                out += pack_command(["AUTH", self.sentinel_password])
            sock.sendall(out + pack_command(["SUBSCRIBE", *_CHANNELS])
                         + pack_command(["PSUBSCRIBE", "-failover-abort-*"]))
            quiet = 0
            sock.settimeout(5.0)
            while not self._closed:
                try:
                    data = sock.recv(65536)
                except OSError as e:
                    if "timed out" not in str(e):
                        raise
                    quiet += 1
                    if quiet > 1:
                        raise ConnectionClosed("sentinel %s:%d did not answer PING" % addr) from None
                    sock.sendall(pack_command(["PING"]))
                    continue
                if not data:
                    raise ConnectionClosed("sentinel %s:%d closed the connection" % addr)
                quiet = 0
                reader.feed(data)
                for _ in range(1000):   # bounded work per read; the rest waits for the next
                    msg = reader.gets()
                    if msg is NOT_ENOUGH:
                        break
                    if isinstance(msg, ResponseError):
                        raise msg
                    self._on_message(addr, msg)
                gevent.sleep(0)
        finally:
            conn.close("the sentinel listener is done with it")
            self._listen_pool.checkin(conn)

    def _on_message(self, sentinel: Addr, msg: Any) -> None:
        if not isinstance(msg, list) or len(msg) < 3:
            return
        kind = _s(msg[0])
        if kind == "pmessage" and len(msg) >= 4:
            channel, text = _s(msg[2]), _s(msg[3])
        elif kind == "message":
            channel, text = _s(msg[1]), _s(msg[2])
        else:
            return
        words = text.split()
        # +switch-master <name> <old ip> <old port> <new ip> <new port>; the others name an
        # instance: <type> <name> <ip> <port> [@ <master name> <master ip> <master port>]
        if channel == "+switch-master":
            mine = words[:1] == [self.service_name]
        else:
            mine = words[1:2] == [self.service_name] or \
                (len(words) > 5 and words[4] == "@" and words[5] == self.service_name)
        if not mine or self._closed:
            return
        self.counters["messages"] += 1
        log.info("redis sentinel %r: %s:%d says %s %s", self.name, sentinel[0], sentinel[1],
                 channel, text)
        if channel == "+try-failover":
            # the master is about to change: hold commands for the master until the new
            # one is known, so that none is acknowledged by a master being replaced
            self._trying.add(sentinel)
            if self._paused is None:
                self._paused = Event()
                self._paused_until = _monotonic() + self.failover_pause
            return
        if channel.startswith("-failover-abort"):
            self._trying.discard(sentinel)
            self._maybe_resume()
            return
        if channel == "+switch-master" or self.role == "replica":
            try:
                self._discover(_monotonic() + self.command_timeout, forced=True)
            except GreenPoolError as e:
                self.last_error = e
            if channel == "+switch-master":
                self._trying.clear()
                self._maybe_resume()

    def _maybe_resume(self) -> None:
        ev = self._paused
        if ev is not None and (not self._trying or _monotonic() >= self._paused_until):
            self._paused = None
            self._trying.clear()
            ev.set()

    def _wait_failover(self, deadline: float) -> None:
        """Commands for the master wait while a failover runs (up to ``failover_pause``)."""
        ev = self._paused
        if ev is None:
            return
        until = min(deadline, self._paused_until)
        ev.wait(max(until - _monotonic(), 0.0))
        if self._paused is ev and _monotonic() >= self._paused_until:
            self._maybe_resume()

    # -- commands --

    def _target(self, read: bool) -> Addr:
        if self.role == "replica" and read and self._replicas:
            return self._replicas[next(self._rr) % len(self._replicas)]
        if self._master is None:
            raise MasterNotFound("no master known for %r" % (self.service_name,))
        return self._master

    def _run(self, call: Any, read: bool, timeout: Optional[float],
             retries: Optional[int], bad: Any = None) -> Any:
        """``call(pool, remaining)`` on the right node, re-discovering as the rules say;
        ``bad(result)``: the result says READONLY (re-send after re-discovery)."""
        if self._closed:
            raise PoolClosed(self.name, "the sentinel pool was stopped")
        t = self.command_timeout if timeout is None else float(timeout)
        deadline = _monotonic() + t
        retries = self.retry_reads if retries is None else _check_retries(retries, "retries")
        tries = 0
        while True:
            seen = self.counters["discoveries"]
            if self._paused is not None and not (read and self.role == "replica"):
                self._wait_failover(deadline)
            addr = self._target(read)
            try:
                want = "slave" if addr != self._master else "master"
                if not self._role_ok(addr, want, deadline):
                    self._discover(deadline, seen=seen)
                    if _monotonic() >= deadline:
                        raise ConnectError("%s:%d is no longer the %s of %r and no other was "
                                           "found within %.3gs" % (addr[0], addr[1], want,
                                                                   self.service_name, t))
                    continue
                result = call(self._pool(addr), max(deadline - _monotonic(), 0.001))
            except ResponseError as e:
                if not _readonly(e):
                    raise
                result = e
            except TransactionAborted as e:
                if not _readonly(e):
                    raise
                result = e
            except PoolClosed as e:
                # its node was retired by a discovery: the command waited for it (not sent:
                # go to the new node) or was in flight on it (it may have run)
                if self._closed:
                    raise
                in_flight = "in flight" in str(e)
                if (in_flight and not (read and tries < retries)) or _monotonic() >= deadline:
                    raise ConnectionClosed("%s (the node is no longer used: the service moved)"
                                           % (e,)) from None
                if in_flight:
                    tries += 1
                continue
            except _NODE_ERRORS as e:
                self.counters["node_errors"] += 1
                self.last_error = e
                self._checked.pop(addr, None)
                try:
                    self._discover(deadline, seen=seen)
                except GreenPoolError:
                    pass
                if not (read and tries < retries and _monotonic() < deadline):
                    raise
                tries += 1
                self.counters["retries"] += 1
                continue
            if not (_readonly(result) or (bad is not None and bad(result))):
                return result
            # the node is a replica now: the write did not run; find the master, re-send
            self.counters["readonly"] += 1
            self._checked.pop(addr, None)
            if _monotonic() >= deadline:
                if isinstance(result, BaseException):
                    raise result
                return result
            self._discover(deadline, forced=True)

    def command(self, args: Sequence[Any], timeout: Optional[float] = None,
                retries: Optional[int] = None) -> Any:
        """Run one command on the master (a read on a replica with role="replica")."""
        return self._run(lambda p, t: p.command(args, timeout=t, retries=0),
                         is_read_only(args), timeout, retries)

    def pipeline(self, commands: Sequence[Sequence[Any]],
                 timeout: Optional[float] = None) -> List[Any]:
        """RedisPool.pipeline on the node; re-sent whole if a reply in it is READONLY
        (its writes did not run; its reads may run twice)."""
        read = all(is_read_only(c) for c in commands)
        return self._run(lambda p, t: p.pipeline(commands, timeout=t), read, timeout, 0,  # type: ignore[no-any-return]
                         lambda r: any(_readonly(x) for x in r))

    def transaction(self, commands: Sequence[Sequence[Any]],
                    timeout: Optional[float] = None) -> List[Any]:
        """RedisPool.transaction on the master; re-sent when aborted by READONLY."""
        return self._run(lambda p, t: p.transaction(commands, timeout=t), False, timeout, 0)  # type: ignore[no-any-return]

    def noreply_command(self, args: Sequence[Any], timeout: Optional[float] = None) -> None:
        self._run(lambda p, t: p.noreply_command(args, timeout=t), False, timeout, 0)

    def noreply_pipeline(self, commands: Sequence[Sequence[Any]],
                         timeout: Optional[float] = None) -> None:
        """Without replies, a write refused as READONLY is not seen: it is lost."""
        self._run(lambda p, t: p.noreply_pipeline(commands, timeout=t), False, timeout, 0)

    def _node_method(self, method: str, read: bool = False) -> Any:
        fn = getattr(self._pool(self._target(read)), method, None)
        if fn is None:
            raise NotImplementedError("RedisPool.%s() is not available in this greenpool; "
                                      "RedisSentinelPool.%s() routes to it" % (method, method))
        return fn

    def pubsub(self, **kwargs: Any) -> Any:
        """The master's RedisPool.pubsub()."""
        return self._node_method("pubsub")(**kwargs)

    def watch_transaction(self, keys: Sequence[Any], fn: Any, **kwargs: Any) -> Any:
        """The master's RedisPool.watch_transaction()."""
        return self._node_method("watch_transaction")(keys, fn, **kwargs)

    def register_script(self, source: Union[str, bytes]) -> Script:
        """A :class:`~greenpool.redis.scripts.Script` run through this pool (EVALSHA,
        EVAL on NOSCRIPT): it follows a failover, where a new master has no script yet."""
        return Script(self, source)

    # -- introspection and lifecycle --

    @property
    def master_address(self) -> Optional[Addr]:
        return self._master

    @property
    def replica_addresses(self) -> List[Addr]:
        return list(self._replicas)

    def node_pools(self) -> Dict[Addr, RedisPool]:
        return self._nodes.copy()

    def info(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "service_name": self.service_name,
            "role": self.role,
            "master": None if self._master is None else "%s:%d" % self._master,
            "replicas": ["%s:%d" % r for r in self._replicas],
            "sentinels": ["%s:%d" % s for s in self.sentinels],
            **self.counters,
            "last_error": None if self.last_error is None else str(self.last_error),
            "nodes": self._nodes.info(),
            "stopped": self._closed,
        }

    def get_stats(self) -> Dict[str, Dict[str, Any]]:
        return self._nodes.stats()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the listeners, every node pool and every sentinel pool."""
        self._closed = True
        gs, self._listeners = self._listeners, []
        gevent.killall([g for g in gs if g is not gevent.getcurrent()], block=True)
        ev, self._paused = self._paused, None
        if ev is not None:
            ev.set()
        self._nodes.stop()
        self._sentinel_pools.stop()
        self._listen_pool.close()

    stop = close

    def __enter__(self) -> "RedisSentinelPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<RedisSentinelPool %r %r role=%s master=%s%s>" % (
            self.name, self.service_name, self.role,
            "%s:%d" % self._master if self._master else "?", " stopped" if self._closed else "")


__all__ = ["RedisSentinelPool", "ROLES"]
