"""Authentication schemes as request/response flows (httpx's shape).

What this owns: :class:`Auth`, the base of every scheme, and the two
standard ones, :class:`BasicAuth` (RFC 7617) and :class:`DigestAuth`
(RFC 7616: MD5, MD5-sess, SHA-256, SHA-256-sess; ``qop=auth``; a nonce count
kept across requests; a ``stale=true`` challenge answered again at once).

A scheme's :meth:`Auth.auth_flow` is a generator: it takes the request,
sets what it must on it (``request.headers[...] = ...``), yields it, and
receives the response.  It may yield the request again (changed) after a
401; when it returns, the last response is the caller's.  The client sends
each yielded request (redirects and retries apply inside each round), and
reads and releases every response but the last.  Nothing here does I/O.

Credentials are kept only in the scheme objects and in the ``Authorization``
field they set; a repr never shows them, and the client drops the field when
a redirect leaves the origin.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from typing import TYPE_CHECKING, Callable, Dict, Generator, Optional, Tuple, Union

if TYPE_CHECKING:
    from greenpool.http.models import Request, Response

__all__ = ["Auth", "BasicAuth", "DigestAuth", "FunctionAuth", "AuthInput", "coerce_auth"]

AuthFlow = Generator["Request", "Response", None]


class Auth:
    """Base class: override :meth:`auth_flow` (the default sends the request as it is)."""

    def auth_flow(self, request: "Request") -> AuthFlow:
        yield request


class FunctionAuth(Auth):
    """``auth=callable``: ``callable(request)`` changes (or returns) the request once."""

    def __init__(self, func: Callable[["Request"], Optional["Request"]]) -> None:
        self._func = func

    def auth_flow(self, request: "Request") -> AuthFlow:
        yield self._func(request) or request

    def __repr__(self) -> str:
        return "<FunctionAuth %r>" % (self._func,)


def _latin1_or_utf8(value: Union[str, bytes]) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def basic_header(username: Union[str, bytes], password: Union[str, bytes]) -> str:
    """The Authorization value for Basic credentials (user-id and password as UTF-8)."""
    token = base64.b64encode(_latin1_or_utf8(username) + b":" + _latin1_or_utf8(password))
    return "Basic " + token.decode("ascii")


class BasicAuth(Auth):
    """``Authorization: Basic ...`` on every request."""

    def __init__(self, username: Union[str, bytes], password: Union[str, bytes]) -> None:
        self._header = basic_header(username, password)

    def auth_flow(self, request: "Request") -> AuthFlow:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "<BasicAuth (credentials hidden)>"


_ALGORITHMS: Dict[str, Callable[[bytes], "hashlib._Hash"]] = {
    "MD5": hashlib.md5,
    "MD5-SESS": hashlib.md5,
    "SHA-256": hashlib.sha256,
    "SHA-256-SESS": hashlib.sha256,
}
_PARAM = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]*)\s*,?')


def parse_challenge(value: str) -> Optional[Dict[str, str]]:
    """The parameters of a ``Digest`` challenge (names lowercased), or None."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: Dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            break
        v = m.group(3) if m.group(3) is not None else m.group(2)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", v)
        pos = m.end()
    return params if "nonce" in params and "realm" in params else None


