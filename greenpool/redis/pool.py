"""RedisPool: N shared Redis connections, auto-pipelined, replaced when they die.

What this owns: the public Redis API (``command``, ``pipeline``,
``transaction``, ``noreply_command``, ``noreply_pipeline``, ``connection``,
``watch_transaction``, ``pubsub``, ``monitor``, ``register_script``, ``info``,
``stop``), its options, and keeping ``pool_size`` connections alive.

It is a :class:`~greenpool.pool.GreenPool` with two keys: ``(host, port,
transport)`` in shared mode (``pool_size`` connections, no idle timeout), and
``(host, port, transport + "/dedicated")`` for exclusive checkouts of dedicated
connections (:mod:`greenpool.redis.dedicated`): ``max_per_host = max_blocking``,
``max_connections = pool_size + max_blocking``.
Rules:

1. Only the pool opens connections: all ``pool_size`` at start (``start="wait"``
   opens them before the constructor returns and raises the connect error;
   ``"degraded"`` opens them in the background), and a replacement greenlet
   whenever one closes, with the configured backoff, until ``pool_size`` are
   live again.  A caller never connects: when no connection is live it waits
   (FIFO, :meth:`GreenPool.acquire_shared`) up to its timeout, then gets a
   :class:`~greenpool.errors.PoolTimeout` naming the last connect error.
2. Every use is counted (``acquire_shared``, or its fast path ``_pick``/``_use``
   for the pool's one shared key, then ``release_shared``), so
   ``get_stats()`` is exact at every point; ``shared_users`` is the number of
   callers waiting for replies.
3. A command's ``timeout`` covers waiting for a live connection and for its
   reply.  A timed-out or killed caller does not desynchronise the connection
   (see :mod:`greenpool.redis.connection`), but a connection that then stays
   silent for ``OVERDUE_GRACE`` (1 s) while replies are outstanding is closed
   and replaced.  A command is never re-sent, with
   one opt-in exception: ``retry_reads=N`` (pool) or ``command(..., retries=N)``
   re-sends a command named in :data:`READ_ONLY_COMMANDS` up to N times on a
   live connection when its connection died before the reply (``ReadError``,
   i.e. ``ConnectionClosed``, or ``WriteError``), within the same ``timeout``.
   Writes, pipelines, transactions and noreply batches are never re-sent.
4. Commands that change the state of the *connection* (MULTI/EXEC, WATCH,
   SELECT, AUTH, HELLO, SUBSCRIBE, MONITOR, CLIENT REPLY, ...) are refused by
   ``command``/``pipeline`` with a ValueError naming what to use instead (the
   table is :mod:`greenpool.redis.commands`): the connection is shared with
   other greenlets.  Use ``transaction()``, ``noreply_*()`` and the
   ``db=``/``password=`` options, or a dedicated connection (``connection()``,
   ``watch_transaction()``, ``pubsub()``, ``monitor()``).  Blocking commands
   (BLPOP, XREAD BLOCK, WAIT, ...) are not refused: ``command()``/``pipeline()``
   send them on a dedicated connection.  RESP3 pushes never reach a caller: they
   go to ``push_handler`` or are dropped and counted (``info()``).
5. After ``os.fork()`` the child never touches the parent's sockets: it drops
   them without a byte sent (as every pool does, see :mod:`greenpool.registry`),
   fails the commands it inherited in flight with
   :class:`~greenpool.errors.ConnectionClosed`, and opens its own ``pool_size``
   connections in the background, as ``start="degraded"`` does; its commands
   wait for them within their timeout.  The parent carries on untouched.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Union
from urllib.parse import parse_qsl, unquote, urlsplit

import gevent
from gevent.hub import Waiter

from greenpool.connection import CLOSED, Connection
from greenpool.errors import (
    REPLY_ERRORS,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    ReplyDecodeError,
    ResponseError,
    TransactionAborted,
    WriteError,
    error_reply,
)
from greenpool.pool import GreenPool, _Host
from greenpool.redis.commands import check_shared as _check_name
from greenpool.redis.connection import (
    MAX_USERS,
    TIMED_OUT,
    RedisSettings,
    RedisStats,
    _Batch,
    _Fail,
)
from greenpool.redis.dedicated import (
    BLOCKING,
    DEDICATED,
    DedicatedConnection,
    PoolConnector,
    add_block,
    blocking_time,
    checkout_dedicated,
    run_blocking,
)
from greenpool.redis.pubsub import Monitor, PubSub
from greenpool.redis.resp import DEFAULT_MAX_REPLY_SIZE, PARSERS, pack_command, pack_commands
from greenpool.redis.scripts import Script, ScriptCommand, is_noscript

log = logging.getLogger("greenpool.redis")

_monotonic = time.monotonic
_names = itertools.count(1)
STARTS = ("wait", "degraded")

#: str command names as sent (any case) that check_shared() passes whatever their
#: arguments and that never block: command() skips both checks for them
_PLAIN: Set[str] = set()
_PLAIN_MAX = 512

_MULTI = pack_command(["MULTI"])
_EXEC = pack_command(["EXEC"])
_REPLY_OFF = pack_command(["CLIENT", "REPLY", "OFF"])
_REPLY_ON = pack_command(["CLIENT", "REPLY", "ON"])

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


def _check_timeout(timeout: Any) -> None:
    """A per-call timeout is None (the pool's) or a number of seconds > 0."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError("timeout must be a number of seconds > 0 (or None for the pool's "
                         "timeout), not %r" % (timeout,))


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


