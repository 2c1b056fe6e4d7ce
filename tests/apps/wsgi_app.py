"""A WSGI app for the interop tests, served by gunicorn's gevent worker (tests/servers.py).

Standard library only. Endpoints (all GET unless said otherwise; any method works on /echo):

- ``/echo``              JSON: method, path, query, args, headers, body (text or null),
                         body_b64, http_version
- ``/headers``           JSON: the request headers
- ``/status/<code>``     that status, a short text body (none for 1xx/204/304)
- ``/bytes/<n>``         n bytes of the 0..255 pattern, with Content-Length
- ``/chunked/<n>``       the same n bytes, streamed in several chunks (chunked encoding);
                         ``?chunk=<size>`` sets the chunk size, ``?delay=<s>`` sleeps between
- ``/slow/<seconds>``    sleeps, then answers JSON ``{"slept": seconds}``
- ``/stall-body``        headers and part of the body, then sleeps (``?seconds=``, default 30)
                         before the rest; Content-Length is the full length (``?size=``)
- ``/redirect/<n>``      302 chain of n hops ending at /echo (``?absolute=1``: absolute URLs)
- ``/redirect-to``       ``?url=...&status=302``: a redirect to url
- ``/gzip``, ``/deflate`` compressed JSON with Content-Encoding (``/deflate?raw=1``: raw deflate)
- ``/close``             answers with ``Connection: close``, and the server closes
- ``/upload``            reads the body; JSON: length and sha256
- ``/retry-after``       ``?key=k``: 503 + ``Retry-After: 1`` the first time per key, then 200
- ``/cookies``           JSON ``{"cookies": {name: value}}`` of the Cookie field received
- ``/cookies/set``       each ``?c=<Set-Cookie value>`` sent as a Set-Cookie field; JSON as
                         ``/cookies``; ``?redirect=<url>``: a 302 to url instead
- ``/basic-auth/<user>/<password>``  200 JSON ``{"user": ...}`` or 401 with a Basic challenge
- ``/digest-auth/<qop>/<user>/<password>/<algorithm>``  RFC 7616 Digest checked by this app
                         (werkzeug parses the field); 401 with a challenge when absent or
                         wrong; ``?stale_after=n``: a nonce used more than n times is answered
                         with a fresh challenge marked ``stale=true``
- ``/multipart``         POST multipart/form-data parsed by werkzeug (files spooled to disk);
                         JSON: fields, and per file its filename, content type, length, sha256

The module is also gunicorn's config module (``-c python:wsgi_app``): gunicorn drops a
``Connection`` header set by the app, so :func:`pre_request` marks ``/close`` requests as
must-close. Module-level names must not collide with gunicorn setting names.
"""

import base64
import gzip
import hashlib
import json
import os
import re
import tempfile
import time
import zlib
from http import HTTPStatus
from urllib.parse import parse_qs

_PATTERN = bytes(range(256))
_STATE_DIR = os.environ.get("GREENPOOL_TEST_STATE") or tempfile.mkdtemp(prefix="wsgi-state-")


def _pattern(n, offset=0):
    """n bytes of 0..255 cycled, starting at position ``offset`` of the stream."""
    start = offset % 256
    reps = (start + n) // 256 + 1
    return (_PATTERN * reps)[start:start + n]


def _status_line(code):
    try:
        return "%d %s" % (code, HTTPStatus(code).phrase)
    except ValueError:
        return "%d Unknown" % code


def _request_headers(environ):
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers[key.replace("_", "-").lower()] = value
    return headers


def _read_body(environ):
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        return stream.read(int(length))
    # no Content-Length: chunked (or nothing); the server's input handles the framing
    chunks = []
    while True:
        chunk = stream.read(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _args(environ):
    return {k: v if len(v) > 1 else v[0]
            for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}


def _json(start_response, obj, status=200, extra=()):
    data = json.dumps(obj, sort_keys=True).encode()
    start_response(_status_line(status), [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        *extra,
    ])
    return [data]


def _text(start_response, text, status=200, extra=()):
    data = text.encode()
    start_response(_status_line(status), [
        ("Content-Type", "text/plain"), ("Content-Length", str(len(data))), *extra])
    return [data]


def _echo_obj(environ, body):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "method": environ["REQUEST_METHOD"],
        "path": environ.get("PATH_INFO", ""),
        "query": environ.get("QUERY_STRING", ""),
        "args": _args(environ),
        "headers": _request_headers(environ),
        "body": text,
        "body_b64": base64.b64encode(body).decode(),
        "http_version": environ.get("SERVER_PROTOCOL", ""),
    }


# -- handlers ----------------------------------------------------------------------------------


def _h_echo(environ, start_response):
    return _json(start_response, _echo_obj(environ, _read_body(environ)))


def _h_headers(environ, start_response):
    return _json(start_response, {"headers": _request_headers(environ)})


def _h_status(environ, start_response, code):
    code = int(code)
    if code < 200 or code in (204, 304):
        start_response(_status_line(code), [])
        return []
    extra = [("Location", "/echo")] if 300 <= code < 400 else []
    return _text(start_response, "%d\n" % code, status=code, extra=extra)


