"""The HTTP/2 request path: which connection, which stream, the body both ways, retries.

What this owns: :func:`handle` (the one entry point the HTTP client calls), the
per-origin memory of what a TLS server chose by ALPN, request header
validation and pseudo-headers, sending a request body under flow control,
waiting for the response head, :class:`H2Body` (the response's body stream)
and the transparent retry of streams the server never processed.  The
connection itself (reader greenlet, writes, stream waiters, GOAWAY, PING) is
:mod:`greenpool.http.h2.conn`.

Promises:

* ``handle(pool, request, timeout, deadline, connect_opts, http2)`` returns a
  :class:`~greenpool.http.models.Response` (``http_version == "HTTP/2"``), or,
  when a TLS server picked ``http/1.1`` by ALPN, the pool Connection checked
  out exclusively: the caller runs HTTP/1.1 on it and checks it in.
* ``http2=True``: https origins offer ALPN ``["h2", "http/1.1"]``; the answer
  is remembered per pool and origin, so later requests go straight to a shared
  h2 connection (``pool.acquire_shared``) or to an exclusive HTTP/1.1 checkout.
  While one greenlet probes an unknown origin, the others wait for its answer
  instead of each opening a connection.  ``http2="prior_knowledge"`` speaks
  h2c to http origins (and ALPN as above to https ones).
* Every use of a shared connection is given back exactly once: at the end of
  the body, at ``close()``, or on any error, kill or timeout (which also sends
  RST_STREAM for that stream only).
* A stream the server never processed (above a GOAWAY's last_stream_id,
  REFUSED_STREAM, or no stream left) is sent again on another connection, up
  to ``MAX_RETRIES`` times, when its body can be replayed; so is a request whose
  connection broke (EOF, reset, failed write) before any response byte when its
  method is idempotent or its stream is above a GOAWAY's last_stream_id (a
  failed write first reads what the server sent before closing, for its GOAWAY).
* ``max_body_size`` (None: no limit): a ``content-length`` over it fails at the
  head, a body growing past it fails then; either way with
  :class:`~greenpool.errors.LimitExceeded` and RST_STREAM for that stream only.
* A stream that times out waiting for the server makes its connection
  suspect (:meth:`~greenpool.connection.Connection.suspect`): a PING not
  answered within ``H2Config.dead_peer_timeout`` closes it, and its other
  streams fail with ConnectionClosed (idempotent ones are sent again).
* Timeouts (:class:`~greenpool.http.models.Timeout`): ``pool`` for a stream
  slot, ``read`` for each wait for the head or body data, ``write`` for each
  wait for flow-control window or socket, all capped by ``deadline``; with
  ``stream=False`` the deadline covers the body too (as on HTTP/1.1), with
  ``stream=True`` it ends at the head.
"""
from __future__ import annotations

import dataclasses
import http
import re
import time
import weakref
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import gevent
from gevent.event import Event

from greenpool.connection import Connection
from greenpool.errors import (
    ConnectionClosed,
    GreenPoolError,
    LocalProtocolError,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    WriteError,
    WriteTimeout,
    format_address,
    format_seconds,
)
from greenpool.http.decoding import DEFAULT_MAX_DECODED_SIZE, make_decoder
from greenpool.http.h2.backend import core as h2
from greenpool.http.h2.conn import Flooded, H2Config, H2Protocol, Refused, Stream, _copy_error
from greenpool.http.models import Headers, Request, Response, Timeout, body_too_large, check_max_body_size

if TYPE_CHECKING:
    from greenpool.pool import GreenPool

__all__ = ["handle", "H2Config", "H2Body", "origin_protocol", "forget_origin", "build_headers",
           "DEFAULT_CONFIG", "ALPN", "MAX_RETRIES"]

ALPN = ["h2", "http/1.1"]
DEFAULT_CONFIG = H2Config()
MAX_RETRIES = 3
UPLOAD_CHUNK = 65536

_monotonic = time.monotonic
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
_CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                  b"transfer-encoding", b"upgrade"))
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\A[ \t]|[ \t]\Z")
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}

