"""A scriptable HTTP/1.1 server on FakeServer, for client tests that need malformed or
odd responses.  ``HTTPFake(respond)``: ``respond(req, sock)`` returns the raw response
bytes (or None after writing to ``sock`` itself, or ``CLOSE`` to close without answering).
``req`` has ``method``, ``target``, ``headers`` (lowercase dict), ``body``, ``n`` (the
request's number on its connection) and ``conn`` (the connection's number)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from fakes import FakeServer

CLOSE: Any = object()


class Req:
    def __init__(self, method: str, target: str, headers: Dict[str, str], body: bytes,
                 n: int, conn: int, raw: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.n = n
        self.conn = conn
        self.raw = raw

    def __repr__(self) -> str:
        return "<Req %s %s #%d/%d>" % (self.method, self.target, self.conn, self.n)


def ok(body: bytes = b"hello", *headers: str, status: str = "200 OK") -> bytes:
    extra = "".join(h + "\r\n" for h in headers)
    return ("HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n" % (status, len(body), extra)).encode() + body


def read_request(sock: Any, buf: bytearray, expect_hook: Optional[Callable[[Any], None]] = None) -> Optional[tuple]:
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    i = buf.index(b"\r\n\r\n")
    head = bytes(buf[:i])
    del buf[:i + 4]
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("expect", "").lower() == "100-continue" and expect_hook is not None:
        expect_hook(sock)
    body = b""
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
        body = bytes(buf[:n])
        del buf[:n]
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts: List[bytes] = []
        while True:
            while b"\r\n" not in buf:
                buf += sock.recv(65536)
            j = buf.index(b"\r\n")
            size = int(bytes(buf[:j]).split(b";")[0], 16)
            del buf[:j + 2]
            while len(buf) < size + 2:
                buf += sock.recv(65536)
            parts.append(bytes(buf[:size]))
            del buf[:size + 2]
            if size == 0:
                break
        body = b"".join(parts)
    return method, target, headers, body, head


class HTTPFake(FakeServer):
    def __init__(self, respond: Callable[[Req, Any], Any], ssl_context: Any = None,
                 expect_hook: Optional[Callable[[Any], None]] = None) -> None:
        self.respond = respond
        self.requests: List[Req] = []
        self.expect_hook = expect_hook
        self._conns = 0
        self._greenlets: List[Any] = []
        super().__init__(self._serve, ssl_context=ssl_context)

    def stop(self) -> None:
        """Stop, killing handlers still asleep in a scripted stall."""
        import gevent
        gevent.killall([g for g in self._greenlets if not g.dead])
        super().stop()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def _serve(self, sock: Any, server: Any) -> None:
        import gevent
        self._greenlets = [g for g in self._greenlets if not g.dead] + [gevent.getcurrent()]
        self._conns += 1
        conn = self._conns
        buf = bytearray()
        n = 0
        while True:
            got = read_request(sock, buf, self.expect_hook)
            if got is None:
                return
            n += 1
            method, target, headers, body, head = got
            req = Req(method, target, headers, body, n, conn, head)
            self.requests.append(req)
            out = self.respond(req, sock)
            if out is CLOSE:
                return
            if out is not None:
                sock.sendall(out)
