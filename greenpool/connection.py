"""A pooled connection: one socket, its place in the pool, and its own expiry.

What this owns:

* :class:`Connection`: the socket (``conn.sock``, a gevent socket, an SSL
  socket for ``"ssl"``), an optional protocol object (``conn.proto``: the
  HTTP/2 or Redis state whose reader greenlet owns the socket while shared),
  its state (``"connecting"`` is never seen: a Connection exists once open),
  and the watchers that make an idle connection close itself.
* :class:`Connector`: the hook by which a protocol says how to open, check
  and close its connections (TCP/TLS by default; Redis supplies its own).

Self-expiry.  While a connection is idle in its pool it owns two hub
watchers (no greenlet is spawned on the per-request path):

* an I/O watcher on its socket, started at checkin and stopped at checkout:
  the peer closing, resetting or writing to an idle connection makes it close
  itself and leave the pool at once;
* a timer: the idle ``timeout``, ``max_lifetime`` or the next health ping
  (``idle_interval``, with jitter), whichever comes first.  It is not stopped
  at checkout: a checkin keeps the running timer when it fires no later than
  the new deadline (a busy connection's deadline only moves later), and the
  pool's callback ignores a busy connection and re-arms an idle one that is
  not due yet.  So the timer costs a wakeup per idle timeout at most, not a
  new timer per request.  Closing the connection stops it.

A shared connection (HTTP/2, Redis) runs its own reader greenlet, which sees
the peer's close while busy or idle; only the timer is used for it.

Dead peers.  A peer can stop answering without closing (a black hole).  When a
user of a shared connection times out waiting for the peer, it calls
:meth:`Connection.suspect`: one probe greenlet at a time sends the protocol's
``ping``; no answer within the bound, and the connection leaves rotation and
closes at once (its other users fail with ``ConnectionClosed``).  Counted in the
pool's ``pings``, ``ping_failures`` and ``dead_peers``.

Both watchers are ``ref=False``: an idle pool never keeps a script alive.
"""
from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any, Optional, Tuple

import gevent
from gevent import get_hub

from greenpool import net
from greenpool.errors import ConnectionClosed, ReadTimeout

if TYPE_CHECKING:  # pragma: no cover
    from greenpool.pool import GreenPool

Key = Tuple[str, int, str]

IN_USE = "in_use"      # checked out exclusively
IDLE = "idle"          # in its host's idle LIFO
SHARED = "shared"      # registered for shared use (users may be 0)
RETIRED = "retired"    # shared, unregistered (e.g. GOAWAY): finishes its users, then closes
CLOSED = "closed"

_ids = itertools.count(1)
_monotonic = time.monotonic


