"""The HTTP client API: ``request()``, the method shortcuts and :class:`Client`.

What this owns: turning a call (method, URL, headers, body, options) into a
:class:`~greenpool.http.models.Request`, choosing the pool, route and
protocol for it, and the policies around single exchanges: redirects
(opt-in), retries (opt-in, :class:`~greenpool.http.retry.Retry`), proxies
and the total deadline.  The exchanges themselves are ``h1.transport`` and
``h2.transport``.

Rules:

* **Pools.**  ``pool=`` is a pool name or a :class:`~greenpool.pool.GreenPool`;
  the default is the lazily started ``"default"`` pool.  Every connection a
  Client opens is that pool's (one cap, one set of stats).  Connections that
  must not mix with the pool's ordinary ones get a tagged key in it,
  ``(host, port, "ssl|tls1")``: one tag per non-default TLS setting
  (``verify=False``, a private CA, a client ``cert``), so that a connection
  opened without verification is never reused by a request that asked for it,
  and one per proxy (``"tcp|proxy2"``; the proxy's connector opens the tunnel,
  passed to the pool as ``via=``).  Unix sockets are keyed ``(path, port,
  "unix")``.
* **Timeouts.**  ``timeout=`` is a :class:`~greenpool.http.models.Timeout` or a
  number (all phases).  ``None`` (the default): no read/write/total limit;
  the pool wait and the connect use the pool's ``checkout_timeout`` and
  ``connect_timeout``.  ``Timeout.total`` starts before the pool wait and
  ends at the end of the body (``stream=False``) or at the response head
  (``stream=True``); retries and redirects all count against it.
* **Headers.**  The header list of a Client (its defaults, ``Host`` first)
  is built once per origin and reused; per-request headers replace defaults
  of the same name.  ``Content-Length``/``Transfer-Encoding`` given by the
  caller are not sent as given: framing is derived from the body (a
  ``Content-Length`` given with an iterable body is used as its length).
  CR, LF or NUL in a name or value is a
  :class:`~greenpool.errors.LocalProtocolError` before anything is sent.
* **Redirects** (``follow_redirects=True``, at most ``max_redirects`` ->
  :class:`~greenpool.errors.TooManyRedirects`): 303 becomes GET (HEAD stays
  HEAD) without a body; 301/302 turn POST into GET without a body; 307/308
  keep method and body when the body can be sent again (bytes, str, JSON, a
  seekable file), else the redirect response is returned as it is.
  ``Authorization``, ``Cookie`` and ``Proxy-Authorization`` are dropped when
  the origin (scheme, host, port) changes.  ``response.history`` lists the
  redirect responses (bodies read and connections released).
* **Proxies** (HTTP proxies only): ``proxy="http://user:pass@host:port"`` (or
  a ``{"http": ..., "https": ...}`` mapping); https origins go through a
  ``CONNECT`` tunnel, http origins in absolute form.  Credentials come from
  the proxy URL and never appear in a repr, a pool name or a log line.
  ``trust_env=True`` reads ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/
  ``NO_PROXY`` (either case) when the Client is made; off by default.
"""
from __future__ import annotations

import base64
import codecs
import io
import json as _json
import os
import ssl
import time
from http.cookiejar import CookieJar
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypedDict,
    Union,
)
from urllib.parse import unquote, urlencode

import gevent

from greenpool import net
from greenpool.connection import Connection, Connector, base_transport
from greenpool.errors import (
    ConnectError,
    ConnectTimeout,
    GreenPoolError,
    HTTPError,
    LocalProtocolError,
    TLSError,
    TooManyRedirects,
)
from greenpool.http import cookies as _cookies
from greenpool.http.auth import Auth, AuthInput, basic_header, coerce_auth
from greenpool.http.cookies import CookieInput
from greenpool.http.decoding import ACCEPT_ENCODING, DEFAULT_MAX_DECODED_SIZE
from greenpool.http.h1 import transport as h1transport
from greenpool.http.models import URL, HeaderInput, Headers, Request, Response, Timeout
from greenpool.http.multipart import FilesInput, MultipartStream
from greenpool.http.retry import Retry, RetryState
from greenpool.pool import GreenPool
from greenpool.proxy import SOCKS_SCHEMES, SocksConnector, SocksProxy
from greenpool.registry import _pools as _registered
from greenpool.registry import resolve_pool

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["request", "get", "post", "put", "patch", "delete", "head", "options", "Client"]

_monotonic = time.monotonic


class _Unset:
    """The type of "not given" (the Client's setting applies)."""

    __slots__ = ()

    def __repr__(self) -> str:  # how signatures show it (help(), the API reference)
        return "<the client's>"


ParamsInput = Union[None, Mapping[str, Any], Sequence[Tuple[str, Any]]]
TimeoutInput = Union[None, float, Tuple[Optional[float], Optional[float]], Timeout]
RetryInput = Union[None, int, Retry]
PoolInput = Union[None, str, GreenPool]
VerifyInput = Union[bool, str, "os.PathLike[str]", ssl.SSLContext]
CertInput = Union[None, str, "os.PathLike[str]", Tuple[str, str], Tuple[str, str, str]]
ProxyInput = Union[None, str, Mapping[str, str]]
EncodingInput = Union[str, Callable[[bytes], Optional[str]]]
Hook = Callable[..., Any]
EventHooks = Mapping[str, Union[Hook, Sequence[Hook]]]
_UNSET: Any = _Unset()
_NO_TIMEOUT = Timeout()


def _user_agent() -> str:
    from greenpool import __version__
    return "greenpool/%s" % (__version__,)

_URL_CACHE: Dict[str, URL] = {}
_URL_CACHE_MAX = 1024
_STRIP_ON_ORIGIN_CHANGE = frozenset((b"authorization", b"cookie", b"proxy-authorization"))
_BODY_HEADERS = frozenset((b"content-type", b"content-encoding", b"content-language",
                           b"content-location"))
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))
_JSON_CT = (b"Content-Type", b"application/json")
_FORM_CT = (b"Content-Type", b"application/x-www-form-urlencoded")


_h2transport: Any = None


def _import_h2transport() -> Any:
    """The HTTP/2 adapter, imported on first use (an ``import`` in ``_send`` would look
    it up on every request)."""
    global _h2transport
    from greenpool.http.h2 import transport as h2transport
    _h2transport = h2transport
    return h2transport


def _url(url: Union[str, URL], params: Any = None) -> URL:
    if url.__class__ is URL:
        return url if not params else URL(str(url), params)
    if params:
        return URL(url, params)
    u = _URL_CACHE.get(url)  # type: ignore[arg-type]
    if u is None:
        u = URL(url)
        if len(_URL_CACHE) >= _URL_CACHE_MAX:
            _URL_CACHE.clear()
        _URL_CACHE[url] = u  # type: ignore[index]
    return u


def _coerce_timeout(value: Any) -> Timeout:
    if value is None:
        return _NO_TIMEOUT
    if value.__class__ is Timeout:
        return value
    return Timeout(value)