def _h_bytes(environ, start_response, n):
    n = int(n)
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(n))])
    return [_pattern(n)]


def _h_chunked(environ, start_response, n):
    n = int(n)
    args = _args(environ)
    size = int(args.get("chunk") or max(1, min(16384, -(-n // 4))))
    delay = float(args.get("delay") or 0)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def chunks():
        sent = 0
        while sent < n:
            piece = _pattern(min(size, n - sent), sent)
            sent += len(piece)
            yield piece
            if delay and sent < n:
                time.sleep(delay)

    return chunks()


def _h_slow(environ, start_response, seconds):
    seconds = float(seconds)
    time.sleep(seconds)
    return _json(start_response, {"slept": seconds})


def _h_stall_body(environ, start_response):
    args = _args(environ)
    seconds = float(args.get("seconds") or 30)
    size = int(args.get("size") or 1000)
    first = size // 10 or 1
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])

    def body():
        yield _pattern(first)
        time.sleep(seconds)
        yield _pattern(size - first, first)

    return body()


def _h_redirect(environ, start_response, n):
    n = int(n)
    absolute = _args(environ).get("absolute") in ("1", "true")
    target = "/redirect/%d" % (n - 1) if n > 1 else "/echo"
    if absolute:
        target = "%s://%s%s" % (environ["wsgi.url_scheme"], environ.get("HTTP_HOST", ""), target)
    return _text(start_response, "redirecting\n", status=302, extra=[("Location", target)])


def _h_redirect_to(environ, start_response):
    args = _args(environ)
    status = int(args.get("status") or 302)
    return _text(start_response, "redirecting\n", status=status,
                 extra=[("Location", args.get("url") or "/echo")])


def _compressed(environ, start_response, encoding):
    obj = _echo_obj(environ, b"")
    obj[encoding if encoding != "deflate" else "deflated"] = True
    raw = json.dumps(obj, sort_keys=True).encode()
    if encoding == "gzip":
        data = gzip.compress(raw)
    elif _args(environ).get("raw") in ("1", "true"):
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = c.compress(raw) + c.flush()
    else:
        data = zlib.compress(raw)
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Encoding", encoding),
                              ("Content-Length", str(len(data)))])
    return [data]


def _h_close(environ, start_response):
    return _text(start_response, "closing\n", extra=[("Connection", "close")])


def _h_upload(environ, start_response):
    digest = hashlib.sha256()
    length = 0
    stream = environ["wsgi.input"]
    remaining = int(environ["CONTENT_LENGTH"]) if environ.get("CONTENT_LENGTH") else None
    while remaining is None or remaining > 0:
        chunk = stream.read(65536 if remaining is None else min(65536, remaining))
        if not chunk:
            break
        digest.update(chunk)
        length += len(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    return _json(start_response, {"length": length, "sha256": digest.hexdigest()})


def _h_retry_after(environ, start_response):
    key = _args(environ).get("key") or "default"
    marker = os.path.join(_STATE_DIR, "retry-" + hashlib.sha256(key.encode()).hexdigest())
    try:
        # O_EXCL makes "first time" atomic across gunicorn's worker processes
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return _json(start_response, {"key": key, "retried": True})
    return _json(start_response, {"key": key, "retry_after": 1}, status=503,
                 extra=[("Retry-After", "1")])


def _cookie_dict(environ):
    from http.cookies import SimpleCookie
    jar = SimpleCookie()
    jar.load(environ.get("HTTP_COOKIE", ""))
    return {k: m.value for k, m in jar.items()}


def _h_cookies(environ, start_response):
    return _json(start_response, {"cookies": _cookie_dict(environ)})


def _h_cookies_set(environ, start_response):
    qs = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    extra = [("Set-Cookie", v) for v in qs.get("c", [])]
    if qs.get("redirect"):
        return _text(start_response, "redirecting\n", status=302,
                     extra=extra + [("Location", qs["redirect"][0])])
    return _json(start_response, {"cookies": _cookie_dict(environ)}, extra=extra)


def _h_basic_auth(environ, start_response, user, password):
    value = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "basic":
        try:
            got = base64.b64decode(token).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            got = None
        if got == "%s:%s" % (user, password):
            return _json(start_response, {"authenticated": True, "user": user})
    return _json(start_response, {"authenticated": False}, status=401,
                 extra=[("WWW-Authenticate", 'Basic realm="test"')])


_DIGEST_SECRET = b"greenpool-test-digest"
_DIGEST_HASH = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256,
                "MD5-SESS": hashlib.md5, "SHA-256-SESS": hashlib.sha256}


def _digest_nonce():
    # stateless (several workers): a timestamp signed with the app's secret
    stamp = "%.6f" % time.time()
    sig = hashlib.sha256(_DIGEST_SECRET + stamp.encode()).hexdigest()[:16]
    return "%s-%s" % (stamp, sig)


def _digest_nonce_ok(nonce):
    stamp, _, sig = nonce.partition("-")
    return hashlib.sha256(_DIGEST_SECRET + stamp.encode()).hexdigest()[:16] == sig


