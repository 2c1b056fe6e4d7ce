"""RedisPool: N shared Redis connections, auto-pipelined, replaced when they die.

What this owns: the public Redis API (``command``, ``pipeline``,
``transaction``, ``noreply_command``, ``noreply_pipeline``, ``info``,
``stop``), its options, and keeping ``pool_size`` connections alive.

It is a :class:`~greenpool.pool.GreenPool` in shared mode with one key
``(host, port, transport)``: ``max_connections = pool_size``, no idle timeout.
Rules:

1. Only the pool opens connections: all ``pool_size`` at start (``start="wait"``
   opens them before the constructor returns and raises the connect error;
   ``"degraded"`` opens them in the background), and a replacement greenlet
   whenever one closes, with the configured backoff, until ``pool_size`` are
   live again.  A caller never connects: when no connection is live it waits
   (FIFO, :meth:`GreenPool.acquire_shared`) up to its timeout, then gets a
   :class:`~greenpool.errors.PoolTimeout` naming the last connect error.
2. Every use is counted (``acquire_shared``/``release_shared``), so
   ``get_stats()`` is exact at every point; ``shared_users`` is the number of
   callers waiting for replies.
3. A command's ``timeout`` covers waiting for a live connection and for its
   reply.  A timed-out or killed caller does not desynchronise the connection
   (see :mod:`greenpool.redis.connection`).  A command is never re-sent, with
   one opt-in exception: ``retry_reads=N`` (pool) or ``command(..., retries=N)``
   re-sends a command named in :data:`READ_ONLY_COMMANDS` up to N times on a
   live connection when its connection died before the reply (``ReadError``,
   i.e. ``ConnectionClosed``, or ``WriteError``), within the same ``timeout``.
   Writes, pipelines, transactions and noreply batches are never re-sent.
4. Commands that change the state of the *connection* (MULTI/EXEC, WATCH,
   SELECT, AUTH, HELLO, SUBSCRIBE, MONITOR, CLIENT REPLY, ...) are refused by
   ``command``/``pipeline``: the connection is shared with other greenlets.
   Use ``transaction()``, ``noreply_*()`` and the ``db=``/``password=`` options.
5. After ``os.fork()`` the child never touches the parent's sockets: it drops
   them without a byte sent (as every pool does, see :mod:`greenpool.registry`),
   fails the commands it inherited in flight with
   :class:`~greenpool.errors.ConnectionClosed`, and opens its own ``pool_size``
   connections in the background, as ``start="degraded"`` does; its commands
   wait for them within their timeout.  The parent carries on untouched.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import unquote, urlsplit

import gevent
from gevent.hub import Waiter

from greenpool.connection import Connection
from greenpool.errors import (
    REPLY_ERRORS,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    ResponseError,
    TransactionAborted,
    WriteError,
    error_reply,
)
from greenpool.pool import GreenPool, _Host
from greenpool.redis.connection import RedisConnector, RedisSettings, _Batch, _Fail
from greenpool.redis.resp import DEFAULT_MAX_REPLY_SIZE, PARSERS, pack_command, pack_commands

log = logging.getLogger("greenpool.redis")

_monotonic = time.monotonic
_TIMED_OUT: Any = type("TIMED_OUT", (), {"__repr__": lambda self: "TIMED_OUT"})()
_names = itertools.count(1)
STARTS = ("wait", "degraded")

_MULTI = pack_command(["MULTI"])
_EXEC = pack_command(["EXEC"])
_REPLY_OFF = pack_command(["CLIENT", "REPLY", "OFF"])
_REPLY_ON = pack_command(["CLIENT", "REPLY", "ON"])

_TX = "use transaction(), which sends MULTI ... EXEC as one batch on one connection"
_WATCH = ("WATCH needs a connection of its own, and RedisPool's connections are shared by many "
          "greenlets; use transaction() for an atomic batch or a Lua script (EVAL) for check-and-set")
_PUBSUB = "pub/sub needs a connection of its own; RedisPool's connections are shared"
_STATEFUL: Dict[Any, str] = {}
for _name, _why in {
    "MULTI": _TX, "EXEC": _TX, "DISCARD": _TX, "WATCH": _WATCH, "UNWATCH": _WATCH,
    "SELECT": "pass db= to RedisPool", "AUTH": "pass password= (and username=) to RedisPool",
    "HELLO": "pass protocol= to RedisPool", "RESET": "it would reset a shared connection",
    "QUIT": "use stop()", "MONITOR": _PUBSUB, "SUBSCRIBE": _PUBSUB, "PSUBSCRIBE": _PUBSUB,
    "SSUBSCRIBE": _PUBSUB, "UNSUBSCRIBE": _PUBSUB, "PUNSUBSCRIBE": _PUBSUB,
    "SUNSUBSCRIBE": _PUBSUB,
}.items():
    _STATEFUL[_name] = _STATEFUL[_name.encode()] = _why
#: Commands ``command()`` may re-send when asked to (``retry_reads`` / ``retries``): they
#: only read, so running one twice changes nothing.  Upper case; the name is matched
#: case-insensitively, as str or bytes.
READ_ONLY_COMMANDS = frozenset((
    "GET", "MGET", "GETRANGE", "SUBSTR", "STRLEN", "EXISTS", "TTL", "PTTL", "EXPIRETIME",
    "PEXPIRETIME", "TYPE", "KEYS", "SCAN", "RANDOMKEY", "DBSIZE", "DUMP", "LCS",
    "HGET", "HMGET", "HGETALL", "HEXISTS", "HLEN", "HKEYS", "HVALS", "HSTRLEN", "HSCAN",
    "HRANDFIELD", "LRANGE", "LLEN", "LINDEX", "LPOS", "SMEMBERS", "SISMEMBER", "SMISMEMBER",
    "SCARD", "SSCAN", "SRANDMEMBER", "SINTER", "SINTERCARD", "SUNION", "SDIFF",
    "ZRANGE", "ZRANGEBYSCORE", "ZRANGEBYLEX", "ZREVRANGE", "ZREVRANGEBYSCORE", "ZREVRANGEBYLEX",
    "ZSCORE", "ZMSCORE", "ZCARD", "ZCOUNT", "ZLEXCOUNT", "ZRANK", "ZREVRANK", "ZSCAN",
    "ZRANDMEMBER", "ZINTERCARD", "GETBIT", "BITCOUNT", "BITPOS", "GEOPOS", "GEODIST",
    "GEOHASH", "XRANGE", "XREVRANGE", "XLEN", "SORT_RO", "EVAL_RO", "EVALSHA_RO", "FCALL_RO",
    "PING", "ECHO", "INFO", "TIME", "LASTSAVE",
))
_READ_ONLY = READ_ONLY_COMMANDS | frozenset(n.encode() for n in READ_ONLY_COMMANDS)
#: a connection that died before the reply (not a timeout, not a refused or garbled reply)
_RETRYABLE = (ReadError, WriteError)
_CLIENT = ("CLIENT", b"CLIENT")
_REPLY = ("REPLY", b"REPLY")


def _check_name(args: Sequence[Any], where: str = "") -> None:
    """Refuse commands that would change a shared connection's state (ValueError)."""
    name = args[0]
    if type(name) is str or type(name) is bytes:
        key = name.upper()
        if key in _STATEFUL:
            raise ValueError("%s%s cannot be sent on RedisPool's shared connections: %s"
                             % (where, _s(key), _STATEFUL[key]))
        if key in _CLIENT and len(args) > 1 and type(args[1]) in (str, bytes) \
                and args[1].upper() in _REPLY:
            raise ValueError("%sCLIENT REPLY cannot be sent on RedisPool's shared connections: "
                             "use noreply_command() / noreply_pipeline()" % (where,))


