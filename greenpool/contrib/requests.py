"""A requests transport adapter: legacy ``requests`` code on greenpool's pools.

::

    import requests
    from greenpool.contrib.requests import GreenPoolAdapter

    session = requests.Session()
    session.mount("https://", GreenPoolAdapter(pool="api", http2=True))
    session.mount("http://", GreenPoolAdapter(pool="api"))

What this owns: turning a ``PreparedRequest`` and the arguments requests
hands an adapter (``stream``, ``timeout``, ``verify``, ``cert``, ``proxies``)
into one :meth:`greenpool.Client.request`, and greenpool's response and
errors back into requests' (a ``requests.Response`` whose ``raw`` is a
file-like object over the body; ``requests.exceptions``).

Rules:

* **requests keeps its policies.**  Redirects, cookies, auth (Basic, Digest),
  ``raise_for_status``, hooks and session merging stay requests' own: the
  adapter sends exactly one request and never follows redirects itself.
* **Bodies are decoded once, by greenpool.**  ``raw.read()``/``raw.stream()``
  return the decoded body (as urllib3's do with ``decode_content=True``,
  which is what requests asks for); ``Content-Encoding`` stays in the headers,
  as with urllib3.  ``raw.read(decode_content=False)`` before anything was
  read gives the bytes as they came off the wire.  requests' default
  ``Accept-Encoding`` is replaced by greenpool's (the codings it can undo).
* **Timeouts.**  A number applies to connect and read (and write), a
  ``(connect, read)`` tuple to each, a :class:`greenpool.Timeout` as it is.
  The connect timeout also bounds the wait for a free pooled connection
  (requests' own pools never wait).  ``None``: the Client's default
  (``GreenPoolAdapter(timeout=...)``), else no limit.
* **TLS.**  ``verify`` (True: greenpool's trust store, system CAs or certifi;
  False; a CA bundle file or directory) and ``cert`` (a path, or
  ``(cert, key)``) select a greenpool Client per setting; connections opened
  with different settings never mix (tagged keys in the one pool).
* **Proxies.**  The proxy requests selects for the URL (``proxies=``,
  ``HTTP(S)_PROXY`` with ``trust_env``) goes to greenpool's ``proxy=``
  (``http://`` and SOCKS proxies; an ``https://`` proxy or a URL without a
  host is an ``InvalidProxyURL``, as requests says).
* **Errors** map to ``requests.exceptions``: PoolTimeout and ConnectTimeout ->
  ``ConnectTimeout``; TLSError -> ``SSLError``; other connect errors ->
  ``ConnectionError`` (``ProxyError`` through a proxy); ReadTimeout/
  WriteTimeout -> ``ReadTimeout`` (while reading a body: an error that is
  both ``ReadTimeout`` and ``ConnectionError``, since requests raises the
  latter there); a connection lost mid-body -> ``ChunkedEncodingError``;
  DecodingError -> ``ContentDecodingError``; the greenpool error is the
  ``__cause__``.
* ``adapter.close()`` (``session.close()``) forgets its Clients; the pool is
  named and shared, so it stays up (``greenpool.stop_pool(name)`` stops it).
"""
from __future__ import annotations

import io
import os
import re
from http.client import HTTPMessage
from typing import Any, Dict, Iterator, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

try:
    import requests
    from requests import exceptions as rex
    from requests.adapters import BaseAdapter
    from requests.cookies import extract_cookies_to_jar
    from requests.structures import CaseInsensitiveDict
    from requests.utils import DEFAULT_ACCEPT_ENCODING, get_encoding_from_headers, select_proxy
except ImportError as e:  # pragma: no cover - exercised only without requests
    raise ImportError("greenpool.contrib.requests needs the requests package: "
                      "pip install requests (%s)" % (e,)) from e

from greenpool.errors import (
    ConnectError,
    ConnectTimeout,
    DecodingError,
    GreenPoolError,
    InvalidURL,
    LocalProtocolError,
    PoolError,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    RemoteProtocolError,
    TimeoutException,
    TLSError,
    TransportError,
    WriteTimeout,
)
from greenpool.http.client import Client
from greenpool.http.h1.conn import CONFLICTING_CONTENT_LENGTH
from greenpool.http.models import Response, Timeout
from greenpool.proxy import SOCKS_SCHEMES

__all__ = ["GreenPoolAdapter", "GreenPoolRaw", "map_error", "BodyReadTimeout"]

_MAPPED = frozenset(("verify", "cert", "proxy", "follow_redirects", "max_redirects", "trust_env",
                     "base_url", "pool", "http2"))


