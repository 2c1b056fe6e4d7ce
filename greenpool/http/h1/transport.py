"""HTTP/1.1 over an exclusive pooled connection: one request, one response.

What this owns: the I/O around the sans-IO adapter (:mod:`greenpool.http.h1.conn`)
for one exchange: check a connection out, write the request head and body,
read the response head, and hand back a :class:`~greenpool.http.models.Response`
whose body stream reads the rest and gives the connection back.

Rules:

1. **One parser per connection.**  The adapter lives on the pooled
   connection (``conn.proto_state``, a :class:`_State` holding the adapter
   and a reused receive buffer) and is reused with ``start_next_cycle()``.
2. **Timeouts are socket timeouts** (``sock.settimeout``, set only when the
   value changes): ``Timeout.write`` for each write, ``Timeout.read`` for each
   read; ``Timeout.total`` (a monotonic ``deadline``) lowers both and the pool
   wait (``Timeout.pool``) and connect (``Timeout.connect``) before it.  No
   ``gevent.Timeout`` and no greenlet per request.  ``socket.timeout`` becomes
   :class:`~greenpool.errors.WriteTimeout` / :class:`~greenpool.errors.ReadTimeout`;
   a caller's own ``gevent.Timeout`` (or a kill) propagates after the
   connection is closed.
3. **Release exactly once.**  The connection goes back to its pool (checkin)
   when the response ended and ``keep_alive`` holds, with its idle timeout
   lowered to the server's ``Keep-Alive: timeout=N`` (minus a margin; the pool
   learns it for the host's other connections too);
   otherwise, and on every error or early close, it is closed: never a
   half-read socket back in the pool.  ``close()`` before the end first
   drains what the adapter already holds (no socket read, at most
   :data:`DRAIN_LIMIT` bytes) and reuses the connection if that completes the
   response.
4. **Stale connections.**  A request on a *reused* connection that fails
   before any response byte (EOF: the adapter's ``ConnectionClosed``;
   ECONNRESET/EPIPE while writing or before the first byte) is sent again
   on another connection: idempotent methods always, others only when no
   byte of the request was written (the first write failed).  It goes on
   while the failed connection was a reused one (at most the number of idle
   connections of that host, plus one), so the last try is on a fresh
   connection whose failure is raised.  A body that cannot be rewound is
   never sent twice.
5. **Header checks first.**  The adapter validates the request (CR/LF/NUL in
   names or values, a bad method or target) before any byte is written; the
   untouched connection goes back to the pool.
6. **A fair hub.**  A socket that always has bytes ready never blocks, so a read
   loop over it would never give the hub a turn: a server flooding one
   connection would stop every other greenlet, and the caller's own
   ``gevent.Timeout``, until it stopped.  Every read loop (the head, a body read
   whole, a streamed body) yields to the hub (a full turn of its loop:
   :data:`PAUSE`) once :data:`SLICE` bytes were received since its last pause,
   each piece of body data counting :data:`EVENT_COST` bytes more; a response smaller than that never yields
   (one subtraction per read).  The parser's own bounds (h1/conn.py) cap what the
   bytes of one slice can cost.
7. **Body size limit** (``H1Options.max_body_size``, None by default): body
   bytes as framed on the wire (dechunked, before Content-Encoding decoding)
   are counted; a ``Content-Length`` over the limit fails at the head, before
   any body byte is read, and a body that grows past it fails as soon as it
   does (:class:`~greenpool.errors.LimitExceeded`).  Either way the connection
   is closed, never checked in half-read.
"""
from __future__ import annotations

import errno
import socket
import ssl
import time
from typing import Any, Dict, List, Optional, Tuple

from gevent import sleep as _sleep

from greenpool.errors import (
    ConnectionClosed,
    GreenPoolError,
    LocalProtocolError,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    WriteError,
    WriteTimeout,
    format_seconds,
)
from greenpool.http import models as _models
from greenpool.http.decoding import DEFAULT_MAX_DECODED_SIZE, make_decoder
from greenpool.http.h1 import conn as _h1
from greenpool.http.models import Headers, Request, Response, Timeout
from greenpool.net import peer_name, send_all

_monotonic = time.monotonic
NEED_DATA = _h1.NEED_DATA
_ResponseHead = _h1.ResponseHead
_Data = _h1.Data
_EndOfMessage = _h1.EndOfMessage
_Informational = _h1.Informational

