"""Sans-IO HTTP/1.1 client protocol: the interface, the events, the shared rules.

What this owns: the client side of one HTTP/1.1 connection, as bytes in and
events out, over two interchangeable parser backends (``h1.parser_h11`` over h11,
``h1.parser_httptools`` over llhttp).  No sockets here: the connection greenlet feeds
``receive_data()`` and writes what the ``send_*`` methods return.

One cycle is: ``send_request`` (+ ``send_data``\\* + ``send_end``), then
``receive_data``/``next_event`` until :class:`EndOfMessage`, then, if
``keep_alive`` is true, ``start_next_cycle()``.  ``next_event()`` yields::

    Informational*  ResponseHead  Data*  EndOfMessage

Promises, identical for both backends (the tests feed every case to both):

* **Request framing** is ours, chosen by ``body_length``:

  ========================  ===============================================
  ``body_length``           framing
  ========================  ===============================================
  ``-1`` (``NO_BODY``)      no body, no framing header; the request is
                            complete after ``send_request``
  ``0``                     empty body: ``Content-Length: 0`` for POST, PUT
                            and PATCH, nothing for other methods; complete
                            after ``send_request``
  ``n > 0``                 ``Content-Length: n``; exactly ``n`` bytes via
                            ``send_data``, then ``send_end()`` (returns ``b""``)
  ``None`` (``CHUNKED``)    ``Transfer-Encoding: chunked``; ``send_data``
                            frames chunks, ``send_end()`` returns ``b"0\\r\\n\\r\\n"``
  ========================  ===============================================

  ``send_end()`` on a complete request returns ``b""``, so callers may always
  call it.  Caller headers must not carry ``Content-Length`` or
  ``Transfer-Encoding`` (framing is the adapter's job) and must carry exactly
  one ``Host``.  Every check (method and header names are tokens; the target is
  visible ASCII; values hold no NUL/CR/LF/control whitespace and no
  leading/trailing blanks, as h11 requires) runs *before* any byte is produced
  and raises :class:`~greenpool.errors.LocalProtocolError`.

* **Responses** are parsed strictly, by the stricter of h11 and llhttp on each
  point: only ``HTTP/1.0`` and ``HTTP/1.1``; status 100..999; CRLF line
  endings only; no obs-fold; no control characters in header lines; exactly
  one valid ``Content-Length`` value (signs, > 2**63-1 rejected; repeated fields or a
  comma list are that value when every one is the same number, as RFC 9110 8.6 allows,
  and :data:`CONFLICTING_CONTENT_LENGTH` when they differ);
  ``Transfer-Encoding`` only as a single ``chunked`` and never together with
  ``Content-Length``; ``101 Switching Protocols`` is rejected (upgrades are not
  supported here).  Chunk extensions and trailers are parsed and dropped
  (trailers count against the same limits as the head); a run of chunk
  framing between two pieces of data (a chunk-size line with its extensions,
  or the trailer section) longer than ``max_header_size`` bytes is
  :class:`~greenpool.errors.LimitExceeded`, counted as the bytes arrive by one
  shared counter (:class:`ChunkFraming`), so it cannot make either backend
  buffer more, and both fail at the same byte.  Header names are
  lowercased, values stripped of surrounding blanks; order and duplicates are
  kept.  Empty lines (CR/LF) before a response are skipped.

* **Errors**: a broken response raises
  :class:`~greenpool.errors.RemoteProtocolError`; a head over
  ``max_header_size`` bytes (counted as if sent without optional whitespace:
  status line plus ``name: value\\r\\n`` per field) or with more than
  ``max_headers`` fields raises :class:`~greenpool.errors.LimitExceeded`; EOF
  before any response byte of the cycle raises
  :class:`~greenpool.errors.ConnectionClosed` (the caller may retry); EOF after
  any byte (empty lines included: the server answered), inside a head, a
  Content-Length body or a chunked body is a RemoteProtocolError, never a
  short body and never called retryable.

* **Bounds before the final head**: at most :data:`MAX_INTERIM_RESPONSES`
  (32) interim responses (counted as they are parsed), and at most
  ``2 * max_header_size`` bytes received before the final head is complete
  (interim heads and empty lines included, counted as they arrive); past
  either, :class:`~greenpool.errors.LimitExceeded`.  Events parsed before an error are delivered first; the
  error is then raised by ``next_event()``, and again on every later call.

* **Body end**: HEAD responses, 1xx, 204 and 304 have no body whatever their
  headers say; a response with neither Content-Length nor chunked framing is
  delimited by EOF (``receive_data(b"")``), which ends it cleanly.

* **keep_alive** is false until :class:`EndOfMessage` is returned, then true
  only when: the request was completely sent; neither side said
  ``Connection: close``; an HTTP/1.0 response said ``Connection: keep-alive``;
  the body was not EOF-delimited; and no byte other than CR/LF arrived after
  the response.  We never pipeline (one request in flight per connection), so a
  stray byte after a response means the stream is out of step: the connection
  is not reused, rather than parsing that byte as the next response.

* ``keep_alive_timeout`` is the ``timeout=N`` of the final response's
  ``Keep-Alive`` header (seconds, a float), else None.

* ``content_encodings``, once the final :class:`ResponseHead` was returned, is
  the values of its ``Content-Encoding`` fields, in order (a tuple of bytes,
  empty when there are none); the adapter does not decode the body.

* ``body_length``, once the final :class:`ResponseHead` was returned, is the
  number of body bytes the head announced: its ``Content-Length``, ``0`` when
  the response has no body (HEAD, 204, 304), ``None`` when the length is not
  known in advance (chunked, or delimited by close).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from greenpool.errors import (
    ConnectionClosed,
    LimitExceeded,
    LocalProtocolError,
    RemoteProtocolError,
)

Headers = List[Tuple[bytes, bytes]]
#: a head's fields kept by a backend's head cache, and what it kept of them: (the fields as
#: reported, their size as "name: value\r\n" lines, the framing fields among them)
Fields = Tuple[Tuple[bytes, bytes], ...]
HeadFields = Tuple[Fields, int, Fields]

NO_BODY = -1
CHUNKED = None

#: interim (1xx) responses accepted before the final one; one more is LimitExceeded
MAX_INTERIM_RESPONSES = 32

# -- events ---------------------------------------------------------------------


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: returned by ``next_event()`` when more bytes are needed
NEED_DATA = _Sentinel("NEED_DATA")


class _Head:
    __slots__ = ("status", "reason", "http_version", "headers")

    def __init__(self, status: int, reason: bytes, http_version: str, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = headers

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (
            self.status,
            self.reason,
            self.http_version,
            self.headers,
        ) == (other.status, other.reason, other.http_version, other.headers)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "%s(status=%d, reason=%r, http_version=%r, headers=%r)" % (
            type(self).__name__,
            self.status,
            self.reason,
            self.http_version,
            self.headers,
        )


class ResponseHead(_Head):
    """The final response's status line and headers (names lowercased)."""

    __slots__ = ()