class DigestAuth(Auth):
    """RFC 7616 Digest: the first request goes without credentials (or with the
    last challenge's, counting the nonce on), a 401 with a Digest challenge is
    answered once; a challenge marked ``stale=true`` is answered again even when
    credentials were just sent."""

    def __init__(self, username: Union[str, bytes], password: Union[str, bytes]) -> None:
        self._username = _latin1_or_utf8(username)
        self._password = _latin1_or_utf8(password)
        self._challenge: Optional[Dict[str, str]] = None
        self._nonce_count = 0

    def auth_flow(self, request: "Request") -> AuthFlow:
        if self._challenge is not None:
            request.headers["Authorization"] = self._authorization(request, self._challenge)
        response = yield request
        for answered in range(2):
            if response.status != 401:
                return
            challenge = None
            for value in response.headers.get_list("www-authenticate"):
                challenge = parse_challenge(value)
                if challenge is not None:
                    break
            if challenge is None:
                return
            if answered and challenge.get("stale", "").lower() != "true":
                return  # our answer was refused: wrong credentials, the 401 is the caller's
            self._challenge = challenge
            self._nonce_count = 0
            request.headers["Authorization"] = self._authorization(request, challenge)
            response = yield request

    def _authorization(self, request: "Request", challenge: Dict[str, str]) -> str:
        algorithm = challenge.get("algorithm", "MD5").upper()
        hash_factory = _ALGORITHMS.get(algorithm)
        if hash_factory is None:
            from greenpool.errors import ProtocolError
            raise ProtocolError("the server asks for Digest algorithm %r; supported: %s"
                                % (algorithm, ", ".join(sorted(_ALGORITHMS))))

        def digest(data: bytes) -> bytes:
            return hash_factory(data).hexdigest().encode("ascii")

        realm = challenge["realm"].encode("utf-8")
        nonce = challenge["nonce"].encode("utf-8")
        self._nonce_count += 1
        nc = b"%08x" % self._nonce_count
        cnonce = hashlib.sha256(b"%d%s%s" % (self._nonce_count, nonce, os.urandom(16))
                                + str(time.time()).encode()).hexdigest()[:16].encode("ascii")
        a1 = digest(b":".join((self._username, realm, self._password)))
        if algorithm.endswith("-SESS"):
            a1 = digest(b":".join((a1, nonce, cnonce)))
        path = request.url.target
        a2 = digest(b":".join((request.method.encode("ascii"), path)))
        qops = [q.strip().lower() for q in challenge.get("qop", "").split(",") if q.strip()]
        if not qops:
            qop: Optional[bytes] = None
            response = digest(b":".join((a1, nonce, a2)))
        elif "auth" in qops:
            qop = b"auth"
            response = digest(b":".join((a1, nonce, nc, cnonce, qop, a2)))
        else:
            from greenpool.errors import ProtocolError
            raise ProtocolError("the server's Digest challenge offers qop=%r; only 'auth' is "
                                "supported" % (challenge.get("qop"),))
        fields: Tuple[Tuple[str, bytes, bool], ...] = (
            ("username", self._username, True), ("realm", realm, True),
            ("nonce", nonce, True), ("uri", path, True), ("response", response, True),
            ("algorithm", algorithm.encode("ascii"), False))
        parts = ['%s=%s' % (k, _quote(v) if q else v.decode("ascii")) for k, v, q in fields]
        if "opaque" in challenge:
            parts.append("opaque=%s" % _quote(challenge["opaque"].encode("utf-8")))
        if qop is not None:
            parts += ["qop=auth", "nc=%s" % nc.decode(), "cnonce=%s" % _quote(cnonce)]
        elif algorithm.endswith("-SESS"):
            parts.append("cnonce=%s" % _quote(cnonce))  # A1 depends on it
        return "Digest " + ", ".join(parts)

    def __repr__(self) -> str:
        return "<DigestAuth (credentials hidden)>"


def _quote(value: bytes) -> str:
    return '"%s"' % value.decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"')


AuthInput = Union[None, Auth, Tuple[Union[str, bytes], Union[str, bytes]],
                  Callable[["Request"], Optional["Request"]]]


def coerce_auth(auth: AuthInput) -> Optional[Auth]:
    """``auth=`` as given: an Auth, a (user, password) tuple (Basic) or a callable."""
    if auth is None or isinstance(auth, Auth):
        return auth
    if isinstance(auth, tuple) and len(auth) == 2:
        return BasicAuth(auth[0], auth[1])
    if callable(auth):
        return FunctionAuth(auth)
    raise TypeError("auth must be a (username, password) tuple, a greenpool.Auth or a "
                    "callable taking the request, not %s" % type(auth).__name__)