# per pool: (scheme host, port) -> "h2" | "http/1.1"; and the probes in flight
_origins: "weakref.WeakKeyDictionary[Any, Dict[Tuple[str, int], str]]" = weakref.WeakKeyDictionary()
_probes: "weakref.WeakKeyDictionary[Any, Dict[Tuple[str, int], Event]]" = weakref.WeakKeyDictionary()
_setups: Dict[Tuple[H2Config, bool, Any], Any] = {}
_POOL_DEFAULT: Any = object()


class _NotH2(GreenPoolError):
    """The TLS server did not pick h2 by ALPN on a new connection (the pool closed it)."""


# -- public helpers --


def origin_protocol(pool: Any, host: str, port: int) -> Optional[str]:
    """What an https origin chose by ALPN, as remembered: "h2", "http/1.1" or None."""
    return _origins.get(pool, {}).get((host, port))


def forget_origin(pool: Any, host: str, port: int) -> None:
    """Probe the origin again on its next request."""
    _origins.get(pool, {}).pop((host, port), None)


# Validated (name, value) pairs -> the lowercased name.  Clients send the same few
# fields again and again: one dict lookup per field instead of two regex passes.
_checked_fields: Dict[Tuple[bytes, bytes], bytes] = {}
_CHECKED_MAX = 4096


def _check_field(name: bytes, value: bytes) -> bytes:
    n = name.lower()
    if not _TOKEN.match(n):
        if n[:1] == b":":
            raise LocalProtocolError("header %r: pseudo-headers are built by greenpool" % (name,))
        raise LocalProtocolError("invalid header name %r" % (name,))
    if _BAD_VALUE.search(value):
        raise LocalProtocolError("invalid value for header %r: control characters or "
                                 "leading/trailing whitespace" % (name,))
    if len(_checked_fields) >= _CHECKED_MAX:
        _checked_fields.clear()
    _checked_fields[(name, value)] = n
    return n


# The caller's fields -> (the fields to send, whether Content-Length is among them, the Host
# value or None): a client sends the same list (cached per origin) again and again, so
# it is checked and filtered once.  At most 256 lists of <= 64 fields and 8 KiB.
_built: Dict[Tuple[Tuple[bytes, bytes], ...], Tuple[List[Tuple[bytes, bytes]], bool, Optional[bytes]]] = {}


def build_headers(request: Request) -> List[Tuple[bytes, bytes]]:
    """Pseudo-headers plus the caller's headers, validated, lowercased, without
    connection-specific ones.  Raises LocalProtocolError before anything is sent."""
    url = request.url
    raw = request.raw_headers
    try:
        key: Any = tuple(raw)
        built = _built.get(key)
    except TypeError:           # fields that are not (bytes, bytes) pairs: checked each time
        key = built = None
    if built is None:
        built = _filter_fields(raw)
        if key is not None and len(key) <= 64 and sum(map(len, chain.from_iterable(key))) <= 8192:
            if len(_built) >= 256:
                _built.clear()
            _built[key] = built
    fields, has_length, authority = built
    head = [(b":method", request.method.encode("ascii")),
            (b":scheme", url.scheme.encode("ascii")),
            (b":authority", authority if authority is not None else url.authority.encode("ascii")),
            (b":path", url.target)]
    head.extend(fields)
    if not has_length and request.content_length is not None and (
            request.content_length > 0 or request.method in ("POST", "PUT", "PATCH")):
        head.append((b"content-length", b"%d" % request.content_length))
    return head


def _filter_fields(raw: List[Tuple[bytes, bytes]]
                   ) -> Tuple[List[Tuple[bytes, bytes]], bool, Optional[bytes]]:
    authority = None
    fields: List[Tuple[bytes, bytes]] = []
    has_length = False
    checked = _checked_fields
    for name, value in raw:
        try:
            n = checked[(name, value)]
        except (KeyError, TypeError):
            n = _check_field(name, value)
        if n in _CONNECTION_SPECIFIC:
            continue                       # meaningless in HTTP/2 (RFC 9113 8.2.2)
        if n == b"host":
            if authority is None:
                authority = value
            continue
        if n == b"te" and value.lower() != b"trailers":
            continue
        if n == b"content-length":
            has_length = True
        fields.append((n, value))
    return fields, has_length, authority