def _evals(commands: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
    """A MULTI cannot re-send one of its commands on NOSCRIPT: scripts go as EVAL."""
    for args in commands:
        if type(args) is ScriptCommand:
            return [c.eval_command() if type(c) is ScriptCommand else c
                    for c in commands]
    return commands


def parse_url(url: str) -> Dict[str, Any]:
    """``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS), or
    ``unix://[[user]:password@]/path/redis.sock[?db=N]`` -> options."""
    if not isinstance(url, str):
        raise TypeError("url must be a str, not %s" % type(url).__name__)
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return _parse_unix_url(url, parts)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("a Redis URL starts with redis://, rediss:// or unix://, not %r" % (url,))
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


def _parse_unix_url(url: str, parts: Any) -> Dict[str, Any]:
    if not parts.path or parts.hostname:
        raise ValueError("a Unix socket URL is unix:///absolute/path/redis.sock[?db=N], not %r"
                         % (url,))
    out: Dict[str, Any] = {"unix_socket_path": unquote(parts.path)}
    if parts.username:
        out["username"] = unquote(parts.username)
    if parts.password is not None:
        out["password"] = unquote(parts.password)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "db" or not value.isdigit():
            raise ValueError("the only query option of a Unix socket URL is db=N, not %r in %r"
                             % (name + "=" + value, url))
        out["db"] = int(value)
    return out


class RedisPool(GreenPool):
    """``pool_size`` shared connections to one Redis server.  See the module docstring.

    ``RedisPool(pool_size=5, host="127.0.0.1", port=6379, db=0, username=None,
    password=None, ssl=False, strategy="round_robin", name=None, timeout=5.0,
    connect_timeout=5.0, backoff_min=0.05, backoff_max=5.0,
    backoff_type="rand_exp", url=None, decode_responses=False, parser="auto",
    max_reply_size=512 MiB, start="wait", client_name=None, protocol=2,
    verify=True, retry_reads=0, push_handler=None, idle_interval=None,
    unix_socket_path=None, max_blocking=10)``.

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
                 verify: Any = True, retry_reads: int = 0,
                 push_handler: Optional[Callable[[List[Any]], Any]] = None,
                 idle_interval: Optional[float] = None,
                 unix_socket_path: Optional[str] = None, max_blocking: int = 10) -> None:
        cfg: Dict[str, Any] = parse_url(url) if url is not None else {}
        for k, v in (("host", host), ("port", port), ("db", db), ("username", username),
                     ("password", password), ("ssl", ssl), ("unix_socket_path", unix_socket_path)):
            if v is not None:
                cfg[k] = v
        host = cfg.get("host", "127.0.0.1")
        port = cfg.get("port", 6379)
        db = cfg.get("db", 0)
        use_ssl = cfg.get("ssl", False)
        username = cfg.get("username")
        password = cfg.get("password")
        unix_socket_path = cfg.get("unix_socket_path")
        if unix_socket_path is not None:
            if not isinstance(unix_socket_path, str) or not unix_socket_path:
                raise TypeError("unix_socket_path must be a non-empty str, not %r"
                                % (unix_socket_path,))
            if use_ssl or "host" in cfg or "port" in cfg:
                raise ValueError("unix_socket_path replaces host/port/ssl: pass one or the other")
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
        if push_handler is not None:
            if not callable(push_handler):
                raise TypeError("push_handler must be a callable taking one push (a list), not %s"
                                % type(push_handler).__name__)
            if protocol != 3:
                raise ValueError("push_handler needs protocol=3: pushes (CLIENT TRACKING "
                                 "invalidations, ...) are a RESP3 feature")
        if isinstance(max_blocking, bool) or not isinstance(max_blocking, int) or max_blocking < 1:
            raise ValueError("max_blocking must be an int >= 1 (dedicated connections open at "
                             "once), not %r" % (max_blocking,))
        if name is None:
            name = "redis-%d" % next(_names)
        settings = RedisSettings(
            db=db, username=username, password=password, client_name=client_name,
            protocol=protocol, parser=parser, decode_responses=decode_responses,
            max_reply_size=max_reply_size,
            net_opts={"verify": verify} if use_ssl else {},
            push_handler=push_handler, stats=RedisStats())
        super().__init__(
            # the shared key holds pool_size (kept by _replace), the dedicated key at most
            # max_blocking (the per-host cap; see greenpool.redis.dedicated)
            name, connector=PoolConnector(settings), max_connections=pool_size + max_blocking,
            max_per_host=max_blocking, timeout=None,
            checkout_timeout=timeout, connect_timeout=connect_timeout, backoff_min=backoff_min,
            backoff_max=backoff_max, backoff_type=backoff_type, strategy=strategy,
            idle_interval=idle_interval)
        self.pool_size = pool_size
        if unix_socket_path is not None:  # the pool's key: (path, 0, "unix")
            host, port = unix_socket_path, 0
        self.host = host
        self.port = port
        self.db = db
        self.unix_socket_path = unix_socket_path
        self.transport = "unix" if unix_socket_path is not None else "ssl" if use_ssl else "tcp"
        self.command_timeout = float(timeout)
        self.retry_reads = retry_reads
        self.push_handler = push_handler
        self._pushes_ok = push_handler is not None
        self.max_blocking = max_blocking
        #: blocking commands waiting for their reply now
        self.blocking = 0
        #: blocking commands whose caller gave up (timeout, kill): their connection was closed
        self.blocking_abandoned = 0
        #: read-only commands re-sent after their connection died (see retry_reads)
        self.retries = 0
        self.settings = settings
        self.reconnects = 0
        self.last_error: Optional[BaseException] = None
        self._replacer: Any = None
        self._loop = gevent.get_hub().loop
        self._h: _Host = self._new_host(host, port, self.transport, {}, prewarm=False)
        self._where = "unix:%s" % host if unix_socket_path is not None else "%s:%s" % (host, port)
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
        ``abandon_in_child`` fails its copied callers; dropping a dedicated connection's
        socket wakes its copied holder, which raises ConnectionClosed), then open our own
        (rule 5)."""
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

    def _pick(self, h: _Host) -> Optional[Connection]:
        """:meth:`GreenPool._pick`, with one connection (the common case) asking its
        :class:`RedisProtocol` directly: ``is_alive()`` is ``alive``, ``max_users()``
        is ``MAX_USERS``."""
        shared = h.shared
        if len(shared) != 1:
            return super()._pick(h)
        c = shared[0]
        proto = c.proto
        if c.state is not CLOSED and proto is not None and proto.alive and c.users < MAX_USERS:
            return c
        return None

    def _no_connection(self, timeout: float) -> PoolTimeout:
        err = self.last_error
        return PoolTimeout(self.name, "no live Redis connection to %s within %.3gs (%d/%d "
                           "connected; last connect error: %s); reconnecting in the background"
                           % (self._where, timeout, self.active(), self.pool_size,
                              err if err is not None else "none"))

    def _call(self, data: bytes, slot: Any, replies: int, timeout: Optional[float],
              shown_timeout: Optional[float] = None) -> Any:
        """Send ``data`` on one connection and wait for ``slot`` (one use of the pool)."""
        if timeout is None:
            timeout = self.command_timeout
        deadline = _monotonic() + timeout
        h = self._h
        # acquire_shared()'s fast path, for the pool's one key; its slow path otherwise
        conn = self._pick(h) if not h.live and not self._closed else None
        if conn is not None:
            self._use(conn)
        else:
            try:
                conn = self.acquire_shared(self.host, self.port, self.transport, timeout)
            except PoolTimeout:
                raise self._no_connection(timeout) from None
        try:
            # the connection's deadline timer wakes the slot with TIMED_OUT at the deadline;
            # a reply arriving later is read and dropped there
            conn.proto.submit(data, slot, replies, deadline)
            value = (slot if type(slot) is Waiter else slot.waiter).get()
        finally:
            self.release_shared(conn)
        if value is TIMED_OUT:
            conn.proto.overdue()  # closed and replaced if it stays silent (see connection.py)
            raise ReadTimeout("no reply from Redis at %s within %.3gs (its reply will be read and "
                              "discarded; the command may still run)"
                              % (self._where, timeout if shown_timeout is None else shown_timeout))
        return value

    def command(self, args: Sequence[Any], timeout: Optional[float] = None,
                retries: Optional[int] = None) -> Any:
        """Run one command, e.g. ``["SET", "k", "v"]``; an error reply raises ResponseError.

        ``retries`` (default: the pool's ``retry_reads``, 0): how many times a command
        named in :data:`READ_ONLY_COMMANDS` is re-sent on a live connection when its
        connection died before the reply, all within ``timeout``.  Other commands are
        never re-sent.
        """
        data = pack_command(args)  # (raises unless args is a non-empty list or tuple)
        name = args[0]
        if type(name) is str and name in _PLAIN:
            block = None
        else:
            key = _check_name(args, "", self._pushes_ok)
            if key in BLOCKING:
                block = blocking_time(args)
            else:
                block = None
                if type(name) is str and key != "CLIENT" and len(_PLAIN) < _PLAIN_MAX:
                    _PLAIN.add(name)
        if timeout is not None:
            _check_timeout(timeout)
        retries = self.retry_reads if retries is None else _check_retries(retries, "retries")
        if block is not None:  # never on a shared connection (greenpool.redis.dedicated)
            value = run_blocking(self, data, 1, block, timeout)[0]
        elif retries and is_read_only(args):
            value = self._call_retrying(data, timeout, retries)
        else:
            value = self._call(data, Waiter(), 1, timeout)
        t = type(value)
        if t is bytes:  # the common reply first
            return value
        if t is _Fail:
            raise value.error()
        if t in REPLY_ERRORS:
            raise error_reply(str(value))
        if t is ReplyDecodeError:
            raise ReplyDecodeError(str(value))
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
        block = None
        scripted = False
        for i, args in enumerate(commands):
            b = (blocking_time(args)
                 if _check_name(args, "commands[%d]: " % i, self._pushes_ok) in BLOCKING else None)
            if b is not None:
                block = b if block is None else add_block(block, b)
            if type(args) is ScriptCommand:
                scripted = True
        if timeout is not None:
            _check_timeout(timeout)
        n = len(commands)
        if not n:
            return []
        if block is None:
            replies = _result(self._call(data, _Batch(n), n, timeout))
        else:  # a blocking command in it: the whole batch on a dedicated connection
            replies = run_blocking(self, data, n, block, timeout)
        if scripted:
            self._rerun_noscript(commands, replies, timeout)
        return replies  # type: ignore[no-any-return]

    def _rerun_noscript(self, commands: Sequence[Sequence[Any]], replies: List[Any],
                        timeout: Optional[float]) -> None:
        """Re-send the scripts Redis did not know (NOSCRIPT: they did not run) as EVAL,
        in one batch, in their order; their replies replace the NOSCRIPT errors."""
        again = [i for i, args in enumerate(commands)
                 if type(args) is ScriptCommand and is_noscript(replies[i])]
        if again:
            evals = [commands[i].eval_command() for i in again]  # type: ignore[attr-defined]
            for i, reply in zip(again, self.pipeline(evals, timeout)):
                replies[i] = reply

    def transaction(self, commands: Sequence[Sequence[Any]], timeout: Optional[float] = None) -> List[Any]:
        """MULTI, the commands, EXEC as one batch: returns EXEC's replies (errors in place).

        A transaction Redis discarded (EXECABORT: a command was rejected while
        queuing; or EXEC returned nil) raises TransactionAborted.
        """
        commands = _evals(commands)
        data = pack_commands(commands)
        for i, args in enumerate(commands):
            _check_name(args, "commands[%d]: " % i, self._pushes_ok)
        if timeout is not None:
            _check_timeout(timeout)
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
            _check_name(args, "commands[%d]: " % i, self._pushes_ok)
            if blocking_time(args) is not None:
                raise ValueError("commands[%d]: %s blocks its connection, and without its reply "
                                 "nobody would know when it ends; use command()" % (i, _s(args[0])))
        if timeout is not None:
            _check_timeout(timeout)
        if not commands:
            return
        reply = _result(self._call(b"".join((_REPLY_OFF, data, _REPLY_ON)), Waiter(), 1, timeout))
        if isinstance(reply, ResponseError):
            raise error_reply(str(reply))

    # -- dedicated connections (greenpool.redis.dedicated) --

    @contextlib.contextmanager
    def connection(  # type: ignore[override]  # a Redis connection, not a raw socket
            self, timeout: Optional[float] = None) -> Iterator[DedicatedConnection]:
        """``with rp.connection() as conn``: a connection of its own for any stateful
        sequence (WATCH, CLIENT SETNAME, SELECT, ...).  ``timeout``: waiting for it
        (a max_blocking slot) and each reply.  At the end it is RESET and set up again
        before anyone else gets it; an exception in the block closes it instead."""
        dc = checkout_dedicated(self, timeout)
        try:
            yield dc
        except BaseException:
            dc.close("an exception left the `with rp.connection()` block")
            raise
        dc.release(reset=True)

    def watch_transaction(self, keys: Sequence[Any], fn: Callable[[DedicatedConnection], Any],
                          retries: int = 10, timeout: Optional[float] = None) -> List[Any]:
        """Check-and-set: WATCH ``keys`` on a dedicated connection, call ``fn(conn)``
        (read with ``conn.command(...)``), and run the list of commands it returns in
        MULTI/EXEC.  When a watched key changed meanwhile (EXEC returns nil) it starts
        again, up to ``retries`` more times, then raises TransactionAborted (nothing of it
        ran).  Returns EXEC's replies.  The connection is UNWATCHed before reuse."""
        retries = _check_retries(retries, "retries")
        keys = list(keys)
        if not keys:
            raise ValueError("watch_transaction needs at least one key to WATCH; for a plain "
                             "MULTI/EXEC use transaction()")
        dc = checkout_dedicated(self, timeout)
        try:
            for _ in range(retries + 1):
                dc.command(["WATCH", *keys], timeout)
                commands = _evals(list(fn(dc) or ()))
                replies = dc.pipeline([["MULTI"], *commands, ["EXEC"]], timeout)
                if isinstance(replies[0], ResponseError):
                    raise ResponseError(str(replies[0]))
                result = replies[-1]
                if result is None:  # EXEC also ended the WATCH
                    continue
                if isinstance(result, ResponseError):
                    queued = [str(r) for r in replies[1:-1] if isinstance(r, ResponseError)]
                    raise TransactionAborted("transaction discarded by Redis: %s%s; nothing in it "
                                             "ran" % (result, " (%s)" % "; ".join(queued) if queued else ""))
                dc.release(reset=False)
                return result  # type: ignore[no-any-return]
            raise TransactionAborted("a WATCHed key (%s) changed before EXEC on each of %d tries "
                                     "(retries=%d); nothing of the transaction ran" % (
                                         ", ".join(_s(k) for k in keys[:5]), retries + 1, retries))
        except Exception:
            if not dc.closed:
                try:  # fn raised, or Redis refused: forget any WATCH, keep the connection
                    dc.pipeline([["DISCARD"], ["UNWATCH"]], timeout)
                except Exception:  # noqa: BLE001 - the failure closed it already
                    pass
                else:
                    dc.release(reset=False)
            raise
        except BaseException:  # killed, or the caller's own timeout, mid-exchange
            dc.close("watch_transaction interrupted")
            raise

    def pubsub(self, ignore_subscribe_messages: bool = False,
               ping_interval: float = 30.0) -> "PubSub":
        """A :class:`~greenpool.redis.pubsub.PubSub` on a connection of its own."""
        return PubSub(self, ignore_subscribe_messages=ignore_subscribe_messages,
                      ping_interval=ping_interval)

    def monitor(self, timeout: Optional[float] = None) -> "Monitor":
        """MONITOR on a connection of its own: iterate for its lines; ``close()`` (or leave
        its ``with`` block, or stop iterating) to end it."""
        return Monitor(self, timeout)

    def register_script(self, source: Union[str, bytes]) -> Script:
        """A callable :class:`~greenpool.redis.scripts.Script`: ``script(keys=[...],
        args=[...])`` runs EVALSHA, and EVAL when Redis answers NOSCRIPT."""
        return Script(self, source)

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
        dh = self._hosts.get((self.host, self.port, self.transport + DEDICATED))
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
            "pushes": self.settings.stats.pushes,
            "pushes_dropped": self.settings.stats.pushes_dropped,
            "push_handler_errors": self.settings.stats.push_handler_errors,
            "overdue_closed": self.settings.stats.overdue_closed,
            "connect_errors": self.counters["connect_errors"],
            "closed_connections": self.counters["closed"],
            "last_error": None if err is None else str(err),
            "max_blocking": self.max_blocking,
            "dedicated": dh.open if dh is not None else 0,
            "dedicated_in_use": dh.in_use if dh is not None else 0,
            "blocking": self.blocking,
            "blocking_abandoned": self.blocking_abandoned,
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
