"""The HTTP/3 connection greenlet and request path over one shared QUIC connection.

What this owns: :class:`H3Protocol` (``conn.proto`` of a pooled connection of
key ``(host, port, "quic")``: its reader greenlet, its streams, their waiters,
the dead-peer rule), :func:`handle` (the entry point the HTTP client calls),
:class:`H3Body` (a response's body stream) and the retry of requests the
server provably never processed.

Theory of operation:

* **One reader greenlet per connection** owns the UDP socket.  It parks on a
  hub ``Waiter`` that three hub watchers wake: an I/O watcher on the socket,
  a timer at the QUIC library's next deadline (loss detection, PTO, idle,
  ACK delay) or at the dead-peer bound, and a flush request.  Each wake it
  reads at most :data:`READ_BATCH` datagrams, runs the library's timer when
  due, hands the events to the streams, sends what the library queued, and
  yields to the hub when it stopped at the batch limit.
* **Writes are batched once per loop turn.**  A caller's request only queues
  frames in the library and asks for a flush (a hub callback); all the
  callers made ready in the same turn queue theirs before the reader sends,
  so many requests leave in few datagrams.
* **Capacity** is the streams the server's MAX_STREAMS still allows plus the
  streams held now (``max_users``); the pool never hands out more, and the
  reader tells the pool (``capacity_changed``) when the server raised it.  A
  stream that cannot open anyway (a race) is :class:`Refused`: sent again.
* **Death is bounded.**  CONNECTION_CLOSE, an ICMP port-unreachable, a
  GOAWAY (out of rotation at once), or :data:`H3Config.dead_peer_timeout`
  seconds of silence while the server owes us an ACK (a server restarted on
  the same port has forgotten the connection and drops or resets its
  packets, which neither QUIC library recognises) end the connection; its
  streams fail with :class:`~greenpool.errors.ConnectionClosed`, and those
  with no response byte yet are sent again on a new connection when their
  method is idempotent or the server said it never processed them.
* **0-RTT** (pool option ``zero_rtt``): a new connection holding a session
  ticket that allows early data does its handshake in the background;
  idempotent requests without a body are sent at once (0-RTT), the others
  wait for the handshake (:meth:`H3Protocol.wait_ready`); early requests the
  server rejected are :class:`Refused`, so sent again at 1-RTT.
* Every use of the connection is given back exactly once: at the end of the
  body, at ``close()``, or on any error, kill or timeout (which also cancels
  that stream only).
"""
from __future__ import annotations

import dataclasses
import time
import weakref
from collections import deque
from itertools import chain
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Set, Tuple

import gevent
from gevent import get_hub, getcurrent
from gevent.hub import Waiter

from greenpool import net
from greenpool.connection import Connection
from greenpool.errors import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    GreenPoolError,
    LimitExceeded,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    WriteError,
    WriteTimeout,
)
from greenpool.http.decoding import DEFAULT_MAX_DECODED_SIZE, make_decoder
from greenpool.http.h2.transport import (
    _IDEMPOTENT,
    _REASONS,
    _chunks,
    _parse_head,
    _prepare_body,
    _remaining,
    _rewind,
    build_headers,
)
from greenpool.http.h3.conn import CLOSED, DATA, GOAWAY, HEAD, READY, RESET, H3Conn, NoStream
from greenpool.http.models import Headers, Request, Response, Timeout, body_too_large, check_max_body_size

if TYPE_CHECKING:
    from greenpool.pool import GreenPool

__all__ = ["H3Config", "H3Protocol", "H3Body", "Refused", "handle", "DEFAULT_CONFIG", "MAX_RETRIES",
           "session_tickets", "acquire",
           "counters", "COUNTERS"]

READ_BATCH = 64          # datagrams per reader slice before it yields
UPLOAD_CHUNK = 65536
SEND_BUFFER_LIMIT = 1 << 20   # an upload waits while more than this is queued unsent
MAX_RETRIES = 3
_TIMEDOUT: Any = object()
_INF = float("inf")
_monotonic = time.monotonic
H3_REQUEST_REJECTED = 0x10B


@dataclasses.dataclass(frozen=True)
class H3Config:
    """Settings of the QUIC connections greenpool opens (immutable; ``dataclasses.replace``).

    ``idle_timeout``: QUIC's idle timeout we offer (the smaller of ours and the
    server's applies); the pool retires an unused connection before it.
    ``dead_peer_timeout``: silence that ends a connection while the server owes
    an ACK (see the module docstring).  ``max_header_list_size``: the largest
    response header list accepted.  ``max_stream_buffer``: the most body bytes a
    stream holds unread (the QUIC library grants the server more as it receives,
    not as the caller reads): past it the stream is cancelled with
    :class:`~greenpool.errors.LimitExceeded`.
    """

    idle_timeout: float = 30.0
    dead_peer_timeout: float = 1.0
    max_header_list_size: int = 65536
    max_stream_buffer: int = 16 * 1024 * 1024


DEFAULT_CONFIG = H3Config()


