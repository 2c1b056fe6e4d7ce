"""GreenPool: bounded, fair, leak-free handing out of connections.

What this owns: how many connections are open (per pool and per host), which
idle one a caller gets, who waits and in what order, and the bookkeeping that
frees a slot on every exit path.  It knows nothing of any protocol: it asks a
connection only whether it is alive, how many more users it can take and to
close (see :mod:`greenpool.connection`).

Rules (each one is tested in tests/test_pool.py):

1. Two semaphores guard every open: one pool-wide (``max_connections``: in
   use + idle + connecting, all keys) and one per key ``(host, port,
   transport)`` (``max_per_host``).  Their counters are ``_open`` and
   ``_Host.open``; a slot is taken *before* connecting (a reservation) and
   given back by :meth:`_close` or a failed connect, nowhere else.
2. Idle connections wait in a LIFO per key (the warmest is reused first);
   the oldest idle connection of *another* key is closed when the pool is full
   and a caller needs a slot (no deadlock between hosts).
3. Callers that must wait queue FIFO with a deadline, per key, ordered
   across keys by a sequence number.  Waking is a *grant*: a connection handed
   over directly, or a reserved slot (``PERMIT``) to open one; a barging
   caller cannot steal it.  A waiter that times out is only marked cancelled
   (O(1)); cancelled entries are skipped when they reach the head.
4. Every change that can let a waiter go on (checkin, close, failed connect,
   a grown limit, freed shared capacity) calls :meth:`_dispatch`.
5. Bookkeeping never yields: state is changed first, then greenlets are woken
   through hub callbacks.
6. A connection whose holder greenlet died without returning it is reclaimed
   (closed; its slot freed) as soon as anyone has to wait, and every 0.25 s
   while anyone waits.
7. Exact counts: ``in_use + free == open`` at every point between calls.
8. An exclusive checkout that would take an idle connection while other
   connections of its key are in use first yields once to the hub, before it
   takes anything (``checkout_yield``, on by default).  The greenlets made
   ready in the same loop turn then each finish their work before any of
   them sends, so their requests leave together and a server on the same
   machine wakes once for several of them (README.rst, "Benchmarks").  A
   caller alone on its key, or one that will wait or connect anyway, does
   not yield here.
9. Adaptive idle timeout (``adaptive_idle_timeout``, on by default).  A
   server closes idle keep-alive connections after its own timeout, and a
   request written at that instant fails (a POST cannot be retried).  The pool
   learns that timeout per key: the longest idle time after which the server
   was seen closing idle connections, confirmed by two closes within 20% of
   each other among the last five (one early close, e.g. a restart, cannot
   lower it; closes after under :data:`LEARN_MIN_IDLE` do not count; what closes
   taught is forgotten after :data:`LEARN_TTL`), or what a protocol reports (HTTP/1.1 ``Keep-Alive:
   timeout=N``: :meth:`learn_server_idle_timeout`; an HTTP/2 GOAWAY(NO_ERROR) on an
   idle connection is an observed close: :meth:`observe_idle_close`); idle connections of the key
   then leave ``min(1, t/2)`` seconds before it (``retire_after``, used like a
   lower ``timeout`` by the idle timer).  ``host_stats`` shows both.

Shared mode (HTTP/2, Redis): one connection serves many greenlets at once.
:meth:`acquire_shared` picks a registered connection with spare capacity by
``strategy`` and opens another only when all are full; :meth:`release_shared`
gives the use back.  ``checkout_h2``/``register_h2``/``unregister_h2`` are
hackney's names for the same mechanism.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import time
import weakref
from collections import deque
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

import gevent
from gevent import Timeout, get_hub, getcurrent
from gevent import sleep as _sleep
from gevent.hub import Waiter

from greenpool import net
from greenpool.backoff import Backoff
from greenpool.connection import (
    CLOSED,
    IDLE,
    IN_USE,
    RETIRED,
    SHARED,
    Connection,
    Connector,
    Key,
)
from greenpool.errors import CheckinError, ConnectError, PoolClosed, PoolTimeout, format_address
from greenpool.events import _subscribers as _listeners
from greenpool.events import emit as _emit
from greenpool.options import PoolOptions, PoolOptionsDict

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger("greenpool.pool")

_monotonic = time.monotonic
_DEFAULT: Any = object()
PERMIT: Any = type("PERMIT", (), {"__repr__": lambda self: "PERMIT"})()
_STOPPED: Any = type("STOPPED", (), {"__repr__": lambda self: "STOPPED"})()
# granted, in a child after os.fork(), to the copies of the parent's waiters: wait again here
_FORKED: Any = type("FORKED", (), {"__repr__": lambda self: "FORKED"})()
REAP_INTERVAL = 0.25
#: rule 9: idle closes sooner than this are not taken for a server's idle timeout (a restart
#: closing connections just used); a value learned from closes is trusted this long
LEARN_MIN_IDLE = 0.5
LEARN_TTL = 600.0
#: the keys get_stats() always has besides the counters (add_stats may not take them)
_STAT_KEYS = frozenset(("name", "max", "max_per_host", "open", "in_use_count", "free_count",
                        "queue_count", "connecting", "shared_count", "shared_users"))
# every pool of this process, registered or not (companion pools, direct GreenPool(...)):
# the registry's fork handler empties them all in the child
_ALL_POOLS: "weakref.WeakSet[GreenPool]" = weakref.WeakSet()


class _Host:
    """Everything the pool keeps for one key."""

    __slots__ = ("key", "open", "in_use", "connecting", "setting_up", "idle", "waiters", "live",
                 "shared", "retired", "rr", "prewarmed", "server_idle", "retire_after", "idle_closes",
                 "learned_until")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.open = 0            # this key's semaphore counter (all states)
        self.in_use = 0          # exclusive checkouts
        self.connecting = 0      # reserved slots still connecting
        self.setting_up = 0      # shared connections open, their setup (handshake) running
        self.idle: Deque[Connection] = deque()   # LIFO: append/pop at the right
        self.waiters: Deque[_Waiter] = deque()   # FIFO, cancelled ones skipped lazily
        self.live = 0            # waiters not cancelled
        self.shared: List[Connection] = []       # registered shared connections
        self.retired: Set[Connection] = set()    # unregistered, finishing their users
        self.rr = 0
        self.prewarmed = False
        self.server_idle: Optional[float] = None   # learned: the server's idle timeout (rule 9)
        self.retire_after: Optional[float] = None  # idle connections leave after this (rule 9)
        self.idle_closes: List[float] = []         # idle times of the last idle closes seen
        self.learned_until = 0.0                   # when a value learned from closes expires


class _Waiter:
    __slots__ = ("host", "seq", "waiter", "grant", "cancelled", "greenlet", "shared", "since")

    def __init__(self, host: _Host, seq: int, shared: bool) -> None:
        self.host = host
        self.seq = seq
        self.waiter = Waiter()
        self.grant: Any = None
        self.cancelled = False
        self.greenlet = getcurrent()
        self.shared = shared
        self.since = _monotonic()


class GreenPool:
    """A named pool of client connections.  See the module docstring for the rules."""

    def __init__(self, name: str = "default", *, connector: Optional[Connector] = None,
                 **options: Unpack[PoolOptionsDict]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a pool name must be a non-empty str, not %r" % (name,))
        self.name = name
        _ALL_POOLS.add(self)
        self.options = PoolOptions.from_kwargs(**options)
        self.connector = connector if connector is not None else Connector()
        self._max = self.options.max_connections
        self._per_host = self.options.per_host
        self._timeout = self.options.timeout
        self._yield = self.options.checkout_yield
        self._hosts: Dict[Key, _Host] = {}
        self._waiting: Dict[Key, _Host] = {}   # hosts with live waiters
        self._open = 0
        self._idle_count = 0
        self._in_use: Set[Connection] = set()
        self._queue_count = 0
        self._seq = itertools.count()
        self._closed = False
        self._dispatching = False
        self._reaper: Any = None
        self._rand = random.Random()
        self._pid = os.getpid()
        # CoDel (queue_target / queue_interval)
        self._codel_timer: Any = None
        self._codel_min = float("inf")
        self._codel_slow = False
        self.counters = dict.fromkeys(
            ("created", "reused", "closed", "timeouts", "connect_errors", "reclaimed",
             "expired", "dropped", "shed", "pings", "ping_failures"), 0)
        # get_stats() sub-dicts a protocol added (add_stats): name -> (source, its counters)
        self._stat_sources: Dict[str, Tuple[Callable[[], Dict[str, Any]], FrozenSet[str]]] = {}

    # -- public: limits and introspection --

    @property
    def max_connections(self) -> int:
        return self._max

    def set_max_connections(self, n: int) -> None:
        """Change the cap.  Shrinking closes idle surplus now and in-use surplus at checkin."""
        PoolOptions(max_connections=n, max_per_host=1)  # validates n
        self._max = n
        if self.options.max_per_host is None:
            self._per_host = n
        while self._open > self._max and self._idle_count:
            self._evict_oldest_idle(None, "pool shrank")
        self._dispatch()

    @property
    def timeout(self) -> Optional[float]:
        """Idle keep-alive in seconds (None: never)."""
        return self._timeout

    def set_timeout(self, seconds: Optional[float]) -> None:
        PoolOptions(timeout=seconds)  # validates
        self._timeout = seconds
        now = _monotonic()
        for h in self._hosts.values():
            for conn in list(h.idle):
                conn._unwatch()
                self._arm(conn, now)
            for conn in h.shared:
                if conn.users == 0:
                    conn._unwatch()
                    self._arm(conn, now)

    @property
    def closed(self) -> bool:
        return self._closed

    def count(self, key: Optional[Tuple[Any, ...]] = None) -> int:
        """Open connections: all, for one ``(host, port, transport)``, or one ``(host, port)``."""
        self._reap()
        if key is None:
            return self._open
        return sum(h.open for h in self._match(key))

    def get_stats(self) -> Dict[str, Any]:
        """Counts now (``in_use_count + free_count == open``) and counters since start."""
        self._reap()
        in_use = free = connecting = shared = streams = 0
        for h in self._hosts.values():
            in_use += h.in_use + h.connecting + len(h.retired)
            connecting += h.connecting
            free += len(h.idle)
            for c in h.shared:
                shared += 1
                streams += c.users
                if c.users:
                    in_use += 1
                else:
                    free += 1
            for c in h.retired:
                streams += c.users
        stats: Dict[str, Any] = {
            "name": self.name,
            "max": self._max,
            "max_per_host": self._per_host,
            "open": self._open,
            "in_use_count": in_use,
            "free_count": free,
            "queue_count": self._queue_count,
            "connecting": connecting,
            "shared_count": shared,
            "shared_users": streams,
        }
        stats.update(self.counters)
        for name, (source, _) in self._stat_sources.items():
            stats[name] = source()
        return stats

    def add_stats(self, name: str, source: Callable[[], Dict[str, Any]],
                  counters: Iterable[str] = ()) -> None:
        """Show ``source()`` as the sub-dict ``name`` of :meth:`get_stats` (a protocol's own
        numbers: HTTP/3 adds ``"http3"`` on first use).  ``counters``: its keys that only
        grow (exporters make them counters, the others gauges).  Adding a name again keeps
        the first source.  ``source`` must not yield."""
        if not name.isidentifier() or name in self.counters or name in _STAT_KEYS:
            raise ValueError("add_stats needs a new identifier as name, not %r" % (name,))
        self._stat_sources.setdefault(name, (source, frozenset(counters)))

    def stats_counters(self) -> FrozenSet[str]:
        """The keys of :meth:`get_stats` that only grow: the pool's counters and, for a
        sub-dict added by :meth:`add_stats`, ``"<name>.<key>"``."""
        out = set(self.counters)
        for name, (_, counters) in self._stat_sources.items():
            out.update("%s.%s" % (name, c) for c in counters)
        return frozenset(out)

    def host_stats(self, host: str, port: int, transport: Optional[str] = None) -> Dict[str, Any]:
        """``active`` (open), ``in_use``, ``free``, ``queue``, ``shared_users`` for one host,
        and what the pool learned of its idle timeout (rule 9): ``server_idle_timeout``
        and ``retire_idle_after`` (seconds, or None before anything was learned)."""
        active = in_use = free = queue = users = 0
        server_idle = retire_after = None
        for h in self._match((host, port) if transport is None else (host, port, transport)):
            if h.server_idle is not None and (server_idle is None or h.server_idle < server_idle):
                server_idle, retire_after = h.server_idle, h.retire_after
            active += h.open
            in_use += h.in_use + h.connecting + len(h.retired)
            free += len(h.idle)
            queue += h.live
            for c in h.shared:
                users += c.users
                if c.users:
                    in_use += 1
                else:
                    free += 1
        return {"active": active, "in_use": in_use, "free": free, "queue": queue,
                "shared_users": users, "server_idle_timeout": server_idle,
                "retire_idle_after": retire_after}

    def __repr__(self) -> str:
        s = self.get_stats()
        return "<GreenPool %r [open %d/%d: %d in use, %d idle | %d waiting]%s>" % (
            self.name, s["open"], self._max, s["in_use_count"], s["free_count"],
            s["queue_count"], " closed" if self._closed else "")

    # -- public: exclusive checkout --

    def checkout(self, host: str, port: int, transport: str = "tcp",
                 timeout: Optional[float] = None, **connect_opts: Any) -> Connection:
        """A connection for the caller alone, until :meth:`checkin` or ``conn.close()``.

        The most recently used idle one for the key, else a new one if both
        semaphores allow, else wait FIFO until ``timeout`` (default: the pool's
        ``checkout_timeout``; 0: don't wait) -> :class:`PoolTimeout`.
        ``connect_opts`` go to the connector when a connection is opened
        (``connect_timeout=`` overrides the pool's for that open).
        """
        key = (host, port, transport)
        h = self._hosts.get(key)
        if h is not None and self._yield and h.in_use and h.idle and not h.live:
            _sleep(0)  # rule 8; nothing is taken yet, so a kill or timeout here costs nothing
            h = self._hosts.get(key)  # the world moved on (a fork forgets every host)
        if self._closed:
            raise self._closed_error()
        if h is None:
            h = self._new_host(host, port, transport, connect_opts)
        # fast path: the warmest idle connection, no allocation
        if h.idle and not h.live:
            conn = self._pop_idle(h)
            if conn is not None:
                self._take_idle(conn, h, getcurrent())
                if self._codel_timer is not None:
                    self._codel_record(0.0)
                return conn
        return self._acquire(h, timeout, connect_opts, shared=False)

    def checkin(self, conn: Connection) -> None:
        """Give an exclusive connection back: reused if healthy, else closed.

        Returning a connection that was already closed is a no-op; one that
        is idle already, shared, or of another pool is a :class:`CheckinError`.
        """
        if conn.pool is not self:
            raise CheckinError(self.name, "%r does not belong to this pool" % (conn,))
        state = conn.state
        if state is not IN_USE:
            if state is CLOSED:
                return
            raise CheckinError(self.name, "%r was already returned (it is %s)" % (conn, state))
        h = conn._host
        if _listeners:
            _emit("checkin", self, h.key)
        reason = self._unreusable(conn, h)
        if reason is not None:
            self._close(conn, reason)
            return
        if h.live:
            # hand it straight to the first waiter for this key (FIFO)
            w = self._first_live(h)
            conn.holder = w.greenlet
            conn.uses += 1
            self.counters["reused"] += 1
            if _listeners:
                _emit("checkout", self, h.key)
            self._grant(w, conn)
            return
        self._in_use.discard(conn)
        h.in_use -= 1
        conn.state = IDLE
        conn.holder = None
        now = conn.last_used = _monotonic()
        h.idle.append(conn)
        self._idle_count += 1
        self._arm(conn, now)
        if self._queue_count:
            self._dispatch()

    @contextlib.contextmanager
    def connection(self, host: str, port: int, transport: str = "tcp",
                   timeout: Optional[float] = None, **connect_opts: Any) -> Iterator[Connection]:
        """``with pool.connection(host, port) as conn``: checkin on success, close on error."""
        conn = self.checkout(host, port, transport, timeout, **connect_opts)
        try:
            yield conn
        except BaseException:
            conn.close("an exception left the `with pool.connection()` block")
            raise
        self.checkin(conn)

    # -- public: shared (multiplexed) connections --

    def acquire_shared(self, host: str, port: int, transport: str = "tcp",
                       timeout: Optional[float] = None,
                       setup: Optional[Callable[[Connection], None]] = None,
                       **connect_opts: Any) -> Connection:
        """One use of a shared connection; give it back with :meth:`release_shared`.

        Picks a registered connection with spare capacity by ``strategy``;
        opens another (up to the limits) only when every one is full, running
        ``setup(conn)`` on it first (e.g. an HTTP/2 handshake that sets
        ``conn.proto``); else waits FIFO like :meth:`checkout`.
        """
        if self._closed:
            raise self._closed_error()
        h = self._hosts.get((host, port, transport))
        if h is None:
            h = self._new_host(host, port, transport, connect_opts)
        if not h.live:
            conn = self._pick(h)
            if conn is not None:
                self._use(conn)
                return conn
        return self._acquire(h, timeout, connect_opts, shared=True, setup=setup)

    def release_shared(self, conn: Connection) -> None:
        """End one use of a shared connection (a no-op once it is closed)."""
        state = conn.state
        if state is CLOSED:
            return
        if conn.users <= 0:
            raise CheckinError(self.name, "%r has no users to release" % (conn,))
        conn.users -= 1
        if _listeners:
            _emit("checkin", self, conn.key)
        if conn.users == 0:
            if state is RETIRED:
                self._close(conn, "retired and no longer used")
                return
            now = conn.last_used = _monotonic()
            self._arm(conn, now)
        if self._queue_count:
            self._dispatch()

    def checkout_h2(self, host: str, port: int, transport: str = "ssl") -> Optional[Connection]:
        """A live shared connection with a free stream (one use taken), or None (hackney)."""
        h = self._hosts.get((host, port, transport))
        if h is None or self._closed:
            return None
        conn = self._pick(h)
        if conn is not None:
            self._use(conn)
        return conn

    def register_h2(self, conn: Connection) -> None:
        """Turn an exclusive checkout into a shared connection others can pick.

        The caller's checkout ends here; it takes a use with :meth:`checkout_h2`
        or :meth:`acquire_shared` like anyone else.
        """
        if conn.pool is not self or conn.state is not IN_USE:
            raise CheckinError(self.name, "only a connection checked out of this pool can be "
                                          "registered, not %r" % (conn,))
        if conn.proto is None:
            raise ValueError("register_h2 needs conn.proto (the protocol that multiplexes it)")
        h = conn._host
        self._in_use.discard(conn)
        h.in_use -= 1
        conn.holder = None
        conn.state = SHARED
        h.shared.append(conn)
        conn.last_used = _monotonic()
        if conn.users == 0:
            self._arm(conn, conn.last_used)
        self._dispatch()

    def unregister_h2(self, conn: Connection) -> None:
        """Take a shared connection out of rotation (GOAWAY): it finishes its users, then closes."""
        if conn.state is not SHARED:
            return
        h = conn._host
        h.shared.remove(conn)
        if conn.users == 0:
            conn.state = RETIRED
            h.retired.add(conn)
            self._close(conn, "unregistered")
            return
        conn.state = RETIRED
        h.retired.add(conn)
        self._dispatch()

    # HTTP/3: the same mechanism, on the key (host, port, "quic") (hackney's names)

    def checkout_h3(self, host: str, port: int) -> Optional[Connection]:
        """A live shared QUIC connection with a free stream (one use taken), or None."""
        return self.checkout_h2(host, port, "quic")

    def register_h3(self, conn: Connection) -> None:
        """:meth:`register_h2` for a QUIC connection (key transport ``"quic"``)."""
        if conn.key[2].partition("|")[0] != "quic":
            raise ValueError("register_h3 takes a QUIC connection, not %r" % (conn,))
        self.register_h2(conn)

    def unregister_h3(self, conn: Connection) -> None:
        """Out of rotation (GOAWAY, a dead peer): it finishes its users, then closes."""
        self.unregister_h2(conn)

    def capacity_changed(self, conn: Connection) -> None:
        """A shared connection can now take more users (e.g. the peer raised its stream
        limit): serve queued waiters at once instead of at the next release.  Never yields."""
        if self._queue_count and not self._closed:
            self._dispatch()

    # -- public: lifecycle --

    def prewarm(self, host: str, port: int, count: Optional[int] = None, transport: str = "tcp",
                **connect_opts: Any) -> gevent.Greenlet:
        """Open connections in the background until ``count`` are open for the key.

        Never waits for a slot and never evicts; failed connects back off as
        configured.  Returns the greenlet (join it to wait).
        """
        if self._closed:
            raise self._closed_error()
        h = self._hosts.get((host, port, transport))
        if h is None:
            h = self._new_host(host, port, transport, connect_opts, prewarm=False)
        n = count if count is not None else (self.options.prewarm_count or 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError("prewarm count must be an int >= 0, not %r" % (n,))
        return gevent.spawn(self._prewarm, h, n, connect_opts)

    def close(self) -> None:
        """Stop: waiters get PoolClosed, every connection (idle, in use, shared) closes."""
        if self._closed:
            return
        self._closed = True
        for h in list(self._waiting.values()):
            while h.live:
                self._grant(self._first_live(h), _STOPPED)
        conns: List[Connection] = list(self._in_use)
        for h in self._hosts.values():
            conns.extend(h.idle)
            conns.extend(h.shared)
            conns.extend(h.retired)
        for conn in conns:
            self._close(conn, "pool stopped")
        for timer in (self._reaper, self._codel_timer):
            if timer is not None:
                timer.close()
        self._reaper = self._codel_timer = None

    stop = close

    # -- internals: acquiring --

    def _new_host(self, host: Any, port: Any, transport: Any, connect_opts: Dict[str, Any],
                  prewarm: bool = True) -> _Host:
        if transport not in self.connector.transports:
            raise ValueError("transport must be one of %s, not %r" % (
                ", ".join(map(repr, self.connector.transports)), transport))
        if not isinstance(host, str) or not host:
            raise TypeError("host must be a non-empty str, not %r" % (host,))
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError("port must be an int, not %s" % type(port).__name__)
        if transport in ("unix", "unix-ssl"):  # host: the socket's path; port: the origin's
            if not 0 <= port < 65536:
                raise ValueError("port must be in 0..65535, not %r" % (port,))
        elif not 0 < port < 65536:
            raise ValueError("port must be in 1..65535, not %r" % (port,))
        key = (host, port, transport)
        h = self._hosts[key] = _Host(key)
        if prewarm and self.options.prewarm_count:
            h.prewarmed = True
            gevent.spawn(self._prewarm, h, self.options.prewarm_count, connect_opts)
        return h

    def _acquire(self, h: _Host, timeout: Optional[float], connect_opts: Dict[str, Any],
                 shared: bool, setup: Optional[Callable[[Connection], None]] = None) -> Connection:
        """The slow path of checkout and acquire_shared: reuse, open, evict or wait."""
        if timeout is None:
            timeout = self.options.checkout_timeout
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise TypeError("timeout must be a number of seconds >= 0 or None, not %r" % (timeout,))
        start = _monotonic()
        deadline = None if timeout is None else start + timeout
        codel = self.options.queue_target is not None
        shedding = False   # this wait was shortened by CoDel (the flag may change meanwhile)
        if codel:
            self._codel_start()
            if self._codel_slow:
                shed = start + 2 * self.options.queue_target  # type: ignore[operator]
                if deadline is None or shed < deadline:
                    deadline = shed
                    shedding = True
        while True:
            if self._closed:
                raise self._closed_error()
            grant = None
            if not h.live:
                grant = self._serve_now(h, shared)
            if grant is None and self._reap():
                continue
            if grant is None:
                remaining = None if deadline is None else deadline - _monotonic()
                if remaining is not None and remaining <= 0:
                    if timeout:
                        # it could wait, but its deadline passed before it queued (the
                        # process descheduled that long on a busy machine): a timeout too
                        self.counters["timeouts"] += 1
                    raise self._timeout_error(h, start, shedding)
                grant = self._wait(h, remaining, shared)
                if grant is None:
                    if codel:
                        self._codel_record(_monotonic() - start)
                    raise self._timeout_error(h, start, shedding)
                if grant is _STOPPED:
                    raise self._closed_error()
                if grant is _FORKED:
                    # a copy, in a child process, of a greenlet that waited in the parent:
                    # it waits on (same deadline) in the child's books, for the child's
                    # connections
                    key = h.key
                    h = self._hosts.get(key) or self._new_host(key[0], key[1], key[2], connect_opts)
                    continue
            if codel:
                self._codel_record(_monotonic() - start)
            if grant is PERMIT:
                return self._open_conn(h, connect_opts, shared, setup)
            conn: Connection = grant
            if conn.state is CLOSED:
                # a shared connection granted, then closed (its peer went away) before
                # this waiter ran: its use went with it; ask again
                continue
            return conn

    def _serve_now(self, h: _Host, shared: bool) -> Any:
        """What the caller at the head of h's queue can have right now, or None."""
        if shared:
            conn = self._pick(h)
            if conn is not None:
                self._use(conn)
                return conn
            if h.connecting or h.setting_up or not self.connector.open_on_demand:
                return None  # a shared connection is on its way (or the pool keeps its own): wait
        elif h.idle:
            conn = self._pop_idle(h)
            if conn is not None:
                self._take_idle(conn, h, getcurrent())
                return conn
        if h.open < self._per_host:
            if self._open < self._max or self._evict_oldest_idle(h, "room for another host"):
                self._reserve(h)
                return PERMIT
        return None

    def _pop_idle(self, h: _Host) -> Optional[Connection]:
        """The warmest idle connection of h whose peer is still there (dead ones are closed)."""
        idle = h.idle
        while idle:
            conn = idle[-1]
            probe = conn._probe  # conn.peer_dropped(), inline once it has its probe
            if probe.dropped() if probe is not None else conn.peer_dropped():
                self._dropped_while_idle(conn, False)  # takes it out of idle
                continue
            idle.pop()
            self._idle_count -= 1
            return conn
        return None

    def _take_idle(self, conn: Connection, h: _Host, holder: Any) -> None:
        conn._unwatch()
        conn.state = IN_USE
        conn.holder = holder
        conn.uses += 1
        h.in_use += 1
        self._in_use.add(conn)
        self.counters["reused"] += 1
        if _listeners:
            _emit("checkout", self, h.key)

    def _use(self, conn: Connection) -> None:
        if conn.users == 0:
            conn._unwatch()
        conn.users += 1
        conn.uses += 1
        if _listeners:
            _emit("checkout", self, conn.key)

    def _pick(self, h: _Host) -> Optional[Connection]:
        """A registered shared connection with spare capacity, by strategy."""
        shared = h.shared
        n = len(shared)
        if not n:
            return None
        strategy = self.options.strategy
        if strategy == "least_busy":
            best = None
            for c in shared:
                if c.capacity() > 0 and c.is_alive() and (best is None or c.users < best.users):
                    best = c
            return best
        start = h.rr if strategy == "round_robin" else self._rand.randrange(n)
        for i in range(n):
            c = shared[(start + i) % n]
            if c.capacity() > 0 and c.is_alive():
                h.rr = (start + i + 1) % n
                return c
        return None

    def _reserve(self, h: _Host) -> None:
        self._open += 1
        h.open += 1
        h.connecting += 1

    def _unreserve(self, h: _Host) -> None:
        self._open -= 1
        h.open -= 1
        h.connecting -= 1
        self._dispatch()

    def _open_conn(self, h: _Host, connect_opts: Dict[str, Any], shared: bool,
                   setup: Optional[Callable[[Connection], None]]) -> Connection:
        """Connect on a reserved slot; the slot is given back on every failure."""
        timeout = self.options.connect_timeout
        if "connect_timeout" in connect_opts:  # a per-call override (HTTP Timeout.connect)
            connect_opts = dict(connect_opts)
            timeout = connect_opts.pop("connect_timeout")
        started = _monotonic()
        pid = self._pid
        try:
            conn = self.connector.connect(h.key, timeout, **connect_opts)
        except BaseException as e:
            if self._pid != pid:
                raise   # a fork reset the books while we connected: this slot is not in them
            if isinstance(e, ConnectError):
                self.counters["connect_errors"] += 1
            self._unreserve(h)
            if _listeners:
                _emit("connect_error", self, h.key, _monotonic() - started, str(e) or type(e).__name__)
            raise
        if self._pid != pid:
            # this greenlet is the child's copy of one that was connecting when the parent
            # forked (the socket was severed in the child; a connector may not have noticed)
            _drop_in_child(conn)
            raise ConnectError("the process forked while this connection to %s was opening: "
                               "it belongs to the parent" % (format_address(*h.key[:2]),))
        h.connecting -= 1
        self.counters["created"] += 1
        if h.live and shared is False:
            # shared waiters of this key waited for this connect to finish
            get_hub().loop.run_callback(self._dispatch)
        conn.pool = self
        conn._host = h
        conn.uses = 1
        lifetime = self.options.max_lifetime
        if lifetime is not None:
            if isinstance(lifetime, tuple):
                lifetime = self._rand.uniform(*lifetime)
            conn.expires_at = conn.created_at + lifetime
        # exclusive until registered as shared
        conn.state = IN_USE
        conn.holder = getcurrent()
        h.in_use += 1
        self._in_use.add(conn)
        if _listeners:
            _emit("connect", self, h.key, _monotonic() - started)
            _emit("checkout", self, h.key)
        if self._closed:
            self._close(conn, "pool stopped while connecting")
            raise self._closed_error()
        if shared:
            # until its setup ends, callers of this key wait for this connection rather
            # than open more (its slot no longer counts as connecting)
            h.setting_up += 1
            try:
                if setup is not None:
                    setup(conn)
            except BaseException:
                h.setting_up -= 1
                self._close(conn, "setup failed")    # dispatches: a waiter may try again
                raise
            h.setting_up -= 1
            conn.users = 1
            self.register_h2(conn)
        return conn

    def _wait(self, h: _Host, remaining: Optional[float], shared: bool) -> Any:
        """Queue FIFO until granted; None when ``remaining`` runs out."""
        w = _Waiter(h, next(self._seq), shared)
        h.waiters.append(w)
        h.live += 1
        self._queue_count += 1
        if h.live == 1:
            self._waiting[h.key] = h
        self._start_reaper()
        timer = Timeout(remaining) if remaining is not None else None
        try:
            if timer is not None:
                timer.start()
            try:
                w.waiter.get()
            except Timeout as t:
                if t is not timer:
                    raise
        except BaseException:
            # killed or the caller's own timeout: give back whatever was granted
            if w.grant is None:
                self._cancel(w)
            else:
                self._refuse(w)
            raise
        finally:
            if timer is not None:
                timer.close()
        if w.grant is None:
            self._cancel(w)
            self.counters["timeouts"] += 1
        elif _listeners and w.grant is not _STOPPED and w.grant is not _FORKED:
            _emit("wait", self, h.key, _monotonic() - w.since)
        return w.grant

    def _first_live(self, h: _Host) -> _Waiter:
        q = h.waiters
        while q[0].cancelled:
            q.popleft()
        return q[0]

    def _grant(self, w: _Waiter, grant: Any) -> None:
        h = w.host
        h.waiters.popleft()
        h.live -= 1
        self._queue_count -= 1
        if not h.live:
            del self._waiting[h.key]
            h.waiters.clear()
        w.grant = grant
        get_hub().loop.run_callback(w.waiter.switch, None)

    def _cancel(self, w: _Waiter) -> None:
        if w.cancelled:
            return
        w.cancelled = True
        h = w.host
        h.live -= 1
        self._queue_count -= 1
        if not h.live:
            self._waiting.pop(h.key, None)
            h.waiters.clear()
        elif len(h.waiters) > 64 and len(h.waiters) > 4 * h.live:
            h.waiters = deque(x for x in h.waiters if not x.cancelled)

    def _refuse(self, w: _Waiter) -> None:
        """A granted waiter went away before using its grant: pass it on."""
        grant = w.grant
        if grant is PERMIT:
            self._unreserve(w.host)
        elif isinstance(grant, Connection):
            if w.shared:
                self.release_shared(grant)
            else:
                grant.holder = getcurrent()
                self.checkin(grant)

    def _dispatch(self) -> None:
        """Serve waiters while something can serve them; FIFO across keys by seq.

        Not re-entrant: a close inside it (a dead idle connection found while
        serving) does not dispatch again; this loop looks again instead.
        """
        if self._dispatching:
            return
        self._dispatching = True
        try:
            self._dispatch_loop()
        finally:
            self._dispatching = False

    def _dispatch_loop(self) -> None:
        while self._queue_count and not self._closed:
            best: Optional[_Waiter] = None
            for h in self._waiting.values():
                w = self._first_live(h)
                if best is not None and w.seq > best.seq:
                    continue
                if self._can_serve(h, w.shared):
                    best = w
            if best is None:
                return
            h = best.host
            grant = self._serve_now(h, best.shared)
            if grant is None:  # nothing after all (e.g. the idle one was dead): look again
                continue
            if isinstance(grant, Connection) and not best.shared:
                grant.holder = best.greenlet
            self._grant(best, grant)

    def _can_serve(self, h: _Host, shared: bool) -> bool:
        if shared:
            for c in h.shared:
                if c.capacity() > 0:
                    return True
            if h.connecting or h.setting_up or not self.connector.open_on_demand:
                return False
        elif h.idle:
            return True
        if h.open < self._per_host:
            return self._open < self._max or self._idle_count > len(h.idle)
        return False

    # -- internals: closing and expiry --

    def _unreusable(self, conn: Connection, h: _Host) -> Optional[str]:
        if self._closed:
            return "pool stopped"
        if self._open > self._max:
            return "pool shrank"
        if h.open > self._per_host:
            return "host limit shrank"
        max_requests = self.options.max_requests
        if max_requests is not None and conn.uses >= max_requests:
            return "max_requests reached"
        if conn.expires_at is not None and _monotonic() >= conn.expires_at:
            return "max_lifetime reached"
        return None

    def _close(self, conn: Connection, reason: str, dispatch: bool = True) -> None:
        """Close a connection and give its slots back.  The one place slots are freed.

        ``dispatch=False`` when the caller takes the freed slot itself (eviction).
        """
        state = conn.state
        if state is CLOSED:
            return
        h = conn._host
        if state is IDLE:
            try:
                h.idle.remove(conn)
            except ValueError:
                pass
            else:
                self._idle_count -= 1
        elif state is IN_USE:
            self._in_use.discard(conn)
            h.in_use -= 1
        elif state is SHARED:
            h.shared.remove(conn)
        elif state is RETIRED:
            h.retired.discard(conn)
        self._open -= 1
        h.open -= 1
        self.counters["closed"] += 1
        log.debug("pool %r: closing %r: %s", self.name, conn, reason,
                  extra={"greenpool_pool": self.name, "greenpool_key": h.key, "greenpool_reason": reason})
        if _listeners:
            _emit("close", self, h.key, None, reason)
        try:
            conn._close_now()
        finally:
            if dispatch:
                self._dispatch()
            self._connection_closed(conn, reason)

    def _connection_closed(self, conn: Connection, reason: str) -> None:
        """Hook for subclasses (RedisPool replaces dead connections).  Never yields."""

    def _evict_oldest_idle(self, other_than: Optional[_Host], reason: str) -> bool:
        oldest = None
        for h in self._hosts.values():
            if h is not other_than and h.idle:
                c = h.idle[0]
                if oldest is None or c.last_used < oldest.last_used:
                    oldest = c
        if oldest is None:
            return False
        self._close(oldest, reason, dispatch=False)
        return True

    def _arm(self, conn: Connection, now: float) -> None:
        """Start an idle connection's self-expiry watchers."""
        due = None
        timeout = self._idle_timeout(conn, now)
        if timeout is not None:
            due = conn.last_used + timeout
        if conn.expires_at is not None and (due is None or conn.expires_at < due):
            due = conn.expires_at
        interval = self.options.idle_interval
        if interval is not None and self._can_ping(conn):
            conn._ping_at = now + interval * self._rand.uniform(0.8, 1.2)
            if due is None or conn._ping_at < due:
                due = conn._ping_at
        watch = self._on_readable if self.connector.watch_socket(conn) else None
        conn._watch(due, now, watch, self._on_timer)

    def _idle_timeout(self, conn: Connection, now: Optional[float] = None) -> Optional[float]:
        """The pool's idle timeout, lowered by the connection's own (``conn.idle_timeout``)
        and by what the pool learned of its server's (rule 9; ``now``: monotonic)."""
        timeout = self._timeout
        own = conn.idle_timeout
        if own is not None and (timeout is None or own < timeout):
            timeout = own
        h = conn._host
        learned: Optional[float] = h.retire_after
        if learned is not None:
            if (_monotonic() if now is None else now) > h.learned_until:
                # learned from closes long ago: learn it again
                h.server_idle = h.retire_after = None
                h.idle_closes.clear()
            elif timeout is None or learned < timeout:
                return learned
        return timeout

    def learn_server_idle_timeout(self, conn: Connection, seconds: float) -> None:
        """The server of ``conn`` keeps idle connections ``seconds`` (e.g. HTTP/1.1's
        ``Keep-Alive: timeout=N``): rule 9.  Never yields."""
        h = conn._host
        if h is not None and self.options.adaptive_idle_timeout and h.server_idle != seconds:
            self._learn(h, seconds, float("inf"))

    def _learn(self, h: _Host, seconds: float, until: float) -> None:
        h.learned_until = until
        h.server_idle = seconds
        h.retire_after = max(0.0, seconds - min(1.0, seconds / 2))
        log.debug("pool %r: %s:%s closes idle connections after %.3fs; retiring them after "
                  "%.3fs", self.name, h.key[0], h.key[1], seconds, h.retire_after)

    def observe_idle_close(self, conn: Connection) -> None:
        """The server of ``conn`` ended it while it was idle, seen as it happened (EOF or
        reset on an idle socket; HTTP/2 GOAWAY(NO_ERROR) with no stream open): its idle
        time is one observation for rule 9.  Does not close ``conn``.  Never yields."""
        h = conn._host
        if h is None or not self.options.adaptive_idle_timeout:
            return
        now = _monotonic()
        idle = now - conn.last_used
        if idle < LEARN_MIN_IDLE:
            return
        # a timeout closes connections after the same idle time: two closes within 20%
        # of each other confirm it; the longest confirmed wins, so one early close (a
        # restart, a reset) cannot lower it
        for other in h.idle_closes:
            if abs(other - idle) <= 0.2 * max(other, idle):
                value = max(other, idle)
                if h.server_idle is None or value > h.server_idle:
                    self._learn(h, value, now + LEARN_TTL)
                break
        h.idle_closes.append(idle)
        if len(h.idle_closes) > 4:
            del h.idle_closes[0]

    def _dropped_while_idle(self, conn: Connection, learn: bool) -> None:
        """An idle connection's peer closed (reset, wrote): close it; ``learn``: the hub saw
        it at once (its idle time is the server's), not a check at checkout later on."""
        self.counters["dropped"] += 1
        if learn:
            self.observe_idle_close(conn)
        self._close(conn, "peer closed while idle")

    def _on_readable(self, conn: Connection) -> None:
        """Hub callback: an idle socket became readable."""
        if conn.state is IDLE and conn.peer_dropped():
            self._dropped_while_idle(conn, True)

    def _on_timer(self, conn: Connection) -> None:
        """Hub callback: an idle connection's timer fired."""
        idle = conn.state is IDLE or (conn.state is SHARED and conn.users == 0)
        if not idle:
            return
        now = _monotonic()
        timeout = self._idle_timeout(conn, now)
        if conn.expires_at is not None and now >= conn.expires_at:
            self.counters["expired"] += 1
            self._close(conn, "max_lifetime reached")
        elif timeout is not None and now >= conn.last_used + timeout - 0.001:
            self.counters["expired"] += 1
            self._close(conn, "idle timeout")
        elif conn._ping_at is not None and now >= conn._ping_at - 0.001:
            conn._ping_at = None
            conn._unwatch()
            if conn.state is IDLE:
                h = conn._host
                h.idle.remove(conn)
                self._idle_count -= 1
                self._take_idle(conn, h, None)
                self.counters["reused"] -= 1
            else:
                self._use(conn)
            gevent.spawn(self._ping, conn)
        else:
            conn._unwatch()
            self._arm(conn, now)

    def _can_ping(self, conn: Connection) -> bool:
        return self.connector.can_ping or (conn.proto is not None and hasattr(conn.proto, "ping"))

    def _ping(self, conn: Connection) -> None:
        self.counters["pings"] += 1
        timeout = self.options.connect_timeout
        try:
            if conn.proto is not None and hasattr(conn.proto, "ping"):
                conn.proto.ping(timeout)
            else:
                self.connector.ping(conn, timeout)
        except Exception as e:  # noqa: BLE001 - any failure means: not healthy
            self.counters["ping_failures"] += 1
            self._close(conn, "health ping failed: %s" % (e,))
            return
        if conn.state is IN_USE:
            conn.holder = getcurrent()
            conn.uses -= 1
            self.checkin(conn)
        else:
            self.release_shared(conn)

    def _reap(self) -> int:
        """Reclaim connections whose holder greenlet died without returning them."""
        dead = [c for c in self._in_use if c.holder is not None and c.holder.dead]
        for conn in dead:
            self.counters["reclaimed"] += 1
            log.warning("pool %r: reclaiming %r: the greenlet holding it ended without "
                        "checking it in", self.name, conn)
            self._close(conn, "holder died")
        return len(dead)

    def _start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = get_hub().loop.timer(REAP_INTERVAL, REAP_INTERVAL)
        if not self._reaper.active:
            self._reaper.start(self._reaper_tick)

    def _reaper_tick(self) -> None:
        if not self._queue_count:
            self._reaper.stop()
            return
        self._reap()

    def _prewarm(self, h: _Host, count: int, connect_opts: Dict[str, Any]) -> int:
        """Open connections until ``count`` are open for the key; returns how many it opened."""
        opened = 0
        backoff = Backoff(self.options.backoff_min, self.options.backoff_max, self.options.backoff_type)
        shared = self.connector.shared
        while not self._closed and h.open < count:
            if h.open >= self._per_host or self._open >= self._max:
                break
            self._reserve(h)
            try:
                conn = self._open_conn(h, connect_opts, shared, None)
            except ConnectError as e:
                delay = backoff.next()
                log.info("pool %r: prewarm of %s:%s failed (%s); retry in %s s",
                         self.name, h.key[0], h.key[1], e, delay)
                if delay is None:
                    break
                gevent.sleep(delay)
                continue
            backoff.reset()
            opened += 1
            if shared:
                self.release_shared(conn)
            else:
                conn.uses = 0
                self.checkin(conn)
        return opened

    # -- internals: CoDel (DBConnection's queue_target / queue_interval) --
    #
    # Every queue_interval a timer looks back: if no checkout in the interval got
    # its connection within queue_target (the smallest wait exceeded it), the pool
    # is "slow" and waiters are dropped after 2 x queue_target instead of
    # checkout_timeout; an interval in which someone was served fast ends it.
    # Each interval starts from the wait of the oldest caller still queued.

    def _codel_start(self) -> None:
        if self._codel_timer is None and not self._closed:
            interval = self.options.queue_interval
            self._codel_timer = get_hub().loop.timer(interval, interval, ref=False)
            self._codel_timer.start(self._codel_tick)
            self._codel_min = float("inf")

    def _codel_tick(self) -> None:
        self._codel_slow = self._codel_min > self.options.queue_target  # type: ignore[operator]
        oldest = None
        for h in self._waiting.values():
            w = self._first_live(h)
            if oldest is None or w.since < oldest:
                oldest = w.since
        self._codel_min = 0.0 if oldest is None else _monotonic() - oldest
        if self._codel_min == 0.0 and not self._codel_slow and not self._queue_count:
            self._codel_min = float("inf")  # an interval with no checkout says nothing

    def _codel_record(self, waited: float) -> None:
        if waited < self._codel_min:
            self._codel_min = waited

    # -- internals: errors and matching --

    def _match(self, key: Tuple[Any, ...]) -> List[_Host]:
        if len(key) == 3:
            h = self._hosts.get(key)
            return [h] if h is not None else []
        if len(key) == 2:
            return [h for k, h in self._hosts.items() if k[:2] == tuple(key)]
        raise ValueError("key must be (host, port) or (host, port, transport), not %r" % (key,))

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(self.name, "the pool was stopped; start it again with "
                                     "greenpool.start_pool(%r, ...)" % (self.name,))

    def _timeout_error(self, h: _Host, start: float, shed: bool) -> PoolTimeout:
        host, port, transport = h.key
        waited = _monotonic() - start
        if _listeners:
            _emit("timeout", self, h.key, waited)
        if shed:
            self.counters["shed"] += 1
            why = ("load shed: waits exceeded queue_target=%ss during the last queue_interval"
                   % self.options.queue_target)
        else:
            why = "raise max_connections/max_per_host or checkout_timeout, or return connections sooner"
        return PoolTimeout(self.name, "no connection to %s:%s (%s) after waiting %.3fs: %d/%d "
                           "connections in use (%d/%d for this host), %d waiting; %s" % (
                               host, port, transport, waited, self._open - self._idle_count,
                               self._max, h.open - len(h.idle), self._per_host,
                               self._queue_count, why))

    # -- fork safety --

    def _after_fork_in_child(self) -> None:
        """Forget every connection inherited from the parent without touching its peer.

        Closing our copy of a descriptor sends nothing (the parent still holds
        it; no shutdown, no TLS close_notify); the counts start again at zero.
        """
        for h in self._hosts.values():
            conns: List[Connection] = list(h.idle) + h.shared + list(h.retired)
            for conn in conns:
                _drop_in_child(conn)
        for conn in self._in_use:
            _drop_in_child(conn)
        loop = get_hub().loop
        for h in self._waiting.values():
            for w in h.waiters:
                if not w.cancelled and w.grant is None:
                    # the child's copy of a parent's waiter: out of the parent's books (its
                    # timeout must not take from the child's counts), woken to queue again
                    # in the child's
                    w.cancelled = True
                    w.grant = _FORKED
                    loop.run_callback(w.waiter.switch, None)
        self._hosts.clear()
        self._waiting.clear()
        self._in_use.clear()
        self._open = self._idle_count = self._queue_count = 0
        for timer in (self._reaper, self._codel_timer):
            if timer is not None:   # a copied watcher still runs in the child: stop it
                try:
                    timer.close()
                except Exception:  # noqa: BLE001 - the parent's loop state may be gone
                    pass
        self._reaper = self._codel_timer = None
        self._pid = os.getpid()


def _drop_in_child(conn: Connection) -> None:
    proto = conn.proto
    abandon = getattr(proto, "abandon_in_child", None)
    if abandon is not None:
        # a multiplexing protocol fails the callers copied from the parent and stops its
        # copied reader, writing nothing
        try:
            abandon()
        except Exception:  # noqa: BLE001 - the child goes on without it either way
            log.debug("abandon_in_child of %r failed", conn, exc_info=True)
    conn.state = CLOSED
    io, conn._io = conn._io, None
    timer, conn._timer = conn._timer, None
    for w in (io, timer):
        if w is not None:
            try:
                w.stop()
            except Exception:  # noqa: BLE001 - the parent's loop state may be gone
                pass
    conn.proto = None
    net.sever(conn.sock)


PoolLike = Union[str, GreenPool]