#: close() drains at most this much already-received body before giving up on reuse
DRAIN_LIMIT = 64 * 1024
#: bytes read from the socket at a time (one reused buffer per connection)
RECV_SIZE = 65536
#: how long expect_continue waits for "100 Continue" before sending the body anyway
EXPECT_WAIT = 1.0
#: bodies up to this size are written together with the head (one send)
COALESCE_LIMIT = 16 * 1024
#: a read loop yields to the hub after receiving this many bytes without a pause (rule 6)
SLICE = 64 * 1024
#: how it yields: a timer, not sleep(0), whose callback gevent may run again before it
#: polls the loop (its timers, the caller's gevent.Timeout, other sockets) for up to 50 turns
PAUSE = 1e-6
#: what one body event (a piece of data) counts against SLICE, as if that many bytes: a
#: flood of tiny chunks costs per event, not per byte
EVENT_COST = 256

IDEMPOTENT = frozenset(("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"))
_RESET_ERRNOS = frozenset((errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN))
_UNSET: Any = object()
_METHOD_BYTES: Dict[str, bytes] = {}


class H1Options:
    """HTTP/1.1 settings of a client (immutable after creation)."""

    __slots__ = ("parser", "max_header_size", "max_headers", "expect_continue",
                 "max_decoded_size", "decode_content", "max_body_size")

    def __init__(self, parser: str = "auto", max_header_size: int = 65536, max_headers: int = 256,
                 expect_continue: bool = False,
                 max_decoded_size: Optional[int] = DEFAULT_MAX_DECODED_SIZE,
                 decode_content: bool = True, max_body_size: Optional[int] = None) -> None:
        if parser not in ("auto", "h11", "httptools"):
            raise ValueError("http1_parser must be 'auto', 'httptools' or 'h11', not %r" % (parser,))
        if parser == "auto":
            try:
                import httptools  # noqa: F401
                parser = "httptools"
            except ImportError:  # pragma: no cover - depends on what is installed
                parser = "h11"
        if parser == "httptools":
            try:
                import httptools  # noqa: F401,F811
            except ImportError:
                raise ValueError("http1_parser='httptools' but httptools is not installed: "
                                 "pip install 'greenpool[speedups]', or use 'auto' or 'h11'") from None
        if max_decoded_size is not None and (isinstance(max_decoded_size, bool)
                                             or not isinstance(max_decoded_size, int)
                                             or max_decoded_size < 0):
            raise ValueError("max_decoded_size must be an int >= 0 or None, not %r" % (max_decoded_size,))
        _models.check_max_body_size(max_body_size)
        self.parser = parser
        self.max_header_size = max_header_size
        self.max_headers = max_headers
        self.expect_continue = bool(expect_continue)
        self.max_decoded_size = max_decoded_size
        self.decode_content = bool(decode_content)
        self.max_body_size = max_body_size
        _h1.make_connection(parser, max_header_size=max_header_size, max_headers=max_headers)

    def replace(self, **kw: Any) -> "H1Options":
        values = {k: getattr(self, k) for k in self.__slots__}
        values.update(kw)
        return H1Options(**values)

    def __repr__(self) -> str:
        return "H1Options(%s)" % ", ".join("%s=%r" % (k, getattr(self, k)) for k in self.__slots__)


DEFAULT_OPTIONS = H1Options()


class _State:
    """What a connection keeps between requests (``conn.proto_state``)."""

    __slots__ = ("h1", "opts", "buf", "view", "timeout", "cycles")

    def __init__(self, opts: H1Options) -> None:
        self.h1 = _h1.make_connection(opts.parser, max_header_size=opts.max_header_size,
                                      max_headers=opts.max_headers)
        self.opts = opts  # the options it was last used with (usually one Client's)
        self.buf = bytearray(RECV_SIZE)
        self.view = memoryview(self.buf)
        self.timeout: Any = _UNSET  # what sock.settimeout was last given
        self.cycles = 0             # responses completed on this connection


def _same_parser(a: H1Options, b: H1Options) -> bool:
    """Can a parser made for options ``a`` serve a request under ``b``?"""
    return (a.parser == b.parser and a.max_header_size == b.max_header_size
            and a.max_headers == b.max_headers)


class _Stale(Exception):
    """Internal: the attempt failed the way a stale keep-alive connection fails."""

    def __init__(self, error: GreenPoolError, written: bool) -> None:
        self.error = error
        self.written = written