# -- the entry point --


def handle(pool: Any, request: Request, timeout: Any, deadline: Optional[float],
           connect_opts: Dict[str, Any], http2: Any, config: Optional[H2Config] = None, *,
           stream: bool = True, decode_content: bool = True,
           max_decoded_size: Optional[int] = DEFAULT_MAX_DECODED_SIZE,
           max_header_size: Optional[int] = None, max_body_size: Optional[int] = None,
           transport: Optional[str] = None, host: Optional[str] = None) -> Any:
    """Send ``request`` over HTTP/2; see the module docstring for what comes back.

    ``config``: settings for connections this call opens (default :data:`DEFAULT_CONFIG`).
    ``stream=False`` reads the whole body before returning (the stream is then
    already given back); ``decode_content`` attaches a Content-Encoding decoder
    whose output is capped at ``max_decoded_size`` (None: no cap).
    ``max_header_size``: the largest response header list (and trailer list)
    this request accepts, in HTTP/2 terms (RFC 9113 6.5.2: name + value + 32 per
    field); default ``config.max_header_list_size``.  A stream over it is reset
    and fails with :class:`~greenpool.errors.LimitExceeded`; the connection and
    its other streams carry on.  ``max_body_size``: the most body bytes (as
    received, before decoding) this request accepts (None: no limit), see the
    module docstring.  ``transport``: the pool key's transport (default ``"ssl"`` or
    ``"tcp"`` by the URL; a tagged one, ``"ssl|tls1"``, keeps connections opened with
    other settings apart in the same pool; ``"unix"``/``"unix-ssl"``: over the Unix
    socket ``host``).  ``host``: the key's host (default the URL's).
    """
    check_max_body_size(max_body_size)
    url = request.url
    if url.scheme == "https":
        tls = True
    elif http2 == "prior_knowledge":
        tls = False
    else:
        raise ValueError("HTTP/2 to an http:// origin needs http2='prior_knowledge' (h2c)")
    if not isinstance(timeout, Timeout):
        timeout = Timeout.coerce(timeout)
    cfg = config if config is not None else DEFAULT_CONFIG
    if max_header_size is not None:
        if isinstance(max_header_size, bool) or not isinstance(max_header_size, int) \
                or max_header_size < 1:
            raise ValueError("max_header_size must be an int >= 1, not %r" % (max_header_size,))
        if max_header_size != cfg.max_header_list_size:   # advertised by new connections too
            cfg = dataclasses.replace(cfg, max_header_list_size=max_header_size)
    header_limit = cfg.max_header_list_size
    headers = build_headers(request)
    body = request.body
    start_pos = None
    if body is not None:
        body, start_pos = _prepare_body(body)
    retries = 0
    stale_retry = request.method in _IDEMPOTENT
    while True:
        conn = _acquire(pool, url, tls, timeout, deadline, connect_opts, cfg, transport, host)
        if not isinstance(conn.proto, H2Protocol):
            return conn                    # the server chose HTTP/1.1 by ALPN
        try:
            response = _exchange(pool, conn, request, headers, body, timeout, deadline, stale_retry,
                                 decode_content, max_decoded_size, header_limit, max_body_size,
                                 None if stream else deadline)
        except Refused as e:
            retries += 1
            if retries > MAX_RETRIES or not _rewind(body, start_pos, getattr(e, "body_started", True)):
                cause = getattr(e, "cause", None) or e
                if isinstance(cause, Flooded):
                    raise Flooded("HTTP/2 request %s %s failed on %d connection(s): %s"
                                  % (request.method, url, retries, cause)) from None
                raise ConnectionClosed("HTTP/2 request %s %s not processed by the server after %d "
                                       "attempt(s): %s" % (request.method, url, retries, cause)) from None
            continue
        if not stream:
            response.read()
        return response


def _rewind(body: Any, start_pos: Optional[int], started: bool) -> bool:
    if body is None or isinstance(body, bytes) or not started:
        return True
    if start_pos is not None:
        try:
            body.seek(start_pos)
            return True
        except (OSError, ValueError):
            return False
    return iter(body) is not body    # a list/tuple can be iterated again, a generator cannot