class Connection:
    """One open connection.  Made by a :class:`Connector`, owned by a pool."""

    __slots__ = (
        "key", "sock", "proto", "id", "created_at", "expires_at", "last_used", "uses",
        "state", "holder", "users", "pool", "_host", "_io", "_timer", "_timer_due", "_ping_at",
        "__weakref__",
        "proto_state", "idle_timeout", "_probe", "_suspect",
    )

    def __init__(self, key: Key, sock: Any, proto: Any = None) -> None:
        self.key = key
        self.sock = sock
        #: protocol state for shared connections (HTTP/2, Redis); None for exclusive ones
        self.proto = proto
        self.id = next(_ids)
        self.created_at = self.last_used = _monotonic()
        self.expires_at: Optional[float] = None
        #: how many times it was checked out (compared with max_requests)
        self.uses = 0
        self.state = IN_USE
        #: the greenlet that checked it out (exclusive); reclaimed if it dies holding it
        self.holder: Any = None
        #: greenlets using it at once (shared mode)
        self.users = 0
        self.pool: Optional["GreenPool"] = None
        self._host: Any = None
        self._io: Any = None
        self._timer: Any = None
        self._timer_due = 0.0  # when the running timer fires (monotonic)
        self._ping_at: Optional[float] = None
        #: protocol state of an exclusive connection (e.g. the HTTP/1.1 parser kept
        #: across requests); the pool never looks at it; dropped at close
        self.proto_state: Any = None
        #: this connection's own idle timeout (e.g. the server's ``Keep-Alive:
        #: timeout=N``); the pool uses the smaller of it and its ``timeout``
        self.idle_timeout: Optional[float] = None
        self._probe: Optional[net.Probe] = None
        self._suspect: Any = None     # the dead-peer probe greenlet while it runs

    # -- the small interface the pool asks --

    @property
    def host(self) -> str:
        return self.key[0]

    @property
    def port(self) -> int:
        return self.key[1]

    @property
    def transport(self) -> str:
        return self.key[2]

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    def is_alive(self) -> bool:
        """Open, and (for a shared connection) its protocol still accepts work."""
        if self.state is CLOSED:
            return False
        proto = self.proto
        return proto.is_alive() if proto is not None else True

    def capacity(self) -> int:
        """How many more users a shared connection can take now."""
        proto = self.proto
        limit = proto.max_users() if proto is not None else 1
        return limit - self.users

    def peer_dropped(self) -> bool:
        """Did the peer close, reset or write to this idle connection?  Never blocks."""
        probe = self._probe
        if probe is None:
            probe = self._probe = net.Probe(self.sock, base_transport(self.key[2]) in _TLS)
        return probe.dropped()

    def alpn_protocol(self) -> Optional[str]:
        return net.alpn_protocol(self.sock)

    def suspect(self, timeout: float) -> None:
        """A user of this shared connection timed out waiting for the peer: probe it.

        Starts one probe at a time (``proto.ping(timeout)`` in its own greenlet);
        if the peer does not answer within ``timeout`` seconds, the connection
        leaves rotation and closes now: ``proto.fail(ConnectionClosed)`` fails its
        other users (see "Dead peers" above).  Never yields.
        """
        proto = self.proto
        if proto is None or self.state is CLOSED or self._suspect is not None \
                or not hasattr(proto, "ping"):
            return
        self._suspect = gevent.spawn(self._probe_peer, timeout)

    def _probe_peer(self, timeout: float) -> None:
        pool = self.pool
        counters = pool.counters if pool is not None else {}
        counters["pings"] = counters.get("pings", 0) + 1
        proto = self.proto
        try:
            with gevent.Timeout(timeout, ReadTimeout("no PING answer within %ss" % timeout)):
                proto.ping(timeout)
            return
        except Exception as e:  # noqa: BLE001 - any failure means: dead
            error: BaseException = e
        finally:
            self._suspect = None
        if self.state is CLOSED or self.proto is not proto:
            return      # closed meanwhile for another reason
        counters["ping_failures"] = counters.get("ping_failures", 0) + 1
        counters["dead_peers"] = counters.get("dead_peers", 0) + 1
        err = ConnectionClosed("%s:%s stopped answering (a stream timed out, then a PING got no "
                               "answer: %s); the connection was closed" % (self.key[:2] + (error,)))
        fail = getattr(proto, "fail", None)
        if fail is not None:
            fail(err)
        else:
            self.close(str(err))

    def close(self, reason: str = "closed by its user") -> None:
        """Close now; the pool frees its slot and wakes the next waiter."""
        if self.state is CLOSED:
            return
        if self.pool is not None:
            self.pool._close(self, reason)
        else:
            self._close_now()

    def __repr__(self) -> str:
        host, port, transport = self.key
        extra = " users=%d" % self.users if self.proto is not None else ""
        return "<Connection #%d %s:%s %s %s uses=%d%s>" % (
            self.id, host, port, transport, self.state, self.uses, extra)

    # -- used by the pool only --

    def _close_now(self) -> None:
        self.state = CLOSED
        self.proto_state = None
        self._probe = None
        self._unwatch()
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()
        io, self._io = self._io, None
        if io is not None:
            io.close()
        proto, self.proto = self.proto, None
        try:
            if proto is not None:
                proto.close()
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def _watch(self, due: Optional[float], now: float, on_readable: Any, on_timer: Any) -> None:
        """Start the idle watchers (hub callbacks; ``ref=False``); the timer fires
        by ``due`` (monotonic; None: no timer), see the module docstring."""
        if on_readable is not None:
            io = self._io
            if io is None:
                io = self._io = get_hub().loop.io(self.sock.fileno(), 1, ref=False)
            io.start(on_readable, self)
        timer = self._timer
        if timer is not None:
            if due is not None and timer.active and self._timer_due <= due:
                return
            self._timer = None
            timer.close()
        if due is not None:
            timer = self._timer = get_hub().loop.timer(max(due - now, 0.0), ref=False)
            self._timer_due = due
            timer.start(on_timer, self)

    def _unwatch(self) -> None:
        """Stop the I/O watcher (the timer runs on: see the module docstring)."""
        io = self._io
        if io is not None and io.active:
            io.stop()