def _method_bytes(method: str) -> bytes:
    b = _METHOD_BYTES.get(method)
    if b is None:
        try:
            b = method.encode("ascii")
        except UnicodeEncodeError:
            raise LocalProtocolError("illegal request method %r" % (method,)) from None
        if len(_METHOD_BYTES) < 64:
            _METHOD_BYTES[method] = b
    return b


def _left(seconds: Optional[float], deadline: Optional[float], exc: Any) -> Optional[float]:
    """A phase timeout lowered to what is left of the total deadline."""
    if deadline is None:
        return seconds
    rem = deadline - _monotonic()
    if rem <= 0:
        raise exc("the request's total timeout expired")
    return rem if seconds is None or rem < seconds else seconds


def _settimeout(sock: Any, st: _State, seconds: Optional[float]) -> None:
    if st.timeout != seconds:
        sock.settimeout(seconds)
        st.timeout = seconds


def _phase_timeout(sock: Any, st: _State, seconds: Optional[float], deadline: Optional[float],
                   exc: Any) -> None:
    """The socket timeout for one phase: ``seconds`` lowered to the total deadline."""
    if deadline is not None:
        seconds = _left(seconds, deadline, exc)
    if st.timeout != seconds:
        _settimeout(sock, st, seconds)


def _is_reset(e: BaseException) -> bool:
    if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return True
    return isinstance(e, OSError) and e.errno in _RESET_ERRNOS


def _read_error(e: OSError, sock: Any) -> GreenPoolError:
    if isinstance(e, socket.timeout):
        return ReadTimeout("no data from %s within the read timeout (%s)"
                           % (peer_name(sock), format_seconds(sock.gettimeout())))
    if _is_reset(e):
        return ConnectionClosed("the server closed or reset the connection: %s" % (e,))
    return ReadError("reading the response failed: %s" % (e,))


def _write_error(e: OSError) -> GreenPoolError:
    if isinstance(e, socket.timeout):
        return WriteTimeout("the server accepted no data within the write timeout")
    if _is_reset(e):
        return WriteError("the server closed or reset the connection while the request was "
                          "being sent: %s" % (e,))
    return WriteError("sending the request failed: %s" % (e,))


def _recv(sock: Any, st: _State) -> bytes:
    n = sock.recv_into(st.buf)
    # a bytearray copy: the parser adapters accept any bytes-like (no bytes() on the hot path)
    return st.buf[:n] if n else b""  # type: ignore[return-value]


def release(conn: Any, st: _State) -> None:
    """The response is complete: back to the pool if reusable, else closed."""
    h1 = st.h1
    if h1.keep_alive:
        kat = h1.keep_alive_timeout
        if kat is not None:
            # expire before the server does: its clock started when it sent the response
            conn.idle_timeout = max(0.0, kat - min(1.0, kat / 2))
            conn.pool.learn_server_idle_timeout(conn, kat)  # for its other connections too
        h1.start_next_cycle()
        st.cycles += 1
        conn.pool.checkin(conn)
    else:
        conn.close("HTTP/1.1 keep-alive ended (Connection: close, HTTP/1.0 or a body "
                   "delimited by close)")


def _checkout(pool: Any, key: Tuple[str, int, str], timeout: Timeout, deadline: Optional[float],
              connect_opts: Dict[str, Any]) -> Any:
    wait = timeout.pool
    if deadline is not None:
        rem = deadline - _monotonic()
        if rem <= 0:
            raise PoolTimeout(pool.name, "the request's total timeout expired before a "
                                         "connection to %s:%s was available" % key[:2])
        wait = rem if wait is None or rem < wait else wait
        ct = timeout.connect
        connect_opts = dict(connect_opts, connect_timeout=rem if ct is None or rem < ct else ct)
    return pool.checkout(key[0], key[1], key[2], wait, **connect_opts)


