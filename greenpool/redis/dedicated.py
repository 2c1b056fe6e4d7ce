"""Dedicated Redis connections: what cannot share an auto-pipelined connection.

What this owns: :class:`DedicatedConnection` (one Redis connection used by one
caller at a time, synchronous request/reply on its own socket), the
:class:`PoolConnector` that opens both kinds of connection for a
:class:`~greenpool.redis.RedisPool`, which commands block
(:func:`blocking_time`) and how a blocking command runs
(:func:`run_blocking`).

Rules:

1. A dedicated connection is an *exclusive* checkout from the RedisPool's own
   :class:`~greenpool.pool.GreenPool` (``checkout`` ... ``checkin``), under its
   own key ``(host, port, transport + "/dedicated")``: caps, FIFO waiting,
   stats, events, fork safety and freeing the slot on every exit are the
   pool's.  The pool's per-host cap (``max_per_host``) is ``max_blocking``, so
   at most ``max_blocking`` dedicated connections are open at once, and the
   shared key's waiters never queue behind them.  The socket is opened and
   set up (AUTH, HELLO, SELECT, CLIENT SETNAME) by the same
   :class:`~greenpool.redis.connection.RedisConnector` handshake as a shared
   one; no greenlet runs for it: the caller reads its own replies.
2. Whoever holds a dedicated connection reads and writes it in its own
   greenlet.  Any failure while a reply is outstanding (timeout, kill, error,
   garbage) closes the connection: its stream position is unknown.  A caller
   that gives up on a blocking command closes it too, so Redis cannot pop a
   value for nobody (counted as ``blocking_abandoned`` in ``info()``).
3. A connection goes back to the pool only in a known state: after a
   blocking command's reply (nothing changed), or after ``RESET`` and the
   handshake again (``RedisPool.connection()``), or ``UNWATCH``
   (``watch_transaction``).  When that fails (a server without RESET), it is
   closed instead.
4. Idle dedicated connections are watched by the pool (the peer's close is
   seen at once) and closed after :data:`DEDICATED_IDLE_TIMEOUT` seconds.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import gevent
from gevent import Timeout

from greenpool import net
from greenpool.connection import CLOSED, Connection, Key
from greenpool.errors import (
    ConnectionClosed,
    GreenPoolError,
    PoolClosed,
    PoolTimeout,
    ReadTimeout,
    ResponseError,
    TimeoutException,
    WriteError,
    WriteTimeout,
    map_exceptions,
)
from greenpool.redis.connection import RECV_SIZE, RedisConnector, RedisSettings
from greenpool.redis.resp import NOT_ENOUGH, make_reader, pack_command, pack_commands

if TYPE_CHECKING:  # pragma: no cover
    from greenpool.redis.pool import RedisPool

_monotonic = time.monotonic

#: the suffix of a dedicated connection's transport in its pool key
DEDICATED = "/dedicated"
#: seconds an idle dedicated connection stays open
DEDICATED_IDLE_TIMEOUT = 60.0
#: a reader yields to the hub after this many reads that did not wait
_SLICE = 16

#: ``poll()`` returns this when nothing complete arrived in time
TIMED_OUT: Any = type("TIMED_OUT", (), {"__repr__": lambda self: "TIMED_OUT"})()

# -- which commands block, and for how long ------------------------------------------

_LAST = "last"   # the block time is the last argument, in seconds
_FIRST = "first"  # the block time is args[1], in seconds (BLMPOP, BZMPOP)
_STREAM = "stream"  # XREAD / XREADGROUP: BLOCK <ms> before STREAMS
_WAIT = "wait"     # WAIT n <ms>
_WAITAOF = "waitaof"  # WAITAOF local n <ms>
_KINDS = {
    "BLPOP": _LAST, "BRPOP": _LAST, "BLMOVE": _LAST, "BRPOPLPUSH": _LAST,
    "BZPOPMIN": _LAST, "BZPOPMAX": _LAST, "BLMPOP": _FIRST, "BZMPOP": _FIRST,
    "XREAD": _STREAM, "XREADGROUP": _STREAM, "WAIT": _WAIT, "WAITAOF": _WAITAOF,
}
#: commands that may block the connection they are sent on (upper case; XREAD and
#: XREADGROUP only with BLOCK)
BLOCKING_COMMANDS = frozenset(_KINDS)
_BLOCKING: Dict[Any, str] = dict(_KINDS)
_BLOCKING.update({k.encode(): v for k, v in _KINDS.items()})
#: their names in upper case, str and bytes (what ``blocking_time`` looks up first)
BLOCKING = frozenset(_BLOCKING)
#: a block time that cannot be read: the server refuses it at once
UNKNOWN = -1.0


def _number(x: Any, scale: float) -> float:
    try:
        value = float(x.decode() if isinstance(x, (bytes, bytearray)) else x)
    except (TypeError, ValueError, UnicodeDecodeError):
        return UNKNOWN
    if not value >= 0 or value == float("inf"):  # negative, NaN, inf: refused by the server
        return UNKNOWN
    return value * scale


def _upper(x: Any) -> Any:
    return x.upper() if type(x) is str or type(x) is bytes else x


def blocking_time(args: Sequence[Any]) -> Optional[float]:
    """How long ``args`` may block its connection: None (it does not block), seconds
    (0: until something arrives), or :data:`UNKNOWN` (unreadable; Redis refuses it)."""
    name = args[0] if args else None
    if type(name) is not str and type(name) is not bytes:
        return None
    kind = _BLOCKING.get(name.upper())
    if kind is None:
        return None
    n = len(args)
    if kind is _LAST:
        return _number(args[-1], 1.0) if n > 2 else UNKNOWN
    if kind is _FIRST:
        return _number(args[1], 1.0) if n > 1 else UNKNOWN
    if kind is _WAIT:
        return _number(args[2], 0.001) if n > 2 else UNKNOWN
    if kind is _WAITAOF:
        return _number(args[3], 0.001) if n > 3 else UNKNOWN
    i = 1  # XREAD [COUNT n] [BLOCK ms] STREAMS ... / XREADGROUP GROUP g c [COUNT n] [BLOCK ms] [NOACK] STREAMS
    while i < n:
        word = _upper(args[i])
        if word in ("STREAMS", b"STREAMS"):
            return None
        if word in ("BLOCK", b"BLOCK"):
            return _number(args[i + 1], 0.001) if i + 1 < n else UNKNOWN
        i += 3 if word in ("GROUP", b"GROUP") else 2 if word in ("COUNT", b"COUNT") else 1
    return None


def add_block(a: float, b: float) -> float:
    """The block time of a batch holding two blocking commands: their sum; 0 (until
    the caller's timeout) if either waits for ever."""
    if a == 0 or b == 0:
        return 0.0
    total = (a if a > 0 else 0.0) + (b if b > 0 else 0.0)
    return total if total > 0 else UNKNOWN


def deadline_for(block: float, timeout: Optional[float], default: float) -> Optional[float]:
    """Seconds a blocking command's caller waits for its reply: its block time plus its
    timeout (``default`` when None); block time 0 waits for the caller's own timeout,
    if any (None: for ever)."""
    if block > 0:
        return block + (default if timeout is None else timeout)
    if block == 0:
        return timeout
    return default if timeout is None else timeout


# -- opening connections -------------------------------------------------------------


class PoolConnector(RedisConnector):
    """A RedisPool's connector: shared connections as :class:`RedisConnector` opens
    them, and dedicated ones (a transport ending in :data:`DEDICATED`) with the same
    socket setup and handshake but no reader greenlet."""

    def __init__(self, settings: RedisSettings) -> None:
        super().__init__(settings)
        base = tuple(RedisConnector.transports)
        self.transports = base + tuple(t + DEDICATED for t in base)

    def connect(self, key: Key, timeout: Optional[float], **opts: Any) -> Connection:
        host, port, transport = key
        if not transport.endswith(DEDICATED):
            return super().connect(key, timeout, **opts)
        base = transport[: -len(DEDICATED)]
        s = self.settings
        where = "%s:%s" % (host, port)
        sock = net.connect(host, port, base, timeout=timeout, **{**s.net_opts, **opts})
        try:
            self._handshake(sock, where, timeout)
            reader = make_reader(s.parser, decode_responses=s.decode_responses,
                                 max_reply_size=s.max_reply_size)
            conn = Connection(key, sock)
            conn._probe = net.Probe(sock, base == "ssl")
        except BaseException:
            sock.close()
            raise
        conn.proto_state = reader
        conn.idle_timeout = DEDICATED_IDLE_TIMEOUT
        return conn


# -- one dedicated connection ----------------------------------------------------------


class DedicatedConnection:
    """One Redis connection for one caller at a time (``with rp.connection() as conn``).

    ``command(args, timeout=None)`` and ``pipeline(commands, timeout=None)`` as on
    RedisPool, but nothing is refused: WATCH, SELECT, CLIENT SETNAME, MULTI ...
    change only this connection, and it is reset before anyone else gets it.
    A timeout, a kill or a broken stream while a reply is outstanding closes it.
    """

    __slots__ = ("pool", "conn", "where", "_reader", "_timeout", "_pid")

    def __init__(self, pool: "RedisPool", conn: Connection) -> None:
        self.pool = pool
        self.conn = conn
        self.where = pool._where
        self._reader = conn.proto_state
        self._timeout = pool.command_timeout
        self._pid = os.getpid()

    @property
    def closed(self) -> bool:
        return self.conn.state is CLOSED

    def command(self, args: Sequence[Any], timeout: Optional[float] = None) -> Any:
        """Run one command; an error reply raises ResponseError."""
        value = self.roundtrip(pack_command(args), 1, self._timeout if timeout is None else timeout)[0]
        if type(value) is ResponseError:
            raise ResponseError(str(value))
        return value

    def pipeline(self, commands: Sequence[Sequence[Any]], timeout: Optional[float] = None) -> List[Any]:
        """Run commands in one write; error replies come back in place."""
        if not commands:
            return []
        return self.roundtrip(pack_commands(commands), len(commands),
                              self._timeout if timeout is None else timeout)

    def close(self, reason: str = "closed by its user") -> None:
        """Close it now; the pool frees its slot."""
        self.conn.close(reason)

    # -- the I/O, in the caller's greenlet --

    def send(self, data: bytes, seconds: Optional[float] = None) -> None:
        """Write ``data`` within ``seconds`` (default: the pool's timeout; a server that
        stopped reading -> WriteTimeout); a failure closes the connection."""
        timer = Timeout(self._timeout if seconds is None else seconds)
        timer.start()
        try:
            self._write(data, timer)
        finally:
            timer.close()

    def _write(self, data: bytes, timer: Optional[Timeout]) -> None:
        if self.conn.state is CLOSED:
            raise self._gone()
        try:
            with map_exceptions(timer, on_timeout=WriteTimeout, on_error=WriteError,
                                message="writing to Redis at %s" % self.where):
                net.send_all(self.conn.sock, data)
        except BaseException as e:
            self._failed(e)
            raise self._mapped(e) from None

    def roundtrip(self, data: bytes, n: int, seconds: Optional[float]) -> List[Any]:
        """Send ``data`` and read ``n`` replies within ``seconds`` (None: no limit).

        Any failure (our timeout -> ReadTimeout, the caller's own timeout or kill,
        a broken stream) closes the connection before it propagates."""
        timer = Timeout(seconds) if seconds is not None else None
        if timer is not None:
            timer.start()
        written = False
        try:
            self._write(data, None)
            written = True
            with map_exceptions(message="reading from Redis at %s" % self.where):
                replies: List[Any] = []
                while len(replies) < n:
                    replies.append(self._next())
            return replies
        except BaseException as e:
            self._failed(e)
            if e is timer and not written:
                raise WriteTimeout("writing to Redis at %s took longer than %.3gs (it stopped "
                                   "reading; the dedicated connection was closed)"
                                   % (self.where, seconds or 0.0)) from None
            if e is timer:
                raise ReadTimeout("no reply from Redis at %s within %.3gs (the dedicated "
                                  "connection was closed, so nothing is left waiting on the "
                                  "server)" % (self.where, seconds or 0.0)) from None
            raise self._mapped(e) from None
        finally:
            if timer is not None:
                timer.close()

    def poll(self, seconds: Optional[float]) -> Any:
        """The next reply, or :data:`TIMED_OUT` after ``seconds`` (the connection stays:
        a half-read reply stays in the reader).  Other failures close it."""
        timer = Timeout(seconds) if seconds is not None else None
        if timer is not None:
            timer.start()
        try:
            with map_exceptions(message="reading from Redis at %s" % self.where):
                return self._next()
        except BaseException as e:
            if e is timer:
                return TIMED_OUT
            self._failed(e)
            raise self._mapped(e) from None
        finally:
            if timer is not None:
                timer.close()

    def _next(self) -> Any:
        reader = self._reader
        sock = self.conn.sock
        reads = 0
        while True:
            reply = reader.gets()
            if reply is not NOT_ENOUGH:
                return reply
            if self.conn.state is CLOSED:
                raise self._gone()
            data = sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionClosed("Redis at %s closed the connection" % self.where)
            reader.feed(data)
            reads += 1
            if reads % _SLICE == 0:
                gevent.sleep(0)  # a flood of replies: let other greenlets run

    def _failed(self, error: BaseException) -> None:
        if self.conn.state is not CLOSED:
            self.conn.close("failed while in use: %s" % (str(error) or type(error).__name__))

    def _gone(self) -> GreenPoolError:
        if os.getpid() != self._pid:
            return ConnectionClosed("the dedicated Redis connection to %s belongs to the parent "
                                    "process (os.fork()); the command may or may not have run "
                                    "there" % self.where)
        if self.pool.closed:
            return PoolClosed(self.pool.name, "the pool was stopped while this dedicated "
                                              "connection was in use")
        return ConnectionClosed("the dedicated Redis connection to %s is closed" % self.where)

    def _mapped(self, e: BaseException) -> BaseException:
        """What the caller sees: PoolClosed once the pool stopped, ConnectionClosed in a
        forked child; a kill or the caller's own gevent.Timeout unchanged."""
        if isinstance(e, Exception) and (self.pool.closed or os.getpid() != self._pid):
            return self._gone()
        return e

    # -- giving it back --

    def release(self, reset: bool) -> None:
        """Back to the pool: at once, or after RESET and the handshake (``reset``);
        closed instead when that fails."""
        conn = self.conn
        if conn.state is CLOSED:
            return
        if reset:
            cmds: List[List[Any]] = [["RESET"]] + self.pool.settings.handshake()
            try:
                replies = self.roundtrip(pack_commands(cmds), len(cmds), self._timeout)
            except Exception:  # noqa: BLE001 - closed by roundtrip already
                return
            if any(isinstance(r, ResponseError) for r in replies):
                conn.close("RESET or the handshake after it failed: %s" % (
                    "; ".join(str(r) for r in replies if isinstance(r, ResponseError))))
                return
        self.pool.checkin(conn)

    def __repr__(self) -> str:
        return "<DedicatedConnection %s %s>" % (self.where, "closed" if self.closed else "open")


def checkout_dedicated(pool: "RedisPool", timeout: Optional[float], owned: bool = True) -> DedicatedConnection:
    """A dedicated connection from ``pool`` within ``timeout`` (default: the pool's);
    ``owned=False``: no greenlet holds it (PubSub, Monitor: the pool never reclaims it)."""
    if timeout is None:
        timeout = pool.command_timeout
    try:
        conn = pool.checkout(pool.host, pool.port, pool.transport + DEDICATED, timeout=timeout)
    except PoolTimeout:
        raise PoolTimeout(pool.name, "no dedicated Redis connection to %s within %.3gs: all "
                          "max_blocking=%d are in use (blocking commands, pubsub(), monitor(), "
                          "watch_transaction(), connection()); raise max_blocking or release them "
                          "sooner" % (pool._where, timeout, pool.max_blocking)) from None
    if not owned:
        conn.holder = None
    return DedicatedConnection(pool, conn)


def run_blocking(pool: "RedisPool", data: bytes, n: int, block: float,
                 timeout: Optional[float]) -> List[Any]:
    """Run a blocking command (``n`` replies) on a dedicated connection (rules 1-3)."""
    default = pool.command_timeout if timeout is None else timeout
    seconds = deadline_for(block, timeout, pool.command_timeout)
    t0 = _monotonic()
    dc = checkout_dedicated(pool, default)
    pool.blocking += 1
    try:
        if seconds is not None:
            seconds = max(seconds - (_monotonic() - t0), 0.0)
        replies = dc.roundtrip(data, n, seconds)
    except BaseException as e:
        if isinstance(e, TimeoutException) or not isinstance(e, Exception):
            pool.blocking_abandoned += 1
        raise
    finally:
        pool.blocking -= 1
    dc.release(reset=False)
    return replies


__all__ = ["DedicatedConnection", "PoolConnector", "blocking_time", "BLOCKING_COMMANDS",
           "DEDICATED", "DEDICATED_IDLE_TIMEOUT", "checkout_dedicated", "run_blocking"]