def _prepare_body(body: Any) -> Tuple[Any, Optional[int]]:
    """A request body as the HTTP/2 and HTTP/3 request paths send it (str as UTF-8, other
    buffers as bytes, empty as None) and where a seekable file starts (for a retry)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    elif isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    if body == b"":
        return None, None
    if not isinstance(body, bytes) and hasattr(body, "seek"):
        try:
            return body, body.tell()
        except (OSError, AttributeError, ValueError):
            pass
    return body, None


def _remaining(seconds: Optional[float], deadline: Optional[float]) -> Optional[float]:
    if deadline is None:
        return seconds
    left = deadline - _monotonic()
    if left < 0:
        left = 0.0
    return left if seconds is None or left < seconds else seconds


# -- choosing a connection --


def _setup_for(cfg: H2Config, tls: bool, handshake_timeout: Any) -> Any:
    """The ``setup`` the pool runs on a new shared connection (cached: no closure per request)."""
    key = (cfg, tls, handshake_timeout)
    fn = _setups.get(key)
    if fn is None:
        def setup(conn: Connection) -> None:
            if tls and conn.alpn_protocol() != "h2":
                raise _NotH2("%s:%s did not choose h2 by ALPN" % conn.key[:2])
            _start(conn, cfg, handshake_timeout)
        if len(_setups) > 256:
            _setups.clear()
        fn = _setups[key] = setup
    return fn


def _start(conn: Connection, cfg: H2Config, handshake_timeout: Any = _POOL_DEFAULT) -> None:
    proto = H2Protocol(conn, cfg)
    if handshake_timeout is _POOL_DEFAULT:
        pool = conn.pool
        handshake_timeout = pool.options.connect_timeout if pool is not None else None
    proto.handshake(handshake_timeout)
    conn.proto = proto


def _acquire(pool: GreenPool, url: Any, tls: bool, timeout: Timeout, deadline: Optional[float],
             connect_opts: Dict[str, Any], cfg: H2Config,
             transport: Optional[str] = None, key_host: Optional[str] = None) -> Connection:
    host, port = key_host or url.host, url.port
    connect = timeout.connect
    if deadline is not None:
        left = deadline - _monotonic()
        if left <= 0:
            raise PoolTimeout(pool.name, "the request's total timeout expired before a "
                                         "connection to %s:%s was available" % (host, port))
        connect = left if connect is None or left < connect else connect
    handshake = _POOL_DEFAULT if connect is None else connect
    if connect is not None:
        connect_opts = dict(connect_opts, connect_timeout=connect)
    if not tls:
        return pool.acquire_shared(host, port, transport or "tcp", _remaining(timeout.pool, deadline),
                                   _setup_for(cfg, False, handshake), **connect_opts)
    opts = dict(connect_opts)
    opts["alpn"] = ALPN
    tr = transport or "ssl"
    key: Tuple[Any, ...] = (host, port) if tr == "ssl" else (host, port, tr)
    memory = _origins.get(pool)
    if memory is None:
        memory = _origins[pool] = {}
    while True:
        kind = memory.get(key)
        pool_timeout = _remaining(timeout.pool, deadline)
        if kind == "h2":
            try:
                return pool.acquire_shared(host, port, tr, pool_timeout,
                                           _setup_for(cfg, True, handshake), **opts)
            except _NotH2:
                memory.pop(key, None)       # the server changed its mind: probe again
                continue
        if kind == "http/1.1":
            return pool.checkout(host, port, tr, pool_timeout, **opts)
        conn = _probe(pool, host, port, key, memory, pool_timeout, opts, cfg, handshake, tr)
        if conn is not None:
            return conn


def _probe(pool: GreenPool, host: str, port: int, key: Tuple[Any, ...], memory: Dict[Any, str],
           pool_timeout: Optional[float], opts: Dict[str, Any], cfg: H2Config,
           handshake: Any, transport: str = "ssl") -> Optional[Connection]:
    """Learn what the origin speaks; None means "look at the memory again"."""
    probes = _probes.get(pool)
    if probes is None:
        probes = _probes[pool] = {}
    running = probes.get(key)
    if running is not None:
        wait = pool_timeout if pool_timeout is not None else pool.options.checkout_timeout
        if not running.wait(wait):
            raise PoolTimeout(pool.name, "no connection to %s:%s after %.3fs: waiting for the "
                                         "first connection to learn whether it speaks h2" % (host, port, wait or 0))
        return None
    conn = pool.checkout_h2(host, port, transport)
    if conn is not None:
        memory[key] = "h2"
        return conn
    ev = probes[key] = Event()
    try:
        conn = pool.checkout(host, port, transport, pool_timeout, **opts)
        chosen = conn.alpn_protocol()
        fresh = conn.uses == 1
        if chosen != "h2":
            if fresh:
                memory[key] = "http/1.1"
            elif chosen is None:
                # opened without offering h2 (an http2=False request): it says nothing of
                # what the origin would choose; probe on another connection
                conn.close("opened without ALPN h2: probing the origin again")
                return None
            return conn
        if not fresh:   # an h2 socket someone used otherwise: not safe to speak h2 on it
            conn.close("h2 connection found idle in the exclusive pool")
            return None
        try:
            _start(conn, cfg, handshake)
        except BaseException:
            conn.close("HTTP/2 handshake failed")
            raise
        memory[key] = "h2"
        pool.register_h2(conn)
        return None
    finally:
        if probes.get(key) is ev:
            del probes[key]
        ev.set()


# -- one exchange on a stream --


def _exchange(pool: Any, conn: Connection, request: Request, headers: List[Tuple[bytes, bytes]],
              body: Any, timeout: Timeout, deadline: Optional[float], stale_retry: bool,
              decode_content: bool = True,
              max_decoded_size: Optional[int] = DEFAULT_MAX_DECODED_SIZE,
              header_limit: Optional[int] = None, max_body_size: Optional[int] = None,
              body_deadline: Optional[float] = None) -> Response:
    """Open a stream, send the body, wait for the head.  ``body_deadline`` caps every
    wait for body data (``stream=False``: the total deadline covers the whole body)."""
    proto: H2Protocol = conn.proto
    st: Optional[Stream] = None
    body_started = False
    try:
        st = proto.open_stream(headers, end_stream=body is None, max_header_list=header_limit,
                               max_body=max_body_size)
        proto.flush()
        if body is not None:
            body_started = True
            _send_body(proto, st, body, timeout.write, deadline)
        read = timeout.read
        while st.head is None:
            if st.error is not None:
                raise _copy_error(st.error)
            if st.ended:
                raise RemoteProtocolError("HTTP/2 stream %d ended without a response" % st.id)
            if not proto.wait(st, _remaining(read, deadline)):
                conn.suspect(proto.config.dead_peer_timeout)   # a dead peer? (probes once)
                raise ReadTimeout("no response head from %s on HTTP/2 stream %d within %s"
                                  % (format_address(conn.host, conn.port), st.id, format_seconds(read) if
                                     deadline is None else "the read/total timeout"))
        status, resp_headers, coding, declared = _parse_head(st.head)
        if max_body_size is not None and request.method != "HEAD" and status not in (204, 304):
            if declared is not None and declared.isdigit() and int(declared) > max_body_size:
                raise body_too_large(max_body_size, "content-length: %s"
                                     % declared.decode("latin-1"))
    except BaseException as e:
        if st is not None:
            proto.release(st, reset=not proto.stream_closed(st))
            try:
                proto.flush()
            except GreenPoolError:
                pass
        pool.release_shared(conn)
        if isinstance(e, Refused):
            e.body_started = body_started  # type: ignore[attr-defined]
        elif st is not None and st.head is None and isinstance(e, (ReadError, WriteError, Flooded)) \
                and (stale_retry or isinstance(st.error, Refused)
                     or (proto.goaway is not None and st.id > proto.goaway)):
            # the connection broke (EOF, reset, EPIPE, a flood limit) before any response
            # byte: send it again if the server provably never processed it (above a
            # GOAWAY's last_stream_id) or if the method is idempotent
            r = Refused("connection lost before any response")
            r.cause = e  # type: ignore[attr-defined]
            r.body_started = body_started  # type: ignore[attr-defined]
            raise r from None
        raise
    # as on HTTP/1.1: stream=True reads the body under the read timeout only (the total
    # deadline ends at the head); stream=False reads it under the total deadline too
    stream = H2Body(pool, conn, proto, st, timeout.read, body_deadline)
    if st.ended and not st.chunks and st.error is None:
        stream._finish()
    decoder = None
    if coding and decode_content:
        decoder = make_decoder(coding, max_decoded_size)
    return Response(status, resp_headers, _REASONS.get(status, ""), "HTTP/2", request.url,
                    request, stream, decoder)


# Response heads by their list of names -> where the status, the Content-Encoding fields and
# the last Content-Length are: servers send the same names in the same order again and
# again, so a head whose names were read once is taken apart by index (one C-level pass to
# build the names, no Python loop per field).  Only names are kept (never values), only for
# heads that were valid, at most 256 lists of <= 64 names, cleared when full.
_HeadPlan = Tuple[int, Tuple[int, ...], int]
_head_plans: Dict[Tuple[bytes, ...], _HeadPlan] = {}
_first = itemgetter(0)


def _parse_head(raw: List[Tuple[bytes, bytes]]) -> Tuple[int, Headers, Optional[str], Optional[bytes]]:
    """(status, headers, Content-Encoding as one str or None, the last Content-Length or None),
    read off the bytes: the Headers object decodes its fields only if someone looks."""
    names = tuple(map(_first, raw))
    plan = _head_plans.get(names)
    if plan is None:
        return _parse_head_first(raw, names)
    at, codings, length_at = plan
    status = raw[at][1]
    if len(status) != 3 or not status.isdigit():
        raise RemoteProtocolError("invalid or missing :status %r in an HTTP/2 response" % (status,))
    fields = raw[1:] if at == 0 else raw[:at] + raw[at + 1:]
    coding = b", ".join([raw[i][1] for i in codings]).decode("latin-1") if codings else None
    return int(status), Headers.from_raw(fields), coding, raw[length_at][1] if length_at >= 0 else None


def _parse_head_first(raw: List[Tuple[bytes, bytes]], names: Tuple[bytes, ...]
                      ) -> Tuple[int, Headers, Optional[str], Optional[bytes]]:
    """:func:`_parse_head` for a list of names not seen yet: field by field, then its plan kept."""
    status = None
    status_at = -1
    fields = []
    codings: List[bytes] = []
    coding_at: List[int] = []
    length = None
    length_at = -1
    for i, (k, v) in enumerate(raw):
        if k[:1] == b":":
            if k == b":status" and status is None:
                status = v
                status_at = i
                continue
            raise RemoteProtocolError("unexpected pseudo-header %r in an HTTP/2 response" % (k,))
        if k == b"content-encoding":
            codings.append(v)
            coding_at.append(i)
        elif k == b"content-length":
            length = v
            length_at = i
        fields.append((k, v))
    if status is None or len(status) != 3 or not status.isdigit():
        raise RemoteProtocolError("invalid or missing :status %r in an HTTP/2 response" % (status,))
    if len(names) <= 64 and sum(map(len, names)) <= 4096:
        if len(_head_plans) >= 256:
            _head_plans.clear()
        _head_plans[names] = (status_at, tuple(coding_at), length_at)
    coding = b", ".join(codings).decode("latin-1") if codings else None
    return int(status), Headers.from_raw(fields), coding, length


def _chunks(body: Any) -> Iterator[bytes]:
    if isinstance(body, bytes):
        yield body
        return
    read = getattr(body, "read", None)
    if read is not None:
        while True:
            chunk = read(UPLOAD_CHUNK)
            if not chunk:
                return
            yield chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)
    else:
        for chunk in body:
            if chunk:
                yield chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)


def _send_body(proto: H2Protocol, st: Stream, body: Any, write: Optional[float],
               deadline: Optional[float]) -> None:
    """DATA frames within the server's windows; returns early if the server already answered."""
    h2c = proto.h2
    sid = st.id
    for chunk in _chunks(body):
        off = 0
        total = len(chunk)
        while off < total:
            if st.ended:
                return          # complete response already: stop uploading (release resets)
            if st.error is not None:
                raise _copy_error(st.error)
            try:
                window = h2c.local_flow_control_window(sid)
            except h2.exceptions.ProtocolError as e:
                raise RemoteProtocolError("HTTP/2 stream %d closed during the upload: %s" % (sid, e)) from None
            if window <= 0:
                proto.block_send(st, True)
                try:
                    ok = proto.wait(st, _remaining(write, deadline))
                finally:
                    proto.block_send(st, False)
                if not ok:
                    raise WriteTimeout("the server gave no HTTP/2 flow-control window for stream %d "
                                       "within the write timeout" % sid)
                continue
            end = off + min(window, total - off)
            size = h2c.max_outbound_frame_size
            while off < end:
                n = min(size, end - off)
                h2c.send_data(sid, chunk[off:off + n])
                off += n
            _flush_timed(proto, _remaining(write, deadline), sid)
    if st.error is None and not st.ended:
        h2c.end_stream(sid)
        _flush_timed(proto, _remaining(write, deadline), sid)