def handle(pool: Any, request: Request, timeout: Timeout, deadline: Optional[float],
           connect_opts: Dict[str, Any], conn: Any = None, *, stream: bool = True,
           options: Optional[H1Options] = None, key: Optional[Tuple[str, int, str]] = None,
           target: Optional[bytes] = None) -> Response:
    """Send ``request`` over HTTP/1.1; see the module docstring.

    ``conn``: a connection already checked out (exclusively) for this request
    (e.g. a TLS connection on which the peer chose http/1.1 by ALPN).
    ``key``: the pool key (default: the URL's host, port and transport).
    ``target``: the request target (default: the URL's origin-form; a proxy
    gets the absolute form).  ``stream=False`` reads the whole body before
    returning (the connection is then already back in its pool).
    """
    opts = options or DEFAULT_OPTIONS
    url = request.url
    if key is None:
        key = (url.host, url.port, url.transport)
    method = request.method
    tries = 0
    body = request.body
    rewind = None if body is None else _rewind_point(body)
    while True:
        if conn is None:
            if deadline is None:  # what _checkout does without a total deadline, inline
                if connect_opts:
                    c = pool.checkout(key[0], key[1], key[2], timeout.pool, **connect_opts)
                else:
                    c = pool.checkout(key[0], key[1], key[2], timeout.pool)
            else:
                c = _checkout(pool, key, timeout, deadline, connect_opts)
        else:
            c, conn = conn, None
        st = c.proto_state  # as it was before this exchange (a failed one closes c)
        try:
            return _exchange(c, request, method, target or url.target, timeout, deadline, stream,
                             opts, body)
        except _Stale as s:
            tries += 1
            # a failed exchange completed no cycle and did not check c in: both still say
            # whether c was reused
            reused = (st is not None and st.cycles > 0) or c.last_used != c.created_at
            if not reused or (s.written and method not in IDEMPOTENT):
                raise s.error from None
            if not _rewind(body, rewind):
                raise s.error from None
            limit = 1 + pool.host_stats(key[0], key[1], key[2])["free"]
            if tries > limit:
                raise s.error from None


def _rewind_point(body: Any) -> Any:
    if body is None or body.__class__ is bytes:
        return None
    try:
        if not hasattr(body, "seek"):
            return _UNSET
        seekable = getattr(body, "seekable", None)  # seek/tell without seekable(): try them
        return body.tell() if seekable is None or seekable() else _UNSET
    except (OSError, ValueError, AttributeError):
        return _UNSET


def _rewind(body: Any, point: Any) -> bool:
    """Make the body ready to be sent again; False when it cannot be."""
    if body is None or body.__class__ is bytes or isinstance(body, (bytearray, memoryview)):
        return True
    if point is _UNSET or point is None:
        return False
    try:
        body.seek(point)
    except (OSError, ValueError):
        return False
    return True


