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