class Refused(GreenPoolError):
    """A request the server never processed (GOAWAY above it, REQUEST_REJECTED, no stream
    left, the connection lost before any answer to an idempotent request): send again."""

    body_started = True
    cause: Optional[BaseException] = None


# session tickets: per pool, (host, port, trust) -> ticket (kept for resumption)
session_tickets: "weakref.WeakKeyDictionary[Any, Dict[Tuple[Any, ...], Any]]" = weakref.WeakKeyDictionary()
# per pool: what happened to its QUIC connections (see stats())
_counters: "weakref.WeakKeyDictionary[Any, Dict[str, int]]" = weakref.WeakKeyDictionary()
COUNTERS = ("handshakes", "resumed", "handshake_failures", "goaway", "dead_peer", "closed_by_peer",
            "retried", "zero_rtt_accepted", "zero_rtt_rejected")


def count(pool: Any, what: str) -> None:
    c = _counters.get(pool)
    if c is None:
        c = _counters[pool] = dict.fromkeys(COUNTERS, 0)
    c[what] += 1


def counters(pool: Any) -> Dict[str, int]:
    """This pool's HTTP/3 counters: handshakes (resumed), handshake_failures, goaway,
    dead_peer, closed_by_peer, retried (requests sent again, on another connection or at
    1-RTT), zero_rtt_accepted / zero_rtt_rejected (handshakes that sent requests in 0-RTT)."""
    return dict(_counters.get(pool) or dict.fromkeys(COUNTERS, 0))


def _copy(err: BaseException) -> BaseException:
    try:
        return type(err)(*err.args)
    except Exception:  # noqa: BLE001 - an exotic constructor: share it
        return err


class Stream:
    """One request/response exchange: what the reader delivered so far."""

    __slots__ = ("id", "head", "chunks", "buffered", "ended", "trailers", "error", "waiter",
                 "sent_end", "released", "max_body", "received", "header_limit", "early", "due")

    def __init__(self, sid: int, header_limit: int, max_body: Optional[int]) -> None:
        self.id = sid
        self.head: Optional[List[Tuple[bytes, bytes]]] = None
        self.chunks: Deque[bytes] = deque()
        self.buffered = 0
        self.received = 0
        self.ended = False
        self.trailers: Optional[List[Tuple[bytes, bytes]]] = None
        self.error: Optional[BaseException] = None
        self.waiter: Optional[Waiter] = None
        self.sent_end = False
        self.released = False
        self.max_body = max_body
        self.header_limit = header_limit
        self.early = False          # opened before the handshake ended: sent in 0-RTT
        self.due = _INF             # while a caller waits on it: when that wait times out

    def __repr__(self) -> str:
        return "<H3 stream %d head=%s ended=%s buffered=%d>" % (
            self.id, self.head is not None, self.ended, self.buffered)