def _b(value: Any, what: str) -> bytes:
    if value.__class__ is bytes:
        return value
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise LocalProtocolError("%s %r cannot be sent: HTTP/1.1 header fields are latin-1; "
                                     "encode it first (e.g. RFC 8187)" % (what, value)) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value).encode("ascii")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)  # a subclass of bytes too (requests passes some)
    raise TypeError("header names and values must be str or bytes, not %s" % type(value).__name__)


def _raw_list(headers: Any) -> List[Tuple[bytes, bytes]]:
    if headers is None:
        return []
    if isinstance(headers, Headers):
        items: Iterable[Tuple[Any, Any]] = headers.items()
    elif isinstance(headers, Mapping):
        items = headers.items()
    else:
        items = headers
    return [(_b(k, "header name"), _b(v, "header value")) for k, v in items]


def _merge(base: List[Tuple[bytes, bytes]], override: List[Tuple[bytes, bytes]]) -> List[Tuple[bytes, bytes]]:
    """``base`` without the names ``override`` has, then ``override``."""
    if not override:
        return base
    names = {k.lower() for k, _ in override}
    return [h for h in base if h[0].lower() not in names] + override


def _basic_auth(userinfo: str) -> bytes:
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(("%s:%s" % (unquote(user), unquote(password))).encode("utf-8"))
    return b"Basic " + token


# -- bodies --------------------------------------------------------------------------------