class Informational(_Head):
    """A 1xx response other than 101 (e.g. 100 Continue, 103 Early Hints).

    Not a :class:`ResponseHead`: the real response follows it.
    """

    __slots__ = ()


class Data:
    """A piece of the response body (dechunked)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return type(other) is Data and other.data == self.data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Data(%r)" % (self.data,)


class EndOfMessage:
    """The response is complete; see ``keep_alive``."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is EndOfMessage

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "EndOfMessage()"


Event = Union[Informational, ResponseHead, Data, EndOfMessage, _Sentinel]

#: ``_new_event(cls)`` then setting its slots builds an event without running a Python
#: ``__init__`` (a frame per event): for the events made once per response
_new_event = object.__new__

# -- request validation and serialization -----------------------------------------

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_token_re = re.compile(_TOKEN)
# h11's field-value: no NUL or whitespace other than inner SP/HTAB runs.
_value_re = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_target_re = re.compile(rb"[\x21-\x7e]+")
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))

# send-side states
_S_IDLE = 0  # no request yet in this cycle
_S_LENGTH = 1  # Content-Length body in progress
_S_CHUNKED = 2  # chunked body in progress
_S_DONE = 3  # request completely sent

# What a (name, value) request header is, once validated.  Clients send the
# same few headers again and again, so validated pairs are remembered: the
# per-request cost is one dict lookup per header, not two regex matches.
_H_PLAIN = 0
_H_HOST = 1
_H_CLOSE = 2  # Connection: ... close ...
_H_FRAMING = 3  # Content-Length / Transfer-Encoding: the caller may not set these
_header_kinds: Dict[Tuple[bytes, bytes], int] = {}
_HEADER_KINDS_MAX = 4096


def _header_kind(header: Tuple[bytes, bytes]) -> int:
    name, value = header
    if name.__class__ is not bytes or value.__class__ is not bytes:
        raise TypeError("header names and values must be bytes, not %r" % (header,))
    if not _token_re.fullmatch(name):
        raise LocalProtocolError("illegal header name %r" % (name,))
    if not _value_re.fullmatch(value):
        raise LocalProtocolError(
            "illegal value for header %r: no NUL, CR, LF or leading/trailing whitespace allowed"
            % (name,)
        )
    low = name.lower()
    if low == b"host":
        kind = _H_HOST
    elif low == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
        kind = _H_CLOSE
    elif low == b"content-length" or low == b"transfer-encoding":
        kind = _H_FRAMING
    else:
        kind = _H_PLAIN
    if len(_header_kinds) >= _HEADER_KINDS_MAX:
        _header_kinds.clear()
    _header_kinds[(name, value)] = kind
    return kind


