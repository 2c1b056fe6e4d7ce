"""The HTTP/1.1 client adapter over httptools (llhttp): the fast path.

What this owns: one ``httptools.HttpResponseParser`` behind the
:class:`~greenpool.http.h1.H1Connection` interface, behaving exactly like the
h11 backend (the rules are in ``h1/conn.py``).  Requests are serialized by our own
code (``h1.serialize_head``: one ``b"".join``).

How: ``receive_data`` feeds the parser at once; its callbacks push our events
into a deque that ``next_event`` pops.  A parse error (or one of our checks
raised inside a callback) is stored and raised by ``next_event`` once the
events parsed before it are delivered, as h11 would.  Where llhttp is more
lenient than h11 (HTTP version, status < 100, Transfer-Encoding other than a
single ``chunked``, trailing blanks in values) the shared head rules in
``h1/conn.py`` apply; one llhttp leniency is switched on to match h11: blanks after
a chunk size.

Chunk framing is bounded by the counter both backends share (``h1.ChunkFraming``), fed
the body bytes as they arrive; llhttp does not say where in a feed a head ended, so for
the rare feed that completes a chunked response's head, :func:`_body_start` finds it
(from what :func:`_partial_head` kept of a head split across feeds).

llhttp refuses every repeated ``Content-Length`` (and a comma list), where RFC 9110 8.6
lets a client take identical values as one (h11 does): after such a refusal, the head is
kept (:func:`_one_length_head`) until its blank line, then handed to a fresh parser with
one ``Content-Length`` field when every value is the same, else refused as h11 refuses it.
Responses without the repetition never reach this path.

A read full of tiny chunks (``1\r\nx\r\n`` ...) is thousands of llhttp callbacks: a 64 KiB
read would be ~50 ms of Python with no chance to yield.  So a read with more than
:data:`FEED_FRAMING` bytes of chunk framing is parsed in pieces with about that much
framing each, one piece each time ``next_event`` runs out of events: the read loop's fair
yield (h1.transport rule 6) then comes between pieces, as it comes between h11's events.
A read longer than :data:`FEED_HEAD` before the final head is fed a head at a time, so
the body after it is judged by the same rule.  Other reads are fed whole.

llhttp cannot be told that a response answers a HEAD request (httptools does
not expose ``F_SKIPBODY``), so for HEAD we feed the parser only up to each
head's blank line, end the message ourselves, and use a fresh parser for the
next cycle.  llhttp never sees EOF either: ``h1/conn.py`` decides what EOF means.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Deque, Dict, Optional, Tuple

import httptools

from greenpool.errors import RemoteProtocolError
from greenpool.http.h1.conn import (
    _R_BODY,
    _R_DONE,
    _R_ERROR,
    _R_HEAD,
    _SPECIAL_RESP,
    Data,
    Event,
    Fields,
    H1Connection,
    Headers,
    HeadFields,
    ResponseHead,
    _keep,
    _new_event,
    one_content_length,
    serialize_head,
)

_ParserError = httptools.HttpParserError
_ParserUpgrade = httptools.HttpParserUpgrade


# A response field as llhttp gives it -> (the field as we report it: name lowercased,
# value without trailing blanks; its size, "name: value\r\n"; is it a framing field).
# Servers repeat most of their fields from one response to the next (Server,
# Content-Type, Connection, ...), so each distinct one is normalised once.  Only short
# fields are kept, never Set-Cookie (its values are one-off and may be secrets); at
# most _FIELDS_MAX of them (cleared when full).
_fields: Dict[Tuple[bytes, bytes], Tuple[Tuple[bytes, bytes], int, bool]] = {}
_FIELDS_MAX = 2048
_FIELD_KEPT_SIZE = 256


def _field(pair: Tuple[bytes, bytes]) -> Tuple[Tuple[bytes, bytes], int, bool]:
    name = pair[0].lower()
    value = pair[1].rstrip(b" \t")
    special = name in _SPECIAL_RESP
    if special and name == b"transfer-encoding":
        value = value.lower()  # as h11 reports it
    f = ((name, value), len(name) + len(value) + 4, special)
    if _keepable(f):
        _keep(_fields, _FIELDS_MAX, pair, f)
    return f


def _keepable(f: Tuple[Tuple[bytes, bytes], int, bool]) -> bool:
    return f[1] <= _FIELD_KEPT_SIZE and f[0][0] != b"set-cookie"


# A head's fields as llhttp gives them -> (the fields as we report them, their size, the
# framing fields among them).  From one response to the next a server mostly repeats
# its whole head (only Date moves, once a second), so each distinct head is normalised
# once; only heads made of kept fields (see above), at most _HEADS_MAX (cleared when full).
_heads: Dict[Fields, HeadFields] = {}
_HEADS_MAX = 256
_HEAD_KEPT_FIELDS = 32


def _head_fields(
    raw: Fields
) -> HeadFields:
    hdrs = []
    specials = []
    size = 0
    keep = len(raw) <= _HEAD_KEPT_FIELDS
    fields = _fields
    for pair in raw:
        f = fields.get(pair)
        if f is None:
            f = _field(pair)
            keep = keep and _keepable(f)
        field = f[0]
        size += f[1]
        hdrs.append(field)
        if f[2]:
            specials.append(field)
    head = (tuple(hdrs), size, tuple(specials))
    if keep:
        _keep(_heads, _HEADS_MAX, raw, head)
    return head


def _partial_head(probe: bytes) -> bytes:
    """What to remember of a head region that ended mid-head: the bytes after the last
    head's blank line (empty lines dropped), shortened to what :func:`_body_start`
    needs, its status digit (12 first bytes) and a blank line split across feeds (3
    last bytes).  Every CRLFCRLF before the final head ends a head or is empty lines:
    a head never contains one."""
    i = probe.rfind(b"\r\n\r\n")
    rest = (probe[i + 4 :] if i >= 0 else probe).lstrip(b"\r\n")
    return bytes(rest) if len(rest) <= 16 else bytes(rest[:12]) + b"\0" + bytes(rest[-3:])


def _body_start(partial: bytes, data: bytes) -> int:
    """Where the final head ended in ``data`` (the feed in which llhttp completed it),
    given what :func:`_partial_head` kept of the head in progress before it."""
    probe = partial + bytes(data)
    pos = 0
    at_start = not partial
    n = len(probe)
    while True:
        if at_start:
            while pos < n and probe[pos] in (13, 10):
                pos += 1
        i = probe.find(b"\r\n\r\n", pos)
        if i < 0:  # llhttp ends a head only there: not reached
            return len(data)
        end = i + 4
        if probe[pos + 9 : pos + 10] != b"1":  # "HTTP/1.1 " then the status: not 1xx
            return end - len(partial)
        pos = end
        at_start = True


#: a chunked-body read with more framing bytes than this (every chunk has at least 5:
#: "1\r\n" and "\r\n") is parsed in pieces with about this much framing each (a piece
#: makes at most ~200 llhttp callbacks, well under a millisecond)
FEED_FRAMING = 1024
#: before the final head, a read longer than this is parsed a head at a time (pieces of at
#: most this much), and the body after the final head as above
FEED_HEAD = 4096


#: ``_rest`` when nothing waits to be fed (a read-only view, shared)
_NO_REST = memoryview(b"")


class _StopParsing(Exception):
    """Raised in a callback when bytes follow the complete final response."""


# what llhttp says of a repeated Content-Length field and of a comma list
_LLHTTP_CL_REFUSALS = frozenset(("Duplicate Content-Length", "Invalid character in Content-Length"))
_cl_field_re = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def _one_length_head(held: bytes) -> Optional[bytes]:
    """``held`` (from the start of the head llhttp refused for a repeated Content-Length)
    with that head's Content-Length fields made one; None while its blank line has not
    come.  RemoteProtocolError when the values differ or one is not a number."""
    end = held.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = held[:end]
    values = [v.rstrip(b" \t") for v in _cl_field_re.findall(head)]
    field = b"\r\nContent-Length: " + one_content_length(values)
    first: "list[bool]" = []   # the one field stands where the first one stood (as h11 keeps it)

    def one(_m: "re.Match[bytes]") -> bytes:
        if first:
            return b""
        first.append(True)
        return field
    return _cl_field_re.sub(one, head) + b"\r\n\r\n" + held[end + 4:]


class HttptoolsConnection(H1Connection):
    """:class:`~greenpool.http.h1.H1Connection` over httptools."""

    __slots__ = (
        "_parser",
        "_events",
        "_reason",
        "_hdrs",
        "_cb_error",
        "_tail",
        "_dirty",
        "_region",
        "_held",
        "_rest",
        "_rest_raw",
        "_piece",
        "_last_raw",
        "_last_head",
        "_fresh",
    )

    backend = "httptools"

    def __init__(self, *, max_header_size: int = 65536, max_headers: int = 256) -> None:
        super().__init__(max_header_size=max_header_size, max_headers=max_headers)
        self._events: Deque[Event] = deque()
        self._reason = b""
        self._hdrs: Headers = []  # the head's raw fields as parsed, then the trailers
        self._cb_error: Optional[Exception] = None
        self._tail = b""
        self._dirty = False
        # the bytes of a head split across feeds (only then), from its response's start
        self._region = b""
        # a head llhttp refused for a repeated Content-Length, kept until its blank line
        self._held: Optional[bytes] = None
        self._rest = memoryview(b"")  # received, not yet fed to llhttp (a read fed in pieces)
        self._rest_raw = False  # received before the final head: its chunk framing not counted
        self._piece = 0  # how many bytes of _rest to feed at a time (body pieces)
        # the raw fields of this connection's last head that _heads kept, and what it kept
        self._last_raw: Optional[Headers] = None
        self._last_head: HeadFields = ((), 0, ())
        self._fresh: Optional[bytes] = None  # the feed in progress, while it starts a response
        self._parser = self._new_parser()

    def _new_parser(self) -> httptools.HttpResponseParser:
        parser = httptools.HttpResponseParser(self)
        parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
        return parser

    # -- sending -----------------------------------------------------------------

    def send_request(
        self, method: bytes, target: bytes, headers: Headers, body_length: Optional[int]
    ) -> bytes:
        checked = self._begin_request(method, target, headers, body_length)
        head = checked.head
        if head is None:
            head = checked.head = serialize_head(method, target, checked.fields)
        return head

    # -- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        chunks = self._chunks
        counted = chunks.data if chunks is not None else 0
        chunk = self._filter_incoming(data)
        if chunk is None:
            return
        if self._held is not None:
            self._hold(chunk)
            return
        if self._rstate == _R_BODY:
            if chunks is not None:
                framing = len(chunk) - (chunks.data - counted)
                if framing > FEED_FRAMING:  # many chunks: parse in pieces (see above)
                    self._split(chunk, framing)
                    return
            self._feed(chunk)
        elif self._is_head and self._rstate == _R_HEAD:
            self._feed_heads_only(chunk)
        elif len(chunk) > FEED_HEAD:
            self._rest = memoryview(chunk)
            self._rest_raw = True
            self._piece = 0
            self._feed_piece()
        else:
            self._feed(chunk)

    def _split(self, body: bytes, framing: int) -> None:
        """Parse chunked-body bytes with ``framing`` bytes of chunk framing in pieces."""
        self._rest = memoryview(body)
        self._rest_raw = False
        self._piece = max(64, len(body) * FEED_FRAMING // framing)
        self._feed_piece()

    def _feed_piece(self) -> None:
        """Feed llhttp the next piece of ``_rest`` (a read parsed in pieces)."""
        rest = self._rest
        state = self._rstate
        if state == _R_ERROR:
            self._rest = memoryview(b"")
            return
        if self._held is not None:  # a head refused for a repeated Content-Length is kept
            self._rest = memoryview(b"")
            self._hold(bytes(rest))
            return
        if self._rest_raw and state != _R_HEAD:
            # the final head ended in an earlier piece: what follows is body, whose chunk
            # framing is counted here as _filter_incoming counts a read's
            self._rest_raw = False
            self._rest = memoryview(b"")
            chunks = self._chunks
            if state == _R_BODY and chunks is not None:
                if chunks.error is not None:
                    return
                body = bytes(rest)
                counted = chunks.data
                cut = chunks.feed(body)
                if cut < len(body):
                    body = body[:cut]  # over a limit: _no_more_events raises it after these
                framing = len(body) - (chunks.data - counted)
                if framing > FEED_FRAMING:
                    self._split(body, framing)
                    return
                rest = memoryview(body)
            if rest:
                self._feed(rest)  # type: ignore[arg-type]
            return
        if self._rest_raw:
            # before the final head: up to the last head's end within FEED_HEAD bytes, so
            # a body that follows is split by its own framing
            head = bytes(rest[:FEED_HEAD])
            n = head.rfind(b"\r\n\r\n") + 4
            if n < 4:
                n = len(head)
            piece = head[:n]
        else:
            n = self._piece
            piece = rest[:n]  # type: ignore[assignment]
        self._rest = rest = rest[n:]
        self._feed(piece)
        if rest and self._rstate == _R_DONE:
            # bytes after the response: llhttp stops at once (keep_alive off), as when fed whole
            self._rest = memoryview(b"")
            self._feed(rest)  # type: ignore[arg-type]

    def _feed(self, data: bytes) -> None:
        in_head = self._rstate == _R_HEAD
        # no byte of the response came before this feed: its first head (if llhttp ends
        # one) starts at data[0], where on_headers_complete reads its version
        self._fresh = data if in_head and not self._region else None
        try:
            self._parser.feed_data(data)
        except (_ParserError, _ParserUpgrade) as e:
            self._fresh = None
            err = self._cb_error
            self._cb_error = None
            if err is None and in_head and self._rstate == _R_HEAD and str(e) in _LLHTTP_CL_REFUSALS:
                self._hold(self._region + data, True)
                return
            if self._rstate != _R_DONE:
                if err is None:
                    err = RemoteProtocolError("malformed response: %s" % (e,))
                self._fail(err)
                return
            # bytes after the final response (the body's framing is still checked below)
            self.keep_alive = False
            self._dirty = True
        self._fresh = None
        if in_head:
            if self._rstate == _R_HEAD:
                self._region += data
            elif self._region:
                self._region = b""
        if in_head and not self._is_head:
            if self._rstate == _R_HEAD:
                self._tail = _partial_head(self._tail + data)
            elif self._chunks is not None:
                # the final head of a chunked body ended in this feed: llhttp does not say
                # where, so find it, and count the body bytes that came with it
                start = _body_start(self._tail, data)
                chunks = self._chunks
                if start < len(data) and chunks.feed(data[start:]) < len(data) - start:
                    # faulty framing: the data before it is delivered, then the error (as
                    # with h11, and as when the bytes come apart); the rest llhttp made
                    # of this feed is dropped
                    self._keep_body_events(chunks.data)
                    self._fail(chunks.error)  # type: ignore[arg-type]
                    return
        if self._hdrs and self._rstate == _R_BODY:  # a trailer section in progress
            err = self._trailers_over()
            if err is not None:
                self._fail(err)

    def _hold(self, data: bytes, start: bool = False) -> None:
        """Keep a head llhttp refused for a repeated Content-Length until its blank line,
        then parse it again with one Content-Length field (see the module docstring).
        ``start``: ``data`` holds every byte of the response so far."""
        if start:
            # the refused head starts after the last head that ended before it (1xx)
            held = data
            i = held.rfind(b"\r\n\r\n", 0, max(0, held.lower().find(b"\r\ncontent-length")))
            if i >= 0:
                held = held[i + 4:]
        else:
            held = (self._held or b"") + data
        try:
            fixed = _one_length_head(held)
        except RemoteProtocolError as e:
            self._held = None
            self._fail(e)
            return
        if fixed is None:
            self._held = held   # bounded: h1/conn.py fails a head over max_header_size
            return
        self._held = None
        self._region = b""
        self._tail = b""
        self._parser = self._new_parser()
        if self._is_head:
            self._feed_heads_only(fixed)
        else:
            self._feed(fixed)

    def _keep_body_events(self, allowed: int) -> None:
        """Keep the events up to the final head and then ``allowed`` body bytes only."""
        kept: Deque[Event] = deque()
        body = False
        for ev in self._events:
            if body:
                if ev.__class__ is not Data or allowed <= 0:
                    break
                data = ev.data
                if len(data) > allowed:
                    data = data[:allowed]
                    ev = Data(data)
                allowed -= len(data)
            elif ev.__class__ is ResponseHead:
                body = True
            kept.append(ev)
        self._events = kept

    def _feed_heads_only(self, data: bytes) -> None:
        # A response to HEAD: feed each head up to its blank line and no further.
        while data:
            probe = self._tail + data
            i = probe.find(b"\r\n\r\n")
            if i < 0:
                self._tail = probe[-3:]
                self._feed(data)
                return
            cut = i + 4 - len(self._tail)
            self._tail = b""
            self._feed(data[:cut])
            data = data[cut:]
            if self._rstate != _R_HEAD:  # the final head (or an error)
                self._dirty = True
                if self._rstate == _R_DONE and data.strip(b"\r\n"):
                    self.keep_alive = False
                return

    def next_event(self) -> Event:
        events = self._events
        if events:
            return events.popleft()
        while self._rest:
            self._feed_piece()
            if events:
                return events.popleft()
        return self._no_more_events()

    def start_next_cycle(self) -> None:
        if self._rstate != _R_DONE or not self.keep_alive:
            self._check_next_cycle()  # raises
        if self._dirty:
            self._parser = self._new_parser()
            self._dirty = False
        self._tail = b""
        self._region = b""
        self._held = None
        self._rest = _NO_REST
        self._reset()

    # -- parser callbacks --------------------------------------------------------------

    def _store(self, exc: Exception) -> Exception:
        self._cb_error = exc
        return exc

    def on_message_begin(self) -> None:
        if self._rstate == _R_DONE:
            raise _StopParsing()
        self._reason = b""
        self._hdrs = []

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # one call per field: keep it to an append; the head's fields are checked and
        # normalised together in on_headers_complete, trailers in _trailers_over.  What
        # an endless head can make us keep is bounded per feed: the rules in h1/conn.py fail
        # the head once its raw bytes pass max_header_size.
        self._hdrs.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        hdrs = self._hdrs
        self._hdrs = []  # trailers, if any, go here
        if hdrs == self._last_raw:
            # the fields of this connection's previous head again (only Date moves, once a
            # second): compared, not hashed and compared as a _heads lookup would be
            head = self._last_head
        else:
            raw = tuple(hdrs)
            found = _heads.get(raw)
            kept = found is not None
            if found is None:
                found = _head_fields(raw)
                kept = raw in _heads
            # remembered only as _heads remembers it (never a Set-Cookie value, say)
            self._last_raw = hdrs if kept else None
            head = self._last_head = found
        fresh = self._fresh
        if fresh is not None and fresh.startswith(b"HTTP/1.1 "):
            # what llhttp read there: get_http_version() formats a new str each time
            version = "1.1"
        else:
            version = parser.get_http_version()
        self._fresh = None  # a later head of this feed starts further on
        try:
            event = self._head(
                parser.get_status_code(),
                self._reason,
                version,
                list(head[0]),
                head[1],
                head[2],
            )
        except RemoteProtocolError as e:
            raise self._store(e) from None
        self._events.append(event)
        if self._is_head and event.__class__ is ResponseHead:
            self._events.append(self._end(False))

    def _trailers_over(self) -> Optional[RemoteProtocolError]:
        """The error if the trailers collected so far pass the head's limits, else None."""
        trailers = self._hdrs
        size = 4 * len(trailers)
        for name, value in trailers:
            size += len(name) + len(value)
        if len(trailers) > self._max_headers or size > self._max_header_size:
            return self._trailers_too_large()
        return None

    def on_body(self, body: bytes) -> None:
        self._body_received += len(body)
        ev = _new_event(Data)  # Data(body) without an __init__ frame
        ev.data = body
        self._events.append(ev)

    def on_message_complete(self) -> None:
        if self._rstate == _R_BODY:
            err = self._trailers_over() if self._hdrs else None
            if err is not None:
                raise self._store(err)
            self._events.append(self._end(False))


__all__ = ["HttptoolsConnection"]