def _encode_body(body: Any, json: Any) -> Tuple[Any, int, Optional[Tuple[bytes, bytes]]]:
    """(body for the transport, content length or -1 for unknown, Content-Type to add)."""
    if json is not None:
        if body is not None:
            raise TypeError("pass body= or json=, not both")
        data = _json.dumps(json, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return data, len(data), _JSON_CT
    if body is None:
        return None, 0, None
    cls = body.__class__
    if cls is bytes:
        return body, len(body), None
    if cls is str:
        data = body.encode("utf-8")
        return data, len(data), None
    if isinstance(body, (bytearray, memoryview)):
        data = bytes(body)
        return data, len(data), None
    if isinstance(body, Mapping):
        data = urlencode(list(body.items()), doseq=True).encode("ascii")
        return data, len(data), _FORM_CT
    if hasattr(body, "read"):
        return body, _file_length(body), None
    if isinstance(body, Iterable):
        return body, -1, None
    raise TypeError("body must be bytes, str, a mapping (form), a file object or an iterable "
                    "of bytes, not %s" % type(body).__name__)


def _is_pairs(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(p, tuple) and len(p) == 2 for p in value)


def _encode_payload(body: Any, json: Any, data: Any, files: Any,
                    content: Any) -> Tuple[Any, int, Optional[Tuple[bytes, bytes]]]:
    """``data=``/``files=``/``content=`` (requests' and httpx's names) beside ``body=``
    and ``json=``: at most one source of the body, except data= fields with files=."""
    given = [n for n, v in (("body", body), ("json", json), ("content", content),
                            ("data", data if files is None else None)) if v is not None]
    if len(given) > 1 or (files is not None and given):
        raise TypeError("pass one of body=, json=, content=, data= (files= may come with "
                        "data= fields), not %s" % " and ".join(
                            given + (["files"] if files is not None else [])))
    if files is not None:
        if data is not None and not (isinstance(data, Mapping) or _is_pairs(data)):
            raise TypeError("with files=, data= must be form fields (a mapping or a list of "
                            "pairs), not %s" % type(data).__name__)
        m = MultipartStream(data, files)
        return m, -1 if m.length is None else m.length, (b"Content-Type", m.content_type)
    if data is not None:
        if _is_pairs(data) and data:
            encoded = urlencode(list(data), doseq=True).encode("ascii")
            return encoded, len(encoded), _FORM_CT
        return _encode_body(data, None)
    if content is not None:
        if isinstance(content, Mapping):
            raise TypeError("content= is the raw body (bytes, str, a file or an iterable); "
                            "use data= for a form")
        return _encode_body(content, None)
    return _encode_body(body, json)


def _file_length(f: Any) -> int:
    if isinstance(f, io.TextIOBase):
        return -1
    try:
        if f.seekable():
            pos: int = f.tell()
            end: int = f.seek(0, io.SEEK_END)
            f.seek(pos)
            return max(0, end - pos)
    except (AttributeError, OSError, ValueError):
        pass
    try:
        left: int = os.fstat(f.fileno()).st_size - f.tell()
        return max(0, left)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return -1


def _replayable(body: Any) -> bool:
    if body is None or body.__class__ is bytes:
        return True
    if not hasattr(body, "seek"):
        return False
    try:
        seekable = getattr(body, "seekable", None)
        return bool(seekable()) if seekable is not None else hasattr(body, "tell")
    except (OSError, ValueError):
        return False


# -- proxies -------------------------------------------------------------------------------


class Proxy:
    """An HTTP proxy: where it is and its credentials (never shown)."""

    __slots__ = ("host", "port", "auth")

    def __init__(self, url: str) -> None:
        u = URL(url)
        if u.scheme != "http":
            raise ValueError("a proxy URL is http://, socks5://, socks5h://, socks4:// or "
                             "socks4a://, not %r" % (u.scheme,))
        self.host = u.host
        self.port = u.port
        self.auth: Optional[bytes] = _basic_auth(u.userinfo) if u.userinfo else None

    @property
    def tag(self) -> Tuple[str, int, Optional[bytes]]:
        return (self.host, self.port, self.auth)

    def __repr__(self) -> str:
        return "<Proxy %s:%d%s>" % (self.host, self.port, " (with credentials)" if self.auth else "")


class ProxyConnector(Connector):
    """Opens connections through an HTTP proxy: a CONNECT tunnel (+ TLS) for
    ``"ssl"`` keys, a plain connection to the proxy for ``"tcp"`` keys."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def connect(self, key: Tuple[str, int, str], timeout: Optional[float], **opts: Any) -> Connection:
        host, port, transport = key
        p = self.proxy
        tcp_opts = {k: opts[k] for k in ("source_address", "family", "happy_eyeballs_delay")
                    if k in opts}
        deadline = gevent.Timeout(timeout) if timeout is not None else None
        if deadline is not None:
            deadline.start()
        sock = None
        try:
            try:
                sock = net.connect(p.host, p.port, "tcp", timeout=None, **tcp_opts)
                if base_transport(transport) == "ssl":
                    self._tunnel(sock, host, port)
                    ctx = net.ssl_context(opts.get("verify", True), opts.get("cert"), opts.get("alpn"))
                    sni = opts.get("server_hostname") or host
                    sock = net.wrap_tls(sock, ctx, sni)
                conn = Connection(key, sock)
                sock = None
                return conn
            except gevent.Timeout as t:
                if t is not deadline:
                    raise
                raise ConnectTimeout("connecting to %s:%s through the proxy %s:%s timed out after "
                                     "%ss" % (host, port, p.host, p.port, timeout)) from None
            except ssl.SSLCertVerificationError as e:
                raise TLSError("TLS certificate of %s:%s (through a proxy) not trusted: %s"
                               % (host, port, e.verify_message or e)) from None
            except ssl.SSLError as e:
                raise TLSError("TLS handshake with %s:%s through the proxy failed: %s"
                               % (host, port, e)) from None
            except OSError as e:
                raise ConnectError("proxy %s:%s: %s" % (p.host, p.port, e)) from None
        finally:
            if deadline is not None:
                deadline.close()
            if sock is not None:
                sock.close()

    def _tunnel(self, sock: Any, host: str, port: int) -> None:
        authority = ("[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)).encode("idna")
        head = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (authority, authority)
        if self.proxy.auth:
            head += b"Proxy-Authorization: " + self.proxy.auth + b"\r\n"
        sock.sendall(head + b"\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(4096)
            if not data:
                raise ConnectError("proxy %s:%s closed the connection during CONNECT"
                                   % (self.proxy.host, self.proxy.port))
            buf += data
            if len(buf) > 65536:
                raise ConnectError("proxy %s:%s sent an oversized CONNECT response"
                                   % (self.proxy.host, self.proxy.port))
        head_end = buf.index(b"\r\n\r\n") + 4
        status_line = buf.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ConnectError("proxy %s:%s answered CONNECT with a malformed status line %r"
                               % (self.proxy.host, self.proxy.port, status_line[:80]))
        status = int(parts[1])
        if not 200 <= status < 300:
            why = " (proxy authentication required: put user:password in the proxy URL)" \
                if status == 407 else ""
            raise ConnectError("proxy %s:%s refused CONNECT to %s:%s: %s%s" % (
                self.proxy.host, self.proxy.port, host, port,
                status_line.decode("latin-1", "replace"), why))
        if buf[head_end:]:
            raise ConnectError("proxy %s:%s sent bytes after its CONNECT response"
                               % (self.proxy.host, self.proxy.port))

    def __repr__(self) -> str:
        return "<ProxyConnector %r>" % (self.proxy,)


AnyProxy = Union["Proxy", SocksProxy]


def _make_proxy(url: str) -> AnyProxy:
    """An HTTP proxy or a SOCKS one, by the URL's scheme."""
    scheme = url.partition("://")[0].lower()
    if scheme in SOCKS_SCHEMES:
        return SocksProxy(url)
    return Proxy(url)


def _proxies_from_env() -> Tuple[Dict[str, str], List[str]]:
    env = os.environ
    out: Dict[str, str] = {}
    for scheme in ("http", "https"):
        for name in ("%s_proxy" % scheme, "%s_PROXY" % scheme.upper(), "all_proxy", "ALL_PROXY"):
            value = env.get(name)
            if value:
                out[scheme] = value if "://" in value else "http://" + value
                break
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    return out, [h.strip().lower() for h in no_proxy.split(",") if h.strip()]


def _bypass(host: str, no_proxy: List[str]) -> bool:
    host = host.lower()
    for entry in no_proxy:
        if entry == "*":
            return True
        entry = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry
        entry = entry.lstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


# -- connection keys -------------------------------------------------------------------------

# Connections that must not mix with a pool's ordinary ones (opened without verification,
# with a private CA or a client certificate, or through a proxy) live in the same pool under
# a tagged key, ``(host, port, "ssl|tls1")``: same caps, stats, expiry and stop_pool.  A tag
# names one setting for the life of the process (a counter, never reused, so a cleared table
# cannot make two settings share a tag); it shows nothing of the setting (no path, no secret).
_tags: Dict[Any, str] = {}
_tag_count = 0


def _tag(kind: str, setting: Any) -> str:
    global _tag_count
    key = (kind, setting)
    tag = _tags.get(key)
    if tag is None:
        if len(_tags) >= 1024:
            _tags.clear()
        _tag_count += 1
        tag = _tags[key] = "%s%d" % (kind, _tag_count)
    return tag


class _Route:
    """Where a request for one origin goes (cached per Client and origin)."""

    __slots__ = ("pool", "key", "connect_opts", "absolute", "proxy_headers", "host_header", "quic")

    def __init__(self, pool: GreenPool, key: Tuple[str, int, str], connect_opts: Dict[str, Any],
                 absolute: bool, proxy_headers: List[Tuple[bytes, bytes]],
                 host_header: Tuple[bytes, bytes], quic: Optional[str] = None) -> None:
        self.pool = pool
        self.key = key
        self.connect_opts = connect_opts
        self.absolute = absolute
        self.proxy_headers = proxy_headers
        self.host_header = host_header
        #: the key transport of this origin's QUIC connections (``"quic"``, tagged like
        #: ``key`` for other TLS settings); None: no HTTP/3 here (plain http, a proxy)
        self.quic = quic


# -- the client ------------------------------------------------------------------------------


# greenpool.http.h3.origins, imported when HTTP/3 is first used (it needs the http3 extra)
_h3_origins: Any = None


def _import_h3_origins() -> Any:
    global _h3_origins
    from greenpool.http.h3 import origins
    _h3_origins = origins
    return origins


class Client:
    """A configured HTTP client.  Cheap to keep, safe to share among greenlets.

    Options (each also a keyword of :func:`request`):

    ``pool``: a pool name or a GreenPool (default ``"default"``).
    ``base_url``: relative URLs are joined to it.
    ``headers``: sent with every request (per-request headers replace them by name).
    ``timeout``: a Timeout or seconds (see the module docstring).
    ``follow_redirects``/``max_redirects``: opt-in redirects (default off, 5).
    ``retries``: an int or a :class:`~greenpool.http.retry.Retry` (default None).
    ``verify``: True (system CAs), False, a CA bundle path, or an SSLContext.
    ``cert``: a client certificate (path, or (cert, key[, password])).
    ``http2``: False, True (h2 by ALPN on https) or ``"prior_knowledge"`` (h2c too).
    ``http3``: False, True (QUIC for https origins that advertised ``Alt-Svc: h3``) or
    ``"prior_knowledge"`` (every https origin tries QUIC first); see :mod:`greenpool.http.h3`.
    ``http1_parser``: ``"auto"`` (httptools if installed), ``"httptools"``, ``"h11"``.
    ``proxy``/``trust_env``: see the module docstring.
    ``decode_content``: undo gzip/deflate/br (default True; Accept-Encoding sent).
    ``max_decoded_size``: cap on a decoded body (default 64 MiB; None: no cap).
    ``max_body_size``: cap on a response body as received, before decoding (default
    None: no cap).  A ``Content-Length`` over it fails at the head, a body growing
    past it fails then (with ``stream=True`` too), with
    :class:`~greenpool.errors.LimitExceeded`; its connection is closed (HTTP/1.1)
    or its stream reset (HTTP/2), never reused half-read.
    ``expect_continue``: send ``Expect: 100-continue`` before request bodies.
    ``max_header_size``/``max_headers``: response head limits (64 KiB, 256 fields).
    ``user_agent``: the User-Agent header (default ``greenpool/<version>``).
    ``cookies``: initial cookies (a mapping, pairs, or a ``CookieJar`` used as it is);
    ``client.cookies`` is the jar every response's ``Set-Cookie`` goes into (default empty).
    ``auth``: ``(user, password)`` (Basic), a :class:`~greenpool.http.auth.Auth` (e.g.
    ``DigestAuth``), or a callable changing the request (default None; URL userinfo then
    becomes Basic).
    ``event_hooks``: ``{"request": [f], "response": [f]}``, called for every request
    sent, redirects and retries included (default None).
    ``default_encoding``: the text encoding when no charset is given, or a callable
    guessing it from the bytes (default ``"utf-8"``, latin-1 when the body is not UTF-8).
    ``uds``: the path of a Unix domain socket every request goes to (default None). The
    URL's host is the Host header; an https:// URL is TLS over the socket, its host the
    name the certificate must match and the SNI; ``http2`` applies as over TCP (ALPN for
    https, ``"prior_knowledge"`` for h2c). ``http+unix://%2Fpath/...`` URLs name the
    socket per request.
    """

    def __init__(self, *, pool: Any = "default", base_url: Optional[str] = None,
                 headers: Any = None, timeout: Any = None, follow_redirects: bool = False,
                 max_redirects: int = 5, retries: Any = None, verify: Any = True,
                 cert: Any = None, http2: Union[bool, str] = False, http1_parser: str = "auto",
                 proxy: Any = None, trust_env: bool = False, decode_content: bool = True,
                 max_decoded_size: Optional[int] = DEFAULT_MAX_DECODED_SIZE,
                 expect_continue: bool = False, max_header_size: int = 65536,
                 max_headers: int = 256, user_agent: Optional[str] = None,
                 max_body_size: Optional[int] = None, cookies: CookieInput = None,
                 auth: AuthInput = None, event_hooks: Optional[EventHooks] = None,
                 default_encoding: Union[str, Callable[[bytes], Optional[str]]] = "utf-8",
                 uds: Optional[str] = None, http3: Union[bool, str] = False) -> None:
        if not (pool is None or isinstance(pool, (str, GreenPool))):
            raise TypeError("pool must be a pool name or a GreenPool, not %s" % type(pool).__name__)
        if http2 not in (False, True, "prior_knowledge"):
            raise ValueError("http2 must be False, True or 'prior_knowledge', not %r" % (http2,))
        if isinstance(max_redirects, bool) or not isinstance(max_redirects, int) or max_redirects < 0:
            raise ValueError("max_redirects must be an int >= 0, not %r" % (max_redirects,))
        self.pool = pool
        self.base_url = URL(base_url) if base_url is not None else None
        self.timeout = _coerce_timeout(timeout)
        self.follow_redirects = bool(follow_redirects)
        self.max_redirects = max_redirects
        self.retries = Retry.coerce(retries)
        if isinstance(verify, os.PathLike):
            verify = os.fspath(verify)
        if isinstance(cert, os.PathLike):
            cert = os.fspath(cert)
        self.verify = verify
        self.cert = cert
        self.http2 = http2
        if http3 not in (False, True, "prior_knowledge"):
            raise ValueError("http3 must be False, True or 'prior_knowledge', not %r" % (http3,))
        if http3 and not isinstance(verify, (bool, str, os.PathLike)):
            raise ValueError("http3 cannot use an ssl.SSLContext for verify= (QUIC has its own "
                             "TLS): pass True, False or a CA bundle path")
        self.http3 = http3
        self.h1_options = h1transport.H1Options(
            http1_parser, max_header_size=max_header_size, max_headers=max_headers,
            expect_continue=expect_continue, max_decoded_size=max_decoded_size,
            decode_content=decode_content, max_body_size=max_body_size)
        defaults = [(b"User-Agent", _b(user_agent or _user_agent(), "user_agent")),
                    (b"Accept", b"*/*")]
        if decode_content:
            defaults.append((b"Accept-Encoding", ACCEPT_ENCODING.encode("ascii")))
        self._base = _merge(defaults, [h for h in _raw_list(headers) if h[0].lower() not in _FRAMING])
        self.headers = Headers.from_raw(self._base)
        self._proxies: Dict[str, AnyProxy] = {}
        self._no_proxy: List[str] = []
        if trust_env:
            env, self._no_proxy = _proxies_from_env()
            self._proxies = {k: _make_proxy(v) for k, v in env.items()}
        if proxy is not None:
            if isinstance(proxy, Mapping):
                self._proxies = {k: _make_proxy(v) for k, v in proxy.items() if v}
            else:
                p = _make_proxy(proxy)
                self._proxies = {"http": p, "https": p}
        self._tls_default = verify is True and cert is None
        self._routes: Dict[Tuple[Any, ...], _Route] = {}
        self._closed = False
        if uds is not None:
            uds = os.fspath(uds)
            if not isinstance(uds, str) or not uds:
                raise TypeError("uds must be the path of a Unix domain socket (a str), not %r"
                                % (uds,))
        self.uds: Optional[str] = uds
        self._jar: Optional[CookieJar] = _cookies.coerce_jar(cookies)
        self.auth: Optional[Auth] = coerce_auth(auth)
        if not (isinstance(default_encoding, str) or callable(default_encoding)):
            raise TypeError("default_encoding must be an encoding name or a callable taking "
                            "the body bytes, not %s" % type(default_encoding).__name__)
        if isinstance(default_encoding, str):
            codecs.lookup(default_encoding)
        self.default_encoding = default_encoding
        self._request_hooks: List[Callable[[Request], Any]] = []
        self._response_hooks: List[Callable[[Response], Any]] = []
        for name, hooks in (event_hooks or {}).items():
            if name not in ("request", "response"):
                raise ValueError("event_hooks keys are 'request' and 'response', not %r" % (name,))
            funcs = [hooks] if callable(hooks) else list(hooks)
            (self._request_hooks if name == "request" else self._response_hooks).extend(funcs)
        self._set_post()

    def _set_post(self) -> None:
        # what _send does after each exchange: nothing at all for a Client without a
        # cookie jar (module-level calls), hooks or a default_encoding of its own
        post = self._jar is not None or self._response_hooks or self.default_encoding != "utf-8"
        self._post = self._after_response if post else None
        self._pre = self._before_request if self._request_hooks else None

    @property
    def cookies(self) -> CookieJar:
        """The Client's cookie jar (an ``http.cookiejar.CookieJar``); assign a mapping or a
        jar to replace it."""
        if self._jar is None:
            self._jar = CookieJar()
            self._set_post()
        return self._jar

    @cookies.setter
    def cookies(self, value: CookieInput) -> None:
        self._jar = _cookies.coerce_jar(value)
        self._set_post()

    @property
    def event_hooks(self) -> Dict[str, List[Callable[..., Any]]]:
        """The hooks (``{"request": [...], "response": [...]}``); the lists may be changed
        in place."""
        return {"request": self._request_hooks, "response": self._response_hooks}

    def _before_request(self, req: Request) -> None:
        for hook in self._request_hooks:
            hook(req)

    def _after_response(self, req: Request, resp: Response) -> None:
        jar = self._jar
        if jar is not None:
            values = _cookies.set_cookie_values(resp)
            if values:
                _cookies.extract(jar, req.url, values)
                extra = req.extensions.get("jar")
                if extra is not None and extra is not jar:
                    _cookies.extract(extra, req.url, values)
        if self.default_encoding != "utf-8":
            resp.default_encoding = self.default_encoding
        for hook in self._response_hooks:
            hook(resp)

    # -- the public methods --

    def request(self, method: str, url: Union[str, URL], *, params: ParamsInput = None,
                headers: HeaderInput = None, body: Any = None, json: Any = None,
                data: Any = None, files: Optional[FilesInput] = None, content: Any = None,
                cookies: CookieInput = None, auth: Union[AuthInput, _Unset] = _UNSET,
                timeout: Union[TimeoutInput, _Unset] = _UNSET,
                follow_redirects: Union[bool, _Unset] = _UNSET,
                max_redirects: Union[int, _Unset] = _UNSET,
                retries: Union[RetryInput, _Unset] = _UNSET, stream: bool = False,
                pool: Union[PoolInput, _Unset] = _UNSET) -> Response:
        """Send one request; returns the :class:`Response` (read unless ``stream=True``)."""
        extras = None
        if data is not None or files is not None or content is not None or cookies is not None \
                or auth is not _UNSET:
            extras = (data, files, content, cookies, auth)
        return self._request(method, url, params, headers, body, json, timeout, follow_redirects,
                             max_redirects, retries, stream, pool, extras)

    def _request(self, method: str, url: Union[str, URL], params: Any, headers: Any, body: Any,
                 json: Any, timeout: Any, follow_redirects: Any, max_redirects: Any,
                 retries: Any, stream: bool, pool: Any,
                 extras: Optional[Tuple[Any, Any, Any, Any, Any]] = None) -> Response:
        # request() with its arguments in order: the module-level functions call it
        # positionally (matching a dozen keywords costs more than the call); ``extras``
        # is (data, files, content, cookies, auth) when any of them was given
        if self._closed:
            raise HTTPError("this Client was closed")
        base = self.base_url
        if base is not None and url.__class__ is str and "://" not in url:
            u = base.join(url) if not params else URL(str(base.join(url)), params)
        else:
            # a cached URL without a call (what _url does first for a str)
            cached = _URL_CACHE.get(url) if url.__class__ is str and not params else None
            u = cached if cached is not None else _url(url, params)
        t = self.timeout if timeout is _UNSET else \
            _NO_TIMEOUT if timeout is None else _coerce_timeout(timeout)
        total = t.total
        deadline = None if total is None else _monotonic() + total
        gp = self.pool if pool is _UNSET else pool   # what _pool does, without its call
        if gp.__class__ is not GreenPool:
            gp = (_registered.get(gp) if gp.__class__ is str else None) or self._pool(pool)
        jar = self._jar
        if extras is not None or self.auth is not None or u.userinfo \
                or (jar is not None and jar._cookies):  # type: ignore[attr-defined]
            return self._request_full(method, u, gp, headers, body, json, t, deadline,
                                      follow_redirects, max_redirects, retries, stream,
                                      extras or (None, None, None, None, _UNSET))
        if body is None and json is None:
            data, length, ctype = None, 0, None
        else:
            data, length, ctype = _encode_body(body, json)
        raw_override = _raw_list(headers) if headers is not None else None
        if length < 0 and raw_override:
            for k, v in raw_override:
                if k.lower() == b"content-length" and v.isdigit():
                    length = int(v)
        req = self._build(method, u, gp, data, length, ctype, raw_override)
        fr = self.follow_redirects if follow_redirects is _UNSET else bool(follow_redirects)
        retry = self.retries if retries is _UNSET or retries is self.retries \
            else Retry.coerce(retries)
        if not fr and retry is None:
            return self._send(gp, req, t, deadline, stream)
        mr = self.max_redirects if max_redirects is _UNSET else max_redirects
        return self._send_handling(gp, req, t, deadline, stream, fr, mr, retry)

    def _request_full(self, method: str, u: URL, gp: GreenPool, headers: Any, body: Any,
                      json: Any, t: Timeout, deadline: Optional[float], follow_redirects: Any,
                      max_redirects: Any, retries: Any, stream: bool,
                      extras: Tuple[Any, Any, Any, Any, Any]) -> Response:
        """A request with a body from data=/files=/content=, cookies or auth."""
        data_in, files, content, cookies, auth = extras
        data, length, ctype = _encode_payload(body, json, data_in, files, content)
        raw_override = _raw_list(headers) if headers is not None else []
        if length < 0:
            for k, v in raw_override:
                if k.lower() == b"content-length" and v.isdigit():
                    length = int(v)
        names = {k.lower() for k, _ in raw_override}
        flow = self.auth if auth is _UNSET else coerce_auth(auth)
        if flow is None and u.userinfo and b"authorization" not in names:
            user, _, password = u.userinfo.partition(":")
            raw_override.append((b"Authorization", basic_header(unquote(user), unquote(password))
                                 .encode("ascii")))
        jar = self._jar
        if cookies is not None:
            # this request's cookies over the Client's, for this request (and its redirects)
            merged = CookieJar()
            for c in jar or ():
                merged.set_cookie(c)
            for c in _cookies.coerce_jar(cookies):
                merged.set_cookie(c)
            jar = merged
        from_jar = jar is not None and b"cookie" not in names
        if from_jar:
            value = _cookies.cookie_header(jar, u)  # type: ignore[arg-type]
            if value:
                raw_override.append((b"Cookie", value))
        req = self._build(method, u, gp, data, length, ctype, raw_override or None)
        if from_jar:
            req.extensions["jar"] = jar
        fr = self.follow_redirects if follow_redirects is _UNSET else bool(follow_redirects)
        retry = self.retries if retries is _UNSET or retries is self.retries \
            else Retry.coerce(retries)
        mr = self.max_redirects if max_redirects is _UNSET else max_redirects
        if flow is None:
            if not fr and retry is None:
                return self._send(gp, req, t, deadline, stream)
            return self._send_handling(gp, req, t, deadline, stream, fr, mr, retry)
        return self._send_auth(gp, req, t, deadline, stream, fr, mr, retry, flow)

    def _send_auth(self, gp: GreenPool, req: Request, t: Timeout, deadline: Optional[float],
                   stream: bool, follow: bool, max_redirects: int, retry: Optional[Retry],
                   auth: Auth) -> Response:
        """Run an auth flow: every request it yields is sent (redirects and retries
        inside), every response but the last is read and released."""
        flow = auth.auth_flow(req)
        request = next(flow)
        rewind = h1transport._rewind_point(request.body)
        while True:
            resp = self._send_handling(gp, request, t, deadline, True, follow, max_redirects,
                                       retry)
            try:
                nxt = flow.send(resp)
            except StopIteration:
                break
            except BaseException:
                resp.close()
                raise
            if nxt.body is not None and not h1transport._rewind(nxt.body, rewind):
                break  # the body cannot be sent again: the last response is the answer
            _discard(resp)
            request = nxt
        flow.close()
        if not stream:
            try:
                resp.read()
            except BaseException:
                resp.close()
                raise
        return resp

    def get(self, url: Union[str, URL], **kw: Unpack[ClientRequestOptions]) -> Response:
        """``request("GET", url, ...)``."""
        return self.request("GET", url, **kw)

    def head(self, url: Union[str, URL], **kw: Unpack[ClientRequestOptions]) -> Response:
        """``request("HEAD", url, ...)``."""
        return self.request("HEAD", url, **kw)

    def options(self, url: Union[str, URL], **kw: Unpack[ClientRequestOptions]) -> Response:
        """``request("OPTIONS", url, ...)``."""
        return self.request("OPTIONS", url, **kw)

    def delete(self, url: Union[str, URL], **kw: Unpack[ClientRequestOptions]) -> Response:
        """``request("DELETE", url, ...)``."""
        return self.request("DELETE", url, **kw)

    def post(self, url: Union[str, URL], body: Any = None,
            **kw: Unpack[ClientSendOptions]) -> Response:
        """``request("POST", url, body=body, ...)``."""
        return self.request("POST", url, body=body, **kw)

    def put(self, url: Union[str, URL], body: Any = None,
            **kw: Unpack[ClientSendOptions]) -> Response:
        """``request("PUT", url, body=body, ...)``."""
        return self.request("PUT", url, body=body, **kw)

    def patch(self, url: Union[str, URL], body: Any = None,
            **kw: Unpack[ClientSendOptions]) -> Response:
        """``request("PATCH", url, body=body, ...)``."""
        return self.request("PATCH", url, body=body, **kw)

    def close(self) -> None:
        """Forget cached routes; the pools (shared) stay up."""
        self._closed = True
        self._routes.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        pool = self.pool if isinstance(self.pool, str) or self.pool is None else self.pool.name
        return "<Client pool=%r%s%s%s>" % (
            pool, " base_url=%s" % self.base_url if self.base_url else "",
            " http2=%r" % self.http2 if self.http2 else "",
            " proxy=%r" % (sorted(self._proxies),) if self._proxies else "")

    # -- building a request --

    def _pool(self, pool: Any) -> GreenPool:
        p = self.pool if pool is _UNSET else pool
        if p.__class__ is GreenPool:
            return p
        if p.__class__ is str:
            gp = _registered.get(p)
            if gp is not None:
                return gp
        return resolve_pool(p)

    def _route(self, gp: GreenPool, u: URL) -> _Route:
        tag = (gp, u.scheme, u.host, u.port)
        r = self._routes.get(tag)
        if r is not None and not r.pool.closed:
            return r
        transport = u.transport
        if self.uds is not None or transport == "unix":
            uds_opts: Dict[str, Any] = {}
            kind = "unix"
            if transport == "ssl":
                # TLS over the socket: the URL's host is the name checked and sent (SNI);
                # one socket may serve several names, so the name is in the key (a tag)
                uds_opts["server_hostname"] = u.host
                uds_tags = [_tag("name", u.host)]
                if not self._tls_default:
                    uds_opts["verify"] = self.verify
                    uds_opts["cert"] = self.cert
                    c = self.cert
                    uds_tags.append(_tag("tls", (self.verify, tuple(c) if isinstance(c, list) else c)))
                kind = "unix-ssl|" + "+".join(uds_tags)
            r = _Route(gp, (self.uds or u.host, u.port, kind), uds_opts, False, [],
                       (b"Host", u.authority.encode("ascii")))
            self._routes[tag] = r
            return r
        proxy = self._proxies.get(u.scheme) if self._proxies else None
        if proxy is not None and _bypass(u.host, self._no_proxy):
            proxy = None
        connect_opts: Dict[str, Any] = {}
        tags: List[str] = []
        if proxy is not None:
            connect_opts["via"] = SocksConnector(proxy) if isinstance(proxy, SocksProxy) \
                else ProxyConnector(proxy)
            tags.append(_tag("proxy", proxy.tag))
        quic = "quic" if transport == "ssl" and proxy is None else None
        if transport == "ssl" and not self._tls_default:
            connect_opts["verify"] = self.verify
            connect_opts["cert"] = self.cert
            v = self.verify
            c = self.cert
            tls_tag = _tag("tls", (v, tuple(c) if isinstance(c, list) else c))
            tags.append(tls_tag)
            if quic is not None:
                quic += "|" + tls_tag
        absolute = False
        proxy_headers: List[Tuple[bytes, bytes]] = []
        if isinstance(proxy, Proxy) and transport == "tcp":
            absolute = True
            if proxy.auth:
                proxy_headers = [(b"Proxy-Authorization", proxy.auth)]
        if tags:
            transport = transport + "|" + "+".join(tags)
        pool = gp
        r = _Route(pool, (u.host, u.port, transport), connect_opts, absolute, proxy_headers,
                   (b"Host", u.authority.encode("ascii")), quic)
        if len(self._routes) > 256:
            self._routes.clear()
        self._routes[tag] = r
        return r

    def _build(self, method: str, u: URL, gp: GreenPool, data: Any, length: int,
               ctype: Optional[Tuple[bytes, bytes]],
               override: Optional[List[Tuple[bytes, bytes]]]) -> Request:
        route = self._routes.get((gp, u.scheme, u.host, u.port))  # _route's cache, no call
        if route is None or route.pool._closed:   # .closed, without the property's call
            route = self._route(gp, u)
        raw = [route.host_header] + self._base
        if ctype is not None:
            raw = _merge(raw, [ctype])
        if override:
            raw = _merge(raw, [h for h in override if h[0].lower() not in _FRAMING])
        if route.proxy_headers:
            raw = raw + route.proxy_headers
        req = Request(method, u, None, data, length if length >= 0 else None, raw)
        req.extensions["route"] = route
        return req

    # -- sending --

    def _send(self, gp: GreenPool, req: Request, t: Timeout, deadline: Optional[float],
              stream: bool) -> Response:
        route = req.extensions.get("route")
        if route is None:
            route = req.extensions["route"] = self._route(gp, req.url)
        if self._pre is not None and "h3_lost" not in req.extensions:  # once per request
            self._pre(req)
        sent = _monotonic()
        connect_opts = route.connect_opts
        if t.connect is not None:
            connect_opts = dict(connect_opts, connect_timeout=t.connect)
        conn = None
        if self.http3 and route.quic is not None and "h3_lost" not in req.extensions:
            resp = self._send_h3(route, req, t, deadline, connect_opts, stream, sent)
            if resp is not None:
                return resp
            req.extensions["h3_lost"] = True   # the race went to TCP: send it there
            try:
                return self._send(gp, req, t, deadline, stream)
            except ConnectError:   # TCP failed: the QUIC handshake still running may not
                resp = self._send_h3(route, req, t, deadline, connect_opts, stream, sent, rescue=True)
                if resp is None:
                    raise
                return resp
            finally:
                del req.extensions["h3_lost"]
        http2 = self.http2
        if http2 and (req.url.scheme == "https" or http2 == "prior_knowledge") and not route.absolute:
            h2transport = _h2transport or _import_h2transport()
            opts = self.h1_options
            result = h2transport.handle(route.pool, req, t, deadline, connect_opts, http2,
                                        transport=route.key[2], host=route.key[0],
                                        stream=stream, decode_content=opts.decode_content,
                                        max_decoded_size=opts.max_decoded_size,
                                        max_header_size=opts.max_header_size,
                                        max_body_size=opts.max_body_size)
            if isinstance(result, Response):
                if self.http3 is True and route.quic is not None:
                    h3_learn(route.pool, req.url, result)
                result._sent = sent
                if self._post is not None:
                    self._post(req, result)
                if not stream:
                    result.read()
                return result
            conn = result  # the TLS peer chose http/1.1 by ALPN: an exclusive connection
        resp = h1transport.handle(route.pool, req, t, deadline, connect_opts, conn, stream=stream,
                                  options=self.h1_options, key=route.key,
                                  target=str(req.url).encode("ascii") if route.absolute else None)
        if self.http3 is True and route.quic is not None:
            h3_learn(route.pool, req.url, resp)
        resp._sent = sent
        if self._post is not None:
            self._post(req, resp)
        return resp

    def _send_h3(self, route: _Route, req: Request, t: Timeout, deadline: Optional[float],
                 connect_opts: Dict[str, Any], stream: bool, sent: float,
                 rescue: bool = False) -> Optional[Response]:
        origins = _h3_origins or _import_h3_origins()
        opts = self.h1_options
        resp: Optional[Response] = origins.try_h3(
            route.pool, req, t, deadline, connect_opts, self.http3, rescue=rescue,
            quic=route.quic or "quic", stream=stream, decode_content=opts.decode_content,
            max_decoded_size=opts.max_decoded_size, max_header_size=opts.max_header_size,
            max_body_size=opts.max_body_size)
        if resp is not None:     # read already unless ``stream`` (transport.handle)
            resp._sent = sent
            if self._post is not None:
                self._post(req, resp)
        return resp

    def _send_handling(self, gp: GreenPool, req: Request, t: Timeout, deadline: Optional[float],
                       stream: bool, follow: bool, max_redirects: int, retry: Optional[Retry]
                       ) -> Response:
        history: List[Response] = []
        state = RetryState(retry) if retry is not None else None
        # where the body starts: a retry or a 307/308 sends it again from there
        start = None if req.body is None else h1transport._rewind_point(req.body)
        while True:
            try:
                resp = self._send(gp, req, t, deadline, stream)
            except GreenPoolError as e:
                if state is None or retry is None:
                    raise
                kind = retry.is_retryable_error(e, req.method, True)
                if kind is None or not _replayable(req.body) or not state.take(kind):
                    raise
                if not h1transport._rewind(req.body, start):
                    raise
                _sleep(state.delay(), deadline, e)
                continue
            if state is not None and retry is not None \
                    and retry.is_retryable_status(req.method, resp.status) \
                    and _replayable(req.body) and state.take("status"):
                wait = retry.retry_after(resp.status, resp.headers.get("retry-after"))
                if wait is None:
                    wait = state.delay()
                if deadline is None or _monotonic() + wait < deadline:
                    _discard(resp)
                    _sleep(wait, deadline, None)
                    continue
            if follow and resp.is_redirect:
                if len(history) >= max_redirects:
                    resp.close()
                    raise TooManyRedirects("more than max_redirects=%d redirects, last to %s; "
                                           "raise max_redirects or follow them yourself"
                                           % (max_redirects, resp.headers.get("location")))
                nxt = self._redirect(gp, req, resp, start)
                if nxt is not None:
                    _discard(resp)
                    history.append(resp)
                    req = nxt
                    continue
            resp.history = history
            if not stream:
                try:
                    resp.read()
                except BaseException:
                    resp.close()
                    raise
            return resp

    def _redirect(self, gp: GreenPool, req: Request, resp: Response,
                  start: Any) -> Optional[Request]:
        try:
            new_url = req.url.join(resp.headers["location"])
        except (GreenPoolError, ValueError) as e:
            raise TooManyRedirects("cannot follow the redirect to %r: %s"
                                   % (resp.headers.get("location"), e)) from None
        status = resp.status
        method = req.method
        body = req.body
        length = req.content_length
        drop_body = False
        if status == 303 and method != "HEAD" and method != "GET":
            method, drop_body = "GET", True
        elif status in (301, 302) and method == "POST":
            method, drop_body = "GET", True
        elif status == 303:
            drop_body = True
        if not drop_body and body is not None:
            if not _replayable(body) or not h1transport._rewind(body, start):
                return None  # the body cannot be sent again: hand back the redirect itself
        old = req.url
        same_origin = (old.scheme, old.host, old.port) == (new_url.scheme, new_url.host, new_url.port)
        route = self._route(gp, new_url)
        raw = [route.host_header]
        for k, v in req.raw_headers:
            low = k.lower()
            if low == b"host" or low == b"proxy-authorization":
                continue
            if not same_origin and low in _STRIP_ON_ORIGIN_CHANGE:
                continue
            if drop_body and low in _BODY_HEADERS:
                continue
            raw.append((k, v))
        jar = req.extensions.get("jar")
        if jar is None and self._jar is not None \
                and not any(k.lower() == b"cookie" for k, _ in req.raw_headers):
            jar = self._jar
        if jar is not None:
            # the cookies the jar holds for the new URL (Set-Cookie of the redirect included)
            raw = [h for h in raw if h[0].lower() != b"cookie"]
            value = _cookies.cookie_header(jar, new_url)
            if value:
                raw.append((b"Cookie", value))
        if route.proxy_headers:
            raw += route.proxy_headers
        if drop_body:
            body, length = None, 0
        nreq = Request(method, new_url, body=body, content_length=length, raw_headers=raw)
        nreq.extensions["route"] = route
        if jar is not None:
            nreq.extensions["jar"] = jar
        return nreq


def _discard(resp: Response) -> None:
    """Read a small body to the end so its connection is reused; else close it."""
    try:
        n = 0
        for chunk in resp.iter_raw(65536):
            n += len(chunk)
            if n > h1transport.DRAIN_LIMIT:
                break
    except GreenPoolError:
        pass
    finally:
        resp.close()


def _sleep(seconds: float, deadline: Optional[float], error: Optional[BaseException]) -> None:
    if deadline is not None and _monotonic() + seconds >= deadline:
        if error is not None:
            raise error
        seconds = max(0.0, deadline - _monotonic())
    if seconds > 0:
        gevent.sleep(seconds)


def h3_learn(pool: Any, url: URL, resp: Response) -> None:
    """Remember an https origin's ``Alt-Svc: h3=...`` for ``http3=True``."""
    value = resp.headers.get("alt-svc")
    if value is not None:
        from greenpool.http.h3 import origins
        origins.learn(pool, url.host, url.port, value)


# -- module-level functions ------------------------------------------------------------------

_OPTION_NAMES = ("base_url", "verify", "cert", "http2", "http3", "http1_parser", "proxy",
                 "trust_env", "decode_content", "max_decoded_size", "expect_continue",
                 "max_header_size", "max_headers", "user_agent", "max_body_size",
                 "default_encoding", "uds")
_DEFAULT_OPTIONS = (None, True, None, False, False, "auto", None, False, True,
                    DEFAULT_MAX_DECODED_SIZE, False, 65536, 256, None, None, "utf-8", None)
_default_client: Optional[Client] = None
_clients: Dict[Any, "Client"] = {}
_MAX_CACHED_CLIENTS = 64


def _cached_client(pool: PoolInput, opts: Tuple[Any, ...]) -> "Client":
    """One Client per (pool, options), so module-level calls with options reuse its
    prepared state and connections instead of building a Client per call."""
    try:
        key = (pool, opts)
        client = _clients.get(key)
    except TypeError:  # an unhashable option (e.g. a proxy mapping): no caching
        return _module_client(Client(pool=pool, **dict(zip(_OPTION_NAMES, opts))))
    if client is None or client._closed:
        if len(_clients) >= _MAX_CACHED_CLIENTS:
            _clients.pop(next(iter(_clients)))
        client = _clients[key] = _module_client(
            Client(pool=pool, **dict(zip(_OPTION_NAMES, opts))))
    return client


def _module_client(client: "Client") -> "Client":
    """Module-level calls keep no cookies (each call stands alone)."""
    client._jar = None
    client._set_post()
    return client


class ClientSendOptions(TypedDict, total=False):
    """Every keyword of :meth:`Client.request` but ``body`` (what ``Client.post/put/patch``
    take beside their positional body); not given = the Client's setting."""

    params: ParamsInput
    headers: HeaderInput
    json: Any
    data: Any
    files: Optional[FilesInput]
    content: Any
    cookies: CookieInput
    auth: Union[AuthInput, _Unset]
    timeout: Union[TimeoutInput, _Unset]
    follow_redirects: Union[bool, _Unset]
    max_redirects: Union[int, _Unset]
    retries: Union[RetryInput, _Unset]
    stream: bool
    pool: Union[PoolInput, _Unset]


class ClientRequestOptions(ClientSendOptions, total=False):
    """Every keyword of :meth:`Client.request` (what ``Client.get/head/options/delete`` take)."""

    body: Any


class SendOptions(TypedDict, total=False):
    """Every keyword of :func:`request` but ``body`` (what :func:`post`, :func:`put` and
    :func:`patch` take beside their positional body); declared once so type checkers
    reject a misspelled keyword in every module-level verb."""

    pool: PoolInput
    params: ParamsInput
    headers: HeaderInput
    json: Any
    data: Any
    files: Optional[FilesInput]
    content: Any
    cookies: CookieInput
    auth: AuthInput
    timeout: TimeoutInput
    follow_redirects: bool
    max_redirects: int
    retries: RetryInput
    stream: bool
    base_url: Optional[str]
    verify: VerifyInput
    cert: CertInput
    http2: Union[bool, str]
    http3: Union[bool, str]
    http1_parser: str
    proxy: ProxyInput
    trust_env: bool
    decode_content: bool
    max_decoded_size: Optional[int]
    expect_continue: bool
    max_header_size: int
    max_headers: int
    user_agent: Optional[str]
    max_body_size: Optional[int]
    default_encoding: EncodingInput
    uds: Optional[str]


class RequestOptions(SendOptions, total=False):
    """Every keyword of :func:`request` (what :func:`get`, :func:`head`, :func:`options`
    and :func:`delete` take)."""

    body: Any


def request(method: str, url: Union[str, URL], *, pool: PoolInput = "default",
        params: ParamsInput = None,
        headers: HeaderInput = None,
        body: Any = None,
        json: Any = None,
        data: Any = None,
        files: Optional[FilesInput] = None,
        content: Any = None,
        cookies: CookieInput = None,
        auth: AuthInput = None,
        timeout: TimeoutInput = None,
        follow_redirects: bool = False,
        max_redirects: int = 5,
        retries: RetryInput = None,
        stream: bool = False,
        base_url: Optional[str] = None,
        verify: VerifyInput = True,
        cert: CertInput = None,
        http2: Union[bool, str] = False,
        http3: Union[bool, str] = False,
        http1_parser: str = "auto",
        proxy: ProxyInput = None,
        trust_env: bool = False,
        decode_content: bool = True,
        max_decoded_size: Optional[int] = DEFAULT_MAX_DECODED_SIZE,
        expect_continue: bool = False,
        max_header_size: int = 65536,
        max_headers: int = 256,
        user_agent: Optional[str] = None,
        max_body_size: Optional[int] = None,
        default_encoding: EncodingInput = "utf-8",
        uds: Optional[str] = None) -> Response:
    """Send one request through ``pool``; see :class:`Client` for every option.

    The Client options (``verify`` ... ``default_encoding``) pick a Client kept per
    (pool, options); module-level calls keep no cookies."""
    opts = (base_url, verify, cert, http2, http3, http1_parser, proxy, trust_env, decode_content,
            max_decoded_size, expect_continue, max_header_size, max_headers, user_agent,
            max_body_size, default_encoding, uds)
    client: Optional[Client]
    if opts == _DEFAULT_OPTIONS:
        global _default_client
        client = _default_client
        if client is None:
            client = _default_client = _module_client(Client(pool=None))
    else:
        try:
            client = _clients.get((pool, opts))  # _cached_client's hit, without its call
        except TypeError:  # an unhashable option: _cached_client makes one
            client = None
        if client is None or client._closed:
            client = _cached_client(pool, opts)
    extras = None
    if data is not None or files is not None or content is not None or cookies is not None \
            or auth is not None:
        extras = (data, files, content, cookies, auth)
    return client._request(method, url, params, headers, body, json, timeout, follow_redirects,
                           max_redirects, retries, stream, pool, extras)



def get(url: Union[str, URL], **kw: Unpack[RequestOptions]) -> Response:
    """``request("GET", url, ...)``."""
    return request("GET", url, **kw)


def head(url: Union[str, URL], **kw: Unpack[RequestOptions]) -> Response:
    """``request("HEAD", url, ...)``."""
    return request("HEAD", url, **kw)


def options(url: Union[str, URL], **kw: Unpack[RequestOptions]) -> Response:
    """``request("OPTIONS", url, ...)``."""
    return request("OPTIONS", url, **kw)


def delete(url: Union[str, URL], **kw: Unpack[RequestOptions]) -> Response:
    """``request("DELETE", url, ...)``."""
    return request("DELETE", url, **kw)


def post(url: Union[str, URL], body: Any = None, **kw: Unpack[SendOptions]) -> Response:
    """``request("POST", url, body=body, ...)``."""
    return request("POST", url, body=body, **kw)


def put(url: Union[str, URL], body: Any = None, **kw: Unpack[SendOptions]) -> Response:
    """``request("PUT", url, body=body, ...)``."""
    return request("PUT", url, body=body, **kw)


def patch(url: Union[str, URL], body: Any = None, **kw: Unpack[SendOptions]) -> Response:
    """``request("PATCH", url, body=body, ...)``."""
    return request("PATCH", url, body=body, **kw)
