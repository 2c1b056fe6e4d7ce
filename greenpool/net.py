"""Opening sockets: the only module of greenpool that creates one.

What this owns:

* DNS through gevent's resolver (never blocking the hub);
* Happy Eyeballs (RFC 8305): addresses are interleaved by family and tried
  one after another, a new attempt starting every ``happy_eyeballs_delay``
  seconds (or at once when the previous one fails) while earlier ones go on;
  the first to connect wins and the others are closed;
* TLS: a verifying default context (system CAs, else certifi when installed),
  TLS 1.2 minimum, SNI, ALPN list supplied by the caller; contexts are cached
  per (verify, cert, alpn) because building one costs milliseconds;
* TCP_NODELAY on every connection;
* :func:`is_dropped`: a non-blocking check that an idle socket's peer has not
  closed, reset or written to it (safe to call from the hub); :class:`Probe`
  asks the same question for the checkout path with one ``poll(2)`` and no
  exception, and calls :func:`is_dropped` only when something happened;
* :func:`send_all`: ``sock.sendall`` without its per-call overhead when one
  ``send`` takes everything (the common case for requests and batches);
* :func:`recv_more`: after a TLS read, the records already in the socket,
  without waiting (a TLS ``recv`` returns one record; a multiplexing reader
  wants the whole batch to answer it with one write);
* UDP for QUIC: :func:`connect_udp` (a connected datagram socket, so an ICMP
  port-unreachable comes back as ``ECONNREFUSED``), :func:`udp_recv_batch`
  and :func:`udp_send` (never wait: the QUIC connection greenlet reads and
  writes from hub wakeups);
* fork safety: every socket made here (and every TLS socket made with
  :func:`wrap_tls`) is remembered, weakly, from the moment it exists, so
  :func:`sever_inherited` can cut a child process off all of them, including
  the ones still connecting, in a TLS handshake or a proxy's tunnel (no pool
  holds those yet).  See :func:`sever`.

Promises: every failure is a greenpool :class:`~greenpool.errors.ConnectError`
(``DNSError``, ``TLSError``, ``ConnectTimeout``) whose message names the
host and port; no socket is left open on any failure path; a ``gevent.Timeout``
of the caller's propagates untouched after cleanup.
"""
from __future__ import annotations

import errno
import os
import select as _stdselect
import socket as _stdsocket
import ssl as _stdssl
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import gevent
import gevent.socket as gsocket
import gevent.ssl as gssl
from gevent import monkey
from gevent.event import AsyncResult

from greenpool.errors import ConnectError, ConnectTimeout, DNSError, TLSError, format_address, format_seconds

TRANSPORTS = ("tcp", "ssl")
#: every transport :func:`connect` opens; ``"unix"`` takes the socket's path as ``host``
#: (``port`` is ignored, 0 by convention), ``"unix-ssl"`` is TLS over it (the name the
#: certificate is checked against, and SNI, from ``server_hostname``). Connectors list the
#: ones they accept.
ALL_TRANSPORTS = ("tcp", "ssl", "unix", "unix-ssl")

VerifyType = Union[bool, str, _stdssl.SSLContext]
CertType = Union[None, str, Tuple[str, str], Tuple[str, str, str]]

_context_cache: Dict[Tuple[Any, ...], _stdssl.SSLContext] = {}