_TLS = ("ssl", "unix-ssl")


def base_transport(transport: str) -> str:
    """``"ssl"`` for ``"ssl"`` and ``"ssl|<tag>"`` (see :class:`Transports`)."""
    return transport.partition("|")[0]


class Transports(Tuple[str, ...]):
    """The transports a connector accepts, each also with a tag: ``"ssl|tls1"`` is
    ``"ssl"`` keyed apart.  A key's tag keeps connections opened with other settings
    (TLS verification, a proxy) in their own idle lists of the same pool, under the
    same caps and stats."""

    def __contains__(self, transport: object) -> bool:
        return isinstance(transport, str) and \
            tuple.__contains__(self, transport.partition("|")[0])


class Connector:
    """How a pool opens, checks and closes one kind of connection.

    ``connect_opts`` may carry ``via=<Connector>``: that connector opens the
    connection instead (a proxy's: HTTP CONNECT, SOCKS), so one pool holds them
    all; the key then carries a tag (:class:`Transports`).

    The default opens plain TCP or TLS sockets with :func:`greenpool.net.connect`
    and hands them out exclusively.  A protocol that multiplexes one
    connection among many greenlets (Redis) sets ``shared = True`` and returns
    a Connection whose ``proto`` implements ``max_users()``, ``is_alive()`` and
    ``close()``; optionally ``abandon_in_child()``, called in a forked child
    before the inherited socket is dropped (fail the callers copied from the
    parent, stop the copied reader, write nothing).
    """

    #: transports this connector accepts (``"unix"``: host is the socket's path; ``"quic"``: a
    #: connected UDP socket, the QUIC handshake being the ``setup`` of
    #: :meth:`GreenPool.acquire_shared`), each also with a tag (:class:`Transports`)
    transports: Tuple[str, ...] = Transports(net.ALL_TRANSPORTS + ("quic",))
    #: True: connections are used by many greenlets at once (acquire_shared)
    shared = False
    #: True: ``ping(conn)`` checks an idle connection every idle_interval
    can_ping = False
    #: False: callers never open connections (shared mode); they take a live one or
    #: wait, and the pool's owner keeps the connections open (RedisPool's pool_size)
    open_on_demand = True

    def connect(self, key: Key, timeout: Optional[float], **opts: Any) -> Connection:
        via = opts.pop("via", None)
        if via is not None:
            conn: Connection = via.connect(key, timeout, **opts)
            return conn
        host, port, transport = key
        base = transport.partition("|")[0]
        if base == "quic":
            return Connection(key, net.connect_udp(host, port, timeout=timeout))
        sock = net.connect(host, port, base, timeout=timeout, **opts)
        return Connection(key, sock)

    def ping(self, conn: Connection, timeout: Optional[float]) -> None:
        """Raise if the connection is unhealthy.  Runs in its own greenlet."""

    def watch_socket(self, conn: Connection) -> bool:
        """Should the pool watch an idle connection's socket for the peer's close?

        False when the protocol's own reader greenlet already does (shared).
        """
        return conn.proto is None
