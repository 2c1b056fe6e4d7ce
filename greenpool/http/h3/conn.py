"""The sans-IO HTTP/3 connection: qh3's QuicConnection + H3Connection behind a small adapter.

What this owns: the only import of the QUIC library (qh3, installed by the
``greenpool[http3]`` extra), the client TLS configuration of a QUIC connection
(verify / cert as for TCP), and the translation of the library's events into
the few :class:`Event` tuples the transport acts on.  No socket here: the
transport feeds datagrams in (:meth:`H3Conn.receive`), takes datagrams out
(:meth:`H3Conn.datagrams`) and calls :meth:`H3Conn.on_timer` when
:meth:`H3Conn.timer` is due.

Promises:

* :meth:`H3Conn.streams_left` is how many request streams the peer's
  MAX_STREAMS allows us to open now; :meth:`H3Conn.open_request` never opens
  one over it (qh3 would raise): it raises :class:`NoStream` instead.
* Events are ``(kind, stream_id, payload, ended)`` with ``kind`` one of
  ``HEAD`` (payload: the header list), ``INFO`` (1xx, ignored by callers),
  ``DATA`` (bytes), ``RESET`` (the error code), ``GOAWAY`` (payload: the id
  above which nothing was processed), ``CLOSED`` (payload: a message),
  ``READY`` (the handshake finished; payload: True when 0-RTT was accepted).
  After a ``CLOSED`` because the server broke HTTP/3 (the library refused what it
  sent), :attr:`H3Conn.protocol_error` says why and the event's stream id is the request
  stream the refused frame came on (-1: another stream).
* Session tickets: a ticket received is handed to ``on_ticket``; one given
  at construction is offered for resumption, and with ``early_data=True`` and a
  ticket allowing it (:meth:`H3Conn.early_data`) streams opened before ``READY``
  go in 0-RTT.  Without ``early_data`` the ticket is offered without early data.
* A failure of the library while building packets closes the connection
  (:attr:`H3Conn.closed`): it would fail the same way at every later send.
"""
from __future__ import annotations

import dataclasses
import os
import ssl
import types
from operator import itemgetter
from typing import Any, Callable, List, Optional, Set, Tuple

from qh3.h3 import connection as _qh3_h3
from qh3.h3.connection import H3Connection, MessageError
from qh3.h3.events import DataReceived, GoawayReceived, HeadersReceived, InformationalHeadersReceived
from qh3.h3.exceptions import H3Error
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived, StreamReset

from greenpool.errors import GreenPoolError
from greenpool.http.h3.qpack import encode_section

__all__ = ["H3Conn", "NoStream", "Event", "HEAD", "INFO", "DATA", "RESET", "GOAWAY", "CLOSED",
           "READY", "ALPN"]

ALPN = ["h3"]
HEAD, INFO, DATA, RESET, GOAWAY, CLOSED, READY = "head", "info", "data", "reset", "goaway", "closed", "ready"
Event = Tuple[str, int, Any, bool]
H3_REQUEST_CANCELLED = 0x10C
H3_NO_ERROR = 0x100


class NoStream(GreenPoolError):
    """The peer's MAX_STREAMS allows no new stream now (the library would raise)."""


def _configuration(server_name: str, verify: Any, cert: Any, idle_timeout: float,
                   ticket: Any, early_data: bool = False) -> QuicConfiguration:
    if isinstance(verify, ssl.SSLContext):
        raise ValueError("HTTP/3 cannot use an ssl.SSLContext (QUIC has its own TLS): pass "
                         "verify=True/False or a CA bundle path, and cert=")
    cfg = QuicConfiguration(is_client=True, alpn_protocols=list(ALPN), server_name=server_name,
                            idle_timeout=idle_timeout, max_datagram_frame_size=65536)
    if verify is False:
        cfg.verify_mode = ssl.CERT_NONE
        cfg.verify_hostname = False
    elif isinstance(verify, str):
        if os.path.isdir(verify):
            cfg.load_verify_locations(capath=verify)
        else:
            cfg.load_verify_locations(cafile=verify)
    else:
        cfg.verify_mode = ssl.CERT_REQUIRED   # the library's default trust store
    if cert is not None:
        if isinstance(cert, str):
            cfg.load_cert_chain(cert)
        else:
            cfg.load_cert_chain(*cert)
    if ticket is not None:
        if not early_data and ticket.max_early_data_size is not None:
            # resumption without 0-RTT: a ticket allowing early data makes the library send
            # 0-RTT packets of its own (the HTTP/3 control streams), and when packets of that
            # handshake are lost qh3 2.1 then fails every later send ("packet protection
            # failed: missing OneRtt packet key"); offered without early data it never does
            ticket = dataclasses.replace(ticket, max_early_data_size=None)
        cfg.session_ticket = ticket
    return cfg


