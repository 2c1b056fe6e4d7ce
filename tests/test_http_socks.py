"""SOCKS proxies (greenpool.proxy): socks5, socks5h, socks4, socks4a against Debian's dante
(danted, started here on 127.0.0.1 with a generated config that only relays to loopback),
plus an in-process SOCKS5 fake for what dante cannot show without system users (username/
password auth, a name only the proxy can resolve) and for the error cases."""
from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import List

import gevent
import pytest

import greenpool
from greenpool import errors
from greenpool.proxy import SocksProxy

from fakes import FakeServer, assert_exact, hold, refused_port
from servers import HOST, Server, find_binary

pytest.importorskip("socksio")


class Dante(Server):
    """danted: SOCKS4/SOCKS5 without authentication, clients and targets on 127.0.0.0/8 only."""

    name = "danted"
    stop_signal = 15

    def __init__(self, directory):
        self.binary = find_binary("danted", "dante-server")
        super().__init__(directory)
        self.conf_path = Path(self.dir) / "danted.conf"

    def prepare(self) -> None:
        self.conf_path.write_text(
            "logoutput: stderr\n"
            "internal: %s port = %d\n"
            "external: %s\n"
            "clientmethod: none\n"
            "socksmethod: none\n"
            "user.privileged: root\n"
            "user.unprivileged: nobody\n"
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
            "socks pass { from: 127.0.0.0/8 to: 127.0.0.0/8 command: connect }\n"
            "socks block { from: 0.0.0.0/0 to: 0.0.0.0/0 }\n" % (HOST, self.port, HOST))

    def command(self) -> List[str]:
        return [self.binary, "-f", str(self.conf_path), "-N", "1"]


