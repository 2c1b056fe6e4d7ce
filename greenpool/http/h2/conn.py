"""One HTTP/2 connection shared by many greenlets: the protocol object of a pooled Connection.

What this owns: the ``h2`` state machine of one connection (``conn.proto``), the
connection greenlet that reads it, the serialized writes, the per-stream
state and waiters, both directions of flow control, PING, and GOAWAY.  The
request path (headers, bodies, retries, the response body stream) lives in
:mod:`greenpool.http.h2.transport`; the pool only asks :meth:`H2Protocol.max_users`,
:meth:`~H2Protocol.is_alive`, :meth:`~H2Protocol.ping` and :meth:`~H2Protocol.close`.

Rules and invariants:

* **One reader.**  After the handshake one greenlet per connection (never per
  request) reads the socket, feeds ``h2`` and dispatches events to
  :class:`Stream` objects; a request greenlet that waits parks on a fresh
  ``gevent.hub.Waiter`` (``stream.waiter``), woken through a hub callback.
* **A fair reader.**  It feeds at most :data:`SLICE_FRAMES` frames to h2 (about
  1 ms) between two whole turns of the hub (counted across reads: a socket that
  always has data never keeps it), then yields through a zero timer (the hub
  polls I/O and fires timers, so callers' timeouts run on time) before it feeds
  the rest of what it read.
* **Flood limits** (:class:`H2Config`, nghttp2's defaults), counted from the
  9-byte frame headers before h2 sees the frame: ACKs owed behind an unfinished
  write, CONTINUATIONs per header block, SETTINGS entries, a RST_STREAM token
  bucket, empty frames in a row.  Over one: GOAWAY(ENHANCE_YOUR_CALM), and the
  connection fails with :class:`Flooded` (a ``LimitExceeded``).  A frame
  header announcing more than our SETTINGS_MAX_FRAME_SIZE fails the connection
  (GOAWAY FRAME_SIZE_ERROR) at once, before any of its payload is buffered.
* **One h2 call per read.**  The frame headers are read by us (counting the
  slice and the floods); h2 gets every counted frame of a read in one
  ``receive_data``-like call (:meth:`_ClientConnection.receive_frames`), a
  frame whose payload is still arriving included (h2 buffers it).
* **No yield inside h2.**  ``h2.connection.H2Connection`` is not safe across
  greenlet switches: every state change (``send_headers``, ``send_data``,
  ``reset_stream``, ``acknowledge_received_data``, ``receive_data``) runs
  without yielding, then :meth:`H2Protocol.flush` writes ``data_to_send()``.
* **Batched writes.**  After dispatching a read, the reader yields once so
  the greenlets it woke run first; their ``flush`` calls return at once and
  the reader writes everything they queued in one go.
* **One writer at a time.**  Whoever calls ``flush`` while nobody writes
  becomes the writer and drains ``data_to_send()`` until it is empty; a
  ``flush`` that finds a writer returns at once (its bytes go out with the
  writer's, in order).  A writer interrupted mid-frame (killed, or the
  caller's timeout) hands the unsent rest to a short-lived finisher greenlet,
  so a frame is never cut and the other streams carry on.
* **Flow control.**  Inbound: data is buffered per stream and acknowledged
  (WINDOW_UPDATE, batched by h2 at half the window) only as the caller
  consumes it, so a slow reader stalls its own stream and memory stays under
  the windows we advertise.  Outbound: senders wait for WINDOW_UPDATE.
* **Capacity.**  ``max_users()`` is the server's SETTINGS_MAX_CONCURRENT_STREAMS
  (capped by ``H2Config.max_streams``) while the connection accepts new
  streams, else 0; the pool counts users and opens another connection when
  every one is full.  Every stream is closed in h2 (ended both ways or reset)
  before its use is given back.
* **GOAWAY.**  The pool unregisters the connection at once; streams up to
  ``last_stream_id`` finish; later ones fail with :class:`Refused` (the
  server never processed them) and are retried by the request path.  A
  GOAWAY(NO_ERROR) on an idle connection (no stream, no user) is the server's
  idle timeout at work: the pool learns from it (``observe_idle_close``).
* **Dead peers.**  The request path calls ``conn.suspect()`` when a stream's
  read times out; :meth:`H2Protocol.ping` is the probe and :meth:`H2Protocol.fail`
  closes a connection whose PING went unanswered.
* **Failure.**  A broken connection (EOF, socket error, a protocol error by
  the server) fails every open stream with a greenpool error and closes the
  connection through its pool (exact counts); the reader greenlet ends.
  The events of the frames before a bad one are still delivered (a response
  completed in the same read as the bad frame reaches its caller): they are
  collected as h2 handles each frame, not when the whole read is done.
* **Header limits are ours, per stream.**  ``h2`` decodes any header block up
  to :data:`DECODE_LIMIT` (HPACK state must stay in step, so a block cannot be
  skipped); the request's limit (``Stream.max_header_list``) is checked after
  decoding, and a stream over it gets RST_STREAM and :class:`LimitExceeded`
  while the connection and the other streams carry on.
* **Body limits are ours, per stream.**  A stream opened with ``max_body``
  counts the DATA it receives (padding excluded); the frame that takes it past
  the limit is dropped (its window given back), the stream gets RST_STREAM and
  its caller :class:`LimitExceeded` once it has read what came before; the
  connection and the other streams carry on.
* **Capacity raised.**  A SETTINGS raising MAX_CONCURRENT_STREAMS after the
  handshake calls ``pool.capacity_changed(conn)`` so queued waiters run now.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import struct
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Set, Tuple

import gevent
from gevent import GreenletExit, get_hub, getcurrent
from gevent.hub import Waiter

from greenpool.errors import (
    ConnectionClosed,
    ConnectTimeout,
    GreenPoolError,
    LimitExceeded,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    WriteError,
    format_address,
    format_seconds,
)
from greenpool.http.h2.backend import ConnectionState, ErrorCodes, InvalidPaddingError, RstStreamFrame
from greenpool.http.h2.backend import core as h2
from greenpool.http.models import body_too_large
from greenpool.net import recv_more

log = logging.getLogger("greenpool.http.h2")
_monotonic = time.monotonic

TIMEDOUT: Any = type("TIMEDOUT", (), {"__repr__": lambda self: "TIMEDOUT"})()

_DataReceived = h2.events.DataReceived
_ResponseReceived = h2.events.ResponseReceived
_StreamEnded = h2.events.StreamEnded
_StreamReset = h2.events.StreamReset
_WindowUpdated = h2.events.WindowUpdated
_TrailersReceived = h2.events.TrailersReceived
_RemoteSettingsChanged = h2.events.RemoteSettingsChanged
_PingAckReceived = h2.events.PingAckReceived
_ConnectionTerminated = h2.events.ConnectionTerminated
_Informational = h2.events.InformationalResponseReceived
_InvalidPaddingError = InvalidPaddingError
_RstStreamFrame = RstStreamFrame
_StreamClosedError = h2.exceptions.StreamClosedError
_StreamIDTooLowError = h2.exceptions.StreamIDTooLowError

#: what h2/HPACK may decode in one header block; our own (smaller) limit is checked per stream
DECODE_LIMIT = 16 * 1024 * 1024
#: frames the reader feeds to h2 before it yields to the hub (~10 us each: about 1 ms)
SLICE_FRAMES = 100
#: frames read after a failed write, looking for a GOAWAY (never yields)
DRAIN_FRAMES = 1000
#: closed streams h2 may hold before it is made to forget them (see open_outbound_streams)
HELD_STREAMS = 256
#: how long a GOAWAY(ENHANCE_YOUR_CALM) may take to write before the connection closes
GOODBYE_TIMEOUT = 0.1


@dataclasses.dataclass(frozen=True)
class H2Config:
    """HTTP/2 settings of new connections (immutable; ``dataclasses.replace`` to change).

    ``initial_window_size`` bounds what one stream buffers before its reader
    consumes it; ``connection_window_size`` bounds the whole connection.
    """

    #: per-stream receive window we advertise (SETTINGS_INITIAL_WINDOW_SIZE)
    initial_window_size: int = 2 * 1024 * 1024
    #: connection receive window (raised from 65535 by a WINDOW_UPDATE at start)
    connection_window_size: int = 16 * 1024 * 1024
    #: largest response header list we accept (SETTINGS_MAX_HEADER_LIST_SIZE)
    max_header_list_size: int = 65536
    #: largest frame we accept (SETTINGS_MAX_FRAME_SIZE)
    max_frame_size: int = 16384
    #: cap on streams per connection when the server allows more (or sets no limit)
    max_streams: int = 1000
    #: bytes per socket read
    read_size: int = 65536
    #: flood limits (nghttp2's defaults); over one: GOAWAY(ENHANCE_YOUR_CALM), the connection
    #: closes, its streams fail with LimitExceeded (idempotent ones are sent again elsewhere).
    #: SETTINGS/PING ACKs we owe but could not write yet (nghttp2 max_outbound_ack)
    max_pending_acks: int = 1000
    #: CONTINUATION frames after one HEADERS (nghttp2 max_continuations)
    max_continuations: int = 8
    #: entries in one SETTINGS frame (nghttp2 max_settings)
    max_settings: int = 32
    #: RST_STREAM token bucket: burst, then refilled per second (nghttp2 stream_reset_rate_limit)
    reset_burst: int = 1000
    reset_rate: int = 33
    #: empty DATA (without END_STREAM), HEADERS or CONTINUATION (without END_HEADERS) in a row
    max_empty_frames: int = 100
    #: after a stream's read timeout, a PING must be answered within this many seconds, or
    #: the connection leaves rotation and closes (``Connection.suspect``)
    dead_peer_timeout: float = 1.0

    def __post_init__(self) -> None:
        for name in ("initial_window_size", "connection_window_size", "max_header_list_size",
                     "max_frame_size", "max_streams", "read_size", "max_pending_acks",
                     "max_continuations", "max_settings", "reset_burst", "reset_rate",
                     "max_empty_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError("H2Config.%s must be an int >= 1, got %r" % (name, value))
        t = self.dead_peer_timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError("H2Config.dead_peer_timeout must be a number > 0, got %r" % (t,))
        if not 65535 <= self.connection_window_size <= 2**31 - 1:
            raise ValueError("H2Config.connection_window_size must be in 65535..2**31-1")
        if self.initial_window_size > 2**31 - 1:
            raise ValueError("H2Config.initial_window_size must be <= 2**31-1")
        if not 16384 <= self.max_frame_size <= 2**24 - 1:
            raise ValueError("H2Config.max_frame_size must be in 16384..2**24-1")


class Flooded(LimitExceeded):
    """The server made the connection do more than a flood limit allows (see
    :class:`H2Config`): it was closed with GOAWAY(ENHANCE_YOUR_CALM)."""


class Refused(GreenPoolError):
    """A stream the server never processed (GOAWAY above it, REFUSED_STREAM, no stream
    left on the connection): safe to send again on another connection."""


class Stream:
    """One request/response exchange on a connection: what the reader delivered so far."""

    __slots__ = ("id", "head", "chunks", "buffered", "ended", "trailers", "error", "waiter",
                 "sending", "released", "max_header_list", "max_body", "received")

    def __init__(self, stream_id: int, max_header_list: int = 65536,
                 max_body: Optional[int] = None) -> None:
        self.id = stream_id
        self.max_header_list = max_header_list    # our limit on each header block it receives
        self.max_body = max_body                  # our limit on its body (None: no limit)
        self.received = 0                         # body bytes received (padding excluded)
        self.head: Optional[List[Any]] = None     # response headers (raw, pseudo included)
        self.chunks: Deque[bytes] = deque()       # body data not yet consumed
        self.buffered = 0
        self.ended = False                        # END_STREAM received
        self.trailers: Optional[List[Any]] = None
        self.error: Optional[BaseException] = None
        self.waiter: Optional[Waiter] = None      # set while its greenlet waits
        self.sending = False                      # blocked on outbound flow control
        self.released = False

    def __repr__(self) -> str:
        return "<Stream %d head=%s ended=%s buffered=%d%s>" % (
            self.id, self.head is not None, self.ended, self.buffered,
            " error=%r" % (self.error,) if self.error is not None else "")


class _ClientConnection(h2.connection.H2Connection):
    """h2's connection, made to keep receiving after a GOAWAY.

    h2 moves its connection state machine to CLOSED on GOAWAY and then treats
    every later frame as a protocol error, so streams at or below
    ``last_stream_id`` could never finish.  We put it back to CLIENT_OPEN and
    refuse new streams ourselves (``H2Protocol.goaway``).
    """

    def _receive_goaway_frame(self, frame: Any) -> Any:
        result = super()._receive_goaway_frame(frame)
        if self.state_machine.state is ConnectionState.CLOSED:
            self.state_machine.state = ConnectionState.CLIENT_OPEN
        return result

    @property
    def open_outbound_streams(self) -> int:
        # h2 counts the open streams by walking every stream it holds (forgetting the
        # closed ones on the way) at each send_headers: O(streams in flight) per request.
        # Its one use is the check "count + 1 > the server's MAX_CONCURRENT_STREAMS".
        # While the streams held, open or closed, stay under that and HELD_STREAMS, the
        # check passes without the walk; past either, walk as h2 does (exact, and it
        # forgets the closed ones: what is held stays bounded).
        held = len(self.streams)
        if held < HELD_STREAMS and held < self.remote_settings.max_concurrent_streams:
            return held
        return self._open_streams(1)

    def receive_frames(self, data: bytes, events: List[Any]) -> None:
        """``receive_data``, but the events go to ``events`` as each frame is handled,
        so the events of the frames before a bad one survive its ProtocolError (h2
        drops them).  Same steps as h2's and jh2's ``receive_data``."""
        frames = self.incoming_buffer
        frames.add_data(data)
        frames.max_frame_size = self.max_inbound_frame_size
        handle = self._receive_frame
        try:
            for frame in frames:
                events.extend(handle(frame))
        except _InvalidPaddingError:
            self._terminate_connection(ErrorCodes.PROTOCOL_ERROR)
            raise h2.exceptions.ProtocolError("Received frame with invalid padding.") from None
        except h2.exceptions.ProtocolError as e:
            self._terminate_connection(e.error_code)
            raise

    def _receive_frame(self, frame: Any) -> Any:
        # h2's own, less its trace line: ``repr(frame)`` there is built for every frame
        # whether or not anyone logs it, and hexlifies a DATA frame's whole payload
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except _StreamClosedError as e:
            # closed by our RST_STREAM: a stream error (answer RST_STREAM), else a
            # connection error
            if self._stream_is_closed_by_reset(e.stream_id):
                f = _RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                return e._events
            raise
        except _StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = _RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                return []
            if self._stream_is_closed_by_end(e.stream_id):
                raise _StreamClosedError(e.stream_id) from e
            raise
        self._prepare_for_sending(frames)
        return events

    def frame_too_large(self, length: int) -> Exception:
        """A frame header announcing ``length`` over our SETTINGS_MAX_FRAME_SIZE: queue
        GOAWAY(FRAME_SIZE_ERROR) and return the error (h2 itself would first buffer the
        whole oversized frame)."""
        self._terminate_connection(ErrorCodes.FRAME_SIZE_ERROR)
        return h2.exceptions.FrameTooLargeError(
            "Received overlong frame: length %d, max %d" % (length, self.max_inbound_frame_size))

    def _local_settings_acked(self) -> Any:
        # h2 would make the advertised SETTINGS_MAX_HEADER_LIST_SIZE the HPACK decoder's hard
        # limit (an error there loses the connection): decode anything, check per stream
        changes = super()._local_settings_acked()
        self.decoder.max_header_list_size = DECODE_LIMIT
        return changes


class H2Protocol:
    """The ``conn.proto`` of a shared HTTP/2 connection.  See the module docstring."""

    def __init__(self, conn: Any, config: H2Config) -> None:
        self.conn = conn
        self.sock = conn.sock
        self.config = config
        self.h2 = _ClientConnection(config=h2.config.H2Configuration(
            client_side=True, header_encoding=None,
            validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=True, normalize_inbound_headers=True))
        self.streams: Dict[int, Stream] = {}
        self.max_streams = config.max_streams
        self.goaway: Optional[int] = None      # last_stream_id of a GOAWAY, once received
        self.error: Optional[BaseException] = None
        self.closed = False
        self.reader: Optional[gevent.Greenlet] = None
        self._writing = False
        self._batching = False                 # the reader flushes once the woken greenlets ran
        self._blocked: Set[Stream] = set()     # streams waiting for send window
        self._pings: Dict[bytes, Waiter] = {}
        self._ping_seq = 0
        self._loop = get_hub().loop
        self._settings_seen = False
        self._rbuf = b""                       # the start of a frame header, or frames
        self._more = False                     # ... left for the next slice (fairness)
        self._skip = 0                         # payload bytes of a counted frame still to come
        self._budget = SLICE_FRAMES            # frames left in this slice
        self._owed = 0                         # SETTINGS/PING ACKs queued since the last drain
        self._conts = 0                        # CONTINUATIONs in the current header block
        self._empty = 0                        # empty frames in a row
        self._resets = float(config.reset_burst)   # RST_STREAM tokens
        self._reset_at = 0.0

    def __repr__(self) -> str:
        state = "closed" if self.closed else "goaway" if self.goaway is not None else "open"
        return "<H2Protocol %s streams=%d/%d>" % (state, len(self.streams), self.max_streams)

    # -- the interface the pool asks --

    def max_users(self) -> int:
        return self.max_streams if self.is_alive() else 0

    def is_alive(self) -> bool:
        if self.closed or self.goaway is not None or self.error is not None:
            return False
        return (self.h2.highest_outbound_stream_id or 0) < 2**31 - 1000   # ids last ~1e9 streams

    def close(self) -> None:
        """Called by the pool (``conn._close_now``) or by :meth:`fail`: stop everything."""
        if self.closed:
            return
        self.closed = True
        if self.error is None:
            self.error = ConnectionClosed("the HTTP/2 connection to %s:%s was closed (pool "
                                          "stopped, idle timeout or failed health ping)"
                                          % self.conn.key[:2])
        self._fail_streams(self.error)
        reader = self.reader
        if reader is not None and reader is not getcurrent() and not reader.dead:
            reader.kill(block=False)

    def abandon_in_child(self) -> None:
        """After ``os.fork()``, in the child: this connection is the parent's.

        The streams copied from the parent fail now with
        :class:`~greenpool.errors.ConnectionClosed` (rather than waiting for a
        reader that will never read) and the copied reader stops; nothing is
        written to the socket, which the pool then drops.  Never yields.
        """
        if self.error is None:
            self.error = ConnectionClosed(
                "the HTTP/2 connection to %s:%s belongs to the parent process (os.fork()); "
                "the request may or may not have been processed there" % self.conn.key[:2])
        self.close()

    def ping(self, timeout: Optional[float]) -> None:
        """Send a PING and wait for its ACK (the pool's idle health check)."""
        if self.error is not None or self.closed:
            raise ConnectionClosed("the HTTP/2 connection is closed")
        self._ping_seq += 1
        payload = struct.pack(">Q", self._ping_seq)
        w = self._pings[payload] = Waiter()
        self.h2.ping(payload)
        timer = None
        try:
            self.flush()
            if timeout is not None:
                timer = self._loop.timer(timeout)
                timer.start(w.switch, TIMEDOUT)
            result = w.get()
        finally:
            self._pings.pop(payload, None)
            if timer is not None:
                timer.close()
        if result is TIMEDOUT:
            raise ReadTimeout("no answer to an HTTP/2 PING within %ss" % (timeout,))
        if isinstance(result, BaseException):
            raise result

    # -- start --

    def handshake(self, timeout: Optional[float]) -> None:
        """Send the preface and our SETTINGS, read until the server's SETTINGS, start the reader.

        Runs in the greenlet that opened the connection, before the pool
        registers it, so ``max_users()`` is the server's real limit.
        """
        cfg = self.config
        h2c = self.h2
        s = h2.settings.SettingCodes
        h2c.local_settings = h2.settings.Settings(client=True, initial_values={
            s.ENABLE_PUSH: 0,
            s.MAX_CONCURRENT_STREAMS: 100,
            s.INITIAL_WINDOW_SIZE: cfg.initial_window_size,
            s.MAX_FRAME_SIZE: cfg.max_frame_size,
            s.MAX_HEADER_LIST_SIZE: cfg.max_header_list_size,
        })
        h2c.max_inbound_frame_size = cfg.max_frame_size
        h2c.decoder.max_header_list_size = DECODE_LIMIT
        h2c.initiate_connection()
        if cfg.connection_window_size > 65535:
            h2c.increment_flow_control_window(cfg.connection_window_size - 65535)
        where = format_address(*self.conn.key[:2])
        timer = gevent.Timeout(timeout) if timeout is not None else None
        if timer is not None:
            timer.start()
        try:
            self.flush()
            first = True
            while not self._settings_seen:
                data = b"" if self._more else self.sock.recv(cfg.read_size)
                if not data and not self._more:
                    raise RemoteProtocolError("%s closed the connection during the HTTP/2 handshake "
                                              "(does it speak HTTP/2 on this port?)" % where)
                if first and len(data) >= 4 and data[3] != 4:
                    # the server preface is a SETTINGS frame (type 4); h2 itself would wait
                    # for a whole "frame" of whatever length the first 3 bytes spell
                    raise RemoteProtocolError("%s did not answer the HTTP/2 preface with SETTINGS "
                                              "(it sent %r...): not an HTTP/2 server?" % (where, data[:16]))
                first = False
                events, err = self._receive(data)
                self._dispatch(events)
                if err is not None:
                    raise RemoteProtocolError("%s did not answer the HTTP/2 preface with HTTP/2 "
                                              "(%s)" % (where, err)) from None
            self.flush()
        except gevent.Timeout as t:
            if t is not timer:
                raise
            raise ConnectTimeout("HTTP/2 handshake with %s timed out after %s"
                                 % (where, format_seconds(timeout))) from None
        except OSError as e:
            raise ConnectionClosed("HTTP/2 handshake with %s failed: %s" % (where, e)) from None
        finally:
            if timer is not None:
                timer.close()
        self.reader = gevent.spawn(self._run)
        self.reader.name = "h2-reader %s" % where

    # -- the connection greenlet --

    def _receive(self, data: bytes, budget: Optional[int] = None
                 ) -> Tuple[List[Any], Optional[Exception]]:
        """Feed ``data`` to h2 in one call, up to ``budget`` frames (default: what is
        left of the reader's slice, ``self._budget``).

        The 9-byte frame headers are read here first: they count the frames
        (the slice) and the flood limits before h2 sees a frame.  The frames past
        the budget, or after one over a flood limit, are kept for later
        (``self._more`` is then True: the reader yields, then feeds them without
        reading); the start of a frame whose header is not whole yet is kept too.
        A frame whose header was counted but whose payload has not all arrived
        goes to h2 as it comes (h2 buffers it); ``self._skip`` is how much of it is
        still to come, so its bytes are never read as a header.  Returns the
        events and the ``h2`` protocol error (or :class:`Flooded`) that stopped
        it, if any: the events of the frames before a bad one survive
        (:meth:`_ClientConnection.receive_frames`).  Never yields.
        """
        buf = self._rbuf + data if self._rbuf else data
        self._rbuf = b""
        self._more = False
        slice_ = budget is None
        if budget is None:
            budget = self._budget
        h2c = self.h2
        events: List[Any] = []
        n = len(buf)
        off = self._skip
        bad: Optional[Exception] = None
        too_large = 0
        if off >= n:            # all of it belongs to the frame already counted
            self._skip = off - n
            off = n
        else:
            limit = h2c.max_inbound_frame_size
            while n - off >= 9:
                if not budget:
                    self._more = True
                    break
                length = int.from_bytes(buf[off:off + 3], "big")
                if length > limit:
                    too_large = length      # refused once the frames before it are fed
                    break
                kind = buf[off + 3]
                if kind > 1 or not length:
                    bad = self._count(kind, buf[off + 4], length)
                    if bad is not None:
                        break
                else:                  # DATA or HEADERS with a payload: the common case
                    self._empty = 0
                    if kind:
                        self._conts = 0
                budget -= 1
                off += 9 + length
            if off > n:         # the last frame is counted, its payload still coming
                self._skip = off - n
                off = n
            else:
                self._skip = 0
        if slice_:
            self._budget = budget
        if off:
            try:
                h2c.receive_frames(buf if off == n else buf[:off], events)
            except h2.exceptions.ProtocolError as e:
                return events, e
        if too_large:
            return events, h2c.frame_too_large(too_large)
        if bad is not None:
            return events, bad
        if off < n:
            self._rbuf = buf[off:]
        return events, None

    def _count(self, kind: int, flags: int, length: int) -> Optional[Exception]:
        """The flood limits for one frame header (not DATA/HEADERS with a payload).

        Returns :class:`Flooded` when the frame is over a limit.  Never yields.
        """
        cfg = self.config
        if length:
            self._empty = 0
        elif kind in (0, 1, 9) and not flags & (0x4 if kind else 0x1):
            self._empty += 1       # DATA without END_STREAM, HEADERS/CONTINUATION without END_HEADERS
            if self._empty > cfg.max_empty_frames:
                return Flooded("the server sent more than %d empty HTTP/2 frames in a row "
                               "(H2Config.max_empty_frames)" % cfg.max_empty_frames)
        if kind == 4 or kind == 6:     # SETTINGS, PING: h2 queues an ACK for each
            if not flags & 0x1:
                self._owed += 1
                if self._owed > cfg.max_pending_acks:
                    return Flooded("the server sent more than %d SETTINGS/PING frames whose "
                                   "ACKs could not be written yet (H2Config.max_pending_acks)"
                                   % cfg.max_pending_acks)
                if kind == 4 and length > 6 * cfg.max_settings:
                    return Flooded("the server sent a SETTINGS frame of more than %d entries "
                                   "(H2Config.max_settings)" % cfg.max_settings)
        elif kind == 9:                # CONTINUATION
            self._conts += 1
            if self._conts > cfg.max_continuations:
                return Flooded("the server sent more than %d CONTINUATION frames for one "
                               "header block (H2Config.max_continuations)" % cfg.max_continuations)
        elif kind == 3:                # RST_STREAM: a token bucket
            now = _monotonic()
            tokens = min(float(cfg.reset_burst),
                         self._resets + (now - self._reset_at) * cfg.reset_rate) - 1
            self._reset_at = now
            self._resets = tokens
            if tokens < 0:
                return Flooded("the server sent RST_STREAM faster than %d at once and %d a "
                               "second (H2Config.reset_burst, reset_rate)" % (cfg.reset_burst, cfg.reset_rate))
        if kind == 1 or kind == 5:     # HEADERS, PUSH_PROMISE: a new header block
            self._conts = 0
        return None

    def _run(self) -> None:
        sock = self.sock
        size = self.config.read_size
        try:
            while not self.closed:
                if self._more:
                    data = b""      # frames left from the last slice
                else:
                    # TLS: every record already here, so the whole batch is answered in one write
                    data = recv_more(sock, sock.recv(size), size)
                    if not data:
                        raise ConnectionClosed("the server closed the HTTP/2 connection to %s:%s"
                                               % self.conn.key[:2])
                events, bad = self._receive(data)
                if bad is not None:
                    self._dispatch(events)   # what came before the bad frame still counts
                    if isinstance(bad, Flooded):
                        self._goodbye(ErrorCodes.ENHANCE_YOUR_CALM)
                        raise Flooded("HTTP/2 connection to %s:%s closed with GOAWAY("
                                      "ENHANCE_YOUR_CALM): %s" % (self.conn.key[:2] + (bad,)))
                    mapped = _map_h2_error(bad)
                    try:
                        self.flush()    # h2 queued a GOAWAY: tell the server why
                    except Exception:   # noqa: BLE001 - failing anyway
                        pass
                    raise mapped from None
                woke = self._dispatch(events)
                if self._budget <= 0:
                    # A full slice since the hub last had a whole turn: yield through a
                    # zero timer, not a callback, so the hub polls I/O and fires timers
                    # (callers' timeouts) before we go on.  (The greenlets just woken
                    # run too: one write for the whole batch, as below.)
                    self._batching = True
                    try:
                        self._fair_yield()
                    finally:
                        self._batching = False
                    self._budget = SLICE_FRAMES
                elif woke:
                    # Let the greenlets just woken run first (they queue their next
                    # HEADERS, WINDOW_UPDATEs): one write for the whole batch.
                    self._batching = True
                    try:
                        gevent.sleep(0)
                    finally:
                        self._batching = False
                if not self.closed:    # (a GOAWAY may have closed it)
                    self.flush()
        except GreenletExit:
            return
        except BaseException as e:  # noqa: BLE001 - every exit fails the connection
            if self.closed:
                return
            if isinstance(e, GreenPoolError):
                err: BaseException = e
            elif isinstance(e, OSError):
                err = ConnectionClosed("HTTP/2 connection to %s:%s lost: %s" % (self.conn.key[:2] + (e,)))
            else:
                log.exception("HTTP/2 reader of %r crashed", self.conn)
                err = ReadError("HTTP/2 reader failed: %r" % (e,))
            self.fail(err)

    def _fair_yield(self) -> None:
        """Wait for one whole turn of the hub's loop (a zero timer: I/O polled, timers run)."""
        w = Waiter()
        timer = self._loop.timer(0.0)
        timer.start(w.switch, None)
        try:
            w.get()
        finally:
            timer.close()

    def _dispatch(self, events: List[Any]) -> bool:
        """Apply h2 events to streams; never yields.  Waiters are woken by hub callbacks.

        True when it woke someone."""
        streams = self.streams
        touched = []
        raised = False
        for ev in events:
            t = type(ev)
            if t is _DataReceived:
                st = streams.get(ev.stream_id)
                n = ev.flow_controlled_length
                data = ev.data
                if st is None or st.released or (st.error is not None and st.head is None):
                    self.h2.acknowledge_received_data(n, ev.stream_id)
                    continue
                if st.max_body is not None and self._body_over(st, len(data)):
                    self.h2.acknowledge_received_data(n, ev.stream_id)
                    touched.append(st)
                    continue
                if n > len(data):   # padding: give it back now
                    self.h2.acknowledge_received_data(n - len(data), ev.stream_id)
                if data:
                    st.chunks.append(data)
                    st.buffered += len(data)
                touched.append(st)
            elif t is _ResponseReceived:
                st = streams.get(ev.stream_id)
                if st is not None:
                    if self._headers_fit(st, ev.headers, "response header list"):
                        st.head = ev.headers
                    touched.append(st)
            elif t is _StreamEnded:
                st = streams.get(ev.stream_id)
                if st is not None:
                    st.ended = True
                    touched.append(st)
            elif t is _WindowUpdated:
                if ev.stream_id == 0:
                    touched.extend(self._blocked)
                else:
                    st = streams.get(ev.stream_id)
                    if st is not None and st.sending:
                        touched.append(st)
            elif t is _StreamReset:
                st = streams.get(ev.stream_id)
                if st is not None and st.error is None:
                    if not (st.ended and ev.error_code == ErrorCodes.NO_ERROR):
                        # (RFC 9113 8.1: a complete response then RST_STREAM(NO_ERROR)
                        # only asks us to stop sending the request body)
                        st.error = self._reset_error(ev)
                    touched.append(st)
            elif t is _TrailersReceived:
                st = streams.get(ev.stream_id)
                if st is not None:
                    if self._headers_fit(st, ev.headers, "trailer list"):
                        st.trailers = ev.headers
                    else:
                        touched.append(st)
            elif t is _RemoteSettingsChanged:
                self._settings_seen = True
                changed = ev.changed_settings
                mcs = changed.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                if mcs is not None:
                    before = self.max_streams
                    self.max_streams = max(0, min(mcs.new_value, self.config.max_streams))
                    if self.max_streams > before and self.reader is not None:
                        raised = True
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in changed:
                    touched.extend(self._blocked)
            elif t is _PingAckReceived:
                w = self._pings.pop(ev.ping_data, None)
                if w is not None:
                    self._loop.run_callback(w.switch, None)
            elif t is _ConnectionTerminated:
                touched.extend(self._on_goaway(ev))
            elif t is _Informational:
                st = streams.get(ev.stream_id)
                if st is not None and not self._headers_fit(st, ev.headers,
                                                            "informational header list"):
                    touched.append(st)
        if raised and not self.closed:
            pool = self.conn.pool
            if pool is not None:
                pool.capacity_changed(self.conn)   # queued waiters can have the new streams now
        woke = False
        for st in touched:
            w = st.waiter
            if w is not None:
                st.waiter = None
                self._loop.run_callback(w.switch, None)
                woke = True
        return woke

    def _headers_fit(self, st: Stream, headers: List[Any], what: str) -> bool:
        """Check a decoded header block against the stream's limit (RFC 9113 6.5.2 sizes).

        Over it: RST_STREAM for this stream only and :class:`LimitExceeded` for its
        caller; the connection (whose HPACK state h2 kept in step) carries on.  No yield.
        """
        limit = st.max_header_list
        size = 0
        for k, v in headers:
            size += len(k) + len(v) + 32
        if size <= limit:
            return True
        if st.error is None:
            st.error = LimitExceeded(
                "the server sent a %s of %d bytes on HTTP/2 stream %d, over the limit of %d "
                "(raise max_header_size / H2Config.max_header_list_size)" % (what, size, st.id, limit))
        try:
            self.h2.reset_stream(st.id, ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            pass    # already closed both ways
        return False

    def _body_over(self, st: Stream, size: int) -> bool:
        """Count ``size`` more body bytes of ``st``; True when it is over its ``max_body``.

        The first time: :class:`LimitExceeded` for its caller and RST_STREAM for this
        stream only (see "Body limits" in the module docstring).  No yield.
        """
        st.received += size
        limit = st.max_body
        assert limit is not None, "called only for a stream with a body limit"
        if st.received <= limit:
            return False
        if st.error is None:
            st.error = body_too_large(limit, "%d bytes received so far on HTTP/2 stream %d"
                                      % (st.received, st.id))
            try:
                self.h2.reset_stream(st.id, ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                pass    # already closed both ways
        return True

    def _reset_error(self, ev: Any) -> BaseException:
        code = ev.error_code
        name = getattr(code, "name", str(code))
        if code == ErrorCodes.REFUSED_STREAM:
            return Refused("the server refused stream %d (REFUSED_STREAM)" % ev.stream_id)
        return RemoteProtocolError("the server reset HTTP/2 stream %d with %s" % (ev.stream_id, name))

    def _on_goaway(self, ev: Any) -> List[Stream]:
        last = ev.last_stream_id if ev.last_stream_id is not None else 0
        first = self.goaway is None
        self.goaway = last if first else min(last, self.goaway)  # type: ignore[type-var]
        code = getattr(ev.error_code, "name", str(ev.error_code))
        log.debug("%r: GOAWAY last_stream_id=%s %s", self.conn, last, code)
        touched = []
        for sid, st in self.streams.items():
            if sid > last and st.error is None:
                st.error = Refused("the server sent GOAWAY (%s) before processing stream %d" % (code, sid))
                touched.append(st)
        if first:
            conn = self.conn
            pool = conn.pool
            if pool is not None:
                if ev.error_code == ErrorCodes.NO_ERROR and not self.streams and conn.users == 0:
                    pool.observe_idle_close(conn)   # the server's idle timeout (pool rule 9)
                pool.unregister_h2(conn)   # closes now if nobody uses it
        return touched

    # -- failures --

    def fail(self, err: BaseException) -> None:
        """The connection is broken: fail every stream, close it through its pool."""
        if self.error is None:
            self.error = err
        self._fail_streams(self.error)
        conn = self.conn
        if not conn.closed:
            conn.close("HTTP/2 connection failed: %s" % (err,))
        self.close()

    def _fail_streams(self, err: BaseException) -> None:
        for st in list(self.streams.values()):
            if st.error is None and not (st.ended and st.head is not None and not st.sending):
                st.error = _copy_error(err)
            w = st.waiter
            if w is not None:
                st.waiter = None
                self._loop.run_callback(w.switch, None)
        for w in list(self._pings.values()):
            self._loop.run_callback(w.switch, _copy_error(err))
        self._pings.clear()

    # -- writing --

    def flush(self) -> None:
        """Write what h2 has queued; see "One writer at a time" in the module docstring."""
        if self._writing or self._batching or self.closed:
            return
        data = self.h2.data_to_send()
        if not data:
            self._owed = 0
            return
        self._writing = True
        sock = self.sock
        view = None
        off = 0
        try:
            while data:
                view = memoryview(data)
                off = 0
                total = len(data)
                while off < total:
                    off += sock.send(view[off:])
                data = self.h2.data_to_send()
            self._writing = False
            self._owed = 0          # every ACK h2 had queued is written
        except OSError as e:
            self._writing = False
            if self.error is not None:
                # the connection failed first (closed under this write): say why
                raise _copy_error(self.error) from None
            err = WriteError("writing to the HTTP/2 connection to %s:%s failed: %s"
                             % (self.conn.key[:2] + (e,)))
            self._drain()
            self.fail(err)
            raise _copy_error(err) from None
        except BaseException:
            # killed or timed out mid-write: finish the frame in the background
            if view is not None and off < len(view) and not self.closed:
                gevent.spawn(self._finish_write, bytes(view[off:]))
            else:
                self._writing = False
            raise

    def _drain(self) -> None:
        """After a failed write: read what the server sent before it closed, without waiting.

        A server that ends a connection (GOAWAY, then close: nginx after
        ``keepalive_requests``, haproxy, h2o and lighttpd at idle) makes our next
        write fail (EPIPE, ECONNRESET, TLS "EOF in violation of protocol"),
        possibly before the reader saw the GOAWAY still in the socket buffer;
        applying it now marks the streams above its ``last_stream_id``
        :class:`Refused` (never processed, safe to send again).  Plain TCP reads
        the kernel's buffer with ``MSG_DONTWAIT``; TLS reads the records already
        received through the TLS object, which never waits on a non-blocking
        socket.  Never yields.
        """
        if self.closed:
            return
        sslobj = getattr(self.sock, "_sslobj", None)
        if sslobj is not None:
            read = sslobj.read
        elif hasattr(self.sock, "getpeercert"):
            return      # a TLS socket without its TLS object: nothing to read safely
        else:
            raw = getattr(self.sock, "_sock", None)
            if raw is None:
                return

            def read(size: int) -> bytes:
                return raw.recv(size, socket.MSG_DONTWAIT)   # type: ignore[no-any-return]
        size = self.config.read_size
        if self._rbuf:      # frames the reader read but has not fed yet (its slice ended)
            events, bad = self._receive(b"", DRAIN_FRAMES)
            self._dispatch(events)
            if bad is not None or self.closed or self._more:
                return
        try:
            for _ in range(64):
                data = read(size)
                if not data:
                    return
                events, bad = self._receive(data, DRAIN_FRAMES)
                self._dispatch(events)
                if bad is not None or self.closed or self._more:
                    return
        except (OSError, ValueError):
            return   # nothing more buffered (EAGAIN, SSLWantRead), closed, or reset

    def _goodbye(self, code: ErrorCodes) -> None:
        """Queue GOAWAY(``code``) and try to write what h2 has queued, without waiting
        for a peer that does not read (the connection is closed right after)."""
        try:
            self.h2.close_connection(error_code=code)
        except h2.exceptions.ProtocolError:
            return
        data = self.h2.data_to_send()
        if not data or self._writing:
            return
        try:
            with gevent.Timeout(GOODBYE_TIMEOUT, False):
                self.sock.send(data[-17:])   # the GOAWAY frame (9 + 8 bytes) alone
        except OSError:
            pass

    def _finish_write(self, rest: bytes) -> None:
        try:
            self.sock.sendall(rest)
            self._writing = False
            self.flush()
        except OSError as e:
            self._writing = False
            self._drain()
            self.fail(WriteError("writing to the HTTP/2 connection to %s:%s failed: %s"
                                 % (self.conn.key[:2] + (e,))))
        except GreenPoolError:
            pass
        finally:
            self._writing = False

    # -- per-stream helpers for the request path (never yield unless they say so) --

    def wait(self, st: Stream, seconds: Optional[float]) -> bool:
        """Park until the reader touches ``st`` (True) or ``seconds`` pass (False).  Yields."""
        w = st.waiter = Waiter()
        timer = None
        if seconds is not None:
            timer = self._loop.timer(seconds if seconds > 0 else 0.0)
            timer.start(w.switch, TIMEDOUT)
        try:
            result = w.get()
        finally:
            st.waiter = None
            if timer is not None:
                timer.close()
        return result is not TIMEDOUT

    def block_send(self, st: Stream, blocked: bool) -> None:
        st.sending = blocked
        if blocked:
            self._blocked.add(st)
        else:
            self._blocked.discard(st)

    def open_stream(self, headers: List[Any], end_stream: bool,
                    max_header_list: Optional[int] = None,
                    max_body: Optional[int] = None) -> Stream:
        """Send HEADERS on a new stream.  No yield; raises :class:`Refused` if it cannot.

        ``max_header_list``: the largest header block this stream accepts (default
        ``H2Config.max_header_list_size`` of the connection).  ``max_body``: the
        most body bytes it accepts (None: no limit).
        """
        if self.closed or self.error is not None or self.goaway is not None:
            raise Refused("the HTTP/2 connection no longer takes new streams")
        h2c = self.h2
        try:
            sid = h2c.get_next_available_stream_id()
            h2c.send_headers(sid, headers, end_stream=end_stream)
        except (h2.exceptions.TooManyStreamsError, h2.exceptions.NoAvailableStreamIDError) as e:
            raise Refused("no stream available on this HTTP/2 connection: %s" % (e,)) from None
        except h2.exceptions.ProtocolError as e:
            raise Refused("cannot open an HTTP/2 stream: %s" % (e,)) from None
        st = self.streams[sid] = Stream(sid, max_header_list if max_header_list is not None
                                        else self.config.max_header_list_size, max_body)
        return st

    def release(self, st: Stream, reset: bool) -> None:
        """Forget ``st``: reset it if it is still open, give back unread window.  No yield."""
        if st.released:
            return
        st.released = True
        self.streams.pop(st.id, None)
        self._blocked.discard(st)
        if self.closed:
            return
        h2c = self.h2
        if reset:
            try:
                h2c.reset_stream(st.id, ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                pass   # already closed in h2
        if st.buffered:
            n, st.buffered = st.buffered, 0
            st.chunks.clear()
            try:
                h2c.acknowledge_received_data(n, st.id)
            except h2.exceptions.ProtocolError:
                pass

    def stream_closed(self, st: Stream) -> bool:
        """True when h2 no longer considers ``st`` open (so no reset is needed)."""
        s = self.h2.streams.get(st.id)
        return s is None or s.closed


def _copy_error(err: BaseException) -> BaseException:
    """A fresh instance per waiting greenlet (one exception object must not be raised twice)."""
    try:
        return type(err)(*err.args)
    except Exception:  # noqa: BLE001 - an exotic constructor: share it
        return err


def _map_h2_error(e: Exception) -> GreenPoolError:
    if isinstance(e, h2.exceptions.DenialOfServiceError) and "header" in str(e).lower():
        return LimitExceeded("the server sent a header list larger than max_header_list_size "
                             "(raise H2Config.max_header_list_size): %s" % (e,))
    if isinstance(e, h2.exceptions.FlowControlError):
        return RemoteProtocolError("the server violated HTTP/2 flow control: %s" % (e,))
    return RemoteProtocolError("the server broke the HTTP/2 protocol: %s" % (e,))
