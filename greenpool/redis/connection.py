"""One Redis connection shared by many greenlets: auto-pipelining over one socket.

What this owns: the per-connection protocol object (:class:`RedisProtocol`,
``conn.proto``) and the :class:`RedisConnector` that opens a socket with
:func:`greenpool.net.connect` and runs the handshake (HELLO / AUTH / SELECT /
CLIENT SETNAME / PING) before the pool ever sees the connection.

How a command travels (no greenlet is spawned per command):

1. The caller packs its command(s) (:mod:`greenpool.redis.resp`), then, without
   yielding, appends the bytes to the connection's write list and one *slot*
   to its ``pending`` deque: a ``gevent.hub.Waiter`` for a single reply, or a
   :class:`_Batch` (a Waiter plus the number of replies it collects) for a
   pipeline, a transaction or a noreply batch.  Bytes and slots are appended
   in the same order, so the n-th reply read belongs to the n-th slot.
2. If the connection's writer greenlet is parked, a hub callback wakes it.  It
   runs after every greenlet already runnable, so the commands of all callers
   woken in the same loop iteration go out in one ``sendall`` (auto-pipelining).
3. The reader greenlet reads, feeds the RESP reader and hands each reply to
   the slot at the head of ``pending`` through a hub callback
   (``waiter.switch``).  The caller waits on its own Waiter until its reply or
   its deadline.

Deadlines: every slot is queued with the caller's deadline (``deadlines``, in
step with ``pending``).  One hub timer per connection, armed for the earliest
deadline not yet passed, wakes every slot whose deadline has passed with
:data:`TIMED_OUT` and re-arms itself for the next; so a command costs no timer
of its own, and a caller never waits past its deadline.

Invariants:

* A caller that times out or is killed leaves its slot in ``pending``: its
  reply is still read and dropped there (a Waiter nobody waits on just keeps
  the value), so the stream never desynchronises.
* A batch's bytes are appended in one piece, so no other greenlet's command
  can land inside a MULTI ... EXEC or a CLIENT REPLY OFF ... ON.
* A RESP3 push (``>``) is never a reply: the reader gives it to the pool's
  ``push_handler`` (in the reader greenlet; an exception it raises is logged,
  never raised into the reader) or drops it, counting either in
  :class:`RedisStats`.  Attributes (``|``) never come out of the RESP reader.
* A reply that cannot be decoded (``decode_responses``) is read whole and
  fails only its own caller (:class:`~greenpool.errors.ReplyDecodeError`).
* The reader is fair: it yields to the hub for one loop iteration after
  :data:`SLICE_REPLIES` replies (pushes included) from one read, and after
  every :data:`RECV_SIZE` bytes received without a pause, so a peer
  flooding the socket cannot starve the process's other greenlets and timers.
* A stuck connection leaves rotation: when a caller's reply does not come
  within its timeout, the pool calls :meth:`RedisProtocol.overdue`; if then
  nothing at all arrives for :data:`OVERDUE_GRACE` seconds while replies are
  outstanding, the connection is closed as below (the callers queued on it get
  ``ConnectionClosed`` at once, read-only ones re-sent per ``retry_reads``),
  and the pool replaces it.  A slow reply still arriving keeps it.
* Any fault (EOF, reset, a write error, garbage, a reply over
  ``max_reply_size``) makes the connection dead at once (``is_alive()`` is
  False), fails *every* pending slot with an error that says the command may
  or may not have run (nothing is re-sent), and closes the connection through
  the pool (``conn.close(reason)``), which frees the slot and lets
  :class:`~greenpool.redis.pool.RedisPool` replace it.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import gevent
from gevent import GreenletExit, Timeout, get_hub
from gevent.hub import Waiter

from greenpool import net
from greenpool.connection import Connection, Connector, Key
from greenpool.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    GreenPoolError,
    ReadError,
    ReadTimeout,
    RedisError,
    RemoteProtocolError,
    ResponseError,
    WriteError,
    map_exceptions,
)
from greenpool.redis.resp import NOT_ENOUGH, Push, Reader, make_reader, pack_commands, short_repr

log = logging.getLogger("greenpool.redis")

#: a shared connection takes any number of users: pipelining has no stream limit
MAX_USERS = 1 << 30
RECV_SIZE = 256 * 1024
#: seconds a connection may stay silent, after a caller's reply was overdue, before it is
#: closed and replaced (while replies are outstanding)
OVERDUE_GRACE = 1.0
#: the reader yields to the hub after this many replies in a row (about 1 ms of parsing)
SLICE_REPLIES = 1000
_PING = pack_commands([["PING"]])
_monotonic = time.monotonic
_INF = float("inf")
#: what a slot's Waiter receives when its deadline passed before its reply(s)
TIMED_OUT: Any = type("TIMED_OUT", (), {"__repr__": lambda self: "TIMED_OUT"})()


class _Fail:
    """Delivered to a slot instead of a reply: the caller raises a fresh ``cls(*args)``.

    (One exception instance raised in many greenlets would share one traceback.)
    """

    __slots__ = ("cls", "args")

    def __init__(self, cls: type, args: Tuple[Any, ...]) -> None:
        self.cls = cls
        self.args = args

    def error(self) -> BaseException:
        return self.cls(*self.args)  # type: ignore[no-any-return]


class _Batch:
    """The slot of a pipeline / transaction: collects ``n`` replies, then wakes its caller."""

    __slots__ = ("n", "replies", "waiter")

    def __init__(self, n: int) -> None:
        self.n = n
        self.replies: List[Any] = []
        self.waiter = Waiter()


class RedisStats:
    """Counters shared by all the connections of one pool (``RedisPool.info()``)."""

    __slots__ = ("pushes", "pushes_dropped", "push_handler_errors", "overdue_closed")

    def __init__(self) -> None:
        self.pushes = 0  # given to push_handler
        self.pushes_dropped = 0  # no push_handler
        self.push_handler_errors = 0  # push_handler raised (logged)
        self.overdue_closed = 0  # connections closed: silent after a reply was overdue


class RedisProtocol:
    """``conn.proto`` of a Redis connection: write list, pending slots, reader and writer."""

    __slots__ = ("sock", "reader", "where", "conn", "pending", "deadlines", "out", "alive",
                 "in_flight", "writer_idle", "_writer", "_reader", "_run_callback", "_hub_switch",
                 "push_handler", "stats", "received", "_watchdog", "_loop", "_timer", "_due")

    def __init__(self, sock: Any, reader: Any, where: str,
                 push_handler: Optional[Callable[[List[Any]], Any]] = None,
                 stats: Optional["RedisStats"] = None) -> None:
        self.sock = sock
        self.reader = reader
        self.where = where
        self.push_handler = push_handler
        self.stats = stats if stats is not None else RedisStats()
        self.conn: Optional[Connection] = None
        self.pending: Deque[Any] = deque()
        #: each pending slot's deadline (``time.monotonic()``; inf: none, or already woken)
        self.deadlines: Deque[float] = deque()
        #: the deadline timer and when it is due (inf: not armed)
        self._timer: Any = None
        self._due = _INF
        self.out: List[bytes] = []
        self.alive = True
        #: replies expected and not yet read (commands, not slots)
        self.in_flight = 0
        # False until the writer greenlet parks itself for the first time: it
        # drains ``out`` when it starts, so nothing queued before is lost.
        self.writer_idle = False
        self._writer: Any = None
        self._reader: Any = None
        #: recv() calls that returned data (the overdue check looks for progress)
        self.received = 0
        self._watchdog: Any = None
        hub = get_hub()
        self._loop = hub.loop
        self._run_callback = hub.loop.run_callback
        self._hub_switch = hub.switch

    def start(self, conn: Connection) -> None:
        self.conn = conn
        self._reader = gevent.spawn(self._read_loop)
        self._writer = gevent.spawn(self._write_loop)

    # -- the interface the pool asks --

    def max_users(self) -> int:
        return MAX_USERS

    def is_alive(self) -> bool:
        return self.alive

    def close(self) -> None:
        """Called by the pool (``Connection._close_now``); the socket is closed right after."""
        if self.alive:
            self.abort(ConnectionClosed, ("the Redis connection to %s was closed before the reply "
                                          "arrived; the command may or may not have run" % self.where,))
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.close()
        self._disarm()
        current = gevent.getcurrent()
        for g in (self._reader, self._writer):
            if g is not None and g is not current and not g.dead:
                g.kill(block=False)

    def abandon_in_child(self) -> None:
        """After ``os.fork()``, in the child (the pool calls it before dropping the socket):
        the callers copied from the parent fail now rather than at their timeout, and the
        copied reader and writer stop; nothing is written."""
        self.abort(ConnectionClosed, ("the Redis connection to %s belongs to the parent process "
                                      "(os.fork()); the command may or may not have run there"
                                      % self.where,))
        self.close()

    def overdue(self, grace: float = OVERDUE_GRACE) -> None:
        """A caller's reply did not come within its timeout (never yields): unless
        something arrives within ``grace`` seconds, the connection is stuck."""
        if self.alive and self._watchdog is None:
            timer = self._watchdog = self._loop.timer(grace)
            timer.start(self._check_overdue, self.received, grace)

    def _check_overdue(self, mark: int, grace: float) -> None:
        """Hub callback (must not raise or switch)."""
        timer, self._watchdog = self._watchdog, None
        if timer is not None:
            timer.close()
        if self.alive and self.in_flight and self.received == mark:
            self.stats.overdue_closed += 1
            error = ConnectionClosed(
                "Redis at %s sent nothing for %.3gs after a reply was overdue (the server is "
                "stuck, or the network); the connection was closed and is being replaced"
                % (self.where, grace))
            gevent.spawn(self._fault, error)

    def ping(self, timeout: Optional[float]) -> None:
        """The pool's idle health check (``idle_interval``): PING, and raise unless PONG
        comes within ``timeout``; the pool then closes the connection and it is replaced."""
        waiter = Waiter()
        self.submit(_PING, waiter, 1, _INF if timeout is None else _monotonic() + timeout)
        value = waiter.get()
        if value is TIMED_OUT:
            raise ReadTimeout("Redis at %s did not answer an idle PING within %ss"
                              % (self.where, timeout))
        if type(value) is _Fail:
            raise value.error()
        if isinstance(value, ResponseError):
            raise RedisError("Redis at %s answered an idle PING with %s" % (self.where, value))

    # -- callers --

    def submit(self, data: bytes, slot: Any, replies: int, deadline: float) -> None:
        """Queue ``data`` and the slot that receives its ``replies``, or :data:`TIMED_OUT`
        at ``deadline`` (``time.monotonic()``; inf: never) if they have not all come by
        then (never yields)."""
        if not self.alive:
            raise ConnectionClosed("the Redis connection to %s is closed" % self.where)
        self.out.append(data)
        self.pending.append(slot)
        self.deadlines.append(deadline)
        self.in_flight += replies
        if deadline < self._due:
            self._arm(deadline)
        if self.writer_idle:
            self.writer_idle = False
            self._run_callback(self._writer.switch)

    def _arm(self, deadline: float) -> None:
        """(Re)start the deadline timer for ``deadline``."""
        timer = self._timer
        if timer is not None:
            timer.close()
        delay = deadline - _monotonic()
        timer = self._timer = self._loop.timer(delay if delay > 0 else 0.0)
        timer.ref = False  # it never keeps the process's loop running on its own
        self._due = deadline
        timer.start(self._expire)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        self._due = _INF
        if timer is not None:
            timer.close()

    def _expire(self) -> None:
        """Hub callback (must not raise or switch): wake every slot past its deadline
        with TIMED_OUT (its reply(s) will still be read and dropped), then re-arm for the
        earliest deadline left."""
        self._disarm()
        if not self.alive:
            return
        now = _monotonic()
        deadlines = self.deadlines
        run = self._run_callback
        passed = []
        nearest = _INF
        for i, (slot, deadline) in enumerate(zip(self.pending, deadlines)):
            if deadline <= now:
                passed.append(i)
                run((slot if type(slot) is Waiter else slot.waiter).switch, TIMED_OUT)
            elif deadline < nearest:
                nearest = deadline
        for i in passed:
            deadlines[i] = _INF  # woken once
        if nearest < _INF:
            self._arm(nearest)

    def abort(self, cls: type, args: Tuple[Any, ...], first: Optional[_Fail] = None) -> None:
        """Mark dead and fail every pending slot (the first one with ``first`` if given)."""
        if not self.alive:
            return
        self.alive = False
        pending, self.pending = self.pending, deque()
        self.deadlines = deque()
        self._disarm()
        self.out.clear()
        self.in_flight = 0
        fail = _Fail(cls, args)
        run = self._run_callback
        for slot in pending:
            waiter = slot if type(slot) is Waiter else slot.waiter
            run(waiter.switch, first or fail)
            first = None

    def _fault(self, error: BaseException) -> None:
        """The stream broke: fail everything pending, then close through the pool."""
        if not self.alive:
            return
        text = str(error)
        if isinstance(error, RemoteProtocolError):
            # the reply at the head is the one that broke the stream
            first = _Fail(type(error), (text,))
            args = ("the Redis connection to %s was closed because a reply on it broke the "
                    "protocol (%s); this command may or may not have run" % (self.where, text),)
            self.abort(ConnectionClosed, args, first)
        else:
            args = ("%s; the command may or may not have run (not retried)" % (text,),)
            self.abort(type(error) if isinstance(error, GreenPoolError) else ConnectionClosed, args)
        conn = self.conn
        if conn is not None:
            conn.close(text)

    # -- the two greenlets --

    def _read_loop(self) -> None:
        sock = self.sock
        reader = self.reader
        run = self._run_callback
        pause = self._pause
        slice_ = range(SLICE_REPLIES)  # a for loop counts replies for free
        push = Push
        spent = 0  # bytes received since the last pause
        try:
            while True:
                with map_exceptions(message="reading from Redis at %s" % self.where):
                    # TLS: every record already here, so the woken callers write one batch
                    data = net.recv_more(sock, sock.recv(RECV_SIZE), RECV_SIZE)
                if not data:
                    raise ConnectionClosed("Redis at %s closed the connection" % self.where)
                self.received += 1
                spent += len(data)
                reader.feed(data)
                pending = self.pending
                deadlines = self.deadlines
                while True:
                    for _ in slice_:
                        reply = reader.gets()  # (not cached: a reader falling back swaps it)
                        if reply is NOT_ENOUGH:
                            break
                        if type(reply) is push:
                            self._on_push(reply)
                            continue
                        try:
                            slot = pending.popleft()
                        except IndexError:
                            raise RemoteProtocolError(
                                "Redis at %s sent a reply nobody asked for (%s)"
                                % (self.where, short_repr(reply, 60))) from None
                        self.in_flight -= 1
                        if type(slot) is Waiter:
                            deadlines.popleft()
                            run(slot.switch, reply)
                        else:
                            replies = slot.replies
                            replies.append(reply)
                            if len(replies) == slot.n:
                                deadlines.popleft()
                                run(slot.waiter.switch, replies)
                            else:  # more replies of this batch to come: it stays at the head
                                pending.appendleft(slot)
                    else:  # SLICE_REPLIES replies in a row: let the others run
                        pause()
                        spent = 0
                        pending = self.pending  # (abort() replaces them)
                        deadlines = self.deadlines
                        if not self.alive:
                            return
                        continue
                    break
                if spent >= RECV_SIZE:  # a slice of bytes: let the others run
                    spent = 0
                    pause()
        except GreenletExit:
            pass
        except BaseException as e:  # noqa: BLE001 - any failure ends the connection
            if self.alive:
                if not isinstance(e, GreenPoolError):
                    e = ReadError("reading from Redis at %s failed: %r" % (self.where, e))
                self._fault(e)

    def _pause(self) -> None:
        """Yield to the hub for one loop iteration: IO, timers and every runnable greenlet
        get their turn.  (Not ``gevent.sleep(0)``: that is a callback, and the hub runs up
        to 50 callbacks in a row before it polls again, so a reader yielding that way
        would still hold the process for 50 slices.)"""
        hub = get_hub()
        hub.wait(self._loop.timer(0.0))

    def _on_push(self, push: List[Any]) -> None:
        """Out-of-band data: to the handler, never to a caller; never raises."""
        handler = self.push_handler
        stats = self.stats
        if handler is None:
            stats.pushes_dropped += 1
            return
        stats.pushes += 1
        try:
            handler(push)
        except Exception:  # noqa: BLE001 - the reader must go on reading
            stats.push_handler_errors += 1
            log.exception("push_handler %r failed on a push from Redis at %s (%s); the push is "
                          "dropped, the connection goes on", handler, self.where,
                          short_repr(push, 60))

    def _write_loop(self) -> None:
        sock = self.sock
        out = self.out
        park = self._hub_switch
        try:
            while True:
                while out:
                    data = out[0] if len(out) == 1 else b"".join(out)
                    out.clear()
                    try:
                        net.send_all(sock, data)
                    except (ConnectionResetError, BrokenPipeError):
                        raise ConnectionClosed("Redis at %s closed the connection (reset while "
                                               "writing)" % self.where) from None
                    except OSError as e:
                        raise WriteError("writing to Redis at %s failed: %s" % (self.where, e)) from None
                self.writer_idle = True
                park()  # woken by submit() through a hub callback
        except GreenletExit:
            pass
        except BaseException as e:  # noqa: BLE001
            if self.alive:
                if not isinstance(e, GreenPoolError):
                    e = WriteError("writing to Redis at %s failed: %r" % (self.where, e))
                self._fault(e)

    def __repr__(self) -> str:
        return "<RedisProtocol %s %s pending=%d in_flight=%d>" % (
            self.where, "alive" if self.alive else "dead", len(self.pending), self.in_flight)


class RedisSettings:
    """What every (re)connect needs; built and validated by RedisPool."""

    __slots__ = ("db", "username", "password", "client_name", "protocol", "parser",
                 "decode_responses", "max_reply_size", "net_opts", "push_handler", "stats")

    def __init__(self, *, db: int, username: Optional[str], password: Optional[str],
                 client_name: Optional[str], protocol: int, parser: str, decode_responses: bool,
                 max_reply_size: int, net_opts: Dict[str, Any],
                 push_handler: Optional[Callable[[List[Any]], Any]] = None,
                 stats: Optional[RedisStats] = None) -> None:
        self.db = db
        self.username = username
        self.password = password
        self.client_name = client_name
        self.protocol = protocol
        self.parser = parser
        self.decode_responses = decode_responses
        self.max_reply_size = max_reply_size
        self.net_opts = net_opts
        self.push_handler = push_handler
        self.stats = stats if stats is not None else RedisStats()

    def handshake(self) -> List[List[Any]]:
        """The commands every new connection runs before it is used."""
        cmds: List[List[Any]] = []
        if self.protocol == 3:
            hello: List[Any] = ["HELLO", 3]
            if self.password is not None:
                hello += ["AUTH", self.username or "default", self.password]
            if self.client_name:
                hello += ["SETNAME", self.client_name]
            cmds.append(hello)
        else:
            if self.password is not None:
                cmds.append(["AUTH", self.username, self.password] if self.username
                            else ["AUTH", self.password])
            if self.client_name:
                cmds.append(["CLIENT", "SETNAME", self.client_name])
        if self.db:
            cmds.append(["SELECT", self.db])
        cmds.append(["PING"])  # also tells a password-protected server from an open one
        return cmds


_AUTH_ERRORS = ("NOAUTH", "WRONGPASS", "ERR invalid password", "ERR AUTH",
                "ERR Client sent AUTH", "NOPERM")


class RedisConnector(Connector):
    """Opens Redis connections for a RedisPool (``shared = True``)."""

    shared = True
    open_on_demand = False  # RedisPool keeps pool_size open; callers take a live one or wait
    transports: Tuple[str, ...] = net.ALL_TRANSPORTS  # "unix": host is the path, port 0

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings

    def connect(self, key: Key, timeout: Optional[float], **opts: Any) -> Connection:
        host, port, transport = key
        s = self.settings
        where = "unix:%s" % host if transport == "unix" else "%s:%s" % (host, port)
        sock = net.connect(host, port, transport, timeout=timeout, **{**s.net_opts, **opts})
        try:
            rest = self._handshake(sock, where, timeout)
            reader = make_reader(s.parser, decode_responses=s.decode_responses,
                                 max_reply_size=s.max_reply_size, resp3=s.protocol == 3)
            if rest:  # (read with the next bytes received: nothing is waiting for it yet)
                reader.feed(rest)
        except BaseException:
            sock.close()
            raise
        proto = RedisProtocol(sock, reader, where, s.push_handler, s.stats)
        conn = Connection(key, sock, proto)
        proto.start(conn)
        return conn

    def _handshake(self, sock: Any, where: str, timeout: Optional[float]) -> bytes:
        """Run the handshake; return the bytes that arrived after its replies."""
        cmds = self.settings.handshake()
        reader = Reader()
        replies: List[Any] = []
        deadline = Timeout(timeout) if timeout is not None else None
        if deadline is not None:
            deadline.start()
        try:
            with map_exceptions(deadline, on_timeout=ConnectTimeout, on_error=ConnectError,
                                message="Redis handshake with %s" % where):
                sock.sendall(pack_commands(cmds))
                while len(replies) < len(cmds):
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectError("Redis at %s closed the connection during the handshake "
                                           "(%s)" % (where, " / ".join(str(c[0]) for c in cmds)))
                    reader.feed(data)
                    while len(replies) < len(cmds):
                        reply = reader.gets()
                        if reply is NOT_ENOUGH:
                            break
                        replies.append(reply)
        except RemoteProtocolError as e:
            raise ConnectError("Redis handshake with %s: %s (is this a Redis server?)" % (where, e)) from None
        finally:
            if deadline is not None:
                deadline.close()
        for cmd, reply in zip(cmds, replies):
            if isinstance(reply, ResponseError):
                text = str(reply)
                name = str(cmd[0]).upper()
                if name in ("AUTH", "HELLO") and "unknown command" not in text or text.startswith(_AUTH_ERRORS):
                    raise AuthenticationError(
                        "Redis at %s refused the connection's credentials: %s (check password=, "
                        "username= or the URL's user:password)" % (where, text))
                if name == "HELLO":
                    raise RedisError("Redis at %s does not speak RESP3 (HELLO 3: %s); use "
                                     "protocol=2" % (where, text))
                raise RedisError("Redis at %s refused %s during the connection handshake: %s"
                                 % (where, " ".join(str(a) for a in cmd[:2]), text))
        return reader.unparsed()


__all__ = ["RedisProtocol", "RedisConnector", "RedisSettings", "RedisStats", "MAX_USERS",
           "OVERDUE_GRACE", "SLICE_REPLIES", "TIMED_OUT"]