# -- the library's response-head check, once per distinct list of field names --
#
# qh3 checks every response head it decodes (``validate_response_headers``: no upper case in a
# name, pseudo-fields first, only ``:status``, once; then ``int()`` of the first value), one
# Python step per byte of every name: the largest single cost of a small HTTP/3 response.  Its
# verdict depends on the names only (and the first value, which becomes the status), so a list
# of names found valid once is valid again: later heads with the same names only have their
# status converted, exactly as qh3 converts it.  Refused heads are refused every time (nothing
# kept); values are never kept.  At most 256 name lists of <= 64 names and 4 KiB, cleared when
# full.  Installed only on this module's H3Connection subclass, never on the library itself.

_VALID_NAMES: Set[Tuple[bytes, ...]] = set()
_first = itemgetter(0)
_library_check = _qh3_h3.validate_response_headers


def validate_response_headers(headers: List[Tuple[bytes, bytes]]) -> int:
    """qh3's ``validate_response_headers``, with the same result and errors; see above."""
    names = tuple(map(_first, headers))
    if names not in _VALID_NAMES:
        status: int = _library_check(headers)      # raises MessageError when refused
        if len(names) <= 64 and sum(map(len, names)) <= 4096:
            if len(_VALID_NAMES) >= 256:
                _VALID_NAMES.clear()
            _VALID_NAMES.add(names)
        return status
    value = headers[0][1]
    try:
        return int(value)
    except ValueError:
        raise MessageError(f"Invalid :status value {value!r}") from None


def _with_globals(f: Any, **names: Any) -> Any:
    """``f`` (a function of qh3's h3 module) reading ``names`` instead of that module's."""
    g = dict(f.__globals__, **names)
    out = types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)
    out.__kwdefaults__ = f.__kwdefaults__
    out.__qualname__ = f.__qualname__
    return out


class _H3Connection(H3Connection):
    """qh3's H3Connection checking response heads through :func:`validate_response_headers`,
    and encoding request heads with :func:`greenpool.http.h3.qpack.encode_section` (the
    static table only: nothing for its encoder or encoder stream to do)."""

    _handle_request_or_push_frame = _with_globals(
        H3Connection._handle_request_or_push_frame,
        validate_response_headers=validate_response_headers)

    def _encode_headers(self, stream_id: int, headers: List[Tuple[bytes, bytes]]) -> bytes:
        return encode_section(headers)


