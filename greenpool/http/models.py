"""HTTP values shared by the HTTP/1.1 and HTTP/2 transports.

What this owns: :class:`Timeout`, :class:`Headers`, :class:`URL`,
:class:`Request` and :class:`Response`, and the one seam between a response
and the connection under it, the *body stream*::

    class BodyStream:
        def read_chunk(self, max_bytes: int) -> bytes   # b"" once the body is complete
        def close(self) -> None    # stop early: the transport closes or resets what it must
                                   # and gives the connection back; idempotent
        trailers: Optional[Headers]   # after the end, when the peer sent any

A transport (``h1.transport`` / ``h2.transport``) returns a Response whose
``stream`` is its own BodyStream; the Response never touches a socket.
Promises: the connection goes back to its pool exactly once, when the body
has been read to the end, or when ``close()`` is called before the end
(never a half-read socket back in the pool); ``content`` is cached.

Both transports enforce the opt-in ``max_body_size`` (body bytes as framed on
the wire, before Content-Encoding decoding) with the same validation
(:func:`check_max_body_size`) and the same error (:func:`body_too_large`).
"""
from __future__ import annotations

import codecs
import datetime
import json as _json
import re
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit

from greenpool.errors import HTTPStatusError, InvalidURL, LimitExceeded, StreamConsumed

_UNSET: Any = object()


