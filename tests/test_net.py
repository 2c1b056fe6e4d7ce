"""Tests for greenpool/net.py: TLS verification and ALPN, DNS, Happy Eyeballs, connect failures."""
from __future__ import annotations

import socket
import time

import gevent
import pytest

from greenpool import ConnectError, ConnectTimeout, DNSError, GreenPool, TLSError, net

from fakes import FakeServer, assert_exact, refused_port

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
def tls_server(tls):
    ctx = tls.server_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with FakeServer(ssl_context=ctx) as srv:
        yield srv


def _tls_server(tls, which):
    return FakeServer(ssl_context=tls.server_context(which))


def test_tls_checkout_verifies_with_ca_and_negotiates_alpn(tls, tls_server):
    pool = GreenPool("tls")
    conn = pool.checkout("localhost", tls_server.port, "ssl", verify=tls.ca_bundle, alpn=["h2", "http/1.1"])
    assert conn.alpn_protocol() == "h2"
    conn.sock.sendall(b"hello")
    assert conn.sock.recv(10) == b"hello"
    pool.checkin(conn)
    # TLS 1.3 session tickets arrive after the handshake: an idle TLS connection must survive them
    gevent.sleep(0.1)
    assert pool.count() == 1
    again = pool.checkout("localhost", tls_server.port, "ssl", verify=tls.ca_bundle)
    assert again is conn
    again.sock.sendall(b"again")
    assert again.sock.recv(10) == b"again"
    pool.checkin(again)
    assert_exact(pool)
    pool.close()


def test_tls_context_is_cached_and_tls12_minimum(tls):
    a = net.ssl_context(tls.ca_bundle)
    assert a is net.ssl_context(tls.ca_bundle)
    assert a.minimum_version >= __import__("ssl").TLSVersion.TLSv1_2
    assert a.check_hostname and a.verify_mode == __import__("ssl").CERT_REQUIRED
    with pytest.raises(ValueError, match="neither a CA bundle"):
        net.ssl_context("/nonexistent/ca.pem")


@pytest.mark.parametrize("which, verify, match", [
    ("server", True, "not trusted"),             # default: system CAs do not know the test CA
    ("expired", "ca", "expired"),
    ("wrong_host", "ca", "not trusted"),
    ("untrusted", "ca", "not trusted"),
])
def test_tls_verification_failures(tls, which, verify, match):
    pool = GreenPool("tlsbad", connect_timeout=5)
    with _tls_server(tls, which) as srv:
        with pytest.raises(TLSError, match=match) as ei:
            pool.checkout("localhost", srv.port, "ssl", verify=tls.ca_bundle if verify == "ca" else verify)
        assert "localhost:%d" % srv.port in str(ei.value)
    assert pool.count() == 0 and pool.get_stats()["connect_errors"] == 1
    assert_exact(pool)
    pool.close()


def test_tls_verify_false_accepts_anything(tls):
    pool = GreenPool("noverify")
    with _tls_server(tls, "expired") as srv:
        conn = pool.checkout("localhost", srv.port, "ssl", verify=False)
        conn.sock.sendall(b"x")
        assert conn.sock.recv(1) == b"x"
        pool.checkin(conn)
    pool.close()


def test_peer_closing_mid_handshake():
    def slam(sock, srv):
        sock.recv(10)   # read part of the ClientHello, then hang up

    with FakeServer(slam) as srv:
        pool = GreenPool("hs")
        with pytest.raises(ConnectError, match="TLS handshake|closed the connection"):
            pool.checkout("127.0.0.1", srv.port, "ssl", verify=False)
        assert pool.count() == 0
        assert_exact(pool)
        pool.close()


def test_refused_connect_is_clear():
    pool = GreenPool("ref")
    port = refused_port()
    with pytest.raises(ConnectError, match="127.0.0.1:%d refused" % port):
        pool.checkout("127.0.0.1", port)
    assert pool.count() == 0 and pool.get_stats()["connect_errors"] == 1
    pool.close()