def _exchange(c: Any, request: Request, method: str, target: bytes, timeout: Timeout,
              deadline: Optional[float], stream: bool, opts: H1Options, body: Any) -> Response:
    st = c.proto_state
    if st is None or st.opts is not opts:
        if st is None or not _same_parser(st.opts, opts):
            st = c.proto_state = _State(opts)
        st.opts = opts
    h1 = st.h1
    sock = c.sock
    length = request.content_length
    raw = request._raw  # the client's list (no property call); else the Headers' view
    if raw is None:
        raw = request.raw_headers
    expect = opts.expect_continue and length != 0 and body is not None
    if expect:
        raw = raw + [(b"Expect", b"100-continue")]
    try:
        head = h1.send_request(_METHOD_BYTES.get(method) or _method_bytes(method), target, raw,
                               length if body is not None else 0)
    except BaseException:
        # nothing was written and the adapter is untouched: the connection is still good
        c.pool.checkin(c)
        raise
    written = False
    ev: Any = None
    try:
        # -- write the request ------------------------------------------------------
        # (the call only when the socket's timeout may change: the same value is kept)
        if deadline is not None or st.timeout is not timeout.write:
            _phase_timeout(sock, st, timeout.write, deadline, WriteTimeout)
        try:
            if body is None or length == 0:
                n = sock.send(head)  # send_all(sock, head), inline (once per request)
                if n < len(head):
                    sock.sendall(memoryview(head)[n:])
                written = True
            # a bytes body always comes with its content_length (never None)
            elif body.__class__ is bytes and length <= COALESCE_LIMIT and not expect:  # type: ignore[operator]
                send_all(sock, head + h1.send_data(body) + h1.send_end())
                written = True
            else:
                send_all(sock, head)
                written = True
                if expect:
                    ev = _await_continue(sock, st, h1, timeout, deadline)
                    _phase_timeout(sock, st, timeout.write, deadline, WriteTimeout)
                if ev is None or ev.__class__ is not _ResponseHead:
                    ev = None
                    _send_body(sock, st, h1, body, timeout, deadline)
        except OSError as e:
            err = _write_error(e)
            if _is_reset(e):
                raise _Stale(err, written) from e
            raise err from e
        # -- read the response head ---------------------------------------------------
        budget = SLICE
        if ev is None:
            if deadline is not None or st.timeout is not timeout.read:
                _phase_timeout(sock, st, timeout.read, deadline, ReadTimeout)
            # a new cycle holds no event before its first byte (start_next_cycle follows
            # an EndOfMessage with no byte but CR/LF after it): read first, then ask
            ev = NEED_DATA
            got = False
            while True:
                if ev is NEED_DATA:
                    if got and deadline is not None:
                        _phase_timeout(sock, st, timeout.read, deadline, ReadTimeout)
                    try:
                        n = sock.recv_into(st.buf)  # as _recv, inline (once per request)
                    except OSError as e:
                        err = _read_error(e, sock)
                        if not got and isinstance(err, ConnectionClosed):
                            raise _Stale(err, True) from e
                        raise err from e
                    got = True
                    data = st.buf[:n] if n else b""
                    budget -= len(data)
                    if budget <= 0:  # rule 6
                        _sleep(PAUSE)
                        budget = SLICE
                    h1.receive_data(data)
                try:
                    ev = h1.next_event()
                except ConnectionClosed as e:
                    raise _Stale(e, True) from None
                if ev.__class__ is _ResponseHead:
                    break
        # -- the response -------------------------------------------------------------
        head = ev
        head_at = _monotonic()  # Response.elapsed ends here
        decoder = None
        codings = h1.content_encodings
        if codings and opts.decode_content:
            # several fields are one list, in order (RFC 9110 5.3), as HTTP/2 reads them
            decoder = make_decoder(b", ".join(codings).decode("latin-1"), opts.max_decoded_size)
        headers = Headers.from_raw(ev.headers)
        limit = opts.max_body_size
        if limit is not None:
            declared = h1.body_length
            if declared is not None and declared > limit:
                raise _models.body_too_large(limit, "Content-Length: %d" % declared)
        if stream:
            body_stream = H1Body(c, st, timeout.read, limit)
            resp = Response(ev.status, headers, ev.reason.decode("latin-1"), ev.http_version,
                            request.url, request, body_stream, decoder)
            return resp
        chunks: List[bytes] = []
        received = 0
        while True:
            ev = h1.next_event()
            cls = ev.__class__
            if cls is _Data:
                budget -= EVENT_COST
                if budget <= 0:  # rule 6
                    _sleep(PAUSE)
                    budget = SLICE
                if limit is not None:
                    received += len(ev.data)
                    if received > limit:
                        raise _models.body_too_large(limit, "%d bytes received so far" % received)
                chunks.append(ev.data)
            elif ev is NEED_DATA:
                if deadline is not None:
                    _phase_timeout(sock, st, timeout.read, deadline, ReadTimeout)
                try:
                    data = _recv(sock, st)
                except OSError as e:
                    raise _read_error(e, sock) from e
                h1.receive_data(data)
                budget -= len(data)
                if budget <= 0:  # rule 6
                    _sleep(PAUSE)
                    budget = SLICE
            elif cls is _EndOfMessage:
                break
    except _Stale as s:
        c.close("stale connection: %s" % (s.error,))
        raise
    except BaseException as e:
        c.close("request failed: %s" % (e.__class__.__name__,))
        raise
    # release(c, st), inline (once per request)
    if h1.keep_alive:
        kat = h1.keep_alive_timeout
        if kat is not None:
            c.idle_timeout = max(0.0, kat - min(1.0, kat / 2))
            c.pool.learn_server_idle_timeout(c, kat)
        h1.start_next_cycle()
        st.cycles += 1
        c.pool.checkin(c)
    else:
        release(c, st)
    content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if decoder is not None and content:
        content = decoder.decode(content) + decoder.flush()
    resp = Response(head.status, headers, head.reason.decode("latin-1"), head.http_version,
                    request.url, request)
    resp._content = content
    resp._consumed = True
    resp._started = head_at
    return resp


def _await_continue(sock: Any, st: _State, h1: Any, timeout: Timeout,
                    deadline: Optional[float]) -> Any:
    """After a head with ``Expect: 100-continue``: 100 -> None (send the body),
    a final response head -> that head (the body is not sent), silence -> None."""
    wait = _left(timeout.read, deadline, ReadTimeout)
    wait = EXPECT_WAIT if wait is None or wait > EXPECT_WAIT else wait
    _settimeout(sock, st, wait)
    while True:
        ev = h1.next_event()
        if ev is NEED_DATA:
            try:
                data = _recv(sock, st)
            except socket.timeout:
                return None
            except OSError as e:
                raise _read_error(e, sock) from e
            h1.receive_data(data)
            continue
        if ev.__class__ is _Informational:
            if ev.status == 100:
                return None
            continue
        return ev


