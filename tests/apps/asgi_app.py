"""An ASGI app for the interop tests, served by hypercorn over HTTP/1.1, h2c and h2 (TLS).

Standard library only. Endpoints:

- ``/echo``            JSON: method, path, query, headers, body (text or null), body_b64,
                       http_version ("1.1" or "2": how the request arrived)
- ``/bytes/<n>``       n bytes of the 0..255 pattern, with Content-Length
- ``/stream/<n>``      the same n bytes in several body messages, no Content-Length
                       (``?chunk=<size>``, ``?delay=<s>`` between chunks)
- ``/upload``          reads the body; JSON: length and sha256
- ``/slow/<seconds>``  sleeps, then answers JSON ``{"slept": seconds}``
"""

import asyncio
import base64
import hashlib
import json
import re
from urllib.parse import parse_qs

_PATTERN = bytes(range(256))


def _pattern(n, offset=0):
    start = offset % 256
    return (_PATTERN * ((start + n) // 256 + 1))[start:start + n]


def _args(scope):
    qs = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()}


async def _read_body(receive, sink=None):
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        if sink is not None:
            sink(chunk)
        else:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_json(send, obj, status=200):
    data = json.dumps(obj, sort_keys=True).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _echo(scope, receive, send):
    body = await _read_body(receive)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    headers = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        value = value.decode("latin-1")
        headers[key] = headers[key] + ", " + value if key in headers else value
    await _send_json(send, {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope.get("query_string", b"").decode("latin-1"),
        "args": _args(scope),
        "headers": headers,
        "body": text,
        "body_b64": base64.b64encode(body).decode(),
        "http_version": scope.get("http_version", ""),
    })


async def _bytes(scope, receive, send, n):
    n = int(n)
    await _read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/octet-stream"), (b"content-length", str(n).encode())]})
    await send({"type": "http.response.body", "body": _pattern(n)})


async def _stream(scope, receive, send, n):
    n = int(n)
    args = _args(scope)
    size = int(args.get("chunk") or max(1, min(16384, -(-n // 4))))
    delay = float(args.get("delay") or 0)
    await _read_body(receive)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")]})
    sent = 0
    while sent < n:
        piece = _pattern(min(size, n - sent), sent)
        sent += len(piece)
        await send({"type": "http.response.body", "body": piece, "more_body": True})
        if delay and sent < n:
            await asyncio.sleep(delay)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _upload(scope, receive, send):
    digest = hashlib.sha256()
    length = 0

    def sink(chunk):
        nonlocal length
        digest.update(chunk)
        length += len(chunk)

    await _read_body(receive, sink)
    await _send_json(send, {"length": length, "sha256": digest.hexdigest()})


async def _slow(scope, receive, send, seconds):
    seconds = float(seconds)
    await _read_body(receive)
    await asyncio.sleep(seconds)
    await _send_json(send, {"slept": seconds})


async def _not_found(scope, receive, send):
    await _read_body(receive)
    await _send_json(send, {"error": "not found", "path": scope["path"]}, status=404)


_ROUTES = [
    (re.compile(r"^/echo(?:/.*)?$"), _echo),
    (re.compile(r"^/bytes/(\d+)$"), _bytes),
    (re.compile(r"^/stream/(\d+)$"), _stream),
    (re.compile(r"^/upload$"), _upload),
    (re.compile(r"^/slow/(\d+(?:\.\d+)?)$"), _slow),
]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/":
        await _read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/plain"), (b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"ok\n"})
        return
    for regex, handler in _ROUTES:
        m = regex.match(path)
        if m:
            await handler(scope, receive, send, *m.groups())
            return
    await _not_found(scope, receive, send)
