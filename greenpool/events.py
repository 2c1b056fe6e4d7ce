"""Event hooks: callbacks told what every pool does, for metrics and tracing.

What this owns: the subscriber list and the :class:`Event` value.  The pool
(:mod:`greenpool.pool`) calls :func:`emit` at the points listed below;
:func:`greenpool.pool.GreenPool.get_stats` stays the source of truth for
counts, events are for rates and latencies (wait time, connect time).

Rules:

* **Zero cost when nobody listens.**  ``_subscribers`` is one module-level
  list, changed in place only; the pool checks it with one ``if`` per event
  (``if _subscribers:``) and builds nothing when it is empty.
* **Callbacks run inline**, in whatever greenlet did the pool operation, in
  the middle of the pool's bookkeeping: they must be quick and must not yield
  (no I/O, no ``gevent.sleep``, no pool calls).  Hand the event to a queue if
  there is more to do.  A callback that raises is logged (logger
  ``greenpool.events``) and ignored: a broken hook never breaks a checkout.
* The list is copied on each emit, so a callback may unsubscribe itself.

Kinds (``Event.kind``):

=====================  ===================================================================
``"checkout"``         a connection (or one use of a shared one) was handed to a caller,
                       including the pool's own prewarm and health pings
``"checkin"``          it was given back (``checkin``/``release_shared``)
``"wait"``             a caller that had to queue was served; ``seconds``: how long it waited
``"timeout"``          a caller gave up waiting (it gets ``PoolTimeout``); ``seconds`` waited
``"connect"``          a new connection is open; ``seconds``: how long connecting took
``"connect_error"``    opening one failed; ``reason``: the error
``"close"``            a connection closed; ``reason`` says why (idle timeout, peer closed...)
``"blocked"``          HTTP/3: QUIC to an https origin failed (``reason``), so it is served
                       over TCP for ``seconds`` (the pool's ``h3_blocked_ttl``); key
                       ``(host, port, "quic")`` with the origin's port
=====================  ===================================================================

QUIC connections are pool connections of key ``(host, port, "quic")``: ``connect``
(the UDP socket is open; the handshake follows), ``checkout``/``checkin`` (one use, a
stream), ``close`` (``reason`` ``"setup failed"`` when the handshake failed) as for
HTTP/2's shared connections.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["Event", "subscribe", "unsubscribe", "subscribed", "emit", "KINDS", "log_events"]

log = logging.getLogger("greenpool.events")

KINDS = ("checkout", "checkin", "wait", "timeout", "connect", "connect_error", "close", "blocked")

Callback = Callable[["Event"], Any]

#: the subscribers; the pool imports this very list object, so it is only changed in place
_subscribers: List[Callback] = []


class Event:
    """What happened, where, and the pool's numbers at that moment.

    ``kind``: one of :data:`KINDS`.  ``pool``: the pool's name.  ``key``:
    ``(host, port, transport)``.  ``seconds``: the wait (``wait``,
    ``timeout``) or connect time (``connect``), how long an origin stays blocked
    (``blocked``), else None.  ``reason``: why a connection closed, a connect
    failed or an origin was blocked, else None.  ``open``, ``in_use``,
    ``waiting``: the pool's open connections, those not idle, and queued
    callers when the event was emitted (for ``checkin``: just before the
    connection becomes idle again; for ``close``: after its slot was freed).
    """

    __slots__ = ("kind", "pool", "key", "seconds", "reason", "open", "in_use", "waiting")

    def __init__(self, kind: str, pool: str, key: Optional[Tuple[Any, ...]], seconds: Optional[float] = None,
                 reason: Optional[str] = None, open: int = 0, in_use: int = 0, waiting: int = 0) -> None:
        self.kind = kind
        self.pool = pool
        self.key = key
        self.seconds = seconds
        self.reason = reason
        self.open = open
        self.in_use = in_use
        self.waiting = waiting

    def as_dict(self) -> Dict[str, Any]:
        """The fields as a dict (for a structured log line or a JSON exporter)."""
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        extra = ""
        if self.seconds is not None:
            extra += " %.6fs" % self.seconds
        if self.reason is not None:
            extra += " (%s)" % self.reason
        return "<Event %s pool=%r key=%r%s | open %d, in use %d, waiting %d>" % (
            self.kind, self.pool, self.key, extra, self.open, self.in_use, self.waiting)


def subscribe(callback: Callback) -> Callback:
    """Call ``callback(event)`` for every event of every pool; returns it (usable as a decorator).

    Subscribing the same callback twice is a no-op.
    """
    if not callable(callback):
        raise TypeError("subscribe() needs a callable, not %r" % (callback,))
    if callback not in _subscribers:
        _subscribers.append(callback)
    return callback


def unsubscribe(callback: Callback) -> bool:
    """Stop calling ``callback``; False when it was not subscribed."""
    try:
        _subscribers.remove(callback)
    except ValueError:
        return False
    return True


def subscribed() -> List[Callback]:
    """The current subscribers (a copy)."""
    return list(_subscribers)


def emit(kind: str, pool: Any, key: Optional[Tuple[Any, ...]], seconds: Optional[float] = None,
         reason: Optional[str] = None) -> None:
    """Tell every subscriber.  Called by the pool only when ``_subscribers`` is non-empty."""
    try:
        open_ = pool._open
        event = Event(kind, pool.name, key, seconds, reason, open_, open_ - pool._idle_count,
                      pool._queue_count)
    except AttributeError:  # pragma: no cover - a pool-like object without the counters
        event = Event(kind, getattr(pool, "name", str(pool)), key, seconds, reason)
    for callback in tuple(_subscribers):
        try:
            callback(event)
        except Exception:  # noqa: BLE001 - a metrics hook must never break the pool
            log.exception("greenpool event hook %r failed on %r", callback, event)


def log_events(logger: Optional[logging.Logger] = None, level: int = logging.DEBUG,
               kinds: Optional[Tuple[str, ...]] = None) -> Callback:
    """Subscribe a callback that logs events (structured: the fields go in ``extra``).

    Each record carries ``greenpool_event`` (the kind) and ``greenpool`` (the
    :meth:`Event.as_dict`), for a JSON formatter.  Returns the callback, for
    :func:`unsubscribe`.  ``kinds`` limits which events are logged.
    """
    lg = logger if logger is not None else logging.getLogger("greenpool.events")
    wanted = frozenset(kinds) if kinds is not None else None

    def log_event(event: Event) -> None:
        if (wanted is None or event.kind in wanted) and lg.isEnabledFor(level):
            lg.log(level, "%r", event, extra={"greenpool_event": event.kind, "greenpool": event.as_dict()})

    return subscribe(log_event)