def _check_request(
    method: bytes, target: bytes, headers: Headers, body_length: Optional[int]
) -> Tuple[Headers, int, bool]:
    """Validate a request; return (framing headers, send state, close requested)."""
    if not _token_re.fullmatch(method):
        raise LocalProtocolError("illegal request method %r" % (method,))
    if not _target_re.fullmatch(target):
        raise LocalProtocolError(
            "illegal request target %r: it must be non-empty visible ASCII "
            "(percent-encode the rest)" % (target,)
        )
    hosts = 0
    close = False
    kinds = _header_kinds
    for header in headers:
        try:
            kind = kinds[header]
        except (KeyError, TypeError):
            kind = _header_kind(header)
        if kind:
            if kind == _H_HOST:
                hosts += 1
            elif kind == _H_CLOSE:
                close = True
            else:
                raise LocalProtocolError(
                    "do not pass a %s header: the adapter frames the body from body_length"
                    % (header[0].decode("ascii"),)
                )
    if hosts != 1:
        raise LocalProtocolError(
            "an HTTP/1.1 request needs exactly one Host header, got %d" % (hosts,)
        )
    if body_length is None:
        return [(b"Transfer-Encoding", b"chunked")], _S_CHUNKED, close
    if body_length.__class__ is not int:
        raise TypeError("body_length must be an int or None, not %r" % (body_length,))
    if body_length > 0:
        return [(b"Content-Length", b"%d" % body_length)], _S_LENGTH, close
    if body_length == 0:
        if method in _BODY_METHODS:
            return _CONTENT_LENGTH_0, _S_DONE, close
        return _NO_FRAMING, _S_DONE, close
    if body_length == -1:
        return _NO_FRAMING, _S_DONE, close
    raise ValueError(
        "body_length must be None (chunked), -1 (no body) or >= 0, not %r" % (body_length,)
    )


_CONTENT_LENGTH_0: Headers = [(b"Content-Length", b"0")]
_NO_FRAMING: Headers = []

class CheckedRequest:
    """A request head that passed :func:`_check_request`, kept in :data:`_checked`.

    ``fields``: the caller's headers then the framing header (a copy: nothing in it is
    reachable by callers); ``state``/``close``: the send state it starts in and whether
    it asked for ``Connection: close``; ``head`` and ``h11_event``: what the httptools
    and h11 backends made of it, filled by them on first use.
    """

    __slots__ = ("fields", "state", "close", "head", "h11_event")

    def __init__(self, fields: Headers, state: int, close: bool) -> None:
        self.fields = fields
        self.state = state
        self.close = close
        self.head: Optional[bytes] = None
        self.h11_event: Any = None


def _keep(cache: Dict[Any, Any], limit: int, key: Any, value: Any) -> None:
    """Keep ``value`` in one of the bounded caches of checked protocol data (this module's
    and the backends'): at most ``limit`` entries, all forgotten when it is full."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


# Requests already checked, keyed by (method, target, body_length, header tuple): a
# client sends the same request again and again, so the checks above and the
# backend's serialization run once per distinct request.  Bounded: cleared when full.
_checked: Dict[Tuple[Any, ...], CheckedRequest] = {}
_CHECKED_MAX = 1024


def serialize_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """The request head, byte for byte what h11 writes for the same event."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


# -- response rules -------------------------------------------------------------

# receive-side states
_R_HEAD = 0  # waiting for a (1xx or final) response head
_R_BODY = 1  # final head seen, body in progress
_R_DONE = 2  # EndOfMessage produced
_R_ERROR = 3  # a stored error is raised by next_event

# body framing of the final response
_F_NONE = 0
_F_LENGTH = 1
_F_CHUNKED = 2
_F_CLOSE = 3

_VERSIONS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}
# reason-phrase = *( HTAB / SP / VCHAR / obs-text ): h11 enforces it, llhttp lets NUL and
# other controls through, so the rule is applied here for both
_REASON_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# reason phrases that passed _REASON_CTL: servers send the same few ("OK", "Not Found")
_clean_reasons: Dict[bytes, bool] = {}
_CLEAN_REASONS_MAX = 256
_CLEAN_REASON_SIZE = 64
_SPECIAL_RESP = frozenset((b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                           b"content-encoding"))
_MAX_CONTENT_LENGTH = 2**63 - 1
_digits_re = re.compile(rb"[0-9]+")
UPGRADE_REFUSED = "unexpected 101 Switching Protocols: protocol upgrades are not supported"
#: the start of the message of a response whose Content-Length values differ (both backends;
#: the requests adapter reports it as requests' InvalidHeader, as urllib3 does)
CONFLICTING_CONTENT_LENGTH = "conflicting Content-Length values"


