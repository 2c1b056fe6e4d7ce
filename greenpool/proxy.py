"""SOCKS proxies (SOCKS4, SOCKS4a, SOCKS5, SOCKS5 with the proxy resolving): a connector.

What this owns: :class:`SocksProxy` (a parsed ``socks5://user:pass@host:port``
URL; credentials never shown) and :class:`SocksConnector`, which a pool uses
to open its connections through the proxy: a TCP connection to the proxy
(:func:`greenpool.net.connect`), the SOCKS handshake, then TLS (with the pool
key's host as SNI, ALPN as asked) for ``"ssl"`` keys.  The handshake's bytes
come from socksio (sans-IO, the ``socks`` extra); this module only moves
them, reading exactly the length of each reply (at most 262 bytes), under
the connect deadline.

Schemes: ``socks5://`` resolves the target here and sends its address;
``socks5h://`` sends the name and the proxy resolves it; ``socks4://``
resolves here (IPv4 only); ``socks4a://`` sends the name.  SOCKS5
username/password auth (RFC 1929) comes from the URL's userinfo; SOCKS4
sends the user name as its user id (``greenpool`` when the URL has none).

Errors: the proxy unreachable -> :class:`~greenpool.errors.ConnectError`
naming the proxy; refused credentials, a refused or failed CONNECT (with
the proxy's reply code), a broken reply -> ``ConnectError`` saying so;
the deadline -> :class:`~greenpool.errors.ConnectTimeout`.
"""
from __future__ import annotations

import socket
import ssl
from typing import Any, Optional, Tuple
from urllib.parse import unquote, urlsplit

import gevent

from greenpool import net
from greenpool.connection import Connection, Connector, base_transport
from greenpool.errors import ConnectError, ConnectTimeout, TLSError

__all__ = ["SOCKS_SCHEMES", "SocksProxy", "SocksConnector"]

SOCKS_SCHEMES = ("socks5", "socks5h", "socks4", "socks4a")
_REPLY_MAX = 262


