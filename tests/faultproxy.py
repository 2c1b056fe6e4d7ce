"""A controllable TCP proxy on 127.0.0.1 for the fault-injection tests (tests/test_faults.py).

What this owns: one gevent listener on a fixed loopback port that forwards every accepted
connection to an upstream ``(host, port)`` (a real server fixture, a :class:`fakes.FakeServer`
or an ``HTTPFake``), and a set of faults a test switches on and off while traffic flows.

``mode`` is read when a connection is accepted and again for every chunk, so a switch takes
effect at once:

=================  ==========================================================================
``"forward"``      pass bytes both ways (the default)
``"blackhole"``    accept, read everything, never answer
``"slow"``         forward, but the upstream's answer goes out one byte per ``delay`` seconds
``"reset"``        forward ``reset_after`` bytes of the answer, then RST both sides
``"half_close"``   on the first request bytes, send FIN to the client (keep reading from it)
``"garbage"``      answer the first request bytes with ``garbage``, then close
=================  ==========================================================================

Other controls: :meth:`refuse` (close the listener: connects are refused), :meth:`listen`
(listen again on the same port), :meth:`restart` (drop every connection, refuse for
``downtime`` seconds, listen again), :meth:`pause`/:meth:`resume` (hold all bytes in both
directions), :meth:`close_idle` (close client connections quiet for ``idle`` seconds, as a
server's keep-alive timeout would), :meth:`drop_all` (close or RST every connection);
``upstream_filter(bytes) -> bytes`` rewrites what clients send, chunk by chunk, in the
forwarding modes.

The proxy's own greenlets and sockets all go at :meth:`stop` (or the end of a ``with``), so a
test wrapped in ``no_leaks`` sees none of them.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Any, Callable, List, Optional, Set, Tuple

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.server import StreamServer

MODES = ("forward", "blackhole", "slow", "reset", "half_close", "garbage")


def _rst(sock: Any) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Pair:
    """One proxied connection: the client side, the upstream side, its two pumps."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.upstream: Any = None
        self.greenlets: List[Any] = []
        self.last_activity = time.monotonic()
        self.sent_down = 0
        self.closed = False

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for s in (self.client, self.upstream):
            if s is None:
                continue
            if reset:
                _rst(s)
            else:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


class FaultProxy:
    """``FaultProxy(upstream=("127.0.0.1", port))``; ``port``/``url``; see the module docs."""

    def __init__(self, upstream: Tuple[str, int], port: int = 0, *, mode: str = "forward",
                 delay: float = 0.001, reset_after: int = 1,
                 garbage: bytes = b"\x00\xffNOT-A-PROTOCOL\r\n\r\n",
                 upstream_filter: Optional[Callable[[bytes], bytes]] = None) -> None:
        self.upstream = upstream
        self.upstream_filter = upstream_filter
        self.mode = mode
        self.delay = delay
        self.reset_after = reset_after
        self.garbage = garbage
        self.accepted = 0
        self.pairs: Set[_Pair] = set()
        self._running = Event()
        self._running.set()
        self._server: Optional[StreamServer] = None
        self.port = port
        self.listen()

    # -- controls --

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError("mode must be one of %s, not %r" % (MODES, value))
        self._mode = value

    def listen(self) -> None:
        """Listen (again) on ``port`` (0 the first time: any free port)."""
        if self._server is not None:
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                # the listener is made by hand (SO_REUSEADDR, then bind) so a restart can
                # take the same port back while old connections sit in TIME_WAIT
                lsock = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    lsock.bind(("127.0.0.1", self.port))
                except OSError:
                    lsock.close()
                    raise
                lsock.listen(512)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                gevent.sleep(0.02)
        self._server = StreamServer(lsock, self._handle)
        self._server.start()
        self.port = self._server.server_port

    def refuse(self) -> None:
        """Close the listener: new connects get ECONNREFUSED. Open connections stay."""
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def drop_all(self, reset: bool = False) -> None:
        """Close (FIN, or RST with ``reset=True``) every proxied connection, both sides."""
        for pair in list(self.pairs):
            pair.close(reset)

    def restart(self, downtime: float = 0.0, reset: bool = False) -> None:
        """As a server restart: refuse, drop every connection, wait ``downtime``, listen."""
        self.refuse()
        self.drop_all(reset)
        if downtime:
            gevent.sleep(downtime)
        self.listen()

    def pause(self) -> None:
        """Hold every byte in both directions until :meth:`resume`."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def close_idle(self, idle: float = 0.0) -> int:
        """Close the client connections quiet for at least ``idle`` seconds; how many."""
        now = time.monotonic()
        n = 0
        for pair in list(self.pairs):
            if now - pair.last_activity >= idle:
                pair.close()
                n += 1
        return n

    def stop(self) -> None:
        self.refuse()
        self._running.set()
        self.drop_all()
        gs = [g for pair in list(self.pairs) for g in pair.greenlets]
        gevent.killall(gs, timeout=2)
        self.pairs.clear()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return "<FaultProxy :%d -> %s:%d mode=%s conns=%d%s>" % (
            self.port, self.upstream[0], self.upstream[1], self._mode, len(self.pairs),
            "" if self._running.is_set() else " paused")

    # -- the connection handlers --

    def _handle(self, client: Any, addr: Any) -> None:
        self.accepted += 1
        pair = _Pair(client)
        pair.greenlets.append(gevent.getcurrent())
        self.pairs.add(pair)
        try:
            mode = self._mode
            if mode in ("blackhole", "half_close", "garbage"):
                self._answer_locally(pair, mode)
                return
            try:
                pair.upstream = gsocket.create_connection(self.upstream, timeout=5)
                pair.upstream.settimeout(None)
            except OSError:
                return
            up = gevent.spawn(self._pump, pair, client, pair.upstream, False)
            pair.greenlets.append(up)
            self._pump(pair, pair.upstream, client, True)
            up.join()
        except OSError:
            pass
        finally:
            pair.close()
            self.pairs.discard(pair)

    def _answer_locally(self, pair: _Pair, mode: str) -> None:
        first = True
        while True:
            data = pair.client.recv(65536)
            if not data:
                return
            pair.last_activity = time.monotonic()
            if first and mode == "half_close":
                pair.client.shutdown(socket.SHUT_WR)
            elif first and mode == "garbage":
                pair.client.sendall(self.garbage)
                return
            first = False

    def _pump(self, pair: _Pair, src: Any, dst: Any, downstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                self._running.wait()
                if pair.closed:
                    return
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                pair.last_activity = time.monotonic()
                mode = self._mode
                if downstream and mode == "slow":
                    for i in range(len(data)):
                        self._running.wait()
                        dst.sendall(data[i:i + 1])
                        gevent.sleep(self.delay)
                elif downstream and mode == "reset":
                    room = self.reset_after - pair.sent_down
                    if room > 0:
                        dst.sendall(data[:room])
                        pair.sent_down += min(room, len(data))
                    if pair.sent_down >= self.reset_after:
                        pair.close(reset=True)
                        return
                    continue
                else:
                    if not downstream and self.upstream_filter is not None:
                        data = self.upstream_filter(data)
                    dst.sendall(data)
                if downstream:
                    pair.sent_down += len(data)
                pair.last_activity = time.monotonic()
        except OSError:
            pass
        finally:
            if downstream:
                pair.close()
