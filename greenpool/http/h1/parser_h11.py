"""The HTTP/1.1 client adapter over h11 (pure Python, always available).

What this owns: driving one ``h11.Connection(our_role=CLIENT)`` behind the
:class:`~greenpool.http.h1.H1Connection` interface, so that it behaves exactly
like the httptools backend (the rules are in ``h1/conn.py``).

How: requests go through h11 (so it knows the method and frames the body);
h11's events are turned into ours, and its errors into
:class:`~greenpool.errors.RemoteProtocolError` /
:class:`~greenpool.errors.LimitExceeded`.  h11 is more lenient than llhttp on
a few points of the response head (bare LF, obs-fold, control characters,
Content-Length values with blanks or leading zeros), which it normalises away before we
see the event; so while a head is awaited we keep its raw bytes (a bounded,
cheap copy) and check them when h11 hands us the head.  EOF is never given to
h11: the shared rules in ``h1/conn.py`` decide what it means.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Union

import h11

from greenpool.errors import LocalProtocolError, RemoteProtocolError
from greenpool.http.h1.conn import (
    _R_BODY,
    _R_DONE,
    _R_HEAD,
    _S_DONE,
    _SPECIAL_RESP,
    CONFLICTING_CONTENT_LENGTH,
    UPGRADE_REFUSED,
    Data,
    Event,
    H1Connection,
    Headers,
    HeadFields,
    Informational,
    ResponseHead,
    _keep,
    one_content_length,
)

_blank_line_re = re.compile(rb"\n\r?\n")  # how h11 finds the end of a head
_ctl_re = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_cl_line_re = re.compile(rb"\ncontent-length[ \t]*:([^\r\n]*)", re.IGNORECASE)

_Data = h11.Data
_Response = h11.Response
_Informational = h11.InformationalResponse
_EndOfMessage = h11.EndOfMessage
_H11_NEED_DATA = h11.NEED_DATA
_H11Headers = h11._headers.Headers
_EOM = h11.EndOfMessage()  # immutable: one instance serves every request

# Request heads as h11 events, one per distinct request (kept in its
# h1.CheckedRequest).  _check_request (h1/conn.py) has validated every name, value, method and
# target before h11 sees them, so h11 is handed them as already parsed
# (``_parsed=True`` and its own Headers type, of (raw, lowercased, value)
# triples): it still runs its state machine and writes the bytes, without
# validating the same fields a second time.


def _h11_request(method: bytes, target: bytes, headers: Headers) -> h11.Request:
    return h11.Request(
        method=method,
        target=target,
        headers=_H11Headers([(name, name.lower(), value) for name, value in headers]),
        _parsed=True,
    )


# A response head's bytes -> what _check_head made of them (the fields, their size, the
# framing fields).  h11 parses the same bytes to the same event every time, and from one
# response to the next a server mostly repeats its whole head (only Date moves, once a
# second): each distinct head is checked once.  Heads with Set-Cookie (one-off values,
# possibly secrets) or over _HEAD_KEPT_SIZE bytes are not kept; at most _HEADS_MAX
# (cleared when full).
_heads: Dict[bytes, HeadFields] = {}
_HEADS_MAX = 256
_HEAD_KEPT_SIZE = 4096


def _check_head(
    region: bytes, ev: Union[h11.Response, h11.InformationalResponse]
) -> HeadFields:
    """What h11 lets through but the shared rules do not (see the module docstring),
    checked on the head's raw bytes; returns its fields, their size and framing fields."""
    if region.count(b"\n") != region.count(b"\r\n"):
        raise RemoteProtocolError("malformed response: bare LF line ending in the response head")
    lines = region[region.find(b"\n") + 1 :]
    if b"\n " in lines or b"\n\t" in lines:
        raise RemoteProtocolError("malformed response: obsolete line folding in a header")
    if _ctl_re.search(lines) is not None:
        raise RemoteProtocolError("malformed response: control character in a header")
    # h11's Headers keeps (raw name, lowercased name, value) triples
    headers = tuple([(name, value) for _raw, name, value in ev.headers._full_items])
    size = 4 * len(headers)
    specials = []
    keep = len(region) <= _HEAD_KEPT_SIZE
    for name, value in headers:
        size += len(name) + len(value)
        if name in _SPECIAL_RESP:
            specials.append((name, value))
            if name == b"content-length":
                # h11 made one field of repeated equal values; the raw ones must agree
                # by our rule too (digits only), and the field is their one value
                found = _cl_line_re.findall(region)
                if len(found) != 1 or b"," in found[0] or found[0].strip(b" \t") != value:
                    specials[-1] = (name, one_content_length(found))
        elif name == b"set-cookie":
            keep = False
    head = (headers, size, tuple(specials))
    if keep:
        _keep(_heads, _HEADS_MAX, region, head)
    return head