def one_content_length(values: Sequence[bytes]) -> bytes:
    """The one value that the Content-Length fields ``values`` (each possibly a comma
    list) state: RFC 9110 8.6 lets a recipient take repeated identical values as one.
    :class:`RemoteProtocolError` when one is not a number or they differ."""
    first = b""
    for value in values:
        for part in value.split(b","):
            part = part.strip(b" \t")
            if not _digits_re.fullmatch(part):
                raise RemoteProtocolError("invalid Content-Length %r" % (value,))
            if not first:
                first = part
            elif part != first:   # "identical" (RFC 9110 8.6): 5 and 05 differ, as for h11
                raise RemoteProtocolError("%s: %s" % (
                    CONFLICTING_CONTENT_LENGTH, b", ".join(values).decode("latin-1")[:200]))
    return first


def _keep_alive_timeout(value: bytes) -> Optional[float]:
    for part in value.split(b","):
        key, _, val = part.partition(b"=")
        if key.strip().lower() == b"timeout":
            try:
                t = float(val.strip().strip(b'"'))
            except ValueError:
                return None
            return t if t >= 0 and t == t and t != float("inf") else None
    return None


def _read_framing(
    specials: Sequence[Tuple[bytes, bytes]],
) -> Tuple[int, bool, bool, bool, Optional[float], Tuple[bytes, ...]]:
    """What a final head's framing fields say: (Content-Length or -1, chunked,
    the server said close, it said keep-alive, Keep-Alive timeout, Content-Encodings)."""
    length = -1
    chunked = False
    close = False
    keep_alive_header = False
    ka_timeout = None
    encodings: Tuple[bytes, ...] = ()
    for name, value in specials:
        if name == b"content-length":
            if length >= 0:   # the backends hand over one field for equal repeated values
                raise RemoteProtocolError("%s (repeated Content-Length fields)" % (
                    CONFLICTING_CONTENT_LENGTH,))
            if not _digits_re.fullmatch(value):
                raise RemoteProtocolError("invalid Content-Length %r" % (value,))
            length = int(value)
            if length > _MAX_CONTENT_LENGTH:
                raise RemoteProtocolError("Content-Length %r is too large" % (value,))
        elif name == b"transfer-encoding":
            if chunked:
                raise RemoteProtocolError("multiple Transfer-Encoding headers")
            if value.lower() != b"chunked":
                raise RemoteProtocolError(
                    "unsupported Transfer-Encoding %r: only 'chunked' is supported" % (value,)
                )
            chunked = True
        elif name == b"connection":
            for token in value.lower().split(b","):
                token = token.strip()
                if token == b"close":
                    close = True
                elif token == b"keep-alive":
                    keep_alive_header = True
        elif name == b"keep-alive":
            ka_timeout = _keep_alive_timeout(value)
        else:  # content-encoding
            encodings += (value,)
    if chunked and length >= 0:
        raise RemoteProtocolError(
            "a response must not carry both Content-Length and Transfer-Encoding"
        )
    return length, chunked, close, keep_alive_header, ka_timeout, encodings


# What _read_framing made of a head's framing fields, keyed by their tuple: servers
# send the same few (Content-Length, Connection, Keep-Alive, Content-Encoding)
# combinations again and again.  Only heads that passed are kept; bounded.
_framing_fields: Dict[Tuple[Tuple[bytes, bytes], ...], Any] = {}
_FRAMING_FIELDS_MAX = 512


# ChunkFraming states
_C_LINE = 0  # in a chunk-size line (size, extensions, CRLF)
_C_DATA = 1  # in chunk data: ``left`` bytes to skip
_C_DATA_END = 2  # in the CRLF that ends chunk data
_C_TRAILER = 3  # in the trailer section (after the last chunk), up to its empty line
_C_DONE = 4  # the body ended, or the framing is broken (the parser refuses it)
_EXT_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_EXT_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# chunk-size [ chunk-ext ] CRLF, with no blanks in the extensions (RFC 9112 allows some,
# llhttp takes fewer, h11 any text): what both backends take; blanks alone after the size
# are taken by both (llhttp with the leniency switched on in h1.parser_httptools)
_chunk_line_re = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:(?:;%s(?:=(?:%s|%s))?)*|[ \t]+)\r\n"
    % (_EXT_TOKEN, _EXT_TOKEN, _EXT_QUOTED)
)