@pytest.fixture(scope="module")
def dante(tmp_path_factory):
    server = Dante(tmp_path_factory.mktemp("dante"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pool():
    p = greenpool.GreenPool("test-socks", max_connections=6)
    yield p
    p.close()


def _recv(sock, n):
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise OSError("closed")
        buf += data
    return buf


def fake_socks5(names=None, user=None, password=None, reply=0, seen=None):
    """A SOCKS5 server relaying to loopback; ``names`` maps names only it can resolve."""
    names = names or {}

    def handler(sock, server):
        ver, n = _recv(sock, 2)
        methods = _recv(sock, n)
        want = 2 if user is not None else 0
        if want not in methods:
            sock.sendall(b"\x05\xff")
            return
        sock.sendall(bytes([5, want]))
        if want == 2:
            _, ulen = _recv(sock, 2)
            u = _recv(sock, ulen)
            plen = _recv(sock, 1)[0]
            pw = _recv(sock, plen)
            ok = (u, pw) == (user, password)
            sock.sendall(b"\x01" + (b"\x00" if ok else b"\x01"))
            if not ok:
                return
        head = _recv(sock, 4)
        if head[3] == 1:
            host = socket.inet_ntoa(_recv(sock, 4))
        elif head[3] == 3:
            host = _recv(sock, _recv(sock, 1)[0]).decode()
        else:
            host = socket.inet_ntop(socket.AF_INET6, _recv(sock, 16))
        port = struct.unpack("!H", _recv(sock, 2))[0]
        if seen is not None:
            seen.append((host, port))
        host = names.get(host, host)
        if reply or host not in ("127.0.0.1", "localhost"):
            sock.sendall(bytes([5, reply or 4, 0, 1]) + b"\0" * 6)  # host unreachable
            return
        try:
            upstream = socket.create_connection((host, port))
        except OSError:
            sock.sendall(bytes([5, 5, 0, 1]) + b"\0" * 6)  # connection refused
            return
        up = gevent.socket.socket(fileno=upstream.detach())
        sock.sendall(bytes([5, 0, 0, 1]) + socket.inet_aton("127.0.0.1") + b"\0\0")

        def pump(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    b.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        g = gevent.spawn(pump, up, sock)
        pump(sock, up)
        g.join()
        up.close()

    return FakeServer(handler)


@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "socks4", "socks4a"])
def test_dante_http_and_https(no_leaks, dante, gunicorn, nginx, tls, pool, scheme):
    proxy = "%s://127.0.0.1:%d" % (scheme, dante.port)
    c = greenpool.Client(pool=pool, proxy=proxy)
    r = c.get(gunicorn.url + "/echo?x=1")
    assert r.json()["args"] == {"x": "1"} and r.json()["path"] == "/echo"
    for _ in range(3):
        c.get(gunicorn.url + "/echo")
    # https through the tunnel, our own CA
    s = greenpool.Client(pool=pool, proxy=proxy, verify=tls.ca_bundle)
    assert s.get(nginx.https_url + "/").status == 200
    # a name: socks5h sends it and the proxy resolves it; socks5/socks4 resolve here
    # (dante speaks no SOCKS4a, so socks4a is shown with an address only)
    if scheme != "socks4a":
        assert c.get(gunicorn.url.replace("127.0.0.1", "localhost") + "/echo").status == 200
    assert_exact(pool)
    pool.close()


def test_socks5_http2_through_dante(no_leaks, dante, nginx, tls, pool):
    c = greenpool.Client(pool=pool, proxy="socks5h://127.0.0.1:%d" % dante.port,
                         verify=tls.ca_bundle, http2=True)
    assert [c.get(nginx.https_url + "/").http_version for _ in range(3)] == ["HTTP/2"] * 3
    pool.close()


def test_socks5_auth_and_proxy_only_names(no_leaks, gunicorn, pool):
    seen = []
    with fake_socks5(names={"backend.only-proxy.test": "127.0.0.1"}, user=b"ann",
                     password=b"p@ss", seen=seen) as fake:
        c = greenpool.Client(pool=pool, proxy="socks5h://ann:p%%40ss@127.0.0.1:%d" % fake.port)
        port = int(gunicorn.url.rsplit(":", 1)[1])
        r = c.get("http://backend.only-proxy.test:%d/echo" % port)
        assert r.status == 200 and r.json()["headers"]["host"] == "backend.only-proxy.test:%d" % port
        assert seen == [("backend.only-proxy.test", port)]
        # socks5 (not h) resolves here: the fake sees an address
        c5 = greenpool.Client(pool=pool, proxy="socks5://ann:p%%40ss@127.0.0.1:%d" % fake.port)
        assert c5.get(gunicorn.url.replace("127.0.0.1", "localhost") + "/echo").status == 200
        assert seen[-1][0] in ("127.0.0.1", "::1")
        # wrong password, no credentials
        bad = greenpool.Client(pool=pool, proxy="socks5h://ann:nope@127.0.0.1:%d" % fake.port)
        with pytest.raises(errors.ConnectError, match="refused the username/password") as info:
            bad.get(gunicorn.url + "/echo")
        assert "nope" not in str(info.value)
        anon = greenpool.Client(pool=pool, proxy="socks5h://127.0.0.1:%d" % fake.port)
        with pytest.raises(errors.ConnectError, match="user:password"):
            anon.get(gunicorn.url + "/echo")
        fake.close_clients()
    assert_exact(pool)
    pool.close()


def test_socks_errors(no_leaks, pool):
    down = greenpool.Client(pool=pool, proxy="socks5://127.0.0.1:%d" % refused_port())
    with pytest.raises(errors.ConnectError, match="SOCKS proxy 127.0.0.1:.* unreachable"):
        down.get("http://127.0.0.1:1/")
    with fake_socks5() as fake:
        c = greenpool.Client(pool=pool, proxy="socks5h://127.0.0.1:%d" % fake.port)
        with pytest.raises(errors.ConnectError, match="could not connect to 127.0.0.1:%d: "
                                                        "CONNECTION_REFUSED" % 9):
            c.get("http://127.0.0.1:9/")
        with pytest.raises(errors.ConnectError, match="HOST_UNREACHABLE"):
            c.get("http://unknown.test/")
    with FakeServer(hold) as silent:
        slow = greenpool.Client(pool=pool, proxy="socks5://127.0.0.1:%d" % silent.port,
                                timeout=greenpool.Timeout(connect=0.3))
        with pytest.raises(errors.ConnectTimeout, match="SOCKS proxy"):
            slow.get("http://127.0.0.1:1/")
        silent.close_clients()
    assert_exact(pool)


def test_socks_from_env_and_repr(monkeypatch, dante, gunicorn, pool):
    monkeypatch.setenv("ALL_PROXY", "socks5://u:secret@127.0.0.1:%d" % dante.port)
    c = greenpool.Client(pool=pool, trust_env=True)
    assert isinstance(c._proxies["http"], SocksProxy)
    assert "secret" not in repr(c._proxies["http"]) and "secret" not in repr(c)
    with pytest.raises(ValueError):
        greenpool.Client(proxy="socks6://127.0.0.1:1")
    pool.close()


def test_one_pool_one_cap_across_http_tls_proxies_and_unix(no_leaks, dante, nginx_factory, tls, tmp_path):
    """max_connections=4 holds over plain http, https with a private CA, https through an
    HTTP CONNECT proxy, http through a SOCKS proxy and a Unix socket together: the pool's
    own events never show more than 4 open (those being opened included), every connection
    is the user's pool's (each route under its own key; get_stats() counts every one),
    and stop_pool closes them all."""
    from test_http_client import _connect_proxy

    from greenpool import events
    path = str(tmp_path / "cap.sock")
    nginx = nginx_factory(extra_http="server { listen unix:%s; location / { return 200 \"uds\\n\"; } }"
                          % path)
    name = "test-one-cap"
    pool = greenpool.start_pool(name, max_connections=4, checkout_timeout=60)
    connect_proxy, tunnels = _connect_proxy()
    seen = []

    def listen(e):
        if e.pool == name:
            seen.append((e.kind, e.key, e.open))

    with connect_proxy:
        routes = [
            (greenpool.Client(pool=name), nginx.http_url + "/", "tcp"),
            (greenpool.Client(pool=name, verify=tls.ca_bundle), nginx.https_h1_url + "/", "ssl|tls"),
            (greenpool.Client(pool=name, verify=tls.ca_bundle,
                              proxy="http://127.0.0.1:%d" % connect_proxy.port),
             nginx.https_h1_url + "/", "ssl|proxy+tls"),
            (greenpool.Client(pool=name, proxy="socks5://127.0.0.1:%d" % dante.port),
             nginx.http_url + "/", "tcp|proxy"),
            (greenpool.Client(pool=name, uds=path), "http://uds.local/", "unix"),
        ]

        def work(c, url):
            for _ in range(5):
                r = c.get(url)
                assert r.status == 200

        events.subscribe(listen)
        try:
            gevent.joinall([gevent.spawn(work, c, u) for c, u, _ in routes for _ in range(6)],
                           raise_error=True)
        finally:
            events.unsubscribe(listen)
        stats = pool.get_stats()
        assert tunnels, "the https route through the HTTP proxy opened a CONNECT tunnel"
    peak = max(o for _, _, o in seen)
    assert peak == 4, peak     # 30 callers at once: the cap was reached and held
    assert all(o <= 4 for _, _, o in seen)
    connects = [k for kind, k, _ in seen if kind == "connect"]
    # every route opened its connections in this pool, each under its own key
    shapes = {k[2].split("|")[0] + ("|" + "+".join(t.rstrip("0123456789") for t in
                                                  k[2].split("|")[1].split("+")) if "|" in k[2] else "")
              for k in connects}
    assert shapes == {shape for _, _, shape in routes}, shapes
    assert stats["created"] == len(connects) and stats["in_use_count"] == 0, stats
    assert stats["reused"] > 0 and 1 <= stats["open"] <= 4, stats
    assert sum(pool.host_stats(*k)["active"] for k in pool._hosts) == stats["open"]
    assert_exact(pool)
    open_before = stats["open"]
    seen.clear()
    events.subscribe(listen)
    try:
        assert greenpool.stop_pool(name)
    finally:
        events.unsubscribe(listen)
    closes = [k for kind, k, _ in seen if kind == "close"]
    assert len(closes) == open_before and pool.get_stats()["open"] == 0, seen