class SocksProxy:
    """Where a SOCKS proxy is, how to speak to it, and its credentials (never shown)."""

    __slots__ = ("scheme", "host", "port", "username", "password")

    def __init__(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise ValueError("invalid SOCKS proxy URL: %s" % e) from None
        scheme = parts.scheme.lower()
        if scheme not in SOCKS_SCHEMES:
            raise ValueError("a SOCKS proxy URL starts with %s, not %r"
                             % ("/".join(s + "://" for s in SOCKS_SCHEMES), parts.scheme))
        if not parts.hostname:
            raise ValueError("the SOCKS proxy URL has no host")
        self.scheme = scheme
        self.host = parts.hostname
        self.port = port if port is not None else 1080
        self.username: Optional[bytes] = unquote(parts.username).encode("utf-8") \
            if parts.username else None
        self.password: Optional[bytes] = unquote(parts.password or "").encode("utf-8") \
            if parts.username else None

    @property
    def tag(self) -> Tuple[Any, ...]:
        return (self.scheme, self.host, self.port, self.username, self.password)

    def __repr__(self) -> str:
        return "<SocksProxy %s://%s:%d%s>" % (self.scheme, self.host, self.port,
                                               " (with credentials)" if self.username else "")


def _recv_exact(sock: Any, n: int, where: str) -> bytes:
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectError("SOCKS proxy %s closed the connection during the handshake" % where)
        buf += data
    return buf


def _resolve(host: str, port: int, family: int) -> str:
    infos = net.resolve(host, port, family)
    if not infos:
        raise ConnectError("cannot resolve %s for the SOCKS proxy" % host)
    return str(infos[0][4][0])


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return host.count(".") == 3


class SocksConnector(Connector):
    """Opens a pool's connections through a SOCKS proxy (see the module docstring)."""

    def __init__(self, proxy: SocksProxy) -> None:
        try:
            import socksio  # noqa: F401
        except ImportError:
            raise ImportError("SOCKS proxies need socksio: pip install 'greenpool[socks]'") from None
        self.proxy = proxy

    def connect(self, key: Tuple[str, int, str], timeout: Optional[float], **opts: Any) -> Connection:
        host, port, transport = key
        p = self.proxy
        where = "%s:%d" % (p.host, p.port)
        tcp_opts = {k: opts[k] for k in ("source_address", "family", "happy_eyeballs_delay")
                    if k in opts}
        deadline = gevent.Timeout(timeout) if timeout is not None else None
        if deadline is not None:
            deadline.start()
        sock = None
        try:
            try:
                try:
                    sock = net.connect(p.host, p.port, "tcp", timeout=None, **tcp_opts)
                except ConnectError as e:
                    raise ConnectError("SOCKS proxy %s unreachable: %s" % (where, e)) from None
                if p.scheme.startswith("socks5"):
                    self._socks5(sock, host, port, where)
                else:
                    self._socks4(sock, host, port, where)
                if base_transport(transport) == "ssl":
                    ctx = net.ssl_context(opts.get("verify", True), opts.get("cert"), opts.get("alpn"))
                    sock = net.wrap_tls(sock, ctx, opts.get("server_hostname") or host)
                conn = Connection(key, sock)
                sock = None
                return conn
            except gevent.Timeout as t:
                if t is not deadline:
                    raise
                raise ConnectTimeout("connecting to %s:%s through the SOCKS proxy %s timed out "
                                     "after %ss" % (host, port, where, timeout)) from None
            except ssl.SSLCertVerificationError as e:
                raise TLSError("TLS certificate of %s:%s (through a SOCKS proxy) not trusted: %s"
                               % (host, port, e.verify_message or e)) from None
            except ssl.SSLError as e:
                raise TLSError("TLS handshake with %s:%s through the SOCKS proxy failed: %s"
                               % (host, port, e)) from None
            except OSError as e:
                raise ConnectError("SOCKS proxy %s: %s" % (where, e)) from None
        finally:
            if deadline is not None:
                deadline.close()
            if sock is not None:
                sock.close()

    def _socks5(self, sock: Any, host: str, port: int, where: str) -> None:
        from socksio import ProtocolError
        from socksio import socks5 as s5
        p = self.proxy
        conn = s5.SOCKS5Connection()
        method = s5.SOCKS5AuthMethod.USERNAME_PASSWORD if p.username is not None \
            else s5.SOCKS5AuthMethod.NO_AUTH_REQUIRED
        try:
            conn.send(s5.SOCKS5AuthMethodsRequest([method]))
            sock.sendall(conn.data_to_send())
            reply = conn.receive_data(_recv_exact(sock, 2, where))
            if not isinstance(reply, s5.SOCKS5AuthReply) or reply.method != method:
                raise ConnectError("SOCKS proxy %s refused the %s method%s" % (
                    where, "username/password" if p.username is not None else "no-auth",
                    "" if p.username is not None else ": put user:password in the proxy URL"))
            if p.username is not None:
                conn.send(s5.SOCKS5UsernamePasswordRequest(p.username, p.password or b""))
                sock.sendall(conn.data_to_send())
                auth = conn.receive_data(_recv_exact(sock, 2, where))
                if not isinstance(auth, s5.SOCKS5UsernamePasswordReply) or not auth.success:
                    raise ConnectError("SOCKS proxy %s refused the username/password" % where)
            target = host if p.scheme == "socks5h" else _resolve(host, port, 0)
            conn.send(s5.SOCKS5CommandRequest.from_address(s5.SOCKS5Command.CONNECT, (target, port)))
            sock.sendall(conn.data_to_send())
            head = _recv_exact(sock, 5, where)
            atyp = head[3]
            rest = {1: 4 + 2 - 1, 4: 16 + 2 - 1, 3: head[4] + 2}.get(atyp)
            if rest is None or head[0] != 5:
                raise ConnectError("SOCKS proxy %s sent a malformed reply %r" % (where, head))
            data = head + _recv_exact(sock, rest, where)
            if len(data) > _REPLY_MAX:  # pragma: no cover - bounded by the lengths above
                raise ConnectError("SOCKS proxy %s sent an oversized reply" % where)
            if head[1] != 0:
                try:
                    code = s5.SOCKS5ReplyCode(head[1:2]).name
                except ValueError:
                    code = "code %d" % head[1]
                raise ConnectError("SOCKS proxy %s could not connect to %s:%s: %s"
                                   % (where, host, port, code))
            conn.receive_data(data)
        except ProtocolError as e:
            raise ConnectError("SOCKS proxy %s: protocol error: %s" % (where, e)) from None

    def _socks4(self, sock: Any, host: str, port: int, where: str) -> None:
        from socksio import ProtocolError
        from socksio import socks4 as s4
        p = self.proxy
        # socksio wants a non-empty user id; SOCKS4 servers without ident checks ignore it
        conn = s4.SOCKS4Connection(user_id=p.username or b"greenpool")
        try:
            if p.scheme == "socks4a" and not _is_ipv4(host):
                conn.send(s4.SOCKS4ARequest.from_address(s4.SOCKS4Command.CONNECT, (host, port)))
            else:
                ip = _resolve(host, port, socket.AF_INET)
                conn.send(s4.SOCKS4Request.from_address(s4.SOCKS4Command.CONNECT, (ip, port)))
            sock.sendall(conn.data_to_send())
            reply = conn.receive_data(_recv_exact(sock, 8, where))
        except ProtocolError as e:
            raise ConnectError("SOCKS proxy %s: protocol error: %s" % (where, e)) from None
        if reply.reply_code != s4.SOCKS4ReplyCode.REQUEST_GRANTED:
            raise ConnectError("SOCKS proxy %s could not connect to %s:%s: %s"
                               % (where, host, port, reply.reply_code.name))

    def __repr__(self) -> str:
        return "<SocksConnector %r>" % (self.proxy,)