class BodyReadTimeout(rex.ReadTimeout, rex.ConnectionError):
    """A read timeout while reading a body: requests raises ConnectionError there
    (urllib3's ReadTimeoutError), greenpool says ReadTimeout; this is both."""


def map_error(error: GreenPoolError, request: Any = None, *, proxy: Optional[str] = None,
              body: bool = False) -> "rex.RequestException":
    """The ``requests.exceptions`` error for a greenpool error (see the module docstring)."""
    cls: type
    if isinstance(error, (PoolTimeout, ConnectTimeout)):
        cls = rex.ConnectTimeout
    elif isinstance(error, TLSError):
        cls = rex.SSLError
    elif isinstance(error, ConnectError):
        cls = rex.ProxyError if proxy else rex.ConnectionError
    elif isinstance(error, (ReadTimeout, WriteTimeout)):
        cls = BodyReadTimeout if body else rex.ReadTimeout
    elif isinstance(error, TimeoutException):
        cls = rex.Timeout
    elif isinstance(error, DecodingError):
        cls = rex.ContentDecodingError
    elif isinstance(error, InvalidURL):
        cls = rex.InvalidURL
    elif isinstance(error, LocalProtocolError):
        cls = rex.InvalidHeader if "header" in str(error).lower() else rex.RequestException
    elif isinstance(error, RemoteProtocolError) and str(error).startswith(CONFLICTING_CONTENT_LENGTH):
        cls = rex.InvalidHeader  # as urllib3 2 reports differing Content-Length values
    elif isinstance(error, (TransportError, ProtocolError)):
        cls = rex.ChunkedEncodingError if body else rex.ConnectionError
    elif isinstance(error, PoolError):
        cls = rex.ConnectionError
    else:
        cls = rex.RequestException
    mapped = cls(error, request=request)
    mapped.__cause__ = error
    return mapped


class _OriginalResponse:
    """What requests' cookie code reads from ``raw._original_response`` (``msg``)."""

    __slots__ = ("msg",)

    def __init__(self, msg: HTTPMessage) -> None:
        self.msg = msg

    def info(self) -> HTTPMessage:
        return self.msg


class GreenPoolRaw(io.IOBase):
    """``response.raw``: a readable file over a greenpool Response, shaped like
    urllib3's HTTPResponse where requests looks (``read``, ``stream``,
    ``release_conn``, ``headers``, ``status``, ``_original_response.msg``)."""

    def __init__(self, response: Response, request: Any = None, proxy: Optional[str] = None,
                 preloaded: bool = False) -> None:
        from urllib3 import HTTPHeaderDict  # requests depends on urllib3

        self._response = response
        self._request = request
        self._proxy = proxy
        self._preloaded = preloaded
        self._it: Optional[Iterator[bytes]] = None
        self._buf = bytearray()
        self._pos = 0
        self.status = response.status
        self.reason = response.reason
        self.version_string = response.http_version
        self.version = 20 if response.http_version == "HTTP/2" else (
            30 if response.http_version == "HTTP/3" else 11)
        self.decode_content = True
        self.headers = HTTPHeaderDict()
        msg = HTTPMessage()
        for k, v in response.headers.items():
            self.headers.add(k, v)
            msg[k] = v  # Message.__setitem__ appends: repeated fields (Set-Cookie) kept
        self._original_response = _OriginalResponse(msg)

    # -- urllib3's names --

    @property
    def greenpool_response(self) -> Response:
        """The greenpool Response under this file."""
        return self._response

    def getheaders(self) -> Any:
        return self.headers

    def getheader(self, name: str, default: Any = None) -> Any:
        return self.headers.get(name, default)

    def info(self) -> Any:
        return self.headers

    def geturl(self) -> str:
        return self._response.url

    def isclosed(self) -> bool:
        return self.closed

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def release_conn(self) -> None:
        """Give the connection back: reused when the body was read to its end, else closed."""
        self._response.close()

    def drain_conn(self) -> None:
        try:
            while self.read(65536):
                pass
        except rex.RequestException:
            pass
        self.release_conn()

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()

    # -- reading --

    def _chunks(self, decode_content: Optional[bool]) -> Iterator[bytes]:
        if self._it is None:
            if decode_content is False and not self._preloaded:
                self._it = self._response.iter_raw()
            else:
                self._it = self._response.iter_bytes()
        return self._it

    def _next(self, it: Iterator[bytes]) -> Optional[bytes]:
        try:
            return next(it)
        except StopIteration:
            return None
        except GreenPoolError as e:
            raise map_error(e, self._request, proxy=self._proxy, body=True) from e

    def read(self, amt: Optional[int] = None, decode_content: Optional[bool] = None,
             cache_content: bool = False) -> bytes:
        """Up to ``amt`` bytes of the (decoded) body; all of it when ``amt`` is None; b"" at the end."""
        if (self.closed or self._preloaded) and not self._buf:
            return b""  # as urllib3's: requests already took the body into .content
        it = self._chunks(decode_content)
        if amt is None:
            parts = [bytes(self._buf)]
            self._buf.clear()
            while True:
                chunk = self._next(it)
                if chunk is None:
                    break
                parts.append(chunk)
            data = b"".join(parts)
        else:
            while len(self._buf) < amt:
                chunk = self._next(it)
                if chunk is None:
                    break
                self._buf += chunk
            data = bytes(self._buf[:amt])
            del self._buf[:amt]
        self._pos += len(data)
        return data

    def read1(self, amt: int = -1) -> bytes:
        return self.read(None if amt is None or amt < 0 else amt)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def stream(self, amt: Optional[int] = 2 ** 16, decode_content: Optional[bool] = None) -> Iterator[bytes]:
        """Chunks of up to ``amt`` bytes until the end (requests' ``iter_content`` uses this)."""
        while True:
            data = self.read(amt, decode_content)
            if not data:
                return
            yield data

    def __repr__(self) -> str:
        return "<GreenPoolRaw %d %s>" % (self.status, self._response.http_version)