class ChunkFraming:
    """Counts a chunked body's framing bytes as they arrive, the same for both backends.

    Framing is everything between two pieces of body data: the CRLF ending a chunk, the
    next chunk-size line with its extensions, and after the last chunk the trailer
    section.  A run of more than ``limit`` framing bytes is an error, whatever the
    parser would make of it and however the bytes are split: a chunk extension or a
    trailer value that never ends cannot make a backend buffer more than ``limit`` bytes.
    This only counts lines and skips data by the announced sizes; the parser still
    judges the syntax (a line this cannot read stops the counting: the parser refuses it).
    """

    __slots__ = ("limit", "state", "left", "run", "line", "prev", "data", "error")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.state = _C_LINE
        self.left = 0  # chunk data still to skip (_C_DATA), or the trailer line's length
        self.run = 0  # framing bytes since the last data byte
        self.line = b""  # the start of the current chunk-size line (its size digits)
        self.prev = 0  # the last byte of the previous feed
        self.data = 0  # chunk data bytes counted (when ``error`` is set: those before it)
        self.error: Optional[RemoteProtocolError] = None

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> int:
        """Count ``data``; return how many of its bytes are within the limit (all of them
        unless ``error`` was just set)."""
        pos = 0
        n = len(data)
        while pos < n:
            state = self.state
            if state == _C_DATA:
                take = min(self.left, n - pos)
                pos += take
                self.left -= take
                self.data += take
                if not self.left:
                    self.state = _C_DATA_END
                continue
            if state == _C_DONE:
                return n
            i = data.find(b"\n", pos)  # type: ignore[union-attr]
            end = n if i < 0 else i + 1
            self.run += end - pos
            if self.run > self.limit:
                self.state = _C_DONE
                self.error = LimitExceeded(
                    "chunked body: more than max_header_size=%d bytes of framing (a chunk-size "
                    "line with its extensions, or the trailer section) between data"
                    % (self.limit,)
                )
                return end - (self.run - self.limit)
            if state == _C_LINE:
                self.line += bytes(data[pos:end])  # at most limit bytes (the run)
            elif state == _C_TRAILER:
                self.left += end - pos
            if i < 0:
                self.prev = data[-1]
                return n
            if state == _C_TRAILER and (data[i - 1] if i else self.prev) != 13:
                # h11 takes a bare LF there, llhttp does not: the stricter rule, for both
                self.state = _C_DONE
                self.error = RemoteProtocolError(
                    "malformed response: bare LF line ending in the trailer section"
                )
                return i
            pos = end
            if state == _C_DATA_END:
                self.state = _C_LINE
            elif state == _C_LINE:
                line = self.line
                self.line = b""
                m = _chunk_line_re.fullmatch(line)
                if m is None:
                    # what one parser takes and the other does not (blanks around an
                    # extension, h11 takes any text after ";") is refused for both; what
                    # neither takes, too
                    self.state = _C_DONE
                    self.error = RemoteProtocolError(
                        "malformed response: invalid chunk-size line %r" % (line[:40],)
                    )
                    return i
                size = int(m.group(1), 16)
                if size > 0:
                    self.state = _C_DATA
                    self.left = size
                    self.run = 0
                elif size == 0:
                    self.state = _C_TRAILER
                    self.left = 0
                else:
                    self.state = _C_DONE
            elif self.left <= 2:  # the trailer section's empty line: the body is complete
                self.state = _C_DONE
            else:
                self.left = 0
        if n:
            self.prev = data[n - 1]
        return n