def test_dns_failure_is_clear(monkeypatch):
    def fail(*args, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(net.gsocket, "getaddrinfo", fail)
    pool = GreenPool("dns")
    with pytest.raises(DNSError, match="cannot resolve no.such.host:80"):
        pool.checkout("no.such.host", 80)
    assert pool.count() == 0
    assert_exact(pool)
    pool.close()


@pytest.fixture
def blackhole():
    """A loopback address:port whose connects hang (full accept queue: SYNs are dropped)."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    addr = lst.getsockname()
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(addr)
        except BlockingIOError:
            pass
        fillers.append(s)
    time.sleep(0.05)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(addr)
        hangs = False
    except (socket.timeout, OSError):
        hangs = True
    probe.close()
    if not hangs:
        for s in fillers:
            s.close()
        lst.close()
        pytest.skip("this kernel does not drop SYNs on a full accept queue")
    yield addr
    for s in fillers:
        s.close()
    lst.close()


def _resolve_to(monkeypatch, *addrs):
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in addrs]
    monkeypatch.setattr(net.gsocket, "getaddrinfo", lambda *a, **k: infos)


def test_happy_eyeballs_falls_through_a_hanging_first_address(monkeypatch, blackhole):
    with FakeServer() as srv:
        _resolve_to(monkeypatch, blackhole, ("127.0.0.1", srv.port))
        pool = GreenPool("he", connect_timeout=5)
        t0 = time.monotonic()
        conn = pool.checkout("dual.example", 1)
        took = time.monotonic() - t0
        assert conn.sock.getpeername()[1] == srv.port
        assert 0.2 <= took < 2   # started the second attempt after the 250 ms stagger
        pool.checkin(conn)
        assert_exact(pool)
        pool.close()


def test_happy_eyeballs_falls_through_a_refused_first_address_at_once(monkeypatch):
    with FakeServer() as srv:
        _resolve_to(monkeypatch, ("127.0.0.1", refused_port()), ("127.0.0.1", srv.port))
        pool = GreenPool("he2")
        t0 = time.monotonic()
        conn = pool.checkout("dual.example", 1)
        assert time.monotonic() - t0 < 0.2   # no waiting for the stagger after a failure
        pool.checkin(conn)
        pool.close()


def test_connect_timeout(monkeypatch, blackhole):
    _resolve_to(monkeypatch, blackhole)
    pool = GreenPool("ct", connect_timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(ConnectTimeout, match="timed out after 0.2s"):
        pool.checkout("slow.example", 1)
    assert time.monotonic() - t0 < 1
    assert pool.count() == 0
    assert_exact(pool)
    pool.close()


def test_all_addresses_fail_reports_the_last_error(monkeypatch):
    _resolve_to(monkeypatch, ("127.0.0.1", refused_port()), ("127.0.0.1", refused_port()))
    with pytest.raises(ConnectError, match="refused"):
        net.connect("multi.example", 1, timeout=2)


def test_interleave_alternates_families():
    v6 = [(socket.AF_INET6, 1, 6, "", ("::1", i, 0, 0)) for i in range(3)]
    v4 = [(socket.AF_INET, 1, 6, "", ("127.0.0.1", i)) for i in range(2)]
    out = net.interleave(v6 + v4 + v6[:1])
    assert [i[0] for i in out] == [socket.AF_INET6, socket.AF_INET, socket.AF_INET6,
                                   socket.AF_INET, socket.AF_INET6]


def test_tcp_nodelay_is_set():
    with FakeServer() as srv:
        sock = net.connect("127.0.0.1", srv.port, timeout=2)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        sock.close()


def test_is_dropped():
    with FakeServer() as srv:
        sock = net.connect("127.0.0.1", srv.port, timeout=2)
        gevent.sleep(0.02)
        assert not net.is_dropped(sock)
        srv.close_clients(shutdown=True)
        time.sleep(0.02)
        assert net.is_dropped(sock)
        sock.close()
        assert net.is_dropped(sock)


@pytest.mark.parametrize("how", ["fin", "rst", "stray bytes"])
def test_probe_agrees_with_is_dropped(how):
    # the checkout path's cheap check: quiet means good; anything else is judged by is_dropped
    def handler(client, srv):
        if how == "stray bytes":
            gevent.sleep(0.05)
            client.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        client.recv(1)  # until the client closes (or close_clients closes this side)

    with FakeServer(handler) as srv:
        sock = net.connect("127.0.0.1", srv.port, timeout=2)
        probe = net.Probe(sock, False)
        gevent.sleep(0.02)
        assert not probe.dropped()
        assert not probe.dropped()  # asking twice changes nothing
        if how == "fin":
            srv.close_clients(shutdown=True)
        elif how == "rst":
            srv.close_clients(reset=True)
        gevent.sleep(0.1)
        assert probe.dropped() and net.is_dropped(sock)
        sock.close()
        assert probe.dropped()


def test_probe_on_tls_survives_session_tickets_and_sees_close(tls):
    with FakeServer(ssl_context=tls.server_context()) as srv:
        sock = net.connect("localhost", srv.port, "ssl", timeout=2, verify=tls.ca_bundle)
        probe = net.Probe(sock, True)
        gevent.sleep(0.05)  # TLS 1.3 tickets are in the socket now, unread
        assert not probe.dropped()
        assert not probe.dropped()
        srv.close_clients(shutdown=True)
        gevent.sleep(0.1)
        assert probe.dropped()
        sock.close()


def test_recv_more_reads_the_tls_records_already_there(tls):
    # a TLS recv returns one record; recv_more gathers the ones queued behind it, without waiting
    def handler(client, srv):
        for i in range(3):
            client.sendall(b"record-%d;" % i)   # one TLS record each
        client.recv(1)

    with FakeServer(handler, ssl_context=tls.server_context()) as srv:
        sock = net.connect("localhost", srv.port, "ssl", timeout=2, verify=tls.ca_bundle)
        gevent.sleep(0.1)
        first = sock.recv(65536)
        assert first == b"record-0;"
        assert net.recv_more(sock, first, 65536) == b"record-0;record-1;record-2;"
        # nothing more queued: returns at once with what it was given
        started = time.monotonic()
        assert net.recv_more(sock, b"x", 65536) == b"x"
        assert time.monotonic() - started < 0.5
        sock.close()


def test_recv_more_leaves_plain_sockets_alone():
    with FakeServer() as srv:
        sock = net.connect("127.0.0.1", srv.port, timeout=2)
        sock.sendall(b"ping")
        assert net.recv_more(sock, b"already read", 65536) == b"already read"
        assert sock.recv(10) == b"ping"   # what the kernel holds was not touched
        sock.close()


def test_connect_timeout_message_rounds_seconds(monkeypatch, blackhole):
    _resolve_to(monkeypatch, blackhole)
    with pytest.raises(ConnectTimeout) as e:
        net.connect("slow.example", 1, timeout=0.123456789)
    assert str(e.value) == "connecting to slow.example:1 timed out after 0.12s"


def test_refused_ipv6_address_is_bracketed():
    s = socket.socket(socket.AF_INET6)
    try:
        s.bind(("::1", 0))
    except OSError:
        s.close()
        pytest.skip("no IPv6 loopback")
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectError) as e:
        net.connect("::1", port, timeout=5)
    assert str(e.value) == "connection to [::1]:%d refused: is the server running?" % port


def test_peer_name_brackets_ipv6_and_survives_a_closed_socket():
    with FakeServer() as srv:
        sock = net.connect("127.0.0.1", srv.port, timeout=5)
        assert net.peer_name(sock) == "127.0.0.1:%d" % srv.port
        sock.close()
        assert net.peer_name(sock) == "the server"