def _send_body(sock: Any, st: _State, h1: Any, body: Any, timeout: Timeout,
               deadline: Optional[float]) -> None:
    send = sock.sendall
    if isinstance(body, (bytes, bytearray, memoryview)):
        send(h1.send_data(bytes(body)))
    elif hasattr(body, "read"):
        while True:
            chunk = body.read(RECV_SIZE)
            if not chunk:
                break
            if isinstance(chunk, str):
                chunk = chunk.encode("utf-8")
            if deadline is not None:
                _phase_timeout(sock, st, timeout.write, deadline, WriteTimeout)
            send(h1.send_data(chunk))
    else:
        for chunk in body:
            if isinstance(chunk, str):
                chunk = chunk.encode("utf-8")
            elif not isinstance(chunk, bytes):
                chunk = bytes(chunk)
            if not chunk:
                continue
            if deadline is not None:
                _phase_timeout(sock, st, timeout.write, deadline, WriteTimeout)
            send(h1.send_data(chunk))
    end = h1.send_end()
    if end:
        send(end)


class H1Body:
    """The body stream of one HTTP/1.1 response (see ``models`` for the seam)."""

    __slots__ = ("conn", "state", "read_timeout", "pending", "trailers", "limit", "received",
                 "budget", "__weakref__")

    def __init__(self, conn: Any, state: _State, read_timeout: Optional[float],
                 limit: Optional[int] = None) -> None:
        self.conn = conn
        self.state = state
        self.read_timeout = read_timeout
        self.pending = b""
        self.trailers: Optional[Headers] = None
        self.limit = limit          # max_body_size (None: no limit)
        self.received = 0           # body bytes taken from the adapter so far
        self.budget = SLICE         # bytes left to receive before yielding (rule 6)

    @property
    def done(self) -> bool:
        return self.conn is None

    def read_chunk(self, max_bytes: int = RECV_SIZE) -> bytes:
        p = self.pending
        if p:
            if len(p) <= max_bytes:
                self.pending = b""
                return p
            self.pending = p[max_bytes:]
            return p[:max_bytes]
        conn = self.conn
        if conn is None:
            return b""
        st = self.state
        h1 = st.h1
        ev: Any  # an Event, narrowed below by ev.__class__, which mypy cannot follow
        data: bytes
        try:
            while True:
                ev = h1.next_event()
                cls = ev.__class__
                if cls is _Data:
                    data = ev.data
                    if not data:
                        continue
                    self.budget -= EVENT_COST
                    if self.budget <= 0:  # rule 6
                        _sleep(PAUSE)
                        self.budget = SLICE
                    if self.limit is not None:
                        self.received += len(data)
                        if self.received > self.limit:
                            raise _models.body_too_large(
                                self.limit, "%d bytes received so far" % self.received)
                    if len(data) > max_bytes:
                        self.pending = data[max_bytes:]
                        return data[:max_bytes]
                    return data
                if ev is NEED_DATA:
                    sock = conn.sock
                    _settimeout(sock, st, self.read_timeout)
                    try:
                        data = _recv(sock, st)
                    except OSError as e:
                        raise _read_error(e, sock) from e
                    h1.receive_data(data)
                    self.budget -= len(data)
                    if self.budget <= 0:  # rule 6
                        _sleep(PAUSE)
                        self.budget = SLICE
                elif cls is _EndOfMessage:
                    self.conn = None
                    release(conn, st)
                    return b""
        except BaseException as e:
            self.conn = None
            conn.close("reading the response body failed: %s" % (e.__class__.__name__,))
            raise

    def close(self) -> None:
        """Stop early: reuse the connection only if the rest is already here and small."""
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        self.pending = b""
        st = self.state
        h1 = st.h1
        drained = 0
        ev: Any  # an Event, narrowed below by ev.__class__, which mypy cannot follow
        try:
            while drained <= DRAIN_LIMIT:
                ev = h1.next_event()
                cls = ev.__class__
                if cls is _Data:
                    drained += len(ev.data)
                elif cls is _EndOfMessage:
                    release(conn, st)
                    return
                else:
                    break
        except Exception:  # noqa: BLE001 - a broken response: the connection just closes
            pass
        conn.close("the response was closed before its body was read to the end")

    def __repr__(self) -> str:
        return "<H1Body %s>" % ("done" if self.conn is None else repr(self.conn))


__all__ = ["handle", "release", "H1Options", "H1Body", "DEFAULT_OPTIONS", "DRAIN_LIMIT"]