def is_read_only(args: Sequence[Any]) -> bool:
    """True when ``args`` names a command in :data:`READ_ONLY_COMMANDS`."""
    name = args[0] if args else None
    return (type(name) is str or type(name) is bytes) and name.upper() in _READ_ONLY


def _check_retries(retries: Any, what: str) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError("%s must be an int >= 0 (times a read-only command is re-sent when its "
                         "connection dies), not %r" % (what, retries))
    return retries


def _s(x: Any) -> str:
    return x.decode("ascii", "replace") if isinstance(x, bytes) else str(x)


def _result(value: Any) -> Any:
    if type(value) is _Fail:
        raise value.error()
    return value


def parse_url(url: str) -> Dict[str, Any]:
    """``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS) -> options."""
    if not isinstance(url, str):
        raise TypeError("url must be a str, not %s" % type(url).__name__)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("a Redis URL starts with redis:// or rediss://, not %r" % (url,))
    out: Dict[str, Any] = {"ssl": parts.scheme == "rediss"}
    if parts.hostname:
        out["host"] = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise ValueError("bad port in Redis URL %r" % (url,)) from None
    if port is not None:
        out["port"] = port
    if parts.username:
        out["username"] = unquote(parts.username)
    if parts.password is not None:
        out["password"] = unquote(parts.password)
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ValueError("the path of a Redis URL is the db number, not %r" % (parts.path,))
        out["db"] = int(path)
    if parts.query:
        raise ValueError("query options in a Redis URL are not supported (%r); pass them as "
                         "keyword arguments" % (parts.query,))
    return out