def _digest_challenge(start_response, qop, algorithm, stale=False):
    value = 'Digest realm="me@test", nonce="%s", opaque="op4que", algorithm=%s' % (
        _digest_nonce(), algorithm)
    if qop != "none":
        value += ', qop="%s"' % qop
    if stale:
        value += ", stale=TRUE"
    return _json(start_response, {"authenticated": False, "stale": stale}, status=401,
                 extra=[("WWW-Authenticate", value)])


def _h_digest_auth(environ, start_response, qop, user, password, algorithm):
    from werkzeug.datastructures import Authorization
    algorithm = algorithm.upper()
    h = _DIGEST_HASH[algorithm]
    auth = Authorization.from_header(environ.get("HTTP_AUTHORIZATION"))
    if auth is None or auth.type != "digest" or auth.get("username") != user \
            or not _digest_nonce_ok(auth.get("nonce") or ""):
        return _digest_challenge(start_response, qop, algorithm)

    def hx(s):
        return h(s.encode("utf-8")).hexdigest()

    a1 = hx("%s:%s:%s" % (user, auth.realm, password))
    if algorithm.endswith("-SESS"):
        a1 = hx("%s:%s:%s" % (a1, auth.nonce, auth.cnonce))
    uri = environ.get("PATH_INFO", "") + (
        "?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")
    a2 = hx("%s:%s" % (environ["REQUEST_METHOD"], uri))
    if qop == "none":
        expected = hx("%s:%s:%s" % (a1, auth.nonce, a2))
    else:
        expected = hx("%s:%s:%s:%s:%s:%s" % (a1, auth.nonce, auth.nc, auth.cnonce, auth.qop, a2))
    if auth.get("uri") != uri or auth.response != expected:
        return _digest_challenge(start_response, qop, algorithm)
    stale_after = _args(environ).get("stale_after")
    if stale_after and int(auth.nc or "0", 16) > int(stale_after):
        return _digest_challenge(start_response, qop, algorithm, stale=True)
    return _json(start_response, {"authenticated": True, "user": user, "nc": auth.nc,
                                  "algorithm": algorithm})


def _h_multipart(environ, start_response):
    from werkzeug.formparser import parse_form_data

    def spool(total_content_length, content_type, filename, content_length=None):
        return tempfile.TemporaryFile()

    _, form, files = parse_form_data(environ, stream_factory=spool, max_form_memory_size=None)
    out_files = {}
    for name, storage in files.items(multi=True):
        digest = hashlib.sha256()
        length = 0
        while True:
            chunk = storage.stream.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            length += len(chunk)
        out_files[name] = {"filename": storage.filename, "content_type": storage.content_type,
                           "length": length, "sha256": digest.hexdigest()}
        storage.close()
    fields = {k: v if len(v) > 1 else v[0] for k, v in form.lists()}
    return _json(start_response, {"fields": fields, "files": out_files,
                                  "content_type": environ.get("CONTENT_TYPE", ""),
                                  "content_length": environ.get("CONTENT_LENGTH"),
                                  "chunked": "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "")})


_ROUTES = [
    (re.compile(r"^/echo(?:/.*)?$"), _h_echo),
    (re.compile(r"^/headers$"), _h_headers),
    (re.compile(r"^/status/(\d{3})$"), _h_status),
    (re.compile(r"^/bytes/(\d+)$"), _h_bytes),
    (re.compile(r"^/chunked/(\d+)$"), _h_chunked),
    (re.compile(r"^/slow/(\d+(?:\.\d+)?)$"), _h_slow),
    (re.compile(r"^/stall-body$"), _h_stall_body),
    (re.compile(r"^/redirect/(\d+)$"), _h_redirect),
    (re.compile(r"^/redirect-to$"), _h_redirect_to),
    (re.compile(r"^/gzip$"), lambda e, s: _compressed(e, s, "gzip")),
    (re.compile(r"^/deflate$"), lambda e, s: _compressed(e, s, "deflate")),
    (re.compile(r"^/close$"), _h_close),
    (re.compile(r"^/upload$"), _h_upload),
    (re.compile(r"^/retry-after$"), _h_retry_after),
    (re.compile(r"^/cookies$"), _h_cookies),
    (re.compile(r"^/cookies/set$"), _h_cookies_set),
    (re.compile(r"^/basic-auth/([^/]+)/([^/]+)$"), _h_basic_auth),
    (re.compile(r"^/digest-auth/(auth|none)/([^/]+)/([^/]+)/([A-Za-z0-9-]+)$"), _h_digest_auth),
    (re.compile(r"^/multipart$"), _h_multipart),
]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/":
        return _text(start_response, "ok\n")
    for regex, handler in _ROUTES:
        m = regex.match(path)
        if m:
            return handler(environ, start_response, *m.groups())
    return _text(start_response, "not found: %s\n" % path, status=404)


application = app


# -- gunicorn configuration hooks (this module is also loaded with -c python:wsgi_app) --------


def pre_request(worker, req):
    """Make gunicorn close the connection after ``/close`` (it ignores the app's header)."""
    if req.path == "/close":
        req.must_close = True
