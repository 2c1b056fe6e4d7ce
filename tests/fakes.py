"""In-process loopback servers and pool assertions for the unit tests.

What this owns: small gevent TCP/TLS servers on 127.0.0.1 whose behaviour a
test controls (echo, hold, close, reset, write unprompted, refuse), and
:func:`assert_exact`, the check every fault test ends with.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Any, Callable, List, Optional

import gevent
import gevent.ssl as gssl
from gevent.server import StreamServer


class FakeServer:
    """A gevent StreamServer on 127.0.0.1:0 that echoes until told otherwise.

    ``handler(sock, server)`` replaces the echo loop.  ``clients`` holds the
    server side of every open connection so a test can close or reset them.
    """

    def __init__(self, handler: Optional[Callable[[Any, "FakeServer"], None]] = None,
                 ssl_context: Any = None) -> None:
        self.handler = handler or echo
        self.accepted = 0
        self.clients: List[Any] = []
        self.ssl_context = ssl_context
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock: Any, addr: Any) -> None:
        self.accepted += 1
        try:
            if self.ssl_context is not None:
                # a stdlib context would handshake blocking: wrap with gevent's SSLSocket
                sock = gssl.SSLSocket(sock=sock, server_side=True, _context=self.ssl_context)
            self.clients.append(sock)
            self.handler(sock, self)
        except OSError:
            pass
        finally:
            if sock in self.clients:
                self.clients.remove(sock)
            sock.close()

    def close_clients(self, reset: bool = False, shutdown: bool = False) -> None:
        """Close (or RST) the server side of every open connection.

        gevent defers the real close of a socket another greenlet is reading
        until the hub runs; ``shutdown=True`` sends the FIN at once.
        """
        for sock in list(self.clients):
            if shutdown:
                sock.shutdown(socket.SHUT_RDWR)
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                sock.close()
            except OSError:
                pass
        self.clients.clear()

    def stop(self) -> None:
        self.close_clients()
        self.server.stop(timeout=1)

    def __enter__(self) -> "FakeServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def echo(sock: Any, server: FakeServer) -> None:
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


def hold(sock: Any, server: FakeServer) -> None:
    """Accept and keep the connection open, never answering."""
    while sock.recv(65536):
        pass


def refused_port() -> int:
    """A loopback port nobody listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def assert_exact(pool: Any) -> None:
    """in_use + free == open, and the per-host books agree with the pool's."""
    stats = pool.get_stats()
    assert stats["in_use_count"] + stats["free_count"] == stats["open"], stats
    assert stats["open"] == sum(h.open for h in pool._hosts.values()), stats
    assert pool._idle_count == sum(len(h.idle) for h in pool._hosts.values()), stats
    assert len(pool._in_use) == sum(h.in_use for h in pool._hosts.values()), stats
    assert stats["queue_count"] == sum(h.live for h in pool._hosts.values()), stats
    assert 0 <= stats["open"] <= max(pool.max_connections, stats["open"]), stats
    for h in pool._hosts.values():
        assert h.open == h.in_use + h.connecting + len(h.idle) + len(h.shared) + len(h.retired), h.key


def until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``condition`` every 10 ms until it is true or ``timeout`` passes; its last value.

    Verdicts wait for what they check instead of sleeping a fixed time and hoping: on
    a busy machine a fixed sleep is too short, and a generous ``timeout`` costs nothing
    when things go right."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        gevent.sleep(0.01)


def settle(seconds: float = 0.02) -> None:
    """Let the hub run callbacks and watchers."""
    gevent.sleep(seconds)


class ProcessEchoServer:
    """An echo server in a child process (for fork tests: nothing of it is shared
    with a process the test forks)."""

    CODE = (
        "import socketserver, sys\n"
        "class H(socketserver.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        while True:\n"
        "            d = self.request.recv(65536)\n"
        "            if not d: return\n"
        "            self.request.sendall(d)\n"
        "socketserver.ThreadingTCPServer.daemon_threads = True\n"
        "s = socketserver.ThreadingTCPServer(('127.0.0.1', 0), H)\n"
        "print(s.server_address[1], flush=True)\n"
        "s.serve_forever()\n"
    )

    def __enter__(self) -> "ProcessEchoServer":
        import subprocess
        import sys
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