def check_max_body_size(value: Any) -> Optional[int]:
    """``max_body_size`` as given, if valid (an int >= 0, or None: no limit); else ValueError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError("max_body_size must be an int >= 0 (bytes) or None (no limit), not %r"
                         % (value,))
    return value


def body_too_large(limit: int, what: str) -> LimitExceeded:
    """The error for a response body over ``max_body_size``; ``what`` says how we know."""
    return LimitExceeded("the response body is larger than max_body_size=%d bytes (%s): raise "
                         "max_body_size, or set it to None and read the body piece by piece "
                         "with stream=True" % (limit, what))


class Timeout:
    """Per-phase deadlines in seconds (None: no limit).

    ``Timeout(5.0)`` sets all five to 5 s; keywords set each one:
    ``connect`` (DNS + TCP + TLS), ``read`` (between two bytes from the peer),
    ``write`` (between two bytes accepted by the peer), ``pool`` (waiting for a
    connection), ``total`` (the whole exchange, pool wait included, up to the
    end of the body, or up to the response head when ``stream=True``).

    ``Timeout((connect, read))``, as requests takes it, sets ``connect`` and
    ``read`` (``write`` follows ``read``); ``pool`` and ``total`` stay None.
    """

    __slots__ = ("connect", "read", "write", "pool", "total")
    connect: Optional[float]
    read: Optional[float]
    write: Optional[float]
    pool: Optional[float]
    total: Optional[float]

    def __init__(self, timeout: Any = _UNSET, *, connect: Any = _UNSET, read: Any = _UNSET,
                 write: Any = _UNSET, pool: Any = _UNSET, total: Any = _UNSET) -> None:
        default = None if timeout is _UNSET else timeout
        if isinstance(default, Timeout):
            default_values = {k: getattr(default, k) for k in self.__slots__}
        elif isinstance(default, tuple):
            if len(default) != 2:
                raise ValueError("a timeout tuple must be (connect, read), not %r" % (default,))
            c, r = default
            _check_seconds("connect", c)
            _check_seconds("read", r)
            default_values = {"connect": c, "read": r, "write": r, "pool": None, "total": None}
        else:
            _check_seconds(None, default)
            default_values = dict.fromkeys(self.__slots__, default)
        for name, value in (("connect", connect), ("read", read), ("write", write),
                            ("pool", pool), ("total", total)):
            if value is _UNSET:
                value = default_values[name]
            else:
                _check_seconds(name, value)
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Timeout is immutable; use Timeout(old, %s=...)" % name)

    @classmethod
    def coerce(cls, value: Any) -> "Timeout":
        return value if isinstance(value, Timeout) else cls(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timeout) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, k) for k in self.__slots__))

    def __repr__(self) -> str:
        return "Timeout(%s)" % ", ".join("%s=%r" % (k, getattr(self, k)) for k in self.__slots__)

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        # immutable (no __setattr__): pickle through the constructor
        return (_timeout, tuple(getattr(self, k) for k in self.__slots__))


def _timeout(connect: Optional[float], read: Optional[float], write: Optional[float],
             pool: Optional[float], total: Optional[float]) -> Timeout:
    return Timeout(connect=connect, read=read, write=write, pool=pool, total=total)


def _check_seconds(name: Optional[str], value: Any) -> None:
    if value is None:
        return
    what = "timeout" if name is None else "the %s timeout" % name
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds%s or None, not %s" % (
            what, ", a (connect, read) tuple, a Timeout" if name is None else "",
            type(value).__name__))
    if value < 0:
        raise ValueError("%s must be >= 0, got %r" % (what, value))


HeaderInput = Union[None, "Headers", Mapping[Any, Any], Sequence[Tuple[Any, Any]]]


def _to_str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("latin-1")
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise TypeError("header names and values must be str or bytes, not %s" % type(v).__name__)


class Headers:
    """Case-insensitive, multi-valued, ordered HTTP headers.

    ``h["x"]`` joins repeated values with ", " (``set-cookie`` too: use
    ``get_list``); ``items()`` gives every (name, value) pair in order, with
    names as first given (responses: lowercase).
    """

    __slots__ = ("_l", "_raw")

    def __init__(self, headers: HeaderInput = None) -> None:
        self._raw: Optional[Sequence[Tuple[bytes, bytes]]] = None
        self._l: Optional[List[Tuple[str, str]]] = []
        if headers is None:
            return
        if isinstance(headers, Headers):
            self._l = list(headers._list)
            return
        items: Iterable[Tuple[Any, Any]] = headers.items() if isinstance(headers, Mapping) else headers
        lst = self._l
        for k, v in items:
            lst.append((_to_str(k), _to_str(v)))

    @property
    def _list(self) -> List[Tuple[str, str]]:
        lst = self._l
        if lst is None:
            # decoded on first use: most responses' headers are never looked at
            lst = self._l = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw or ()]
            self._raw = None
        return lst

    @_list.setter
    def _list(self, value: List[Tuple[str, str]]) -> None:
        self._l = value
        self._raw = None

    @classmethod
    def from_raw(cls, raw: Sequence[Tuple[bytes, bytes]]) -> "Headers":
        """Headers over the bytes pairs of a parsed head (decoded as latin-1 when first used)."""
        h = cls.__new__(cls)
        h._l = None
        h._raw = raw
        return h

    def raw(self) -> List[Tuple[bytes, bytes]]:
        """The fields as bytes (latin-1; a character outside it is a LocalProtocolError)."""
        if self._l is None:
            return list(self._raw or ())
        try:
            return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self._list]
        except UnicodeEncodeError as e:
            from greenpool.errors import LocalProtocolError
            raise LocalProtocolError("header %r cannot be sent: HTTP/1.1 fields are latin-1 "
                                     "(%s); encode the value (e.g. RFC 8187) first" % (
                                         e.object, e.reason)) from None

    def get_list(self, name: str) -> List[str]:
        n = name.lower()
        return [v for k, v in self._list if k.lower() == n]

    getall = get_list

    def get(self, name: str, default: Any = None) -> Any:
        values = self.get_list(name)
        return ", ".join(values) if values else default

    def __getitem__(self, name: str) -> str:
        values = self.get_list(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __setitem__(self, name: str, value: Any) -> None:
        """Replace every value of ``name`` with one."""
        n = name.lower()
        self._list = [(k, v) for k, v in self._list if k.lower() != n]
        self._list.append((_to_str(name), _to_str(value)))

    def __delitem__(self, name: str) -> None:
        n = name.lower()
        before = len(self._list)
        self._list = [(k, v) for k, v in self._list if k.lower() != n]
        if len(self._list) == before:
            raise KeyError(name)

    def pop(self, name: str, default: Any = None) -> Any:
        value = self.get(name, default)
        n = name.lower()
        self._list = [(k, v) for k, v in self._list if k.lower() != n]
        return value

    def add(self, name: str, value: Any) -> None:
        self._list.append((_to_str(name), _to_str(value)))

    def setdefault(self, name: str, value: Any) -> str:
        if name not in self:
            self.add(name, value)
        return self[name]

    def update(self, other: HeaderInput) -> None:
        for k, v in Headers(other)._list:
            self[k] = v

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        n = name.lower()
        return any(k.lower() == n for k, _ in self._list)

    def keys(self) -> List[str]:
        seen: Dict[str, str] = {}
        for k, _ in self._list:
            seen.setdefault(k.lower(), k)
        return list(seen.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self) -> List[Tuple[str, str]]:
        return list(self._list)

    def __len__(self) -> int:
        return len(self._list)

    def copy(self) -> "Headers":
        return Headers(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            try:
                other = Headers(other)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return False
        norm = sorted((k.lower(), v) for k, v in self._list)
        return norm == sorted((k.lower(), v) for k, v in other._list)

    def __repr__(self) -> str:
        return "Headers(%r)" % (self._list,)


class URL:
    """An absolute http(s) URL, split once: scheme, host, port, target."""

    __slots__ = ("scheme", "host", "port", "target", "userinfo", "fragment", "_str")

    DEFAULT_PORTS = {"http": 80, "https": 443, "http+unix": 80}

    def __init__(self, url: Union[str, bytes, "URL"], params: Any = None) -> None:
        if isinstance(url, URL):
            url = str(url)
        if isinstance(url, bytes):
            url = url.decode("ascii")
        if not isinstance(url, str):
            raise InvalidURL("a URL must be a str, not %s" % type(url).__name__)
        if any(c in url for c in "\r\n\x00") or " " in url.strip():
            raise InvalidURL("URL %r contains whitespace or control characters" % (url,))
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as e:
            raise InvalidURL("cannot parse URL %r: %s" % (url, e)) from None
        scheme = parts.scheme.lower()
        if scheme not in self.DEFAULT_PORTS:
            raise InvalidURL("URL %r: scheme must be http, https or http+unix, not %r"
                             % (url, parts.scheme))
        if scheme == "http+unix":
            # http+unix://%2Fpath%2Fapp.sock/target: the host is the socket's path
            # (percent-encoded, case kept)
            host = unquote(parts.netloc.rpartition("@")[2])
            if not host:
                raise InvalidURL("URL %r has no socket path" % (url,))
            port = 80
        else:
            host = parts.hostname or ""
        if not host:
            raise InvalidURL("URL %r has no host" % (url,))
        try:
            host.encode("ascii")
        except UnicodeEncodeError:
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError as e:
                raise InvalidURL("URL %r: invalid host name: %s" % (url, e)) from None
        self.scheme = scheme
        self.host = host
        self.port = port if port is not None else self.DEFAULT_PORTS[scheme]
        self.userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        self.fragment = parts.fragment
        path = parts.path or "/"
        query = parts.query
        if params:
            extra = urlencode(list(params.items()) if isinstance(params, Mapping) else list(params), doseq=True)
            query = query + "&" + extra if query else extra
        target = path + ("?" + query if query else "")
        try:
            self.target = target.encode("ascii")
        except UnicodeEncodeError:
            self.target = quote(target, safe="/?&=%:@!$'()*+,;~-._").encode("ascii")
        netloc = quote(host, safe="") if scheme == "http+unix" else self.authority
        self._str = "%s://%s%s" % (scheme, netloc, self.target.decode("ascii"))

    @property
    def transport(self) -> str:
        scheme = self.scheme
        return "ssl" if scheme == "https" else "tcp" if scheme == "http" else "unix"

    @property
    def authority(self) -> str:
        if self.scheme == "http+unix":
            return "localhost"  # the Host header over a Unix socket
        host = "[%s]" % self.host if ":" in self.host else self.host
        if self.port == self.DEFAULT_PORTS[self.scheme]:
            return host
        return "%s:%d" % (host, self.port)

    @property
    def origin(self) -> Tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def path(self) -> str:
        return self.target.decode("ascii").partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.decode("ascii").partition("?")[2]

    def join(self, location: str) -> "URL":
        """Resolve a (possibly relative) Location against this URL."""
        if self.scheme == "http+unix" and "://" not in location:
            base = "http://localhost" + self.target.decode("ascii")
            joined = urljoin(base, location)[len("http://localhost"):]
            return URL(self._str.split("/", 3)[0] + "//" + self._str.split("/", 3)[2] + joined)
        return URL(urljoin(self._str, location))

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return "URL(%r)" % self._str

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(self._str)


class Request:
    """What is sent: method, URL, headers and a body source.

    ``body`` is None, bytes, or a source the transport streams: a file object
    (``.read``), or an iterable of bytes; ``content_length`` is known for
    bytes and for sized files, else None (chunked on HTTP/1.1).

    ``headers`` (a :class:`Headers`) and ``raw_headers`` (``[(bytes, bytes)]``,
    what HTTP/1.1 writes, ``Host`` first when the client built them) are two
    views of the same fields: the client builds the raw list (cached per
    origin) and the Headers object is made only when someone asks for it;
    after that, ``raw_headers`` follows the Headers object.
    """

    __slots__ = ("method", "url", "_headers", "_raw", "body", "content_length", "extensions")

    def __init__(self, method: str, url: Union[str, URL], headers: HeaderInput = None,
                 body: Any = None, content_length: Optional[int] = None,
                 raw_headers: Optional[List[Tuple[bytes, bytes]]] = None) -> None:
        # positional or keyword: the client passes them in order (cheaper per request)
        if not isinstance(method, str) or not method:
            raise ValueError("method must be a non-empty str, not %r" % (method,))
        self.method = method.upper()
        self.url = url if isinstance(url, URL) else URL(url)
        if raw_headers is not None and headers is None:
            self._headers: Optional[Headers] = None
            self._raw: Optional[List[Tuple[bytes, bytes]]] = raw_headers
        else:
            self._headers = Headers(headers)
            self._raw = None
        self.body = body
        self.content_length = content_length
        self.extensions: Dict[str, Any] = {}

    @property
    def headers(self) -> Headers:
        h = self._headers
        if h is None:
            h = self._headers = Headers.from_raw(self._raw or ())
            self._raw = None
        return h

    @headers.setter
    def headers(self, value: HeaderInput) -> None:
        self._headers = Headers(value)
        self._raw = None

    @property
    def raw_headers(self) -> List[Tuple[bytes, bytes]]:
        raw = self._raw
        if raw is None:
            raw = self._headers.raw() if self._headers is not None else []
        return raw

    def __repr__(self) -> str:
        return "<Request %s %s>" % (self.method, self.url)


def parse_links(value: str) -> List[Dict[str, str]]:
    """A ``Link`` header value as ``[{"url": ..., "rel": ..., ...}]`` (as requests parses it)."""
    links: List[Dict[str, str]] = []
    replace_chars = " '\""
    value = value.strip(replace_chars)
    if not value:
        return links
    for val in re.split(r", *<", value):
        url, _, params = val.partition(";")
        link = {"url": url.strip("<> '\"")}
        for param in params.split(";"):
            key, sep, v = param.partition("=")
            if not sep:
                continue
            link[key.strip(replace_chars)] = v.strip(replace_chars)
        links.append(link)
    return links


class Response:
    """A response: status and headers at once, the body read on demand.

    The body is read through ``stream`` (see the module docstring) and decoded
    (``Content-Encoding``) by ``decoder``.  With ``stream=False`` the client
    reads it all before returning, so ``content`` is ready and the connection
    is already back in its pool.
    """

    def __init__(self, status: int, headers: Headers, reason: str = "", http_version: str = "HTTP/1.1",
                 url: Union[str, URL] = "", request: Optional[Request] = None, stream: Any = None,
                 decoder: Any = None) -> None:
        # positional or keyword: the transports pass them in order (cheaper per request)
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = headers
        self.url = url._str if url.__class__ is URL else str(url)
        self.request = request
        self.stream = stream
        self.history: List["Response"] = []
        self._decoder = decoder
        self._content: Optional[bytes] = None
        self._consumed = False
        self._closed = stream is None
        self._started = self._sent = time.monotonic()

    # what the client may set on a response (class defaults: nothing to pay when unused)
    _encoding: Optional[str] = None
    default_encoding: Union[str, Callable[[bytes], Optional[str]]] = "utf-8"
    _cookies: Any = None

    # -- status -----------------------------------------------------------------------------

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def is_success(self) -> bool:
        """2xx."""
        return 200 <= self.status < 300

    @property
    def elapsed(self) -> datetime.timedelta:
        """From the start of sending the request to the end of the response head
        (as requests' ``elapsed``)."""
        return datetime.timedelta(seconds=max(0.0, self._started - self._sent))

    @property
    def links(self) -> Dict[str, Dict[str, str]]:
        """The ``Link`` header (RFC 8288) as ``{rel or url: {"url": ..., "rel": ..., ...}}``."""
        value = self.headers.get("link")
        out: Dict[str, Dict[str, str]] = {}
        if value:
            for link in parse_links(value):
                out[link.get("rel") or link["url"]] = link
        return out

    @property
    def cookies(self) -> Any:
        """The cookies this response set (an ``http.cookiejar.CookieJar``)."""
        jar = self._cookies
        if jar is None:
            from greenpool.http.cookies import response_cookies
            jar = self._cookies = response_cookies(self)
        return jar

    @property
    def is_redirect(self) -> bool:
        return self.status in (301, 302, 303, 307, 308) and "location" in self.headers

    def raise_for_status(self) -> "Response":
        if self.status >= 400:
            kind = "client error" if self.status < 500 else "server error"
            raise HTTPStatusError("%d %s (%s) for %s" % (self.status, self.reason, kind, self.url), self)
        return self

    @property
    def trailers(self) -> Optional[Headers]:
        return getattr(self.stream, "trailers", None)

    # -- body -------------------------------------------------------------------------------

    def iter_raw(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """The body as it came off the wire (not decoded)."""
        if self._content is not None:
            yield self._content
            return
        if self._consumed:
            raise StreamConsumed("the body of %s was already read as a stream" % self.url)
        self._consumed = True
        stream = self.stream
        if stream is None:
            return
        try:
            while True:
                chunk = stream.read_chunk(chunk_size)
                if not chunk:
                    break
                yield chunk
        finally:
            self.close()

    def iter_bytes(self, chunk_size: Optional[int] = None) -> Iterator[bytes]:
        """The decoded body in chunks (of about ``chunk_size`` bytes when given)."""
        if self._content is not None:
            data = self._content
            step = chunk_size or len(data) or 1
            for i in range(0, len(data), step):
                yield data[i:i + step]
            return
        decoder = self._decoder
        buf = b""
        for raw in self.iter_raw(chunk_size or 65536):
            data = decoder.decode(raw) if decoder is not None else raw
            if not data:
                continue
            if chunk_size is None:
                yield data
                continue
            buf += data
            while len(buf) >= chunk_size:
                yield buf[:chunk_size]
                buf = buf[chunk_size:]
        if decoder is not None:
            tail = decoder.flush()
            if tail:
                if chunk_size is None:
                    yield tail
                else:
                    buf += tail
        while buf:
            step = chunk_size or len(buf)
            yield buf[:step]
            buf = buf[step:]

    def read(self) -> bytes:
        """The whole decoded body (cached)."""
        if self._content is None:
            self._content = b"".join(self.iter_bytes())
        return self._content

    @property
    def content(self) -> bytes:
        return self.read()

    @property
    def charset(self) -> Optional[str]:
        """The ``charset`` parameter of Content-Type, if any."""
        ctype: str = self.headers.get("content-type", "")
        for part in ctype.split(";")[1:]:
            k, _, v = part.strip().partition("=")
            if k.lower() == "charset" and v:
                return v.strip("\"' ")
        return None

    @property
    def encoding(self) -> str:
        """How ``text`` decodes: set by you, else the charset of Content-Type, else
        ``default_encoding`` (a name, or a callable guessing from the body) when the
        body decodes with it, else ``"latin-1"`` (which decodes any bytes)."""
        enc = self._encoding or self.charset
        if enc is not None:
            return enc
        default = self.default_encoding
        if not isinstance(default, str):
            guess = default(self.read())
            return guess or "utf-8"
        if self._content is None and not self._closed:
            return default  # not read yet: nothing to check the default against
        try:
            self.read().decode(default)
        except (UnicodeDecodeError, LookupError):
            return "latin-1"
        return default

    @encoding.setter
    def encoding(self, value: Optional[str]) -> None:
        if value is not None:
            codecs.lookup(value)  # LookupError now rather than at .text
        self._encoding = value

    @property
    def text(self) -> str:
        content = self.read()
        try:
            return content.decode(self.encoding, errors="replace")
        except LookupError:
            return content.decode("utf-8", errors="replace")

    def iter_text(self, chunk_size: Optional[int] = None) -> Iterator[str]:
        """The decoded body as text, piece by piece (see ``encoding``; without a charset
        the default encoding is tried and latin-1 takes over at the first byte it
        cannot decode)."""
        enc = self._encoding or self.charset
        fallback = enc is None
        if enc is None:
            d = self.default_encoding
            enc = d if isinstance(d, str) else "utf-8"
        try:
            decoder = codecs.getincrementaldecoder(enc)(
                errors="strict" if fallback else "replace")
        except LookupError:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in self.iter_bytes(chunk_size):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError:
                decoder = codecs.getincrementaldecoder("latin-1")()
                text = decoder.decode(chunk)  # the undecodable chunk, whole, as latin-1
            if text:
                yield text
        try:
            text = decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            text = e.object[e.start:].decode("latin-1")
        if text:
            yield text

    def iter_lines(self, chunk_size: Optional[int] = None) -> Iterator[str]:
        """The text body line by line, without line endings (``\\n``, ``\\r\\n``, ``\\r``)."""
        pending = ""
        for text in self.iter_text(chunk_size):
            pending += text
            lines = pending.splitlines(True)
            pending = ""
            if lines and (not lines[-1].endswith(("\n", "\r")) or lines[-1].endswith("\r")):
                pending = lines.pop()  # incomplete, or a \r that a \n may follow
            for line in lines:
                yield line.rstrip("\r\n")
        if pending:
            for line in pending.splitlines():
                yield line

    def json(self, **kw: Any) -> Any:
        return _json.loads(self.read(), **kw)

    def close(self) -> None:
        """Stop reading; the connection is released (closed if the body was not complete)."""
        if not self._closed:
            self._closed = True
            stream = self.stream
            if stream is not None:
                stream.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        # a streamed response dropped unread must not hold its connection forever
        try:
            if not self._closed and self.stream is not None:
                self.stream.close()
        except Exception:  # noqa: BLE001 - nothing to report to in a finalizer
            pass

    def __repr__(self) -> str:
        return "<Response [%d %s] %s %s>" % (self.status, self.reason, self.http_version, self.url)