class H1Connection:
    """Client side of one HTTP/1.1 connection; see the module docstring.

    This base class holds everything both backends share: request validation
    and framing, response-head rules, limits, EOF and keep-alive decisions.
    Backends feed parsed heads to :meth:`_head`, body sizes to
    ``_body_received``, and call :meth:`_end` on the final message's end.
    """

    __slots__ = (
        "keep_alive",
        "keep_alive_timeout",
        "content_encodings",
        "_max_header_size",
        "_max_headers",
        "_method",
        "_is_head",
        "_send",
        "_send_left",
        "_close_requested",
        "_rstate",
        "_framing",
        "_length",
        "_body_received",
        "_reusable",
        "_received_any",
        "_head_raw",
        "_head_mark",
        "_interim",
        "_chunks",
        "_eof",
        "_error",
        "_last_checked",
        "_last_framing",
    )

    backend = "abstract"

    def __init__(self, *, max_header_size: int = 65536, max_headers: int = 256) -> None:
        if max_header_size.__class__ is not int or max_header_size <= 0:
            raise ValueError("max_header_size must be a positive int, not %r" % (max_header_size,))
        if max_headers.__class__ is not int or max_headers <= 0:
            raise ValueError("max_headers must be a positive int, not %r" % (max_headers,))
        self._max_header_size = max_header_size
        self._max_headers = max_headers
        # the last request checked and framing fields read on this connection, with what
        # came of them (kept, unlike the global caches, without hashing: see their users)
        self._last_checked: Optional[Tuple[Any, CheckedRequest]] = None
        self._last_framing: Optional[Tuple[Any, Any]] = None
        self._reset()

    def _reset(self) -> None:
        self.keep_alive = False
        self.keep_alive_timeout: Optional[float] = None
        self.content_encodings: Tuple[bytes, ...] = ()
        self._method = b""
        self._is_head = False
        self._send = _S_IDLE
        self._send_left = 0
        self._close_requested = False
        self._rstate = _R_HEAD
        self._framing = _F_NONE
        self._length = 0
        self._body_received = 0
        self._reusable = False
        self._received_any = False
        self._head_raw = 0
        self._head_mark = 0
        self._interim = 0
        self._chunks: Optional[ChunkFraming] = None
        self._eof = False
        self._error: Optional[Exception] = None

    def __repr__(self) -> str:
        send = ("idle", "sending body", "sending chunks", "sent")[self._send]
        recv = ("awaiting head", "receiving body", "done", "failed")[self._rstate]
        return "<%s [%s %s | request %s | response %s | keep_alive=%s]>" % (
            type(self).__name__,
            self._method.decode("ascii", "replace") or "-",
            self.backend,
            send,
            recv,
            self.keep_alive,
        )

    # -- sending -----------------------------------------------------------

    def _begin_request(
        self, method: bytes, target: bytes, headers: Headers, body_length: Optional[int]
    ) -> CheckedRequest:
        """Check the request and start the send side (the check is kept: :data:`_checked`)."""
        if self._send != _S_IDLE or self._rstate != _R_HEAD or self._received_any:
            raise LocalProtocolError(
                "a request is already in progress on this connection: finish the response and "
                "call start_next_cycle() (or use a new connection)"
            )
        key: Any = (method, target, body_length, tuple(headers))
        last = self._last_checked
        if last is not None and last[0] == key:
            checked = last[1]  # this connection's previous request again: compared, not hashed
        else:
            try:
                found = _checked.get(key)
            except TypeError:  # an unhashable header (e.g. a list pair): checked, not kept
                key = found = None
            if found is None:
                framing, state, close = _check_request(method, target, headers, body_length)
                found = CheckedRequest(list(headers) + framing, state, close)
                if key is not None:
                    _keep(_checked, _CHECKED_MAX, key, found)
            if key is not None:
                self._last_checked = (key, found)
            checked = found
        state = checked.state
        self._method = method
        self._is_head = method == b"HEAD"
        self._send = state
        self._send_left = body_length if state == _S_LENGTH else 0  # type: ignore[assignment]
        self._close_requested = checked.close
        return checked

    def send_request(
        self, method: bytes, target: bytes, headers: Headers, body_length: Optional[int]
    ) -> bytes:
        """Return the request head bytes; see the module docstring for body_length."""
        raise NotImplementedError

    def _check_data(self, data: bytes) -> int:
        state = self._send
        if state == _S_LENGTH:
            n = len(data)
            if n > self._send_left:
                raise LocalProtocolError(
                    "too much data for declared Content-Length: %d bytes given, %d expected"
                    % (n, self._send_left)
                )
            self._send_left -= n
            return state
        if state == _S_CHUNKED:
            return state
        if not data:
            return state
        if state == _S_IDLE:
            raise LocalProtocolError("send_data() before send_request()")
        raise LocalProtocolError("this request has no body left to send (see body_length)")

    def _check_end(self) -> int:
        state = self._send
        if state == _S_LENGTH and self._send_left:
            raise LocalProtocolError(
                "too little data for declared Content-Length: %d bytes missing" % (self._send_left,)
            )
        if state == _S_IDLE:
            raise LocalProtocolError("send_end() before send_request()")
        self._send = _S_DONE
        return state

    def send_data(self, data: bytes) -> bytes:
        """Return ``data`` framed for the wire (a chunk when chunked)."""
        if self._check_data(data) == _S_CHUNKED and data:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def send_end(self) -> bytes:
        """End the request body: ``b"0\\r\\n\\r\\n"`` when chunked, else ``b""``."""
        if self._check_end() == _S_CHUNKED:
            return b"0\r\n\r\n"
        return b""

    # -- receiving: shared rules -----------------------------------------------

    def _head(
        self,
        status: int,
        reason: bytes,
        version: Union[str, bytes],
        headers: Headers,
        size: int,
        specials: Sequence[Tuple[bytes, bytes]],
    ) -> Union[Informational, ResponseHead]:
        """Apply the response-head rules; return the event (or raise)."""
        http_version = _VERSIONS.get(version)
        if http_version is None:
            raise RemoteProtocolError(
                "unsupported HTTP version %r in the status line (only HTTP/1.0 and HTTP/1.1)"
                % (version,)
            )
        if status < 100 or status > 999:
            raise RemoteProtocolError("invalid status code %d" % (status,))
        if reason and reason not in _clean_reasons:
            if _REASON_CTL.search(reason) is not None:
                raise RemoteProtocolError(
                    "malformed response: control character in the status line")
            if len(reason) <= _CLEAN_REASON_SIZE:
                _keep(_clean_reasons, _CLEAN_REASONS_MAX, reason, True)
        if len(headers) > self._max_headers:
            raise self._too_many_headers()
        if size + len(reason) + 15 > self._max_header_size:
            raise self._head_too_large()
        if status < 200:
            if status == 101:
                raise RemoteProtocolError(UPGRADE_REFUSED)
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                raise LimitExceeded(
                    "the server sent more than %d interim (1xx) responses before its final "
                    "response" % (MAX_INTERIM_RESPONSES,)
                )
            self._head_mark = self._head_raw  # the next head's bytes start about here
            return Informational(status, reason, http_version, headers)
        key = tuple(specials)  # the backends give (bytes, bytes) pairs
        last = self._last_framing
        if last is not None and last[0] is key:
            fields = last[1]  # the same fields object as the previous head (a backend's cache)
        else:
            fields = _framing_fields.get(key)
            if fields is None:
                fields = _read_framing(specials)
                _keep(_framing_fields, _FRAMING_FIELDS_MAX, key, fields)
            self._last_framing = (key, fields)
        length, chunked, close, keep_alive_header, ka_timeout, encodings = fields
        close = close or self._close_requested
        if self._is_head or status == 204 or status == 304:
            framing = _F_NONE
        elif chunked:
            framing = _F_CHUNKED
            self._chunks = ChunkFraming(self._max_header_size)
        elif length >= 0:
            framing = _F_LENGTH
            self._length = length
        else:
            framing = _F_CLOSE
        self._framing = framing
        self._reusable = (
            not close and framing != _F_CLOSE and (http_version == "HTTP/1.1" or keep_alive_header)
        )
        self.keep_alive_timeout = ka_timeout
        self.content_encodings = encodings
        self._rstate = _R_BODY
        ev = _new_event(ResponseHead)  # ResponseHead(status, ...) without an __init__ frame
        ev.status = status
        ev.reason = reason
        ev.http_version = http_version
        ev.headers = headers
        return ev

    def _too_many_headers(self) -> LimitExceeded:
        return LimitExceeded(
            "response has more than max_headers=%d header fields" % (self._max_headers,)
        )

    def _head_too_large(self) -> LimitExceeded:
        return LimitExceeded(
            "response header section is larger than max_header_size=%d bytes"
            % (self._max_header_size,)
        )

    def _too_much_before_head(self) -> LimitExceeded:
        return LimitExceeded(
            "the server sent more than %d bytes (2 x max_header_size: interim responses and "
            "empty lines included) without completing its final response head"
            % (2 * self._max_header_size,)
        )

    def _trailers_too_large(self) -> LimitExceeded:
        return LimitExceeded(
            "response trailer section exceeds max_header_size=%d bytes or max_headers=%d fields"
            % (self._max_header_size, self._max_headers)
        )

    def _end(self, extra: bool) -> EndOfMessage:
        """The final response is complete; ``extra``: non-CRLF bytes followed it."""
        self._rstate = _R_DONE
        self.keep_alive = self._reusable and self._send == _S_DONE and not extra
        return EndOfMessage()

    def _fail(self, exc: Exception) -> Exception:
        self._rstate = _R_ERROR
        self.keep_alive = False
        self._error = exc
        return exc

    def _filter_incoming(self, data: bytes) -> Optional[bytes]:
        """Shared bookkeeping for ``receive_data``; returns what to parse, or None."""
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() called with data after EOF (b'')")
            return None
        state = self._rstate
        if not data:
            self._eof = True
            if state == _R_DONE:
                self.keep_alive = False
            return None
        if state == _R_HEAD:
            # every byte before the final head counts, empty lines included: see
            # _no_more_events for the bounds, and EOF after any of them is not retryable
            self._head_raw += len(data)
            if not self._received_any:
                # empty lines before a response are skipped (they are still counted)
                if data[0] in (13, 10):
                    data = data.lstrip(b"\r\n")
                    # they count against the bytes before the final head, not this head
                    self._head_mark = self._head_raw - len(data)
                    if not data:
                        return None
                self._received_any = True
            return data
        if state == _R_BODY:
            chunks = self._chunks
            if chunks is not None:
                if chunks.error is not None:
                    return None  # over a limit: nothing more is parsed or kept
                cut = chunks.feed(data)
                if cut < len(data):
                    return data[:cut] if cut else None
            return data
        if state == _R_DONE and data.strip(b"\r\n"):
            self.keep_alive = False
        return None

    def _no_more_events(self) -> Event:
        """What next_event returns once the backend has nothing more to give."""
        state = self._rstate
        if state == _R_ERROR:
            raise self._error  # type: ignore[misc]
        if state == _R_DONE:
            raise LocalProtocolError(
                "the response is complete: call start_next_cycle() before reading more"
            )
        chunks = self._chunks
        if chunks is not None and chunks.error is not None and state == _R_BODY:
            raise self._fail(chunks.error)
        if not self._eof:
            if state == _R_HEAD:
                raw = self._head_raw
                if raw > 2 * self._max_header_size:
                    raise self._fail(self._too_much_before_head())
                # +2: the blank line ending the head is not counted in max_header_size
                if raw - self._head_mark > self._max_header_size + 2:
                    raise self._fail(self._head_too_large())
            return NEED_DATA
        if state == _R_HEAD:
            if not self._head_raw:
                raise self._fail(
                    ConnectionClosed(
                        "peer closed connection before sending any response byte "
                        "(the request may be retried on a new connection)"
                    )
                )
            if not self._received_any:
                raise self._fail(
                    RemoteProtocolError(
                        "peer closed connection after %d bytes of empty lines and no response "
                        "head" % (self._head_raw,)
                    )
                )
            raise self._fail(
                RemoteProtocolError(
                    "peer closed connection without sending a complete response head"
                )
            )
        framing = self._framing
        if framing == _F_CLOSE or framing == _F_NONE:
            self._reusable = False
            return self._end(False)
        if framing == _F_LENGTH:
            raise self._fail(
                RemoteProtocolError(
                    "peer closed connection without sending complete message body: "
                    "received %d of %d bytes" % (self._body_received, self._length)
                )
            )
        raise self._fail(
            RemoteProtocolError(
                "peer closed connection without sending complete message body: "
                "received %d bytes of an unfinished chunked body" % (self._body_received,)
            )
        )

    @property
    def body_length(self) -> Optional[int]:
        """The final response's announced body length (see the module docstring)."""
        framing = self._framing
        if framing == _F_LENGTH:
            return self._length
        if framing == _F_NONE:
            return 0
        return None

    def _check_next_cycle(self) -> None:
        if self._rstate != _R_DONE:
            raise LocalProtocolError("start_next_cycle() before the response's EndOfMessage")
        if not self.keep_alive:
            raise LocalProtocolError(
                "this connection cannot be reused (keep_alive is False): close it"
            )

    # -- the rest of the interface, per backend -----------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the socket; ``b""`` means EOF."""
        raise NotImplementedError

    def next_event(self) -> Event:
        """The next event, or :data:`NEED_DATA`; raises the errors listed above."""
        raise NotImplementedError

    def start_next_cycle(self) -> None:
        """Reuse the connection for another request (only when keep_alive is true)."""
        raise NotImplementedError