class H3Protocol:
    """``conn.proto`` of a QUIC connection in the pool; see the module docstring."""

    def __init__(self, conn: Connection, config: H3Config, verify: Any, cert: Any,
                 ticket: Any = None, on_ticket: Optional[Callable[[Any], None]] = None,
                 early_data: bool = False) -> None:
        """``ticket``: a session ticket to resume with (0-RTT too when ``early_data``);
        ``on_ticket``: called with each ticket the server sends, and with None when a
        handshake offering ``ticket`` failed (the ticket is to be forgotten: the next
        connection does a full handshake instead of failing the same way)."""
        self.conn = conn
        self.sock = conn.sock
        self.config = config
        self.streams: Dict[int, Stream] = {}
        self.closed = False
        self.error: Optional[BaseException] = None
        self.goaway: Optional[int] = None
        self.zero_rtt = False
        self._loop = get_hub().loop
        now = _monotonic()
        self.q = H3Conn(conn.host, net.udp_peer(self.sock), now, verify=verify, cert=cert,
                        idle_timeout=config.idle_timeout, ticket=ticket, on_ticket=on_ticket,
                        early_data=early_data)
        self._forget_ticket = on_ticket if ticket is not None else None   # called with None
        self.last_rx = now
        self._unacked_since: Optional[float] = None
        self._ready: Optional[Waiter] = None
        self._waiter = Waiter()
        self._woken = False
        self._parked = False
        self._flush_pending = False
        self._blocked: Set[Stream] = set()
        self._pings: Set[Stream] = set()
        self._handshaking: Set[Stream] = set()   # callers waiting for 1-RTT (see wait_ready)
        self.early = False          # the handshake runs in the background (0-RTT)
        self._handshake_timer: Any = None
        self._left = 0
        self._io = self._loop.io(self.sock.fileno(), 1)
        self._timer: Any = None
        self._timer_due = 0.0
        # the callers' waits with a timeout: one timer for all, armed for the earliest
        self._waiting: Set[Stream] = set()
        self._wait_timer: Any = None
        self._wait_due = _INF
        self.reader: Optional[gevent.Greenlet] = None
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self._abandoned = False

    def __repr__(self) -> str:
        return "<H3Protocol %s:%s streams=%d%s>" % (
            self.conn.host, self.conn.port, len(self.streams), " closed" if self.closed else "")

    # -- the small interface the pool asks --

    def max_users(self) -> int:
        # asked by the pool at every checkout: is_alive() inlined
        q = self.q
        if self.closed or self.goaway is not None or q.closed is not None:
            return 0
        return q.streams_left() + len(self.streams)

    def is_alive(self) -> bool:
        return not self.closed and self.goaway is None and self.q.closed is None

    def close(self) -> None:
        """Called by the pool (``conn._close_now``) or on death: stop everything; never yields."""
        if self.closed:
            return
        self.closed = True
        if self.error is None:
            self.error = ConnectionClosed("the HTTP/3 connection to %s:%s was closed (pool "
                                          "stopped, idle timeout or an error)" % self.conn.key[:2])
        if not self._abandoned:
            self.q.close()
            try:
                for d in self.q.datagrams(_monotonic()):   # CONNECTION_CLOSE, best effort
                    net.udp_send(self.sock, d)
            except OSError:
                pass
        self._fail_all(self.error)
        self._stop_watchers()
        reader = self.reader
        if reader is not None and reader is not getcurrent() and not reader.dead:
            reader.kill(block=False)

    def abandon_in_child(self) -> None:
        """After ``os.fork()``, in the child: fail the copied streams, stop the copied
        reader, write nothing (the parent's QUIC connection goes on there)."""
        if self.error is None:
            self.error = ConnectionClosed(
                "the HTTP/3 connection to %s:%s belongs to the parent process (os.fork()); "
                "the request may or may not have been processed there" % self.conn.key[:2])
        self._abandoned = True
        self.close()

    def ping(self, timeout: Optional[float]) -> None:
        """The pool's idle health check: one PING, and any packet back within ``timeout``."""
        if not self.is_alive():
            raise ConnectionClosed("the HTTP/3 connection is closed")
        before = self.datagrams_received
        self.q.ping(int(_monotonic() * 1000) & 0xFFFFFFFF)
        self.request_flush()
        st = Stream(-1, 0, None)         # not a stream: a place to wait for any packet
        self._pings.add(st)
        try:
            deadline = None if timeout is None else _monotonic() + timeout
            while self.datagrams_received == before and self.is_alive():
                if not self.wait(st, _remaining(None, deadline)):
                    raise ReadTimeout("no answer to an HTTP/3 PING from %s:%s" % self.conn.key[:2])
        finally:
            self._pings.discard(st)
        if not self.is_alive():
            raise ConnectionClosed("the HTTP/3 connection died during a PING")

    # -- starting --

    def start(self, timeout: Optional[float], zero_rtt: bool = False) -> None:
        """Run the handshake (the reader greenlet does the I/O); raises ConnectError.

        ``zero_rtt`` with a session ticket allowing early data: returns at once, the
        handshake goes on in the background and requests that may go in 0-RTT
        (:func:`_exchange`) are sent meanwhile; the others wait for it
        (:meth:`wait_ready`)."""
        host, port = self.conn.key[:2]
        w = self._ready = Waiter()
        self.reader = gevent.spawn(self._run)
        self.request_flush()
        if zero_rtt and self.q.early_data():
            self.early = True
            self._ready = None
            self._handshake_timer = None
            if timeout is not None:     # the background handshake is bounded all the same
                t = self._handshake_timer = self._loop.timer(max(timeout, 0.0))
                t.start(self._handshake_timed_out, timeout)
            return
        timer = None
        if timeout is not None:
            timer = self._loop.timer(max(timeout, 0.0))
            timer.start(w.switch, _TIMEDOUT)
        try:
            result = w.get()
        finally:
            self._ready = None
            if timer is not None:
                timer.close()
        if result is _TIMEDOUT or isinstance(result, BaseException):
            self._handshake_failed()
        if result is _TIMEDOUT:
            raise ConnectTimeout("QUIC handshake with %s:%s timed out after %ss" % (host, port, timeout))
        if isinstance(result, BaseException):
            raise result
        self._handshake_done()

    def _handshake_failed(self) -> None:
        count(self.conn.pool, "handshake_failures")
        forget = self._forget_ticket
        if forget is not None:
            self._forget_ticket = None
            forget(None)

    def _handshake_done(self) -> None:
        pool = self.conn.pool
        count(pool, "handshakes")
        if self.q.resumed:
            count(pool, "resumed")
        self._left = self.q.streams_left()
        peer_idle = self._peer_idle_timeout()
        idle = min(self.config.idle_timeout, peer_idle) if peer_idle else self.config.idle_timeout
        self.conn.idle_timeout = idle * 0.8   # retired before QUIC's own idle close

    def _handshake_timed_out(self, timeout: float) -> None:
        if not self.q.ready and not self.closed:
            self._die(ConnectTimeout("QUIC handshake with %s:%s timed out after %ss"
                                     % (self.conn.key[0], self.conn.key[1], timeout)))

    def wait_ready(self, seconds: Optional[float]) -> None:
        """Park until the background (0-RTT) handshake ended; raises if it failed.  Yields."""
        if self.q.ready or not self.early:
            return
        st = Stream(-1, 0, None)
        self._handshaking.add(st)
        try:
            while not self.q.ready and not self.closed:
                if not self.wait(st, seconds):
                    raise ConnectTimeout("QUIC handshake with %s:%s not finished within the "
                                         "timeout" % self.conn.key[:2])
        finally:
            self._handshaking.discard(st)
        if self.closed:
            raise _copy(self.error) if self.error is not None else ConnectionClosed(
                "the HTTP/3 connection closed during its handshake")

    def _peer_idle_timeout(self) -> Optional[float]:
        params = getattr(self.q.quic, "_applied_transport_parameters", None)
        ms = getattr(params, "max_idle_timeout", None)
        return ms / 1000.0 if ms else None

    # -- the reader greenlet --

    def _wake(self, *_: Any) -> None:
        # a wake while the reader is busy (its turn yielded to the hub) is kept, not
        # dropped: the reader runs another turn before it parks again
        if not self._woken:
            self._woken = True
            if self._parked:
                self._waiter.switch(None)

    def request_flush(self) -> None:
        """Send what the library queued, once, after the current loop turn.  Never yields."""
        if not self._flush_pending and not self.closed:
            self._flush_pending = True
            self._loop.run_callback(self._wake)

    def _run(self) -> None:
        try:
            self._io.start(self._wake)
            while not self.closed:
                if not self._woken:
                    self._parked = True
                    try:
                        self._waiter.get()
                    finally:
                        self._parked = False
                self._woken = False
                more = self._turn()
                if more and not self.closed:
                    gevent.sleep(0)
        except ConnectionRefusedError:
            self._die(ConnectError("%s:%s refused QUIC (ICMP port unreachable): is an HTTP/3 "
                                   "server listening on that UDP port?" % self.conn.key[:2]))
        except Exception as e:  # noqa: BLE001 - any failure ends this connection, never the process
            if not self.closed:
                self._die(ConnectionClosed("HTTP/3 connection to %s:%s failed: %s"
                                           % (self.conn.key[0], self.conn.key[1], e)))

    def _turn(self) -> bool:
        """One wake of the reader: read, timers, events, send.  True: more may be queued."""
        self._flush_pending = False
        q = self.q
        datagrams = net.udp_recv_batch(self.sock, READ_BATCH)
        now = _monotonic()
        events: List[Any] = []
        if datagrams:
            self.last_rx = now
            self._unacked_since = None
            self.datagrams_received += len(datagrams)
            events = q.receive(datagrams, now)
            for st in self._pings:
                self._notify(st)
        due = q.timer()
        if due is not None and due <= now:
            events.extend(q.on_timer(now))
        if events:
            self._apply(events)
        if self.closed:
            return False
        self._send(now)
        if q.closed is not None:
            self._die(ConnectionClosed("HTTP/3 connection to %s:%s failed: %s"
                                       % (self.conn.key[0], self.conn.key[1], q.closed)))
            return False
        # the dead-peer rule: silence while the server owes us an ACK
        if q.ready and q.awaiting_ack(now):
            since = self._unacked_since
            if since is None:
                since = self._unacked_since = now
            if now - max(since, self.last_rx) >= self.config.dead_peer_timeout:
                count(self.conn.pool, "dead_peer")
                self._die(ConnectionClosed(
                    "no packet from %s:%s for %.1fs while data was unacknowledged: the HTTP/3 "
                    "server is gone or restarted" % (self.conn.key[0], self.conn.key[1],
                                                    now - max(since, self.last_rx))))
                return False
        else:
            self._unacked_since = None
        if self._blocked:
            for st in list(self._blocked):
                if q.send_buffered(st.id) < SEND_BUFFER_LIMIT or st.error is not None:
                    self._notify(st)
        left = q.streams_left()
        if left > self._left and self.conn.pool is not None:
            self._left = left
            self.conn.pool.capacity_changed(self.conn)
        else:
            self._left = left
        self._arm_timer(now)
        return len(datagrams) >= READ_BATCH

    def _send(self, now: float) -> None:
        sock = self.sock
        for d in self.q.datagrams(now):
            net.udp_send(sock, d)
            self.datagrams_sent += 1

    def _arm_timer(self, now: float) -> None:
        due = self.q.timer()
        if self._unacked_since is not None:
            dead = max(self._unacked_since, self.last_rx) + self.config.dead_peer_timeout
            due = dead if due is None or dead < due else due
        timer = self._timer
        if due is None:
            if timer is not None:
                timer.stop()
            return
        if timer is not None and timer.active and abs(self._timer_due - due) < 0.0005:
            return
        if timer is not None:
            timer.close()
        # an idle connection's timers (QUIC idle, ACK delay) never keep the process alive
        timer = self._timer = self._loop.timer(max(due - now, 0.0), ref=bool(self.streams)
                                               or self._ready is not None or bool(self._pings)
                                               or (self.early and not self.q.ready))
        self._timer_due = due
        timer.start(self._wake)

    def _stop_watchers(self) -> None:
        for w in (self._io, self._timer, self._wait_timer):
            if w is not None:
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - closing twice
                    pass
        self._timer = self._wait_timer = None
        self._wait_due = _INF

    def _die(self, err: BaseException) -> None:
        """The connection is over: fail its streams and leave the pool.  Never yields."""
        if self.closed:
            return
        self.error = err
        pool = self.conn.pool
        if pool is not None:
            self.conn.close(str(err))    # the pool calls self.close()
        else:
            self.close()

    # -- events --

    def _notify(self, st: Stream, value: Any = None) -> None:
        """Wake the caller waiting on ``st`` (with ``value``: :data:`_TIMEDOUT` for a timeout),
        once: the waiter is taken off ``st`` here."""
        w = st.waiter
        if w is not None:
            st.waiter = None
            self._loop.run_callback(w.switch, value)

    def _apply(self, events: List[Any]) -> None:
        streams = self.streams
        for kind, sid, payload, ended in events:
            if kind is DATA:
                st = streams.get(sid)
                if st is None:
                    continue
                if payload:
                    n = len(payload)
                    st.received += n
                    if st.max_body is not None and st.received > st.max_body:
                        st.error = body_too_large(st.max_body, "%d bytes received" % st.received)
                        self.q.reset(sid, not st.sent_end)
                        self._notify(st)
                        continue
                    st.chunks.append(payload)
                    st.buffered += n
                    if st.buffered > self.config.max_stream_buffer:
                        st.error = LimitExceeded(
                            "HTTP/3 stream %d holds %d unread bytes, over H3Config.max_stream_buffer="
                            "%d: read the body as it comes, or raise the limit"
                            % (sid, st.buffered, self.config.max_stream_buffer))
                        st.chunks.clear()
                        st.buffered = 0
                        self.q.reset(sid, not st.sent_end)
                        self._notify(st)
                        continue
                if ended:
                    st.ended = True
                self._notify(st)
            elif kind is HEAD:
                st = streams.get(sid)
                if st is None:
                    continue
                # RFC 9114 4.2.2: name + value + 32 per field
                size = 32 * len(payload) + sum(map(len, chain.from_iterable(payload)))
                if size > st.header_limit:
                    st.error = LimitExceeded("the server sent a header list of %d bytes, over "
                                             "max_header_size=%d" % (size, st.header_limit))
                    self.q.reset(sid, not st.sent_end)
                elif st.head is None:
                    st.head = payload
                else:
                    st.trailers = payload
                if ended:
                    st.ended = True
                self._notify(st)
            elif kind is RESET:
                st = streams.get(sid)
                if st is None or st.error is not None:
                    continue      # unknown, or the answer to our own cancel
                if payload == H3_REQUEST_REJECTED and st.head is None:
                    st.error = Refused("the server rejected HTTP/3 stream %d" % sid)
                elif not st.ended:
                    st.error = RemoteProtocolError("the server reset HTTP/3 stream %d (code 0x%x)"
                                                   % (sid, payload))
                self._notify(st)
            elif kind is GOAWAY:
                if self.goaway is None:
                    count(self.conn.pool, "goaway")
                self.goaway = payload
                for st in list(streams.values()):
                    if st.id >= payload and st.head is None and st.error is None:
                        st.error = Refused("HTTP/3 GOAWAY: stream %d not processed" % st.id)
                        self._notify(st)
                pool = self.conn.pool
                if pool is not None:
                    pool.unregister_h3(self.conn)
            elif kind is CLOSED:
                where = " (%s:%s)" % (self.conn.key[0], self.conn.key[1])
                if self.q.protocol_error is not None:
                    # the response on stream ``sid`` was malformed: its caller learns that (never
                    # retried); the connection's other streams end as for any close
                    st = streams.get(sid)
                    if st is not None and st.error is None:
                        st.error = RemoteProtocolError(payload + where)
                else:
                    count(self.conn.pool, "closed_by_peer")
                self._die(ConnectionClosed(payload + where))
                return
            elif kind is READY:
                self.zero_rtt = bool(payload)
                if self.early:
                    self._early_ready(bool(payload))
                    continue
                w = self._ready
                if w is not None:
                    self._loop.run_callback(w.switch, None)

    def _early_ready(self, accepted: bool) -> None:
        """The background handshake ended: count it, and send again at 1-RTT what the
        server refused to take in 0-RTT (streams it never processed)."""
        self._ready = None
        t = self._handshake_timer
        if t is not None:
            t.close()
            self._handshake_timer = None
        self._handshake_done()
        early = [st for st in self.streams.values() if st.early]
        if early:
            count(self.conn.pool, "zero_rtt_accepted" if accepted else "zero_rtt_rejected")
        if not accepted:
            for st in early:
                if st.head is None and st.error is None:
                    st.error = Refused("the server rejected 0-RTT: HTTP/3 stream %d not "
                                       "processed" % st.id)
                    self._notify(st)
        for st in list(self._handshaking):
            self._notify(st)
        if self.conn.pool is not None:
            self._left = self.q.streams_left()
            self.conn.pool.capacity_changed(self.conn)

    def _fail_all(self, err: BaseException) -> None:
        t = self._handshake_timer
        if t is not None:           # a background (0-RTT) handshake that never finished
            t.close()
            self._handshake_timer = None
            self._handshake_failed()
        for st in list(self._pings) + list(self._handshaking):
            self._notify(st)
        for st in list(self.streams.values()):
            if st.error is None and not st.ended:
                st.error = err
            self._notify(st)
        w = self._ready
        if w is not None:
            self._ready = None
            self._loop.run_callback(w.switch, err if isinstance(err, ConnectError) else
                                    ConnectError("QUIC handshake with %s:%s failed: %s"
                                                 % (self.conn.key[0], self.conn.key[1], err)))

    # -- used by the request path (no yield unless said) --

    def open_stream(self, headers: List[Tuple[bytes, bytes]], end_stream: bool,
                    header_limit: int, max_body: Optional[int]) -> Stream:
        if not self.is_alive():
            raise Refused("the HTTP/3 connection no longer takes new streams")
        try:
            sid = self.q.open_request(headers, end_stream)
        except NoStream as e:
            raise Refused(str(e)) from None
        st = self.streams[sid] = Stream(sid, header_limit, max_body)
        st.sent_end = end_stream
        st.early = not self.q.ready
        self._io.ref = True
        return st

    def wait(self, st: Stream, seconds: Optional[float]) -> bool:
        """Park until the reader touches ``st`` (True) or ``seconds`` pass (False).  Yields.

        A wait with a timeout costs no timer of its own: the connection's one wait
        timer is armed for the earliest deadline among its waiting streams
        (:meth:`_waits_due`)."""
        w = st.waiter = Waiter()
        if seconds is None:
            try:
                return w.get() is not _TIMEDOUT
            finally:
                st.waiter = None
        due = st.due = _monotonic() + (seconds if seconds > 0 else 0.0)
        waiting = self._waiting
        waiting.add(st)
        if due < self._wait_due:
            self._arm_waits(due)
        try:
            result = w.get()
        finally:
            st.waiter = None
            st.due = _INF
            waiting.discard(st)
            if not waiting and self._wait_timer is not None:
                self._wait_timer.stop()   # no wait left: nothing to keep the loop for
                self._wait_due = _INF
        return result is not _TIMEDOUT

    def _arm_waits(self, due: float) -> None:
        timer = self._wait_timer
        if timer is not None:
            timer.close()
        delay = due - _monotonic()
        timer = self._wait_timer = self._loop.timer(delay if delay > 0 else 0.0)
        self._wait_due = due
        timer.start(self._waits_due)

    def _waits_due(self) -> None:
        """Hub callback (never raises or switches): wake every wait past its deadline
        with a timeout, re-arm for the earliest left."""
        self._wait_due = _INF
        now = _monotonic()
        nearest = _INF
        for st in list(self._waiting):
            if st.due <= now:
                self._waiting.discard(st)
                self._notify(st, _TIMEDOUT)
            elif st.due < nearest:
                nearest = st.due
        if nearest < _INF:
            self._arm_waits(nearest)

    def release(self, st: Stream, reset: bool) -> None:
        if st.released:
            return
        st.released = True
        self.streams.pop(st.id, None)
        self._blocked.discard(st)
        # a request body cut short (the server answered first, an error, a kill) is reset
        # too: a half-open stream would hold one of the server's MAX_STREAMS for good
        if (reset or not st.sent_end) and not self.closed:
            self.q.reset(st.id, not st.sent_end)
            self.request_flush()
        if not self.streams and self._io is not None and not self.closed:
            self._io.ref = False     # an idle connection never keeps the process alive


