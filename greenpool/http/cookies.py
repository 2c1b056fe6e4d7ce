"""Cookies: the stdlib's ``http.cookiejar`` rules, fed by our requests and responses.

What this owns: the two small adapters ``http.cookiejar.CookieJar`` needs to
see one of our requests (:class:`_JarRequest`, urllib's ``Request`` shape) and
one of our responses (:class:`_JarResponse`, ``info().get_all()``), and the
functions the client calls:

* :func:`coerce_jar` makes a jar from what a caller passes as ``cookies=`` (a
  ``CookieJar``, used as it is, or a mapping / list of pairs of name -> value).
* :func:`cookie_header` is the ``Cookie`` value the jar allows for a URL: the
  jar applies RFC 6265 matching (domain, path, ``Secure`` only over https,
  expiry), so on a redirect only the cookies matching the new URL are sent.
* :func:`extract` stores a response's ``Set-Cookie`` fields in a jar, judged
  against the URL of the request that got them (redirect responses included).

Nothing here does I/O.  A Client that holds no cookie and gets no
``Set-Cookie`` pays one truthiness test per request and one scan of the
response's header names.
"""
from __future__ import annotations

from http.cookiejar import Cookie, CookieJar
from typing import TYPE_CHECKING, Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:
    from greenpool.http.models import URL, Response

CookieInput = Union[None, CookieJar, Mapping[str, str], Sequence[Tuple[str, str]]]

__all__ = ["coerce_jar", "cookie_header", "extract", "response_cookies", "CookieInput"]


class _JarRequest:
    """What ``CookieJar`` reads of a request (urllib.request.Request's shape)."""

    def __init__(self, url: "URL") -> None:
        self._url = url
        self.type = url.scheme
        self.host = url.authority
        self.origin_req_host = url.host
        self.unverifiable = False
        self.header: Optional[str] = None

    def get_full_url(self) -> str:
        return str(self._url)

    def get_host(self) -> str:
        return self.host

    def get_type(self) -> str:
        return self.type

    def get_origin_req_host(self) -> str:
        return self.origin_req_host

    def is_unverifiable(self) -> bool:
        return False

    def has_header(self, name: str) -> bool:
        return False

    def get_header(self, name: str, default: Any = None) -> Any:
        return default

    def header_items(self) -> List[Tuple[str, str]]:
        return []

    def add_unredirected_header(self, name: str, value: str) -> None:
        self.header = value


class _Fields:
    def __init__(self, values: List[str]) -> None:
        self._values = values

    def get_all(self, name: str, default: Any = None) -> Any:
        if name.lower() == "set-cookie":
            return self._values or default
        return default


class _JarResponse:
    """What ``CookieJar.extract_cookies`` reads of a response."""

    def __init__(self, set_cookies: List[str]) -> None:
        self._fields = _Fields(set_cookies)

    def info(self) -> _Fields:
        return self._fields


def coerce_jar(cookies: CookieInput) -> CookieJar:
    """A jar for ``cookies=``: a CookieJar as it is, else a new one holding the pairs
    (sent to every host: they carry no domain)."""
    if isinstance(cookies, CookieJar):
        return cookies
    jar = CookieJar()
    if cookies:
        pairs: Iterable[Tuple[str, str]] = cookies.items() if isinstance(cookies, Mapping) \
            else cookies
        for name, value in pairs:
            jar.set_cookie(make_cookie(name, value))
    return jar


def make_cookie(name: str, value: str, domain: str = "", path: str = "/",
                secure: bool = False, expires: Optional[int] = None) -> Cookie:
    """A cookie for ``CookieJar.set_cookie``; an empty domain matches every host."""
    return Cookie(0, name, value, None, False, domain, bool(domain), domain.startswith("."),
                  path, True, secure, expires, False, None, None, {}, False)


def has_cookies(jar: CookieJar) -> bool:
    """Cheap emptiness test (``len(jar)`` walks every cookie)."""
    inner = getattr(jar, "_cookies", None)
    return bool(inner) if inner is not None else len(jar) > 0


def cookie_header(jar: CookieJar, url: "URL") -> Optional[bytes]:
    """The Cookie field value the jar allows for ``url`` (None: none)."""
    req = _JarRequest(url)
    jar.add_cookie_header(req)  # type: ignore[arg-type]
    return req.header.encode("latin-1", "replace") if req.header else None


def set_cookie_values(resp: "Response") -> List[str]:
    """The Set-Cookie field values of a response (a scan of the raw names when the
    headers are still undecoded)."""
    h = resp.headers
    raw = h._raw if h._l is None else None
    if raw is not None:
        out = None
        for k, v in raw:
            if k == b"set-cookie":
                if out is None:
                    out = []
                out.append(v.decode("latin-1"))
        return out or []
    return h.get_list("set-cookie")


def extract(jar: CookieJar, url: "URL", values: List[str]) -> None:
    """Store the ``Set-Cookie`` values of a response to ``url`` in the jar."""
    jar.extract_cookies(_JarResponse(values), _JarRequest(url))  # type: ignore[arg-type]


def response_cookies(resp: "Response") -> CookieJar:
    """A jar of the cookies one response set (``Response.cookies``)."""
    jar = CookieJar()
    values = set_cookie_values(resp)
    if values:
        from greenpool.http.models import URL
        url = resp.request.url if resp.request is not None else URL(resp.url)
        extract(jar, url, values)
    return jar