class GreenPoolAdapter(BaseAdapter):
    """Send requests' requests through a greenpool pool.

    ``pool``: a pool name (started lazily when it is ``"default"``; start
    others with :func:`greenpool.start_pool`) or a GreenPool.  ``http2``:
    False, True (h2 by ALPN on https) or ``"prior_knowledge"``.
    ``client_kw``: any other :class:`greenpool.Client` option (``timeout`` as
    the default when requests passes none, ``retries``, ``headers``,
    ``http1_parser``, ``max_decoded_size``, ...).  TLS, proxies and redirects
    come from requests.
    """

    def __init__(self, pool: Any = "default", http2: Any = False, **client_kw: Any) -> None:
        super().__init__()
        bad = sorted(_MAPPED.intersection(client_kw))
        if bad:
            raise TypeError("GreenPoolAdapter takes %s from requests (session.verify, "
                            "session.cert, session.proxies; requests follows redirects), "
                            "not as adapter options" % ", ".join(bad))
        if client_kw.get("decode_content", True) is not True:
            raise ValueError("decode_content must stay True: requests expects decoded bodies "
                             "from its adapters (use raw.read(decode_content=False) for wire bytes)")
        self.pool = pool
        self.http2 = http2
        self.client_kw = client_kw
        # validate the options once, now, rather than at the first request
        self._clients: Dict[Tuple[Any, ...], Client] = {}
        self._client(True, None, None)

    def __repr__(self) -> str:
        pool = self.pool if isinstance(self.pool, str) else getattr(self.pool, "name", self.pool)
        return "<GreenPoolAdapter pool=%r%s>" % (pool, " http2=%r" % (self.http2,) if self.http2 else "")

    def __getstate__(self) -> Dict[str, Any]:
        # as requests' HTTPAdapter: the settings pickle, the connections do not (a GreenPool
        # goes by its name; the Clients are made again on first use)
        pool = self.pool if isinstance(self.pool, str) or self.pool is None else self.pool.name
        return {"pool": pool, "http2": self.http2, "client_kw": self.client_kw}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["pool"], state["http2"], **state["client_kw"])  # type: ignore[misc]

    def _client(self, verify: Any, cert: Any, proxy: Optional[str]) -> Client:
        tag = (verify, tuple(cert) if isinstance(cert, (list, tuple)) else cert, proxy)
        client = self._clients.get(tag)
        if client is None:
            client = self._clients[tag] = Client(pool=self.pool, http2=self.http2, verify=verify,
                                                 cert=cert, proxy=proxy, **self.client_kw)
        return client

    @classmethod
    def _timeout(cls, timeout: Any) -> Optional[Timeout]:
        try:
            return cls._timeout_of(timeout)
        except TypeError:
            # requests (urllib3's Timeout) says ValueError for a value of the wrong type
            raise ValueError("Timeout value %r is not valid: it must be an int, float, a "
                             "(connect, read) tuple or None" % (timeout,)) from None

    @staticmethod
    def _timeout_of(timeout: Any) -> Optional[Timeout]:
        if timeout is None:
            return None
        if isinstance(timeout, Timeout):
            return timeout
        if isinstance(timeout, tuple):
            try:
                connect, read = timeout
            except ValueError:
                raise ValueError("Invalid timeout %r. Pass a (connect, read) timeout tuple, or a single "
                                 "float to set both timeouts to the same value." % (timeout,)) from None
            return Timeout(connect=connect, read=read, write=read, pool=connect)
        connect_timeout = getattr(timeout, "connect_timeout", None)  # a urllib3 Timeout
        if connect_timeout is not None or hasattr(timeout, "read_timeout"):
            c = connect_timeout if isinstance(connect_timeout, (int, float)) else None
            r = timeout.read_timeout if isinstance(timeout.read_timeout, (int, float)) else None
            return Timeout(connect=c, read=r, write=r, pool=c)
        return Timeout(timeout)

    @staticmethod
    def _tls(url: str, verify: Any, cert: Any) -> Tuple[Any, Any]:
        if not url.lower().startswith("https:"):
            return True, None
        if verify is None:
            verify = True
        if isinstance(verify, str) and not os.path.exists(verify):
            raise OSError("Could not find a suitable TLS CA certificate bundle, invalid path: %s" % verify)
        if cert:
            files = (cert,) if isinstance(cert, str) else tuple(cert)[:2]
            for what, f in zip(("certificate", "key"), files):
                if f and not os.path.exists(f):
                    raise OSError("Could not find the TLS %s file, invalid path: %s" % (what, f))
        return verify, (cert or None)

    @staticmethod
    def _proxy(url: str, proxies: Any) -> Optional[str]:
        if not proxies:
            return None
        proxy = select_proxy(url, proxies)
        if not proxy:
            return None
        if "://" not in proxy:
            if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", proxy):
                # a scheme without "//" ("http:/host:3128"): requests finds no host in it
                raise rex.InvalidProxyURL("Please check proxy URL. It is malformed and could be "
                                          "missing the host.")
            proxy = "http://" + proxy
        scheme = proxy.split("://", 1)[0].lower()
        if scheme != "http" and scheme not in SOCKS_SCHEMES:
            raise rex.InvalidProxyURL("greenpool supports http:// and SOCKS (%s) proxies, not %s"
                                      % (", ".join(SOCKS_SCHEMES), scheme))
        try:
            host = urlsplit(proxy).hostname
        except ValueError:
            host = None
        if not host:
            raise rex.InvalidProxyURL("Please check proxy URL. It is malformed and could be "
                                      "missing the host.")
        return proxy

    def send(self, request: Any, stream: bool = False, timeout: Any = None, verify: Any = True,
             cert: Any = None, proxies: Any = None) -> "requests.Response":
        """Send one ``PreparedRequest`` (requests calls this; see the module docstring)."""
        url = request.url
        if isinstance(url, bytes):
            url = url.decode("utf-8")
        parts = urlsplit(url)
        if "@" in parts.netloc:  # requests already turned userinfo into Authorization
            url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        proxy = self._proxy(url, proxies)
        tls_verify, tls_cert = self._tls(url, verify, cert)
        try:
            client = self._client(tls_verify, tls_cert, proxy)
        except (ValueError, InvalidURL) as e:
            if proxy is None:
                raise
            raise rex.InvalidProxyURL("Please check proxy URL: %s" % (e,)) from e
        headers = [(k, v) for k, v in request.headers.items()
                   if not (k.lower() == "accept-encoding" and v == DEFAULT_ACCEPT_ENCODING)]
        kw: Dict[str, Any] = {"headers": headers, "body": request.body, "stream": True}
        t = self._timeout(timeout)
        if t is not None:
            kw["timeout"] = t
        try:
            resp = client.request(request.method, url, **kw)
        except GreenPoolError as e:
            raise map_error(e, request, proxy=proxy) from e
        if not stream:
            try:
                resp.read()
            except GreenPoolError as e:
                resp.close()
                raise map_error(e, request, proxy=proxy, body=True) from e
            except BaseException:
                resp.close()
                raise
        return self.build_response(request, resp, proxy, preloaded=not stream)

    def build_response(self, request: Any, resp: Response, proxy: Optional[str] = None,
                       preloaded: bool = False) -> "requests.Response":
        raw = GreenPoolRaw(resp, request, proxy, preloaded)
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(raw.headers)
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = raw
        response.reason = resp.reason
        url = request.url
        response.url = url.decode("utf-8") if isinstance(url, bytes) else url
        extract_cookies_to_jar(response.cookies, request, raw)
        response.request = request
        response.connection = self  # type: ignore[assignment]  # requests types it HTTPAdapter
        if preloaded:
            # the body is read (stream=False): hand requests greenpool's bytes, not a copy
            response._content = resp.content
            response._content_consumed = True
        return response

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