# -- the entry point --


# (id(pool), settings) -> (weak reference to the pool, setup).  An id outlives its pool
# and is handed to the next one: an entry counts only while its reference is that pool
_setups: Dict[Tuple[Any, ...], Tuple[Any, Callable[[Connection], None]]] = {}


def _setup_for(pool: Any, cfg: H3Config, verify: Any, cert: Any,
               handshake: Optional[float]) -> Callable[[Connection], None]:
    key = (id(pool), cfg, verify, str(cert), handshake)
    entry = _setups.get(key)
    if entry is not None and entry[0]() is pool:
        return entry[1]
    pool_ref = weakref.ref(pool)

    def setup(conn: Connection) -> None:
        p = pool_ref()
        tickets = session_tickets.get(p) if p is not None else None
        tkey = (conn.host, conn.port, verify, str(cert))
        ticket = tickets.get(tkey) if tickets is not None else None

        def keep(t: Any) -> None:
            if p is None:
                return
            if t is not None:
                session_tickets.setdefault(p, {})[tkey] = t
            elif tickets is not None and tickets.get(tkey) is ticket:
                del tickets[tkey]       # its handshake failed: the next one is a full one
        zero_rtt = bool(p is not None and p.options.zero_rtt)
        proto = H3Protocol(conn, cfg, verify, cert, ticket, keep, early_data=zero_rtt)
        conn.proto = proto      # the pool closes it (and proto) if the handshake fails
        proto.start(handshake, zero_rtt=zero_rtt)
    if len(_setups) > 256:
        _setups.clear()
    _setups[key] = (pool_ref, setup)
    return setup