def ssl_context(verify: VerifyType = True, cert: CertType = None,
                alpn: Optional[Sequence[str]] = None) -> _stdssl.SSLContext:
    """A client TLS context; cached, so treat it as read-only.

    ``verify``: True (system CAs, else certifi), False (no verification: only
    for tests), a path to a CA bundle file or directory, or a ready
    ``ssl.SSLContext`` (used as is; ``alpn`` is then not applied).
    ``cert``: a client certificate: a path to a PEM with the key, or
    (certfile, keyfile) or (certfile, keyfile, password).
    """
    if isinstance(verify, _stdssl.SSLContext):
        return verify
    key = (verify, cert if not isinstance(cert, list) else tuple(cert), tuple(alpn or ()))
    cached = _context_cache.get(key)
    if cached is not None:
        return cached
    ctx: _stdssl.SSLContext = gssl.SSLContext(_stdssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _stdssl.TLSVersion.TLSv1_2
    if verify is False:
        ctx.check_hostname = False
        ctx.verify_mode = _stdssl.CERT_NONE
    else:
        ctx.verify_mode = _stdssl.CERT_REQUIRED
        ctx.check_hostname = True
        if isinstance(verify, str):
            if os.path.isdir(verify):
                ctx.load_verify_locations(capath=verify)
            elif os.path.isfile(verify):
                ctx.load_verify_locations(cafile=verify)
            else:
                raise ValueError("verify=%r is neither a CA bundle file nor a directory" % (verify,))
        else:
            ctx.load_default_certs()
            if not ctx.get_ca_certs():
                try:
                    import certifi  # type: ignore[import-not-found,unused-ignore]
                except ImportError:
                    pass
                else:
                    ctx.load_verify_locations(cafile=certifi.where())
    if cert is not None:
        if isinstance(cert, str):
            ctx.load_cert_chain(cert)
        else:
            ctx.load_cert_chain(*cert)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    _context_cache[key] = ctx
    return ctx


def resolve(host: str, port: int, family: int = 0) -> List[Tuple[Any, ...]]:
    """getaddrinfo through gevent, mapped to DNSError, ordered for Happy Eyeballs."""
    try:
        infos = gsocket.getaddrinfo(host, port, family, _stdsocket.SOCK_STREAM)
    except _stdsocket.gaierror as e:
        raise DNSError("cannot resolve %s: %s" % (format_address(host, port), e)) from None
    except UnicodeError as e:
        raise DNSError("invalid host name %r: %s" % (host, e)) from None
    if not infos:
        raise DNSError("cannot resolve %s: no addresses" % (format_address(host, port),))
    return interleave(infos)


def interleave(infos: Sequence[Tuple[Any, ...]]) -> List[Tuple[Any, ...]]:
    """RFC 8305 section 4: alternate address families, first family first."""
    seen = set()
    unique = []
    for info in infos:
        if info[4] not in seen:
            seen.add(info[4])
            unique.append(info)
    if not unique:
        return unique
    first = unique[0][0]
    a = [i for i in unique if i[0] == first]
    b = [i for i in unique if i[0] != first]
    out: List[Tuple[Any, ...]] = []
    for i in range(max(len(a), len(b))):
        if i < len(a):
            out.append(a[i])
        if i < len(b):
            out.append(b[i])
    return out


# -- fork safety --------------------------------------------------------------------------

# Every socket this module made that is still alive.  After os.fork() the child holds
# copies of the parent's descriptors *and* of the parent's greenlets: a greenlet that was
# connecting, in a TLS handshake or a proxy's tunnel when the parent forked (a socket no
# pool holds yet) would go on, in the child, on the very connection the parent goes on
# with, and the server would see two processes' bytes interleaved (TLS: "bad record mac").
_sockets: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _new_socket(family: int, type_: int, proto: int = 0) -> gsocket.socket:
    sock = gsocket.socket(family, type_, proto)
    _sockets.add(sock)
    return sock


def sever(sock: Any) -> None:
    """Cut this process off ``sock`` without a byte to the peer (after ``os.fork()``, in
    the child: the parent still uses the connection).

    Its TLS object is dropped first (it reads and writes by descriptor *number*, which
    this process may soon give to a new socket), then the descriptor is detached (a
    greenlet waiting on it is woken with ``EBADF``; any later use fails) and our copy
    closed: no shutdown, no TLS close_notify.  Never yields; never raises.
    """
    try:
        if getattr(sock, "_sslobj", None) is not None:
            sock._sslobj = None
        fd = sock.detach()
        if isinstance(fd, int) and fd >= 0:
            os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


def sever_inherited() -> None:
    """In a child after ``os.fork()``: :func:`sever` every socket this module made in the
    parent (pools drop the ones they hold; this reaches the rest, the ones in flight)."""
    socks = list(_sockets)
    _sockets.clear()
    for sock in socks:
        try:
            gone = sock.fileno() < 0
        except (OSError, ValueError, AttributeError):
            gone = True
        if not gone:
            sever(sock)


def wrap_tls(raw: Any, ctx: Any, server_hostname: Optional[str]) -> Any:
    """``raw`` (a connected gevent socket) wrapped in TLS by ``ctx``, handshake done.

    The TLS socket is remembered for :func:`sever_inherited` before its handshake
    starts.  On failure the socket is closed and the ``ssl``/``OSError`` propagates.
    """
    if isinstance(ctx, gssl.SSLContext):
        sock = ctx.wrap_socket(raw, server_hostname=server_hostname, do_handshake_on_connect=False)
    else:
        sock = gssl.SSLSocket(sock=raw, server_hostname=server_hostname, _context=ctx,
                              do_handshake_on_connect=False)
    _sockets.add(sock)
    try:
        sock.do_handshake()
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_one(info: Tuple[Any, ...], source_address: Optional[Tuple[str, int]]) -> gsocket.socket:
    family, type_, proto, _, sockaddr = info
    sock = _new_socket(family, type_, proto)
    try:
        if source_address is not None:
            sock.bind(source_address)
        sock.connect(sockaddr)
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
        return sock
    except BaseException:
        sock.close()
        raise


def _happy_eyeballs(infos: List[Tuple[Any, ...]], delay: float,
                    source_address: Optional[Tuple[str, int]]) -> gsocket.socket:
    """Staggered parallel attempts; the first success wins."""
    if len(infos) == 1:
        return _connect_one(infos[0], source_address)
    winner: AsyncResult = AsyncResult()
    errors: List[BaseException] = []
    attempts: List[gevent.Greenlet] = []
    failed = gevent.event.Event()

    def attempt(info: Tuple[Any, ...]) -> None:
        try:
            sock = _connect_one(info, source_address)
        except Exception as e:  # noqa: BLE001 - collected, reported together
            errors.append(e)
            failed.set()
            if len(errors) == len(infos):
                winner.set(None)
            return
        if winner.ready():
            sock.close()
        else:
            winner.set(sock)

    sock = None
    try:
        for info in infos:
            attempts.append(gevent.spawn(attempt, info))
            failed.clear()
            # the next attempt starts after `delay`, or as soon as one fails
            with gevent.Timeout(delay, False):
                while not winner.ready() and not failed.is_set():
                    gevent.wait([winner, failed], count=1)
            if winner.ready():
                break
        sock = winner.get()
    finally:
        for g in attempts:
            if not g.dead:
                g.kill(block=False)
        if sock is None and winner.ready() and winner.value is not None:
            # interrupted (our deadline, a kill) after an attempt won: close the winner
            winner.value.close()
        elif sock is None and not winner.ready():
            # attempts still connecting: a late winner closes its own socket
            winner.set(None)
    if sock is None:
        raise errors[-1]
    return sock


def connect(host: str, port: int, transport: str = "tcp", *,
            timeout: Optional[float] = None,
            verify: VerifyType = True,
            cert: CertType = None,
            alpn: Optional[Sequence[str]] = None,
            server_hostname: Optional[str] = None,
            source_address: Optional[Tuple[str, int]] = None,
            family: int = 0,
            happy_eyeballs_delay: float = 0.25,
            ssl_context: Optional[_stdssl.SSLContext] = None) -> gsocket.socket:
    """Open a TCP (``"tcp"``), TLS (``"ssl"``) or Unix (``"unix"``, ``host`` is the path)
    connection, or TLS over a Unix socket (``"unix-ssl"``: ``server_hostname`` names the
    server, default ``"localhost"``); returns a gevent socket.

    The whole of DNS, connect and handshake runs under ``timeout``.
    """
    if transport not in ALL_TRANSPORTS:
        raise ValueError("transport must be one of %s, not %r" % (ALL_TRANSPORTS, transport))
    if transport == "unix":
        return connect_unix(host, timeout=timeout)
    over_unix = transport == "unix-ssl"
    if over_unix:
        transport = "ssl"
        where = "unix:%s" % (host,)
        if server_hostname is None:
            server_hostname = "localhost"
    else:
        where = format_address(host, port)
    deadline = gevent.Timeout(timeout) if timeout is not None else None
    sock = None
    if deadline is not None:
        deadline.start()
    try:
        try:
            if over_unix:
                sock = connect_unix(host, timeout=None)
            else:
                infos = resolve(host, port, family)
                sock = _happy_eyeballs(infos, happy_eyeballs_delay, source_address)
            if transport == "ssl":
                ctx = ssl_context if ssl_context is not None else globals()["ssl_context"](verify, cert, alpn)
                sni = server_hostname if server_hostname is not None else host
                raw, sock = sock, None
                try:
                    sock = wrap_tls(raw, ctx, sni)
                except BaseException:
                    raw.close()
                    raise
            return sock
        except gevent.Timeout as t:
            if t is not deadline:
                raise
            raise ConnectTimeout("connecting to %s timed out after %s" % (where, format_seconds(timeout))) from None
        except _stdssl.SSLCertVerificationError as e:
            raise TLSError("TLS certificate of %s not trusted: %s (pass verify=<CA bundle path> to "
                           "trust a private CA)" % (where, e.verify_message or e)) from None
        except _stdssl.SSLError as e:
            raise TLSError("TLS handshake with %s failed: %s" % (where, e)) from None
        except (ConnectError, ValueError):
            raise
        except (ConnectionResetError, BrokenPipeError) as e:
            what = "during the TLS handshake" if transport == "ssl" and sock is None else "while connecting"
            raise ConnectError("%s closed the connection %s: %s" % (where, what, e)) from None
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:
                raise ConnectError("connection to %s refused: is the server running?" % where) from None
            if e.errno == 0 and transport == "ssl":
                raise TLSError("%s closed the connection during the TLS handshake" % where) from None
            raise ConnectError("cannot connect to %s: %s" % (where, e)) from None
    finally:
        if deadline is not None:
            deadline.close()


def connect_unix(path: str, *, timeout: Optional[float] = None) -> gsocket.socket:
    """Open a Unix domain stream socket to ``path``; returns a gevent socket.

    Failures are :class:`ConnectError` naming the path (``ConnectTimeout`` after ``timeout``).
    """
    sock = _new_socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
    deadline = gevent.Timeout(timeout) if timeout is not None else None
    if deadline is not None:
        deadline.start()
    try:
        sock.connect(path)
        return sock
    except gevent.Timeout as t:
        sock.close()
        if t is not deadline:
            raise
        raise ConnectTimeout("connecting to unix:%s timed out after %s" % (path, format_seconds(timeout))) from None
    except FileNotFoundError:
        sock.close()
        raise ConnectError("no Unix socket at %s: is the server running?" % path) from None
    except OSError as e:
        sock.close()
        if e.errno == errno.ECONNREFUSED:
            raise ConnectError("connection to unix:%s refused: is the server running?" % path) from None
        raise ConnectError("cannot connect to unix:%s: %s" % (path, e)) from None
    except BaseException:
        sock.close()
        raise
    finally:
        if deadline is not None:
            deadline.close()


_PEEK = int(_stdsocket.MSG_PEEK | _stdsocket.MSG_DONTWAIT)  # an int once, not an IntFlag per call


def is_dropped(sock: Any, tls: Optional[bool] = None) -> bool:
    """True when an idle socket cannot be reused: the peer closed or reset it,
    or sent bytes nobody asked for.  Never blocks (hub-safe).

    ``tls``: whether ``sock`` is a TLS socket, when the caller knows (it saves
    a slow attribute lookup on the checkout path).  A post-handshake TLS record
    that carries no application data (a TLS 1.3 session ticket) is consumed and
    the socket is still good.
    """
    try:
        raw = sock._sock
        if tls is None:
            tls = isinstance(sock, gssl.SSLSocket)
        if not tls:
            try:
                raw.recv(1, _PEEK)
            except BlockingIOError:
                return False
            return True  # EOF (b"") or unexpected bytes
        sslobj = sock._sslobj
        if sslobj is None or sslobj.pending():
            return True
        try:
            raw.recv(1, _PEEK)
        except BlockingIOError:
            return False
        try:
            sslobj.read(1)
        except _stdssl.SSLWantReadError:
            return False  # a record without application data: still good
        return True
    except (OSError, ValueError, AttributeError):
        return True


_poll = monkey.get_original("select", "poll")   # the blocking one: always called with 0
_POLL_EVENTS = _stdselect.POLLIN | _stdselect.POLLPRI | getattr(_stdselect, "POLLRDHUP", 0x2000)


class Probe:
    """Has anything happened on an idle socket?  ``dropped()`` answers as
    :func:`is_dropped` does, for a fraction of its cost when nothing has.

    One ``poll(2)`` with a zero timeout on a poll set made once per socket:
    readable, hung up or in error means :func:`is_dropped` decides (EOF,
    reset, stray bytes, or a harmless TLS session ticket); nothing means the
    socket is still good, unless TLS holds decrypted bytes already (checked
    too).  Never blocks; hub-safe.
    """

    __slots__ = ("_poll", "sock", "tls")

    def __init__(self, sock: Any, tls: bool) -> None:
        self.sock = sock
        self.tls = tls
        self._poll = _poll()
        self._poll.register(sock.fileno(), _POLL_EVENTS)

    def dropped(self) -> bool:
        try:
            quiet = not self._poll.poll(0)
        except (OSError, ValueError):
            return True
        if quiet:
            if not self.tls:
                return False
            sslobj = self.sock._sslobj
            if sslobj is not None and not sslobj.pending():
                return False
        return is_dropped(self.sock, self.tls)


def send_all(sock: Any, data: Any) -> None:
    """Write all of ``data`` (bytes-like) to a gevent socket, as ``sock.sendall`` does.

    One ``send`` first: gevent's ``sendall`` asks the kernel for the socket's
    buffer size (a ``getsockopt`` syscall) and loops in Python even when a
    single send would take it all.  The socket's timeout applies to each wait
    as with ``sendall``; what one send left over goes through ``sendall``.
    """
    n = sock.send(data)
    if n < len(data):
        sock.sendall(memoryview(data)[n:])


def recv_more(sock: Any, data: bytes, size: int) -> bytes:
    """``data`` (what one ``recv`` just returned) plus whatever else can be read
    from a TLS socket right now, up to about ``size`` bytes; never waits.

    Plain sockets return ``data`` unchanged: one ``recv`` already took all the
    kernel had.  TLS sockets hand out one record per ``recv``, so the records
    queued behind it are read here; a close or an error is left for the next
    ``recv`` to report.
    """
    sslobj = getattr(sock, "_sslobj", None)
    if sslobj is None or not data:
        return data
    chunks = [data]
    total = len(data)
    while total < size:
        try:
            more = sslobj.read(size - total)
        except _stdssl.SSLWantReadError:
            break
        except (_stdssl.SSLError, OSError, ValueError):
            break
        if not more:
            break
        chunks.append(more)
        total += len(more)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def peer_name(sock: Any) -> str:
    """``host:port`` of the socket's peer for a message (IPv6 in brackets),
    ``the server`` when the socket no longer knows it."""
    try:
        addr = sock.getpeername()
    except (OSError, AttributeError):
        return "the server"
    if isinstance(addr, tuple) and len(addr) >= 2:
        return format_address(str(addr[0]), addr[1])
    return "unix:%s" % (addr,) if addr else "the server"


def alpn_protocol(sock: Any) -> Optional[str]:
    """The protocol the TLS peer chose by ALPN, or None (plain TCP or no ALPN)."""
    fn = getattr(sock, "selected_alpn_protocol", None)
    return fn() if fn is not None else None


# -- UDP (QUIC) ---------------------------------------------------------------------------


def connect_udp(host: str, port: int, *, timeout: Optional[float] = None,
                family: int = 0) -> gsocket.socket:
    """A connected UDP socket to ``host:port`` (for QUIC); returns a gevent socket.

    "Connected" makes the kernel drop datagrams from other addresses and report
    an ICMP port-unreachable as ``ECONNREFUSED`` on the next receive, so a
    closed UDP port fails fast instead of looking like a black hole.  Only DNS
    can wait here (under ``timeout``); failures are :class:`ConnectError`.
    """
    where = "%s:%s" % (host, port)
    deadline = gevent.Timeout(timeout) if timeout is not None else None
    if deadline is not None:
        deadline.start()
    try:
        try:
            infos = gsocket.getaddrinfo(host, port, family, _stdsocket.SOCK_DGRAM)
        except _stdsocket.gaierror as e:
            raise DNSError("cannot resolve %s: %s" % (where, e)) from None
        except UnicodeError as e:
            raise DNSError("invalid host name %r: %s" % (host, e)) from None
        except gevent.Timeout as t:
            if t is not deadline:
                raise
            raise ConnectTimeout("resolving %s timed out after %ss" % (where, timeout)) from None
    finally:
        if deadline is not None:
            deadline.close()
    if not infos:
        raise DNSError("cannot resolve %s: no addresses" % where)
    error: Optional[OSError] = None
    for fam, type_, proto, _, sockaddr in interleave(infos):
        sock = _new_socket(fam, type_, proto)
        try:
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            error = e
        except BaseException:
            sock.close()
            raise
    raise ConnectError("cannot open a UDP socket to %s: %s" % (where, error))


def udp_peer(sock: Any) -> Tuple[Any, ...]:
    """The address a connected UDP socket sends to."""
    return tuple(sock.getpeername())


def udp_recv_batch(sock: Any, limit: int, size: int = 65536) -> List[bytes]:
    """The datagrams queued on a connected UDP socket right now, at most ``limit``; never waits.

    Raises ``ConnectionRefusedError`` when the kernel reports an ICMP
    port-unreachable for the peer (nothing listens there).
    """
    raw = getattr(sock, "_sock", sock)
    out: List[bytes] = []
    recv = raw.recv
    while len(out) < limit:
        try:
            out.append(recv(size, _stdsocket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            break
    return out


def udp_send(sock: Any, datagram: bytes) -> bool:
    """Send one datagram without waiting; False when the kernel buffer was full (the
    datagram is dropped: QUIC recovers it as a loss).  ``ConnectionRefusedError``
    propagates (ICMP port-unreachable)."""
    raw = getattr(sock, "_sock", sock)
    try:
        raw.send(datagram, _stdsocket.MSG_DONTWAIT)
        return True
    except (BlockingIOError, InterruptedError):
        return False