def make_connection(parser: str = "auto", **limits: int) -> H1Connection:
    """A new client connection over the chosen parser backend.

    ``parser`` (the pool's ``http1_parser`` option): ``"httptools"``, ``"h11"``,
    or ``"auto"`` (httptools when importable, else h11).  ``limits`` are
    ``max_header_size`` and ``max_headers``.
    """
    if parser == "auto":
        try:
            from greenpool.http.h1.parser_httptools import HttptoolsConnection
        except ImportError:
            from greenpool.http.h1.parser_h11 import H11Connection

            return H11Connection(**limits)
        return HttptoolsConnection(**limits)
    if parser == "httptools":
        try:
            from greenpool.http.h1.parser_httptools import HttptoolsConnection
        except ImportError:
            raise ValueError(
                "http1_parser='httptools' but httptools is not installed: "
                "pip install 'greenpool[speedups]', or use http1_parser='auto' or 'h11'"
            ) from None
        return HttptoolsConnection(**limits)
    if parser == "h11":
        from greenpool.http.h1.parser_h11 import H11Connection

        return H11Connection(**limits)
    raise ValueError("http1_parser must be 'auto', 'httptools' or 'h11', not %r" % (parser,))


__all__ = [
    "H1Connection",
    "ResponseHead",
    "Informational",
    "Data",
    "EndOfMessage",
    "NEED_DATA",
    "NO_BODY",
    "CHUNKED",
    "Event",
    "Headers",
    "make_connection",
    "serialize_head",
]