def handle(pool: "GreenPool", request: Request, timeout: Any, deadline: Optional[float],
           connect_opts: Dict[str, Any], config: Optional[H3Config] = None, *,
           stream: bool = True, decode_content: bool = True,
           max_decoded_size: Optional[int] = DEFAULT_MAX_DECODED_SIZE,
           max_header_size: Optional[int] = None, max_body_size: Optional[int] = None,
           port: Optional[int] = None, conn: Optional[Connection] = None,
           transport: str = "quic") -> Response:
    """Send ``request`` over HTTP/3 on the pool's shared QUIC connection to its origin.

    ``connect_opts``: ``verify``/``cert`` as for TCP and ``connect_timeout``.
    ``port``: the UDP port (an Alt-Svc may name another than the URL's);
    ``conn``: a use of a QUIC connection already taken (``checkout_h3``);
    ``transport``: the key's, ``"quic"`` or tagged (``"quic|tls1"``: other TLS settings).
    Failures to connect are :class:`~greenpool.errors.ConnectError` (the
    caller may fall back to TCP); later ones as for HTTP/2.
    """
    if max_body_size is not None:
        check_max_body_size(max_body_size)
    url = request.url
    if url.scheme != "https":
        raise ValueError("HTTP/3 needs an https:// origin, not %s" % (url,))
    if timeout.__class__ is not Timeout:
        timeout = Timeout.coerce(timeout)
    cfg = config if config is not None else DEFAULT_CONFIG
    header_limit = max_header_size if max_header_size is not None else cfg.max_header_list_size
    headers = build_headers(request)
    body = request.body
    start_pos = None
    if body is not None:
        body, start_pos = _prepare_body(body)
    retries = 0
    idempotent = request.method in _IDEMPOTENT
    while True:
        if conn is None:
            conn = acquire(pool, url.host, port or url.port, timeout, deadline, connect_opts, cfg,
                           transport)
        try:
            response = _exchange(pool, conn, request, headers, body, timeout, deadline, idempotent,
                                 decode_content, max_decoded_size, header_limit, max_body_size,
                                 not stream)
        except Refused as e:
            retries += 1
            count(pool, "retried")
            if retries > MAX_RETRIES or not _rewind(body, start_pos, e.body_started):
                cause = e.cause or e
                raise ConnectionClosed("HTTP/3 request %s %s not processed by the server after %d "
                                       "attempt(s): %s" % (request.method, url, retries, cause)) from None
            conn = None
            continue
        if not stream and response._content is None:
            response.read()
        return response