class RedisPool(GreenPool):
    """``pool_size`` shared connections to one Redis server.  See the module docstring.

    ``RedisPool(pool_size=5, host="127.0.0.1", port=6379, db=0, username=None,
    password=None, ssl=False, strategy="round_robin", name=None, timeout=5.0,
    connect_timeout=5.0, backoff_min=0.05, backoff_max=5.0,
    backoff_type="rand_exp", url=None, decode_responses=False, parser="auto",
    max_reply_size=512 MiB, start="wait", client_name=None, protocol=2,
    verify=True, retry_reads=0)``.

    Keywords given explicitly win over the parts of ``url``.
    """

    def __init__(self, pool_size: int = 5, host: Optional[str] = None, port: Optional[int] = None,
                 db: Optional[int] = None, username: Optional[str] = None,
                 password: Optional[str] = None, ssl: Optional[bool] = None,
                 strategy: str = "round_robin", name: Optional[str] = None,
                 timeout: float = 5.0, connect_timeout: float = 5.0,
                 backoff_min: float = 0.05, backoff_max: float = 5.0,
                 backoff_type: str = "rand_exp", url: Optional[str] = None,
                 decode_responses: bool = False, parser: str = "auto",
                 max_reply_size: int = DEFAULT_MAX_REPLY_SIZE, start: str = "wait",
                 client_name: Optional[str] = None, protocol: int = 2,
                 verify: Any = True, retry_reads: int = 0) -> None:
        cfg: Dict[str, Any] = parse_url(url) if url is not None else {}
        for k, v in (("host", host), ("port", port), ("db", db), ("username", username),
                     ("password", password), ("ssl", ssl)):
            if v is not None:
                cfg[k] = v
        host = cfg.get("host", "127.0.0.1")
        port = cfg.get("port", 6379)
        db = cfg.get("db", 0)
        use_ssl = cfg.get("ssl", False)
        username = cfg.get("username")
        password = cfg.get("password")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError("pool_size must be an int >= 1, not %r" % (pool_size,))
        if isinstance(db, bool) or not isinstance(db, int) or db < 0:
            raise ValueError("db must be an int >= 0, not %r" % (db,))
        if start not in STARTS:
            raise ValueError("start must be 'wait' (fail if Redis is unreachable) or 'degraded' "
                             "(start anyway, connect in the background), not %r" % (start,))
        if protocol not in (2, 3):
            raise ValueError("protocol must be 2 (RESP2) or 3 (RESP3, HELLO 3), not %r" % (protocol,))
        if parser not in PARSERS:
            raise ValueError("parser must be one of %s, not %r" % (", ".join(PARSERS), parser))
        if isinstance(max_reply_size, bool) or not isinstance(max_reply_size, int) or max_reply_size < 1:
            raise ValueError("max_reply_size must be an int >= 1 (bytes), not %r" % (max_reply_size,))
        for k, v in (("username", username), ("password", password), ("client_name", client_name)):
            if v is not None and not isinstance(v, str):
                raise TypeError("%s must be a str, not %s" % (k, type(v).__name__))
        if client_name is not None and (not client_name or " " in client_name):
            raise ValueError("client_name must be a non-empty str without spaces, not %r" % (client_name,))
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError("timeout must be a number of seconds > 0, not %r" % (timeout,))
        retry_reads = _check_retries(retry_reads, "retry_reads")
        if name is None:
            name = "redis-%d" % next(_names)
        settings = RedisSettings(
            db=db, username=username, password=password, client_name=client_name,
            protocol=protocol, parser=parser, decode_responses=decode_responses,
            max_reply_size=max_reply_size,
            net_opts={"verify": verify} if use_ssl else {})
        super().__init__(
            name, connector=RedisConnector(settings), max_connections=pool_size, timeout=None,
            checkout_timeout=timeout, connect_timeout=connect_timeout, backoff_min=backoff_min,
            backoff_max=backoff_max, backoff_type=backoff_type, strategy=strategy)
        self.pool_size = pool_size
        self.host = host
        self.port = port
        self.db = db
        self.transport = "ssl" if use_ssl else "tcp"
        self.command_timeout = float(timeout)
        self.retry_reads = retry_reads
        #: read-only commands re-sent after their connection died (see retry_reads)
        self.retries = 0
        self.settings = settings
        self.reconnects = 0
        self.last_error: Optional[BaseException] = None
        self._replacer: Any = None
        self._loop = gevent.get_hub().loop
        self._h: _Host = self._new_host(host, port, self.transport, {}, prewarm=False)
        self._where = "%s:%s" % (host, port)
        if start == "wait":
            try:
                while self._h.open < pool_size:
                    self._open_one()
            except BaseException:
                self.close()
                raise
        else:
            self._replacer = gevent.spawn(self._replace)

    # -- keeping pool_size connections --

    def _open_one(self) -> None:
        h = self._h
        self._reserve(h)
        try:
            conn = self._open_conn(h, {}, True, None)
        except Exception as e:
            self.last_error = e
            raise
        self.release_shared(conn)

    def _replace(self) -> None:
        """Open connections until pool_size are open; back off between failures."""
        from greenpool.backoff import Backoff
        o = self.options
        backoff = Backoff(o.backoff_min, o.backoff_max, o.backoff_type)
        h = self._h
        try:
            while not self._closed and h.open < self.pool_size:
                try:
                    self._open_one()
                except Exception as e:  # noqa: BLE001 - connect, auth, handshake: retry
                    if self.closed:  # stopped while connecting
                        return
                    delay = backoff.next()
                    log.info("redis pool %r: cannot connect to %s (%s); %s", self.name,
                             self._where, e, "retry in %.3fs" % delay if delay is not None
                             else "backoff_type='stop': not retrying")
                    if delay is None:
                        return
                    gevent.sleep(delay)
                    continue
                self.reconnects += 1
                backoff.reset()
        finally:
            if self._replacer is gevent.getcurrent():
                self._replacer = None

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections (each protocol's
        ``abandon_in_child`` fails its copied callers), then open our own (rule 5)."""
        super()._after_fork_in_child()
        g, self._replacer = self._replacer, None
        if g is not None and not g.dead:
            g.kill(block=False)     # the parent's replacer (it counts the parent's host)
        if self._closed:
            return
        self._h = self._new_host(self.host, self.port, self.transport, {}, prewarm=False)
        self._replacer = gevent.spawn(self._replace)

    def _connection_closed(self, conn: Connection, reason: str) -> None:
        if self._closed:
            return
        log.info("redis pool %r: connection %r closed: %s", self.name, conn, reason)
        if self._replacer is None:
            self._replacer = gevent.spawn(self._replace)

    # -- the per-command path --

    def _acquire_conn(self, timeout: float) -> Connection:
        try:
            return self.acquire_shared(self.host, self.port, self.transport, timeout=timeout)
        except PoolTimeout:
            err = self.last_error
            raise PoolTimeout(self.name, "no live Redis connection to %s within %.3gs (%d/%d "
                              "connected; last connect error: %s); reconnecting in the background"
                              % (self._where, timeout, self.active(), self.pool_size,
                                 err if err is not None else "none")) from None

    def _call(self, data: bytes, slot: Any, replies: int, timeout: Optional[float],
              shown_timeout: Optional[float] = None) -> Any:
        """Send ``data`` on one connection and wait for ``slot`` (one use of the pool)."""
        if timeout is None:
            timeout = self.command_timeout
        if shown_timeout is None:
            shown_timeout = timeout
        t0 = _monotonic()
        conn = self._acquire_conn(timeout)
        try:
            conn.proto.submit(data, slot, replies)
            waiter = slot if type(slot) is Waiter else slot.waiter
            remaining = timeout - (_monotonic() - t0)
            # A bare hub timer (~0.3 us) rather than a gevent.Timeout (~2 us): on expiry it
            # wakes the caller's own Waiter with _TIMED_OUT.  A reply arriving later finds
            # nobody waiting on that Waiter and is dropped there.
            timer = self._loop.timer(remaining if remaining > 0 else 0.0)
            timer.start(waiter.switch, _TIMED_OUT)
            try:
                value = waiter.get()
            finally:
                timer.close()
        finally:
            self.release_shared(conn)
        if value is _TIMED_OUT:
            raise ReadTimeout("no reply from Redis at %s within %.3gs (its reply will be read and "
                              "discarded; the command may still run)" % (self._where, shown_timeout))
        return value

    def command(self, args: Sequence[Any], timeout: Optional[float] = None,
                retries: Optional[int] = None) -> Any:
        """Run one command, e.g. ``["SET", "k", "v"]``; an error reply raises ResponseError.

        ``retries`` (default: the pool's ``retry_reads``, 0): how many times a command
        named in :data:`READ_ONLY_COMMANDS` is re-sent on a live connection when its
        connection died before the reply, all within ``timeout``.  Other commands are
        never re-sent.
        """
        data = pack_command(args)
        _check_name(args)
        retries = self.retry_reads if retries is None else _check_retries(retries, "retries")
        if retries and is_read_only(args):
            value = self._call_retrying(data, timeout, retries)
        else:
            value = self._call(data, Waiter(), 1, timeout)
        if type(value) is _Fail:
            raise value.error()
        if type(value) in REPLY_ERRORS:
            raise error_reply(str(value))
        return value

    def _call_retrying(self, data: bytes, timeout: Optional[float], retries: int) -> Any:
        """``_call`` for a read-only command: re-sent while its connection dies under it."""
        if timeout is None:
            timeout = self.command_timeout
        deadline = _monotonic() + timeout
        tries = 0
        while True:
            remaining = deadline - _monotonic()
            tries += 1
            try:
                value = self._call(data, Waiter(), 1, remaining if remaining > 0 else 0.0,
                                   shown_timeout=timeout)
            except _RETRYABLE as e:  # submit() found the connection dead: nothing was sent
                value = _Fail(type(e), e.args)
            if type(value) is not _Fail or not issubclass(value.cls, _RETRYABLE):
                return value
            if tries > retries or _monotonic() >= deadline:
                text = str(value.args[0]) if value.args else value.cls.__name__
                return _Fail(value.cls, ("%s [read-only command tried %d time(s), retries=%d%s]"
                                         % (text.replace(" (not retried)", ""), tries, retries,
                                            "" if tries > retries else "; timeout reached"),)
                             + value.args[1:])
            self.retries += 1
            log.debug("redis pool %r: re-sending a read-only command after: %s",
                      self.name, value.args[0] if value.args else value.cls.__name__)

    def pipeline(self, commands: Sequence[Sequence[Any]], timeout: Optional[float] = None) -> List[Any]:
        """Run commands in one write on one connection; error replies come back in place."""
        data = pack_commands(commands)
        for i, args in enumerate(commands):
            _check_name(args, "commands[%d]: " % i)
        n = len(commands)
        if not n:
            return []
        return _result(self._call(data, _Batch(n), n, timeout))  # type: ignore[no-any-return]

    def transaction(self, commands: Sequence[Sequence[Any]], timeout: Optional[float] = None) -> List[Any]:
        """MULTI, the commands, EXEC as one batch: returns EXEC's replies (errors in place).

        A transaction Redis discarded (EXECABORT: a command was rejected while
        queuing; or EXEC returned nil) raises TransactionAborted.
        """
        data = pack_commands(commands)
        for i, args in enumerate(commands):
            _check_name(args, "commands[%d]: " % i)
        n = len(commands) + 2
        replies = _result(self._call(b"".join((_MULTI, data, _EXEC)), _Batch(n), n, timeout))
        if isinstance(replies[0], ResponseError):
            raise error_reply(str(replies[0]))
        result = replies[-1]
        if result is None:
            raise TransactionAborted("transaction discarded by Redis: EXEC returned nil (a "
                                     "WATCHed key changed); nothing in it ran")
        if isinstance(result, ResponseError):
            queued = [str(r) for r in replies[1:-1] if isinstance(r, ResponseError)]
            raise TransactionAborted("transaction discarded by Redis: %s%s; nothing in it ran" % (
                result, " (%s)" % "; ".join(queued) if queued else ""))
        return result  # type: ignore[no-any-return]

    def noreply_command(self, args: Sequence[Any], timeout: Optional[float] = None) -> None:
        """Run a command without its reply (CLIENT REPLY OFF ... ON); returns once Redis has it."""
        self.noreply_pipeline([args], timeout)

    def noreply_pipeline(self, commands: Sequence[Sequence[Any]], timeout: Optional[float] = None) -> None:
        """Run commands without their replies, in one batch; errors are not reported."""
        data = pack_commands(commands)
        for i, args in enumerate(commands):
            _check_name(args, "commands[%d]: " % i)
        if not commands:
            return
        reply = _result(self._call(b"".join((_REPLY_OFF, data, _REPLY_ON)), Waiter(), 1, timeout))
        if isinstance(reply, ResponseError):
            raise error_reply(str(reply))

    # -- introspection and lifecycle --

    def active(self) -> int:
        """Live connections now."""
        return sum(1 for c in self._h.shared if c.is_alive())

    def info(self) -> Dict[str, Any]:
        """``pool_size``, ``active``, ``strategy``, ``in_flight``, ``reconnects``, and more."""
        h = self._h
        in_flight = 0
        for c in h.shared:
            if c.proto is not None:
                in_flight += c.proto.in_flight
        err = self.last_error
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "pool_size": self.pool_size,
            "active": self.active(),
            "connecting": h.connecting,
            "strategy": self.options.strategy,
            "in_flight": in_flight,
            "users": sum(c.users for c in h.shared),
            "waiting": self._queue_count,
            "reconnects": self.reconnects,
            "retry_reads": self.retry_reads,
            "retries": self.retries,
            "connect_errors": self.counters["connect_errors"],
            "closed_connections": self.counters["closed"],
            "last_error": None if err is None else str(err),
            "stopped": self._closed,
        }

    def close(self) -> None:
        """Stop: in-flight commands fail with PoolClosed, connections close, no reconnect."""
        if self._closed:
            return
        msg = ("the pool was stopped while this command was in flight; it may or may not "
               "have run",)
        from greenpool.errors import PoolClosed
        for c in list(self._h.shared) if hasattr(self, "_h") else ():
            if c.proto is not None:
                c.proto.abort(PoolClosed, (self.name,) + msg)
        super().close()
        g, self._replacer = self._replacer, None
        if g is not None and g is not gevent.getcurrent():
            g.kill(block=False)

    stop = close

    def __enter__(self) -> "RedisPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<RedisPool %r %s db=%d [%d/%d live, %d users, %d waiting]%s>" % (
            self.name, self._where, self.db, self.active(), self.pool_size,
            sum(c.users for c in self._h.shared), self._queue_count,
            " stopped" if self._closed else "")