def _flush_timed(proto: H2Protocol, seconds: Optional[float], sid: int) -> None:
    if seconds is None:
        proto.flush()
        return
    timer = gevent.Timeout(seconds, WriteTimeout(
        "the server accepted no bytes of HTTP/2 stream %d within the write timeout" % sid))
    timer.start()
    try:
        proto.flush()
    finally:
        timer.close()


class H2Body:
    """The body stream of an HTTP/2 response (see :mod:`greenpool.http.models`).

    ``read_timeout`` applies to each wait for data; ``deadline`` (monotonic, or
    None) caps them all: a client that streams past its total timeout sets it
    to None.
    """

    __slots__ = ("pool", "conn", "proto", "st", "read_timeout", "deadline", "_done")

    def __init__(self, pool: Any, conn: Connection, proto: H2Protocol, st: Stream,
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
        proto = self.proto
        if self.deadline is not None and self.deadline <= _monotonic():
            self._finish()    # a body that keeps coming does not outlive the total timeout
            raise ReadTimeout("the request's total timeout expired while reading the body from "
                              "%s:%s on HTTP/2 stream %d" % (self.conn.host, self.conn.port, st.id))
        while True:
            chunks = st.chunks
            if chunks:
                data = chunks.popleft()
                if len(data) > max_bytes:
                    chunks.appendleft(data[max_bytes:])
                    data = data[:max_bytes]
                elif chunks and len(data) + len(chunks[0]) <= max_bytes:
                    parts = [data]
                    size = len(data)
                    while chunks and size + len(chunks[0]) <= max_bytes:
                        part = chunks.popleft()
                        parts.append(part)
                        size += len(part)
                    data = b"".join(parts)
                n = len(data)
                st.buffered -= n
                if not proto.closed:
                    proto.h2.acknowledge_received_data(n, st.id)   # WINDOW_UPDATE as we consume
                    try:
                        proto.flush()
                    except GreenPoolError:
                        pass   # the next read reports the broken connection
                return data
            if st.error is not None:
                err = _copy_error(st.error)
                self._finish()
                raise err
            if st.ended:
                self._finish()
                return b""
            if not proto.wait(st, _remaining(self.read_timeout, self.deadline)):
                self.conn.suspect(proto.config.dead_peer_timeout)   # a dead peer? (probes once)
                self._finish()
                raise ReadTimeout("no body data from %s on HTTP/2 stream %d within the read "
                                  "or total timeout (%s)" % (format_address(self.conn.host, self.conn.port),
                                                             st.id, format_seconds(self.read_timeout)))

    def close(self) -> None:
        """Stop early: RST_STREAM if the stream is still open; the use goes back to the pool."""
        self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        proto = self.proto
        st = self.st
        reset = not proto.closed and not proto.stream_closed(st)
        proto.release(st, reset=reset)
        if reset or not proto.closed:
            try:
                proto.flush()
            except GreenPoolError:
                pass
        self.pool.release_shared(self.conn)

    def __repr__(self) -> str:
        return "<H2Body stream=%d %s>" % (self.st.id, "done" if self._done else "open")