def acquire(pool: "GreenPool", host: str, port: int, timeout: Timeout, deadline: Optional[float],
            connect_opts: Dict[str, Any], cfg: H3Config = DEFAULT_CONFIG,
            transport: str = "quic") -> Connection:
    """One use of a shared QUIC connection to ``host:port`` (opened and handshaken if none
    has room); give it back with ``pool.release_shared``."""
    connect = connect_opts.get("connect_timeout", timeout.connect)
    if connect is None:
        connect = pool.options.connect_timeout
    if deadline is not None:
        left = deadline - _monotonic()
        if left <= 0:
            raise PoolTimeout(pool.name, "the request's total timeout expired before an HTTP/3 "
                                         "connection to %s:%s was available" % (host, port))
        connect = left if connect is None or left < connect else connect
    setup = _setup_for(pool, cfg, connect_opts.get("verify", True), connect_opts.get("cert"), connect)
    return pool.acquire_shared(host, port, transport, _remaining(timeout.pool, deadline), setup,
                               connect_timeout=connect)


def _exchange(pool: Any, conn: Connection, request: Request, headers: List[Tuple[bytes, bytes]],
              body: Any, timeout: Timeout, deadline: Optional[float], idempotent: bool,
              decode_content: bool, max_decoded_size: Optional[int], header_limit: int,
              max_body_size: Optional[int], whole: bool = False) -> Response:
    """``whole``: the caller reads the body at once (``stream=False``): when it all came with
    the head (no trailers, nothing to decode) the response holds it and the stream and the
    use are given back here, without a body stream."""
    proto: Optional[H3Protocol] = conn.proto
    if proto is None:       # closed before this use began (its 0-RTT handshake failed)
        pool.release_shared(conn)
        raise ConnectError("the HTTP/3 connection to %s:%s closed during its handshake"
                           % (conn.host, conn.port))
    st: Optional[Stream] = None
    body_started = False
    try:
        if proto.early and not proto.q.ready and not (idempotent and body is None):
            proto.wait_ready(_remaining(timeout.connect, deadline))   # not in 0-RTT
        st = proto.open_stream(headers, body is None, header_limit, max_body_size)
        proto.request_flush()
        if body is not None:
            body_started = True
            _send_body(proto, st, body, timeout.write, deadline)
        read = timeout.read
        while st.head is None:
            if st.error is not None:
                raise _copy(st.error)
            if st.ended:
                raise RemoteProtocolError("HTTP/3 stream %d ended without a response" % st.id)
            if not proto.wait(st, read if deadline is None else _remaining(read, deadline)):
                raise ReadTimeout("no response head from %s:%s on HTTP/3 stream %d within the "
                                  "read/total timeout" % (conn.host, conn.port, st.id))
        status, resp_headers, coding, declared = _parse_head(st.head)
        if max_body_size is not None and request.method != "HEAD" and status not in (204, 304):
            if declared is not None and declared.isdigit() and int(declared) > max_body_size:
                raise body_too_large(max_body_size, "content-length: %s" % declared.decode("latin-1"))
    except BaseException as e:
        if st is not None:
            proto.release(st, reset=not st.ended)
        pool.release_shared(conn)
        if isinstance(e, Refused):
            e.body_started = body_started
        elif st is not None and st.head is None and isinstance(e, (ReadError, WriteError)) and (
                idempotent or (proto.goaway is not None and st.id >= proto.goaway)):
            r = Refused("connection lost before any response")
            r.cause = e
            r.body_started = body_started
            raise r from None
        raise
    if st.ended and whole and st.error is None and st.trailers is None \
            and not (coding and decode_content):
        chunks = st.chunks
        content = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        st.buffered = 0
        proto.release(st, False)
        pool.release_shared(conn)
        resp = Response(status, resp_headers, _REASONS.get(status, ""), "HTTP/3", request.url,
                        request, None, None)
        resp._content = content
        return resp
    resp_stream = H3Body(pool, conn, proto, st, timeout.read, None)
    if st.ended and not st.chunks and st.error is None:
        resp_stream._finish()
    decoder = make_decoder(coding, max_decoded_size) if coding and decode_content else None
    return Response(status, resp_headers, _REASONS.get(status, ""), "HTTP/3", request.url,
                    request, resp_stream, decoder)


