"""HTTP/3 servers for the tests: Caddy (a real one) and an in-process qh3 server (faults).

:class:`Caddy` serves HTTP/1.1, HTTP/2 and HTTP/3 (UDP) on one port of 127.0.0.1 with the
test CA's certificate, sends ``Alt-Svc: h3=":<port>"``, has no admin endpoint, no ACME and
no automatic HTTPS: ``/`` answers :data:`CADDY_BODY`, ``/bytes/64k`` and ``/bytes/1m`` are
static files of :func:`pattern` bytes, so are ``/n/<size>`` for each size of :data:`LOSS_SIZES`,
and ``POST /echo`` answers the request body.

:class:`H3Server` runs in the test's own gevent hub (a greenlet on a UDP socket bound to 127.0.0.1), one
QUIC connection per client address.  Routes:

- ``GET /`` -> :data:`BODY`; ``GET /n/<size>`` -> ``size`` bytes of :func:`pattern`;
- ``POST``/``PUT`` anything -> the request body echoed;
- ``/slow/<seconds>`` (any method) -> ``b"slow"`` after a delay (others are served meanwhile);
- ``GET /chunks/<n>`` -> ``n`` DATA frames of ``b"chunk%d\\n"``, 10 ms apart;
- ``GET /hang`` -> headers, then nothing (the stream stays open);
- ``GET /close`` -> headers and a little data, then CONNECTION_CLOSE mid-stream;
- ``GET /upper`` -> a head with an upper-case field name; ``GET /badstatus`` -> the names of
  a good head (``:status``, ``content-length``) with a status that is not a number;
- ``GET /goaway`` -> the answer, then a GOAWAY whose id is the next client stream;
- ``GET /goaway-first`` -> a GOAWAY whose id is the next client stream, then the answer;
  streams at or above a GOAWAY's id are never answered (not processed).

Knobs: ``max_streams`` (the bidirectional streams a client may have open at once: the
MAX_STREAMS advertised and enforced),
``idle_timeout``, ``goaway_after`` (send GOAWAY after that many requests, with the id of
the next stream), ``early_data`` (False: session tickets are not honoured, so 0-RTT is
rejected; ``early_requests`` counts requests that came in 0-RTT), :meth:`stop` (a crash:
the socket closes, state is lost) and :meth:`restart` (the same port, a new process state:
old connections are unknown, their packets dropped, as a peer that lost its keys).
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import gevent
import gevent.socket as gsocket
from qh3._hazmat import pull_quic_header
from qh3.h3.connection import H3Connection
from qh3.h3.events import DataReceived, HeadersReceived
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.events import ProtocolNegotiated
from qh3.quic.packet import QuicPacketType

from servers import HOST, TLS, Server, _tcp_probe, find_binary  # noqa: E402

BODY = b"hello over h3\n"
CADDY_BODY = b"hello from caddy"
LOSS_SIZES = [i * 97 for i in range(100)]   # Caddy's /n/<size> files


def pattern(n: int) -> bytes:
    unit = bytes(range(256))
    return (unit * (n // 256 + 1))[:n]


class Caddy(Server):
    """Caddy 2 with ``protocols h1 h2 h3``; ``url`` is https (TCP and UDP on ``port``)."""

    name = "caddy"

    def __init__(self, directory: Any, tls: TLS, *, alt_svc: bool = True) -> None:
        self.binary = find_binary("caddy", "caddy")
        self.tls = tls
        self.alt_svc = alt_svc
        super().__init__(directory)

    @property
    def url(self) -> str:
        return "https://%s:%d" % (HOST, self.port)

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["HOME"] = str(self.dir)
        env["XDG_DATA_HOME"] = str(self.dir / "data")
        env["XDG_CONFIG_HOME"] = str(self.dir / "config")
        return env

    def prepare(self) -> None:
        root = self.dir / "html"
        (root / "bytes").mkdir(parents=True, exist_ok=True)
        (root / "bytes" / "64k").write_bytes(pattern(64 * 1024))
        (root / "bytes" / "1m").write_bytes(pattern(1024 * 1024))
        (root / "n").mkdir(exist_ok=True)
        for size in LOSS_SIZES:
            (root / "n" / str(size)).write_bytes(pattern(size))
        (self.dir / "Caddyfile").write_text("""{
    admin off
    auto_https off
    skip_install_trust
    servers {
        protocols h1 h2 h3
    }
}
https://%(host)s:%(port)d, https://localhost:%(port)d {
    bind %(host)s
    tls %(cert)s %(key)s
    %(header)s
    handle /echo {
        respond "{http.request.body}" 200
    }
    handle /n/* {
        root * %(root)s
        file_server
    }
    handle /bytes/* {
        root * %(root)s
        file_server
    }
    handle {
        respond "%(body)s" 200
    }
}
""" % {"host": HOST, "port": self.port, "cert": self.tls.cert_path, "key": self.tls.key_path,
       "root": root, "body": CADDY_BODY.decode(),
       "header": "" if self.alt_svc else "header -Alt-Svc"})

    def command(self) -> List[str]:
        return [self.binary, "run", "--config", str(self.dir / "Caddyfile"), "--adapter", "caddyfile"]

    def ready(self) -> bool:
        if not _tcp_probe(self.port):
            return False
        import psutil
        assert self.proc is not None
        try:
            conns = psutil.Process(self.proc.pid).net_connections(kind="udp")
        except psutil.Error:
            return False
        return any(c.laddr[1] == self.port for c in conns)


class _ServerQuic(QuicConnection):
    """qh3's server connection with ``max_streams`` as its bidirectional MAX_STREAMS
    (qh3 passes a fixed 100 to its native core; the core keeps that many open at once,
    raising the limit as streams complete)."""

    max_streams = 100
    _LIMIT_ARG = 21      # local_max_streams_bidi among QuicConnectionCore's arguments

    def _create_core(self, remote_addr: Any, initial_dcid: bytes, now: float) -> None:
        import qh3.quic.connection as qc
        real = qc.QuicConnectionCore
        limit = self.max_streams

        def make(*args: Any) -> Any:
            args_l = list(args)
            assert args_l[self._LIMIT_ARG] == 100, "qh3 changed QuicConnectionCore's arguments"
            args_l[self._LIMIT_ARG] = limit
            return real(*args_l)
        qc.QuicConnectionCore = make  # type: ignore[misc]
        try:
            super()._create_core(remote_addr, initial_dcid, now)
        finally:
            qc.QuicConnectionCore = real  # type: ignore[misc]

    def _create_tls(self, remote_source_cid: Any) -> Any:
        """The transport parameters advertise the same limit (qh3 writes a fixed 100)."""
        bridge = super()._create_tls(remote_source_cid)
        if self.max_streams == 100:
            return bridge
        from qh3._hazmat import Buffer
        from qh3.quic.packet import pull_quic_transport_parameters, push_quic_transport_parameters
        from qh3.tls import ExtensionType
        extensions = []
        for kind, data in bridge.tls.handshake_extensions:
            if kind == ExtensionType.QUIC_TRANSPORT_PARAMETERS:
                params = pull_quic_transport_parameters(Buffer(data=data))
                params.initial_max_streams_bidi = self.max_streams
                buf = Buffer(capacity=4096)
                push_quic_transport_parameters(buf, params)
                data = buf.data
            extensions.append((kind, data))
        bridge.tls.handshake_extensions = extensions
        return bridge


class _Peer:
    def __init__(self, server: "H3Server", quic: QuicConnection, addr: Tuple[str, int]) -> None:
        self.server = server
        self.quic = quic
        self.addr = addr
        self.h3: Optional[H3Connection] = None
        self.requests: Dict[int, Tuple[List[Tuple[bytes, bytes]], List[bytes]]] = {}
        self.served = 0
        self.goaway_sent = False
        self.goaway_id: Optional[int] = None
        self.odcid = b""
        self.cids: Set[bytes] = set()


class H3Server:
    """See the module docstring.  ``port`` is fixed at construction (kept across restarts)."""

    def __init__(self, cert: str, key: str, *, max_streams: int = 100, idle_timeout: float = 30.0,
                 goaway_after: Optional[int] = None, host: str = "127.0.0.1",
                 port: int = 0, early_data: bool = True) -> None:
        self.cert = cert
        self.key = key
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self.goaway_after = goaway_after
        self.host = host
        self.port = port
        self.sock: Optional[gsocket.socket] = None
        self.peers: Dict[Tuple[str, int], _Peer] = {}
        self.greenlets: List[gevent.Greenlet] = []
        self.connections = 0   # QUIC connections accepted over the server's life
        self.requests = 0
        self.max_open_seen = 0
        self.library_errors = 0
        self.tickets: Dict[bytes, Any] = {}   # issued session tickets, for resumption
        self.early_data = early_data
        self.early_requests = 0    # requests that arrived before the handshake ended (0-RTT)

    def _fetch_ticket(self, label: bytes) -> Any:
        ticket = self.tickets.pop(label, None)
        if not self.early_data:
            return None     # no resumption: early data rejected, a full handshake
        return ticket

    def _keep_ticket(self, ticket: Any) -> None:
        self.tickets[ticket.ticket] = ticket

    @property
    def url(self) -> str:
        return "https://%s:%d" % (self.host, self.port)

    # -- lifecycle --

    def start(self) -> "H3Server":
        sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self.sock = sock
        self.greenlets.append(gevent.spawn(self._serve, sock))
        return self

    def stop(self) -> None:
        for g in self.greenlets:
            g.kill()
        self.greenlets = []
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.peers = {}

    def restart(self) -> "H3Server":
        self.stop()
        return self.start()

    def __enter__(self) -> "H3Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def close_all(self, error_code: int = 0, reason: str = "") -> None:
        """CONNECTION_CLOSE to every client."""
        for peer in list(self.peers.values()):
            peer.quic.close(error_code=error_code, reason_phrase=reason)
            self._flush(peer)

    # -- the loop --

    def _config(self) -> QuicConfiguration:
        cfg = QuicConfiguration(is_client=False, alpn_protocols=["h3"],
                                idle_timeout=self.idle_timeout,
                                max_datagram_frame_size=65536)
        cfg.load_cert_chain(self.cert, self.key)
        return cfg

    def _serve(self, sock: gsocket.socket) -> None:
        while True:
            peer_timer = min((p.quic.get_timer() or 1e18 for p in self.peers.values()), default=1e18)
            wait = max(0.0, min(peer_timer - time.monotonic(), 0.5))
            try:
                with gevent.Timeout(wait, False):
                    data, addr = sock.recvfrom(65536)
                    try:
                        self._datagram(data, addr)
                    except (ValueError, AssertionError, RuntimeError):
                        self.library_errors += 1    # qh3's server side under loss: drop it
            except OSError:
                return
            now = time.monotonic()
            for peer in list(self.peers.values()):
                try:
                    t = peer.quic.get_timer()
                    if t is not None and t <= now:
                        peer.quic.handle_timer(now)
                        self._events(peer)
                    self._flush(peer)
                except (ValueError, AssertionError, RuntimeError):
                    self.library_errors += 1

    def _datagram(self, data: bytes, addr: Tuple[str, int]) -> None:
        peer = self.peers.get(addr)
        header = None
        if len(data) >= 1200 and data[0] & 0x80:     # a long header: is it an Initial?
            try:
                header = pull_quic_header(data, 0, 8)
            except ValueError:
                return
            if header[1] != int(QuicPacketType.INITIAL):
                header = None
        if header is not None:
            if peer is not None and header[3] != peer.odcid and header[4] not in peer.cids:
                peer = None      # a new connection from a reused port: forget the old one
        if peer is None:
            if header is None:
                return   # not an Initial: a connection we do not know (e.g. after restart)
            quic = _ServerQuic(configuration=self._config(),
                                  original_destination_connection_id=header[3],
                                  session_ticket_fetcher=self._fetch_ticket,
                                  session_ticket_handler=self._keep_ticket)
            quic.max_streams = self.max_streams
            peer = self.peers[addr] = _Peer(self, quic, addr)
            peer.odcid = header[3]
            peer.cids.add(header[4])
            self.connections += 1
        peer.quic.receive_datagram(data, addr, time.monotonic())
        self._events(peer)
        self._flush(peer)

    def _events(self, peer: _Peer) -> None:
        quic = peer.quic
        while True:
            ev = quic.next_event()
            if ev is None:
                break
            if isinstance(ev, ProtocolNegotiated):
                peer.h3 = H3Connection(quic)
            if peer.h3 is None:
                continue
            for hev in peer.h3.handle_event(ev):
                if isinstance(hev, HeadersReceived):
                    if not quic._handshake_complete:
                        self.early_requests += 1
                    peer.requests[hev.stream_id] = (hev.headers, [])
                    if hev.stream_ended:
                        self._respond(peer, hev.stream_id)
                elif isinstance(hev, DataReceived):
                    req = peer.requests.get(hev.stream_id)
                    if req is not None:
                        req[1].append(hev.data)
                        if hev.stream_ended:
                            self._respond(peer, hev.stream_id)
        open_now = len(peer.requests)
        if open_now > self.max_open_seen:
            self.max_open_seen = open_now

    def _respond(self, peer: _Peer, sid: int) -> None:
        if peer.goaway_id is not None and sid >= peer.goaway_id:
            return      # above our GOAWAY: never processed (the client sends it elsewhere)
        headers, body = peer.requests[sid]
        h = dict(headers)
        method = h.get(b":method", b"GET")
        path = h.get(b":path", b"/").decode("latin-1")
        self.requests += 1
        peer.served += 1
        h3 = peer.h3
        assert h3 is not None
        if path == "/goaway-first":
            self._goaway(peer, sid + 4)         # before answering: streams after it are refused
        if path.startswith("/slow/"):
            delay = float(path[6:])
            self.greenlets.append(gevent.spawn_later(delay, self._send_later, peer, sid, b"slow"))
            return
        if method in (b"POST", b"PUT"):
            self._send(peer, sid, 200, b"".join(body))
        elif path.startswith("/n/"):
            self._send(peer, sid, 200, pattern(int(path[3:])))
        elif path.startswith("/chunks/"):
            self.greenlets.append(gevent.spawn(self._chunks, peer, sid, int(path[8:])))
            return
        elif path == "/upper":              # a field name with upper case: HTTP/3 refuses it
            h3.send_headers(sid, [(b":status", b"200"), (b"X-Upper", b"1")], end_stream=True)
        elif path == "/badstatus":          # the same names as a good head, a status that is no number
            h3.send_headers(sid, [(b":status", b"2x0"), (b"content-length", b"0")], end_stream=True)
        elif path == "/hang":
            h3.send_headers(sid, [(b":status", b"200")], end_stream=False)
            self._flush(peer)
            return
        elif path == "/close":
            h3.send_headers(sid, [(b":status", b"200")], end_stream=False)
            h3.send_data(sid, b"partial", end_stream=False)
            self._flush(peer)
            self.greenlets.append(gevent.spawn_later(0.05, self._close_peer, peer))
            return
        else:
            self._send(peer, sid, 200, BODY)
        if path == "/goaway" or (self.goaway_after is not None and peer.served >= self.goaway_after
                                 and not peer.goaway_sent):
            self._goaway(peer, sid + 4)

    def _close_peer(self, peer: _Peer) -> None:
        peer.quic.close(error_code=0x102, reason_phrase="closing mid-stream")
        self._flush(peer)

    def _goaway(self, peer: _Peer, next_id: int) -> None:
        """GOAWAY on the control stream (qh3 has no sender for it): frame type 0x7."""
        h3 = peer.h3
        assert h3 is not None
        peer.goaway_sent = True
        peer.goaway_id = next_id
        control = h3._local_control_stream_id
        assert control is not None
        payload = _varint(next_id)
        peer.quic.send_stream_data(control, _varint(0x7) + _varint(len(payload)) + payload)
        self._flush(peer)

    def _send(self, peer: _Peer, sid: int, status: int, body: bytes) -> None:
        h3 = peer.h3
        assert h3 is not None
        peer.requests.pop(sid, None)
        h3.send_headers(sid, [(b":status", b"%d" % status),
                              (b"content-length", b"%d" % len(body))], end_stream=not body)
        if body:
            h3.send_data(sid, body, end_stream=True)

    def _send_later(self, peer: _Peer, sid: int, body: bytes) -> None:
        if self.peers.get(peer.addr) is peer:
            self._send(peer, sid, 200, body)
            self._flush(peer)

    def _chunks(self, peer: _Peer, sid: int, n: int) -> None:
        h3 = peer.h3
        assert h3 is not None
        h3.send_headers(sid, [(b":status", b"200")], end_stream=False)
        self._flush(peer)
        for i in range(n):
            gevent.sleep(0.01)
            if self.peers.get(peer.addr) is not peer:
                return
            h3.send_data(sid, b"chunk%d\n" % i, end_stream=i == n - 1)
            self._flush(peer)
        peer.requests.pop(sid, None)

    def _flush(self, peer: _Peer) -> None:
        sock = self.sock
        if sock is None:
            return
        for data, addr in peer.quic.datagrams_to_send(time.monotonic()):
            try:
                sock.sendto(data, peer.addr)
            except OSError:
                pass


def _varint(v: int) -> bytes:
    if v < 0x40:
        return bytes([v])
    if v < 0x4000:
        return (v | 0x4000).to_bytes(2, "big")
    if v < 0x40000000:
        return (v | 0x80000000).to_bytes(4, "big")
    return (v | 0xC000000000000000).to_bytes(8, "big")


class UdpLossProxy:
    """A UDP relay on 127.0.0.1 that drops a fraction ``loss`` of the datagrams each way
    (a seeded ``random.Random``: the same drops every run), or all of them (``loss=1``)."""

    def __init__(self, upstream_port: int, loss: float, seed: int = 7,
                 plan: Optional[Callable[[int, str, int], bool]] = None) -> None:
        """``plan(route, direction, index)``, when given, also drops a datagram when true:
        ``route`` counts client addresses from 1 (a new QUIC connection is a new one),
        ``direction`` is ``"up"`` (to the server) or ``"down"``, ``index`` counts that
        route's datagrams in that direction from 0."""
        import random
        self.upstream = ("127.0.0.1", upstream_port)
        self.loss = loss
        self.plan = plan
        self.counts: Dict[Tuple[int, str], int] = {}
        self.rand = random.Random(seed)
        self.sock: Optional[gsocket.socket] = None
        self.port = 0
        self.routes: Dict[Tuple[str, int], gsocket.socket] = {}
        self.route_of: Dict[Tuple[str, int], int] = {}
        self.greenlets: List[gevent.Greenlet] = []
        self.dropped = self.relayed = 0

    def start(self) -> "UdpLossProxy":
        sock = self.sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.greenlets.append(gevent.spawn(self._from_clients, sock))
        return self

    def stop(self) -> None:
        for g in self.greenlets:
            g.kill()
        for s in list(self.routes.values()) + ([self.sock] if self.sock else []):
            s.close()
        self.routes = {}
        self.route_of = {}
        self.counts = {}
        self.sock = None

    def __enter__(self) -> "UdpLossProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _drop(self, route: int, direction: str) -> bool:
        index = self.counts.get((route, direction), 0)
        self.counts[(route, direction)] = index + 1
        if self.rand.random() < self.loss or (self.plan is not None and self.plan(route, direction, index)):
            self.dropped += 1
            return True
        self.relayed += 1
        return False

    def _from_clients(self, sock: gsocket.socket) -> None:
        while True:
            data, addr = sock.recvfrom(65536)
            up = self.routes.get(addr)
            if up is None:
                up = self.routes[addr] = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                up.connect(self.upstream)
                self.route_of[addr] = len(self.routes)
                self.greenlets.append(gevent.spawn(self._from_server, up, addr))
            if not self._drop(self.route_of[addr], "up"):
                try:
                    up.send(data)
                except OSError:
                    pass

    def _from_server(self, up: gsocket.socket, client: Tuple[str, int]) -> None:
        while True:
            try:
                data = up.recv(65536)
            except OSError:
                continue
            if not self._drop(self.route_of[client], "down") and self.sock is not None:
                self.sock.sendto(data, client)