class H3Conn:
    """One client QUIC connection speaking HTTP/3; see the module docstring."""

    __slots__ = ("quic", "h3", "addr", "ready", "closed", "goaway", "_on_ticket", "zero_rtt",
                 "resumed", "protocol_error")

    def __init__(self, server_name: str, addr: Tuple[Any, ...], now: float, *, verify: Any = True,
                 cert: Any = None, idle_timeout: float = 30.0, ticket: Any = None,
                 on_ticket: Optional[Callable[[Any], None]] = None, early_data: bool = False) -> None:
        cfg = _configuration(server_name, verify, cert, idle_timeout, ticket, early_data)
        self._on_ticket = on_ticket
        self.quic = QuicConnection(configuration=cfg,
                                   session_ticket_handler=self._ticket if on_ticket else None)
        self.addr = addr
        self.ready = False
        self.closed: Optional[str] = None
        self.protocol_error: Optional[str] = None
        self.goaway: Optional[int] = None
        self.zero_rtt = False
        self.resumed = False
        self.quic.connect(addr, now)
        self.h3 = _H3Connection(self.quic)

    def early_data(self) -> bool:
        """0-RTT is on: a session ticket allowing early data was offered, so streams opened
        before the handshake ends leave in 0-RTT packets (the server may reject them)."""
        return bool(getattr(self.quic, "_early_data_attempted", False))

    def _ticket(self, ticket: Any) -> None:
        if self._on_ticket is not None:
            self._on_ticket(ticket)

    # -- bytes in and out --

    def receive(self, datagrams: List[bytes], now: float) -> List[Event]:
        quic = self.quic
        try:
            if len(datagrams) == 1 or not self.ready:
                for d in datagrams:
                    quic.receive_datagram(d, self.addr, now)
            else:
                quic.receive_many_datagrams(datagrams, self.addr, now)
        except (QuicConnectionError, H3Error) as e:
            return [(CLOSED, -1, "QUIC error: %s" % (e,), True)] + self._events()
        return self._events()

    def datagrams(self, now: float) -> List[bytes]:
        try:
            return [d for d, _ in self.quic.datagrams_to_send(now)]
        except (QuicConnectionError, ValueError) as e:
            # the library's packet builder failed (seen under loss: "reserved stream is
            # missing", "packet protection failed: missing OneRtt packet key"); it fails
            # the same way at every later call, and what it had built is lost: the
            # connection is over (callers hear it now, not at their timeout)
            if self.closed is None:
                self.closed = "QUIC library error while sending: %s" % (e,)
            return []

    def timer(self) -> Optional[float]:
        return self.quic.get_timer()

    def on_timer(self, now: float) -> List[Event]:
        try:
            self.quic.handle_timer(now)
        except QuicConnectionError as e:
            return [(CLOSED, -1, "QUIC error: %s" % (e,), True)]
        return self._events()

    def awaiting_ack(self, now: float) -> bool:
        """Sent ack-eliciting packets the peer has not acknowledged yet (a dead-peer hint)."""
        try:
            return self.quic.should_wait_for_ack(now)
        except QuicConnectionError:
            return False

    # -- streams --

    def streams_left(self) -> int:
        core = self.quic._core
        if core is None or self.closed is not None or self.goaway is not None:
            return 0
        limits = core.stream_limits    # (peer max bidi, peer max uni, opened bidi, opened uni)
        left = limits[0] - limits[2]
        return left if left > 0 else 0

    def open_request(self, headers: List[Tuple[bytes, bytes]], end_stream: bool) -> int:
        if self.streams_left() <= 0:
            raise NoStream("no HTTP/3 stream left under the server's MAX_STREAMS")
        quic = self.quic
        sid = quic.get_next_available_stream_id()
        try:
            self.h3.send_headers(sid, headers, end_stream=end_stream)
        except (QuicConnectionError, H3Error, AssertionError) as e:
            raise NoStream("cannot open an HTTP/3 stream: %s" % (e,)) from None
        return sid

    def send_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        self.h3.send_data(sid, data, end_stream)

    def end_stream(self, sid: int) -> None:
        self.quic.send_stream_data(sid, b"", True)

    def send_buffered(self, sid: int) -> int:
        """Bytes of ``sid`` queued and not sent yet (flow control, congestion)."""
        try:
            return self.quic.get_send_buffer_size(sid)
        except (QuicConnectionError, ValueError):
            return 0

    def reset(self, sid: int, sending: bool) -> None:
        """Cancel a stream: RESET_STREAM if we still send on it, STOP_SENDING always."""
        if self.closed is not None:
            return
        try:
            if sending:
                self.quic.reset_stream(sid, H3_REQUEST_CANCELLED)
            self.quic.stop_stream(sid, H3_REQUEST_CANCELLED)
        except (QuicConnectionError, AssertionError, ValueError):
            pass

    def ping(self, uid: int) -> None:
        self.quic.send_ping(uid)

    def close(self, reason: str = "") -> None:
        if self.closed is None:
            self.closed = reason or "closed"
            try:
                self.quic.close(error_code=H3_NO_ERROR, reason_phrase=reason[:64])
            except QuicConnectionError:
                pass

    # -- events --

    def _events(self) -> List[Event]:
        # dispatch on the exact class (the library's event classes have no subclasses): one
        # identity test per kind instead of an isinstance() chain per event
        out: List[Event] = []
        append = out.append
        quic = self.quic
        h3 = self.h3
        while True:
            ev: Any = quic.next_event()
            if ev is None:
                return out
            t = type(ev)
            if t is HandshakeCompleted:
                self.ready = True
                self.zero_rtt = bool(ev.early_data_accepted)
                self.resumed = bool(ev.session_resumed)
                append((READY, -1, self.zero_rtt, False))
                continue
            if t is ConnectionTerminated:
                why = ev.reason_phrase or "error code 0x%x" % ev.error_code
                if self.closed is None:
                    self.closed = why
                append((CLOSED, -1, "the server closed the QUIC connection: %s" % why, True))
                continue
            if t is StreamReset:
                append((RESET, ev.stream_id, ev.error_code, True))
            try:
                hevents: List[Any] = h3.handle_event(ev)
            except (QuicConnectionError, H3Error) as e:
                if self.closed is None:
                    self.closed = str(e)
                append((CLOSED, -1, "QUIC error: %s" % (e,), True))
                continue
            for hev in hevents:
                ht = type(hev)
                if ht is DataReceived:
                    append((DATA, hev.stream_id, hev.data, hev.stream_ended))
                elif ht is HeadersReceived:
                    append((HEAD, hev.stream_id, hev.headers, hev.stream_ended))
                elif ht is InformationalHeadersReceived:
                    append((INFO, hev.stream_id, hev.headers, False))
                elif ht is GoawayReceived:
                    if self.goaway is None or hev.stream_id < self.goaway:
                        self.goaway = hev.stream_id
                    append((GOAWAY, -1, self.goaway, False))
            if h3._is_done and self.closed is None:
                # the library refused what the server sent (a malformed head, a frame out of
                # place) and closed the connection with the reason it gives
                why = getattr(getattr(self.quic, "_close_event", None), "reason_phrase", "") or "?"
                self.closed = self.protocol_error = "HTTP/3 protocol error from the server: %s" % why
                # the data it refused came on the stream of the event it was handling
                append((CLOSED, ev.stream_id if t is StreamDataReceived else -1, self.closed,
                        True))