def _send_body(proto: H3Protocol, st: Stream, body: Any, write: Optional[float],
               deadline: Optional[float]) -> None:
    q = proto.q
    for chunk in _chunks(body):
        if st.ended:
            return          # the server answered already: stop uploading (release resets)
        if st.error is not None:
            raise _copy(st.error)
        q.send_data(st.id, chunk, False)
        proto.request_flush()
        while q.send_buffered(st.id) >= SEND_BUFFER_LIMIT:
            if st.error is not None:
                raise _copy(st.error)
            proto._blocked.add(st)
            try:
                ok = proto.wait(st, _remaining(write, deadline))
            finally:
                proto._blocked.discard(st)
            if not ok:
                raise WriteTimeout("the server took no HTTP/3 data of stream %d within the "
                                   "write timeout" % st.id)
    if st.error is None and not st.ended:
        q.send_data(st.id, b"", True)
        st.sent_end = True
        proto.request_flush()


class H3Body:
    """The body stream of an HTTP/3 response (see :mod:`greenpool.http.models`)."""

    __slots__ = ("pool", "conn", "proto", "st", "read_timeout", "deadline", "_done")

    def __init__(self, pool: Any, conn: Connection, proto: H3Protocol, st: Stream,
                 read_timeout: Optional[float], deadline: Optional[float]) -> None:
        self.pool = pool
        self.conn = conn
        self.proto = proto
        self.st = st
        self.read_timeout = read_timeout
        self.deadline = deadline
        self._done = False

    @property
    def trailers(self) -> Optional[Headers]:
        raw = self.st.trailers
        return Headers.from_raw(raw) if raw else None

    @property
    def stream_id(self) -> int:
        return self.st.id

    def read_chunk(self, max_bytes: int = 65536) -> bytes:
        if self._done:
            return b""
        st = self.st
        while True:
            chunks = st.chunks
            if chunks:
                data = chunks.popleft()
                if len(data) > max_bytes:
                    chunks.appendleft(data[max_bytes:])
                    data = data[:max_bytes]
                else:
                    size = len(data)
                    if chunks and size + len(chunks[0]) <= max_bytes:
                        parts = [data]
                        while chunks and size + len(chunks[0]) <= max_bytes:
                            part = chunks.popleft()
                            parts.append(part)
                            size += len(part)
                        data = b"".join(parts)
                st.buffered -= len(data)
                if st.ended and not chunks and st.error is None:
                    self._finish()      # the last bytes: the use goes back now, not a call later
                return data
            if st.error is not None:
                err = _copy(st.error)
                self._finish()
                raise err
            if st.ended:
                self._finish()
                return b""
            if not self.proto.wait(st, _remaining(self.read_timeout, self.deadline)):
                self._finish()
                raise ReadTimeout("no body data from %s:%s on HTTP/3 stream %d within the read "
                                  "timeout" % (self.conn.host, self.conn.port, st.id))

    def close(self) -> None:
        """Stop early: the stream is cancelled if still open; the use goes back to the pool."""
        self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        st = self.st
        self.proto.release(st, reset=not st.ended)
        self.pool.release_shared(self.conn)

    def __repr__(self) -> str:
        return "<H3Body stream=%d %s>" % (self.st.id, "done" if self._done else "open")
