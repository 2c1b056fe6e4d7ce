"""Pub/sub and MONITOR, each on a dedicated connection of its own.

What this owns: :class:`PubSub` (``rp.pubsub()``) and :class:`Monitor`
(``rp.monitor()``).  Both take their connection from the RedisPool's
GreenPool (:func:`greenpool.redis.dedicated.checkout_dedicated`, counted
against ``max_blocking``) and read it in the caller's greenlet: nothing runs
in the background, so messages wait in the kernel and in Redis's output
buffer until someone asks for them.

PubSub promises:

* It remembers what it is subscribed to (``channels``, ``patterns``,
  ``shard_channels``).  When its connection dies (EOF, reset, ``CLIENT KILL``,
  a server restart, an unanswered PING) it takes a new one, attempts spaced by
  the pool's backoff (reset once a message arrives), and subscribes again to
  all of it; the
  confirmations come back as ``subscribe``/``psubscribe``/``ssubscribe``
  messages.  Messages published while it was away are lost (Redis keeps
  none).
* While ``get_message`` waits and nothing has arrived for ``ping_interval``
  seconds, it sends PING; no answer within the pool's ``timeout`` counts as a
  dead connection.
* ``get_message(timeout=None)`` returns ``{"type", "pattern", "channel",
  "data"}``: ``type`` is a ``str`` (``"message"``, ``"pmessage"``,
  ``"smessage"``, ``"subscribe"``, ...); the others are ``bytes`` (``str``
  with ``decode_responses``), ``data`` the subscription count for
  (un)subscribe confirmations, ``pattern`` None except for ``pmessage``.
  None when ``timeout`` seconds pass first (``None``: wait for ever).  RESP2
  and RESP3 (push frames) read the same.
* After ``os.fork()`` the child's PubSub never touches the parent's socket
  (the pool dropped it): it subscribes again on a connection of its own.
* One greenlet reads at a time; others may subscribe/unsubscribe meanwhile.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Set

import gevent
from gevent.lock import RLock

from greenpool.backoff import Backoff
from greenpool.errors import ConnectionClosed, GreenPoolError, PoolClosed, RedisError, ResponseError
from greenpool.redis.dedicated import TIMED_OUT, DedicatedConnection, checkout_dedicated
from greenpool.redis.resp import pack_command, pack_commands

if TYPE_CHECKING:  # pragma: no cover
    from greenpool.redis.pool import RedisPool

_monotonic = time.monotonic
_SUBSCRIBE_KINDS = frozenset(("subscribe", "unsubscribe", "psubscribe", "punsubscribe",
                              "ssubscribe", "sunsubscribe"))
_MESSAGE_KINDS = frozenset(("message", "smessage"))


def _kind(x: Any) -> str:
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("ascii", "replace").lower()
    return str(x).lower()


class PubSub:
    """Subscriptions on a connection of their own (see the module docstring)."""

    def __init__(self, pool: "RedisPool", ignore_subscribe_messages: bool = False,
                 ping_interval: float = 30.0) -> None:
        if isinstance(ping_interval, bool) or not isinstance(ping_interval, (int, float)) \
                or ping_interval <= 0:
            raise ValueError("ping_interval must be a number of seconds > 0, not %r" % (ping_interval,))
        self.pool = pool
        self.ignore_subscribe_messages = ignore_subscribe_messages
        self.ping_interval = float(ping_interval)
        self.channels: Set[Any] = set()
        self.patterns: Set[Any] = set()
        self.shard_channels: Set[Any] = set()
        #: times it took a new connection after losing one
        self.reconnects = 0
        self._dc: Optional[DedicatedConnection] = None
        self._lock = RLock()
        self._closed = False
        self._pings = 0            # our PINGs whose PONG is still to come
        self._ping_sent = 0.0
        self._last = _monotonic()  # when something last arrived (or we connected)
        self._pid = os.getpid()
        o = pool.options
        self._backoff = Backoff(o.backoff_min, o.backoff_max, o.backoff_type)
        self._retry_at = 0.0
        self._reader: Any = None   # the greenlet in get_message

    # -- subscribing --

    def subscribe(self, *channels: Any) -> None:
        self._change("SUBSCRIBE", channels, self.channels, True)

    def unsubscribe(self, *channels: Any) -> None:
        """Unsubscribe from ``channels`` (none: from every channel)."""
        self._change("UNSUBSCRIBE", channels, self.channels, False)

    def psubscribe(self, *patterns: Any) -> None:
        self._change("PSUBSCRIBE", patterns, self.patterns, True)

    def punsubscribe(self, *patterns: Any) -> None:
        self._change("PUNSUBSCRIBE", patterns, self.patterns, False)

    def ssubscribe(self, *channels: Any) -> None:
        """Shard channels (Redis 7: SPUBLISH)."""
        self._change("SSUBSCRIBE", channels, self.shard_channels, True)

    def sunsubscribe(self, *channels: Any) -> None:
        self._change("SUNSUBSCRIBE", channels, self.shard_channels, False)

    @property
    def subscribed(self) -> bool:
        return bool(self.channels or self.patterns or self.shard_channels)

    def _change(self, name: str, names: Any, into: Set[Any], add: bool) -> None:
        if self._closed:
            raise RedisError("this PubSub was closed; take a new one with rp.pubsub()")
        if add:
            if not names:
                raise ValueError("%s needs at least one name" % name.lower())
            into.update(names)
        elif names:
            into.difference_update(names)
        else:
            into.clear()
        with self._lock:
            dc = self._live()
            if dc is None:
                if add:  # connect now (errors surface here); it subscribes to everything
                    self._connect(self.pool.command_timeout)
                return
            try:
                dc.send(pack_command([name, *names]))
            except GreenPoolError:
                self._drop()  # the next get_message subscribes again on a new connection

    # -- the connection --

    def _live(self) -> Optional[DedicatedConnection]:
        dc = self._dc
        if dc is None:
            return None
        if dc.closed or os.getpid() != self._pid:  # dead, or the parent's (the pool dropped it)
            self._dc = None
            return None
        return dc

    def _drop(self) -> None:
        dc, self._dc = self._dc, None
        if dc is not None and os.getpid() == self._pid:
            dc.close("pubsub connection dropped")

    def _connect(self, timeout: float) -> DedicatedConnection:
        """A new connection, subscribed again to everything (replies are read later)."""
        self._pid = os.getpid()
        dc = checkout_dedicated(self.pool, timeout, owned=False)
        cmds: List[List[Any]] = []
        if self.channels:
            cmds.append(["SUBSCRIBE", *self.channels])
        if self.patterns:
            cmds.append(["PSUBSCRIBE", *self.patterns])
        if self.shard_channels:
            cmds.append(["SSUBSCRIBE", *self.shard_channels])
        if cmds:
            dc.send(pack_commands(cmds))
        self._dc = dc
        self._pings = 0
        self._last = _monotonic()
        return dc

    def _reconnect(self, deadline: Optional[float]) -> Optional[DedicatedConnection]:
        """Connect again, attempts spaced by the pool's backoff (reset once a message
        arrives, so a peer that accepts and then breaks every connection is not hammered);
        None when ``deadline`` passes first."""
        while True:
            now = _monotonic()
            if now < self._retry_at:
                if deadline is not None and deadline <= self._retry_at:
                    gevent.sleep(max(deadline - now, 0.0))
                    return None
                gevent.sleep(self._retry_at - now)
            delay = self._backoff.next()
            if delay is None:
                raise ConnectionClosed("the PubSub's connection to %s was lost and "
                                       "backoff_type='stop' forbids reconnecting" % self.pool._where)
            self._retry_at = _monotonic() + delay
            wait = self.pool.command_timeout
            if deadline is not None:
                wait = max(min(wait, deadline - _monotonic()), 0.0)
            try:
                dc = self._connect(wait)
            except PoolClosed:
                raise
            except GreenPoolError:
                if deadline is not None and _monotonic() >= deadline:
                    return None
                continue
            self.reconnects += 1
            return dc

    # -- reading --

    def get_message(self, timeout: Optional[float] = None) -> Optional[Dict[str, Any]]:
        """The next message, or None after ``timeout`` seconds (None: wait for ever)."""
        if self._closed:
            raise RedisError("this PubSub was closed; take a new one with rp.pubsub()")
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise ValueError("timeout must be a number of seconds >= 0 or None, not %r" % (timeout,))
        me = gevent.getcurrent()
        if self._reader is not None and self._reader is not me and not self._reader.dead:
            raise RuntimeError("another greenlet is reading this PubSub (%r); one reader at a "
                               "time: hand the messages on (e.g. a gevent.queue.Queue)"
                               % (self._reader,))
        self._reader = me
        try:
            return self._get(None if timeout is None else _monotonic() + timeout)
        finally:
            self._reader = None

    def _get(self, deadline: Optional[float]) -> Optional[Dict[str, Any]]:
        while True:
            if self._closed:  # closed by another greenlet while this one waited
                return None
            if self.pool.closed:
                raise self.pool._closed_error()
            with self._lock:
                dc = self._live()
                if dc is None:
                    if not self.subscribed:
                        if deadline is None:
                            raise RedisError("get_message() without a subscription would wait "
                                             "for ever: subscribe first, or pass a timeout")
                        gevent.sleep(max(deadline - _monotonic(), 0.0))
                        return None
                    dc = self._reconnect(deadline)
                    if dc is None:
                        return None
            now = _monotonic()
            if self._pings:
                wake = self._ping_sent + self.pool.command_timeout
            else:
                wake = self._last + self.ping_interval
            wait = wake - now
            if deadline is not None and deadline - now < wait:
                wait = deadline - now
            try:
                reply = dc.poll(max(wait, 0.0))
            except (GreenPoolError, ResponseError):
                if self.pool.closed:
                    raise self.pool._closed_error() from None
                self._drop()
                continue
            now = _monotonic()
            if reply is TIMED_OUT:
                if self._pings and now >= self._ping_sent + self.pool.command_timeout:
                    self._drop()  # PING unanswered: a silent peer
                    continue
                if not self._pings and now >= self._last + self.ping_interval:
                    try:
                        dc.send(pack_command(["PING"]))
                    except GreenPoolError:
                        self._drop()
                        continue
                    self._pings += 1
                    self._ping_sent = now
                if deadline is not None and now >= deadline:
                    return None
                continue
            self._last = now
            message = self._message(reply)
            if message is not None:
                if message["type"] not in _SUBSCRIBE_KINDS:  # the connection works
                    self._backoff.reset()
                    self._retry_at = 0.0
                return message
            if deadline is not None and now >= deadline:
                return None

    def _message(self, reply: Any) -> Optional[Dict[str, Any]]:
        if type(reply) is ResponseError:
            raise ResponseError(str(reply))
        if not isinstance(reply, list) or not reply:
            if self._pings and _kind(reply) == "pong":
                self._pings -= 1
                return None
            return {"type": "reply", "pattern": None, "channel": None, "data": reply}
        kind = _kind(reply[0])
        if kind in _MESSAGE_KINDS and len(reply) >= 3:
            return {"type": kind, "pattern": None, "channel": reply[1], "data": reply[2]}
        if kind == "pmessage" and len(reply) >= 4:
            return {"type": kind, "pattern": reply[1], "channel": reply[2], "data": reply[3]}
        if kind in _SUBSCRIBE_KINDS:
            if self.ignore_subscribe_messages:
                return None
            return {"type": kind, "pattern": None, "channel": reply[1] if len(reply) > 1 else None,
                    "data": reply[2] if len(reply) > 2 else None}
        if kind == "pong" and self._pings:
            self._pings -= 1
            return None
        return {"type": kind, "pattern": None, "channel": None, "data": reply[1:]}

    def listen(self) -> Iterator[Dict[str, Any]]:
        """Messages as they come, until ``close()`` (from any greenlet)."""
        while not self._closed:
            message = self.get_message(None)
            if message is not None:
                yield message

    __iter__ = listen

    # -- lifecycle --

    def close(self) -> None:
        """Close its connection; it cannot be used again.  A greenlet waiting in
        ``get_message`` meanwhile gets None (and ``listen()`` ends)."""
        self._closed = True
        self._drop()

    def __enter__(self) -> "PubSub":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<PubSub %d channels, %d patterns, %d shard channels%s>" % (
            len(self.channels), len(self.patterns), len(self.shard_channels),
            " closed" if self._closed else "")


class Monitor:
    """``rp.monitor()``: MONITOR's lines (``bytes``, ``str`` with decode_responses), on
    a connection of its own, closed by ``close()``, at the end of its ``with`` block,
    or when an iteration over it stops."""

    def __init__(self, pool: "RedisPool", timeout: Optional[float] = None) -> None:
        self.pool = pool
        self._dc: Optional[DedicatedConnection] = checkout_dedicated(pool, timeout, owned=False)
        try:
            self._dc.command(["MONITOR"], timeout)
        except BaseException:
            self._dc.close("MONITOR failed")
            raise

    def next_line(self, timeout: Optional[float] = None) -> Any:
        """The next line, or None after ``timeout`` seconds (None: wait for ever)."""
        dc = self._dc
        if dc is None:
            raise RedisError("this Monitor was closed; take a new one with rp.monitor()")
        reply = dc.poll(timeout)
        if reply is TIMED_OUT:
            return None
        if type(reply) is ResponseError:
            raise ResponseError(str(reply))
        return reply

    def __iter__(self) -> Iterator[Any]:
        try:
            while self._dc is not None:
                yield self.next_line(None)
        finally:
            self.close()

    def close(self) -> None:
        dc, self._dc = self._dc, None
        if dc is not None:
            dc.close("monitor closed")

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<Monitor %s>" % ("closed" if self._dc is None else "open")


__all__ = ["PubSub", "Monitor"]