class H11Connection(H1Connection):
    """:class:`~greenpool.http.h1.H1Connection` over h11."""

    __slots__ = ("_h11", "_raw")

    backend = "h11"

    def __init__(self, *, max_header_size: int = 65536, max_headers: int = 256) -> None:
        super().__init__(max_header_size=max_header_size, max_headers=max_headers)
        self._h11 = self._new_h11()
        self._raw = bytearray()

    def _new_h11(self) -> h11.Connection:
        # Our own guard (h1/conn.py) cuts an incomplete head off first; h11's only
        # bounds what it buffers elsewhere (trailers), so it is looser.
        return h11.Connection(h11.CLIENT, max_incomplete_event_size=2 * self._max_header_size + 2)

    # -- sending ----------------------------------------------------------------

    def send_request(
        self, method: bytes, target: bytes, headers: Headers, body_length: Optional[int]
    ) -> bytes:
        checked = self._begin_request(method, target, headers, body_length)
        event = checked.h11_event
        if event is None:
            event = checked.h11_event = _h11_request(method, target, checked.fields)
        try:
            out = self._h11.send(event)
            if self._send == _S_DONE:
                self._h11.send(_EOM)
        except h11.LocalProtocolError as e:  # our checks should have caught it first
            raise LocalProtocolError(str(e)) from None
        return out or b""

    def send_data(self, data: bytes) -> bytes:
        if self._check_data(data) == _S_DONE or not data:
            return b""
        return self._h11.send(h11.Data(data=data)) or b""

    def send_end(self) -> bytes:
        if self._check_end() == _S_DONE:
            return b""
        return self._h11.send(_EOM) or b""

    # -- receiving -----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        chunk = self._filter_incoming(data)
        if chunk is None:
            return
        if self._rstate == _R_HEAD:
            self._raw += chunk
        self._h11.receive_data(chunk)

    def next_event(self) -> Event:
        if self._rstate >= _R_DONE or not self._received_any:
            # nothing of this cycle's response has been given to h11 yet: it has no
            # event to offer, and asking it costs a pass through its state machine
            return self._no_more_events()
        try:
            ev = self._h11.next_event()
        except h11.ProtocolError as e:
            raise self._fail(self._map_error(e)) from None
        t = type(ev)
        if t is _Data:
            data = bytes(ev.data)  # type: ignore[union-attr]
            chunks = self._chunks
            if chunks is not None and chunks.error is not None:
                left = chunks.data - self._body_received
                if left <= 0:
                    raise self._fail(chunks.error)
                data = data[:left]
            self._body_received += len(data)
            return Data(data)
        if ev is _H11_NEED_DATA:
            return self._no_more_events()
        if t is _Response or t is _Informational:
            try:
                # t is _Response or _Informational, which mypy does not narrow ev by
                return self._on_head(ev)  # type: ignore[arg-type]
            except RemoteProtocolError as e:
                raise self._fail(e) from None
        if t is _EndOfMessage:
            chunks = self._chunks
            if chunks is not None and chunks.error is not None:
                raise self._fail(chunks.error)
            if ev.headers:  # type: ignore[union-attr]
                self._check_trailers(ev.headers)  # type: ignore[union-attr]
            trailing = self._h11.trailing_data[0]
            return self._end(bool(trailing) and bool(trailing.strip(b"\r\n")))
        raise self._fail(RemoteProtocolError("unexpected h11 event %r" % (ev,)))

    def _map_error(self, e: h11.ProtocolError) -> RemoteProtocolError:
        if e.error_status_hint == 431:  # h11's "Receive buffer too long"
            if self._rstate == _R_HEAD:
                return self._head_too_large()
            return self._trailers_too_large()
        if "_SWITCH_UPGRADE" in str(e):  # a 101 we did not ask for
            return RemoteProtocolError(UPGRADE_REFUSED)
        if str(e) == "conflicting Content-Length headers":
            return RemoteProtocolError(CONFLICTING_CONTENT_LENGTH)
        return RemoteProtocolError("malformed response: %s" % (e,))

    def _on_head(
        self, ev: Union[h11.Response, h11.InformationalResponse]
    ) -> Union[Informational, ResponseHead]:
        raw = self._raw
        m = _blank_line_re.search(raw)
        end = m.end() if m is not None else len(raw)
        region = bytes(raw[:end])
        head = _heads.get(region)
        if head is None:
            head = _check_head(region, ev)
        event = self._head(
            ev.status_code, ev.reason, ev.http_version, list(head[0]), head[1], head[2]
        )
        if self._rstate == _R_BODY:
            chunks = self._chunks
            if chunks is not None and end < len(raw):
                # the body bytes that came with the head; h11 has them all: over a limit,
                # the data before the faulty framing is delivered, then the error
                chunks.feed(raw[end:])
            raw.clear()
        else:
            del raw[:end]
        return event

    def _check_trailers(self, trailers: h11._headers.Headers) -> None:
        size = 0
        for _name, value in trailers:
            size += len(_name) + len(value) + 4
            if _ctl_re.search(value) is not None:
                raise self._fail(
                    RemoteProtocolError("malformed response: control character in a trailer")
                )
        if len(trailers) > self._max_headers or size > self._max_header_size:
            raise self._fail(self._trailers_too_large())

    def start_next_cycle(self) -> None:
        self._check_next_cycle()
        c = self._h11
        if c.our_state is h11.DONE and c.their_state is h11.DONE and not c.trailing_data[0]:
            c.start_next_cycle()
        else:  # e.g. an HTTP/1.0 keep-alive response, which h11 will not reuse
            self._h11 = self._new_h11()
        self._raw.clear()
        self._reset()


__all__ = ["H11Connection"]
