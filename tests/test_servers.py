"""Smoke tests for tests/servers.py: every loopback server starts, answers, and stops.

Only the stdlib talks to the servers here (raw sockets, ssl, http.client), so a failure points
at the fixtures, not at greenpool.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytest

from servers import (
    EMPTY_SETTINGS_FRAME,
    H2_PREFACE,
    HOST,
    SMALL_BODY,
    RedisReplyError,
    encode_command,
    pattern,
    read_reply,
)

pytestmark = pytest.mark.interop

TESTS_DIR = Path(__file__).resolve().parent


# -- raw helpers -------------------------------------------------------------------------------


def raw_request(port: int, request: bytes, *, tls: Optional[ssl.SSLContext] = None,
                timeout: float = 5.0) -> bytes:
    """Send ``request`` and read until the server closes."""
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        sock = tls.wrap_socket(raw, server_hostname=HOST) if tls else raw
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def get_close(port: int, path: str = "/", **kw: Any) -> Tuple[bytes, bytes]:
    reply = raw_request(
        port, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(), **kw)
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body


def h2_settings(sock: socket.socket) -> Dict[int, int]:
    """Send the client preface, return the server's first frame (must be SETTINGS) as a dict."""
    sock.sendall(H2_PREFACE + EMPTY_SETTINGS_FRAME)
    header = _recv_exact(sock, 9)
    length = int.from_bytes(header[:3], "big")
    frame_type, flags, stream_id = header[3], header[4], struct.unpack(">I", header[5:])[0]
    assert frame_type == 0x4, f"first frame from server is type {frame_type}, not SETTINGS"
    assert flags & 0x1 == 0 and stream_id == 0
    payload = _recv_exact(sock, length)
    return {ident: value for ident, value in struct.iter_unpack(">HI", payload)}


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        assert data, f"connection closed after {len(buf)} of {n} bytes"
        buf += data
    return buf


def request(url_port: int, method: str, path: str, *, body: Optional[bytes] = None,
         headers: Optional[Dict[str, str]] = None,
         conn: Optional[http.client.HTTPConnection] = None,
         ) -> Tuple[http.client.HTTPResponse, bytes]:
    c = conn or http.client.HTTPConnection(HOST, url_port, timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    resp = c.getresponse()
    data = resp.read()
    if conn is None:
        c.close()
    return resp, data


SETTINGS_MAX_CONCURRENT_STREAMS = 0x3


# -- TLS material ------------------------------------------------------------------------------


def test_tls_material(tls):
    for path in (tls.ca_path, tls.cert_path, tls.key_path, tls.expired_cert_path,
                 tls.wrong_host_cert_path, tls.untrusted_cert_path):
        assert Path(path).stat().st_size > 0
    ctx = tls.client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


# -- nginx -------------------------------------------------------------------------------------


def test_nginx_http_raw(nginx):
    head, body = get_close(nginx.http_port)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == SMALL_BODY and len(body) == 100
    head, body = get_close(nginx.http_port, "/bytes/64k")
    assert b"Content-Length: 65536" in head
    assert body == pattern(65536) == nginx.file_bytes("/bytes/64k")


def test_nginx_keepalive_and_locations(nginx):
    conn = http.client.HTTPConnection(HOST, nginx.http_port, timeout=10)
    try:
        for _ in range(3):  # one connection, several requests
            resp, data = request(nginx.http_port, "GET", "/", conn=conn)
            assert resp.status == 200 and data == SMALL_BODY
        resp, data = request(nginx.http_port, "GET", "/bytes/1m", conn=conn)
        assert len(data) == 1024 * 1024 and hashlib.sha256(data).digest() == \
            hashlib.sha256(pattern(1024 * 1024)).digest()
        resp, _ = request(nginx.http_port, "GET", "/status/503", conn=conn)
        assert resp.status == 503
        resp, _ = request(nginx.http_port, "GET", "/redirect", conn=conn)
        assert resp.status == 302 and resp.getheader("Location", "").endswith("/")
        resp, data = request(nginx.http_port, "POST", "/upload", body=b"x" * 100_000, conn=conn)
        assert resp.status == 200 and data == b"ok\n"
        resp, data = request(nginx.http_port, "GET", "/data.json", conn=conn,
                          headers={"Accept-Encoding": "gzip"})
        assert resp.getheader("Content-Encoding") == "gzip"
        assert json.loads(gzip.decompress(data))["items"][0]["id"] == 0
        resp, data = request(nginx.http_port, "GET", "/close", conn=conn)
        assert resp.status == 200 and resp.getheader("Connection") == "close"
    finally:
        conn.close()


def test_nginx_tls_alpn(nginx, tls):
    head, body = get_close(nginx.https_port, tls=tls.client_context(alpn=["http/1.1"]))
    assert head.startswith(b"HTTP/1.1 200") and body == SMALL_BODY
    for port, expected in ((nginx.https_port, "h2"), (nginx.https_h1_port, "http/1.1")):
        ctx = tls.client_context(alpn=["h2", "http/1.1"])
        with socket.create_connection((HOST, port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=HOST) as s:
                assert s.selected_alpn_protocol() == expected
                if expected == "h2":
                    assert SETTINGS_MAX_CONCURRENT_STREAMS in h2_settings(s)


@pytest.mark.parametrize("which, reason", [
    ("expired_url", "certificate has expired"),
    ("wrong_host_url", "mismatch"),
    ("untrusted_url", "unable to get local issuer certificate"),
])
def test_nginx_tls_failures(nginx, tls, which, reason):
    port = int(getattr(nginx, which).rsplit(":", 1)[1])
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match=reason):
            tls.client_context().wrap_socket(raw, server_hostname=HOST)


def test_nginx_h2c_prior_knowledge(nginx):
    with socket.create_connection((HOST, nginx.h2c_port), timeout=5) as s:
        settings = h2_settings(s)
    assert settings.get(SETTINGS_MAX_CONCURRENT_STREAMS) == 128  # nginx default


def test_nginx_factory_settings(nginx_factory):
    server = nginx_factory(keepalive_timeout="300ms", keepalive_requests=2,
                           http2_max_concurrent_streams=7)
    with socket.create_connection((HOST, server.h2c_port), timeout=5) as s:
        assert h2_settings(s)[SETTINGS_MAX_CONCURRENT_STREAMS] == 7
    conn = http.client.HTTPConnection(HOST, server.http_port, timeout=5)
    try:
        first, _ = request(0, "GET", "/", conn=conn)
        second, _ = request(0, "GET", "/", conn=conn)
        assert first.getheader("Connection") == "keep-alive"
        assert second.getheader("Connection") == "close"  # keepalive_requests 2
    finally:
        conn.close()
    with socket.create_connection((HOST, server.http_port), timeout=5) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        started = time.monotonic()
        received = b""
        while True:  # the response, then EOF once the 300 ms idle timeout fires
            data = s.recv(65536)
            if not data:
                break
            received += data
        assert received.endswith(SMALL_BODY)
        assert 0.2 < time.monotonic() - started < 3


# -- gunicorn (WSGI app) -----------------------------------------------------------------------


def test_gunicorn_raw_echo(gunicorn):
    body = b'{"hello": "world"}'
    reply = raw_request(gunicorn.port, (
        b"POST /echo?a=1&b=two HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"X-Test: yes\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)))
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echo = json.loads(payload)
    assert echo["method"] == "POST" and echo["path"] == "/echo"
    assert echo["query"] == "a=1&b=two" and echo["args"] == {"a": "1", "b": "two"}
    assert echo["headers"]["x-test"] == "yes"
    assert echo["body"] == body.decode() and base64.b64decode(echo["body_b64"]) == body


def test_gunicorn_endpoints(gunicorn):
    port = gunicorn.port
    resp, data = request(port, "GET", "/bytes/1000")
    assert resp.getheader("Content-Length") == "1000" and data == pattern(1000)
    resp, data = request(port, "GET", "/chunked/100000")
    assert resp.getheader("Transfer-Encoding") == "chunked" and data == pattern(100000)
    resp, _ = request(port, "GET", "/status/418")
    assert resp.status == 418
    resp, data = request(port, "GET", "/slow/0.2")
    assert json.loads(data) == {"slept": 0.2}
    resp, _ = request(port, "GET", "/redirect/2")
    assert resp.status == 302 and resp.getheader("Location") == "/redirect/1"
    resp, _ = request(port, "GET", "/redirect-to?url=http://127.0.0.1:1/x&status=307")
    assert resp.status == 307 and resp.getheader("Location") == "http://127.0.0.1:1/x"
    resp, data = request(port, "GET", "/gzip")
    assert resp.getheader("Content-Encoding") == "gzip" and json.loads(gzip.decompress(data))
    resp, data = request(port, "GET", "/deflate")
    assert resp.getheader("Content-Encoding") == "deflate" and json.loads(zlib.decompress(data))
    payload = os.urandom(300_000)
    resp, data = request(port, "POST", "/upload", body=payload)
    assert json.loads(data) == {"length": len(payload),
                                "sha256": hashlib.sha256(payload).hexdigest()}
    resp, data = request(port, "GET", "/headers", headers={"X-One": "1"})
    assert json.loads(data)["headers"]["x-one"] == "1"
    key = f"k{time.monotonic_ns()}"
    first, _ = request(port, "GET", f"/retry-after?key={key}")
    again, _ = request(port, "GET", f"/retry-after?key={key}")
    assert (first.status, first.getheader("Retry-After"), again.status) == (503, "1", 200)


def test_gunicorn_close_and_stall(gunicorn):
    with socket.create_connection((HOST, gunicorn.port), timeout=5) as s:
        s.sendall(b"GET /close HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply = b""
        while True:  # no Connection: close from us, yet the server closes
            data = s.recv(65536)
            if not data:
                break
            reply += data
    assert b"\r\nConnection: close\r\n" in reply and reply.endswith(b"closing\n")
    with socket.create_connection((HOST, gunicorn.port), timeout=5) as s:
        s.sendall(b"GET /stall-body?seconds=5&size=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < 100:
            received += s.recv(65536)
        assert b"Content-Length: 1000" in received
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(65536)  # the rest of the body is stalled


# -- hypercorn (ASGI app) ----------------------------------------------------------------------


def test_hypercorn_http11_raw(hypercorn):
    head, body = get_close(hypercorn.http_port, "/echo?x=1")
    assert head.startswith(b"HTTP/1.1 200")
    echo = json.loads(body)
    assert echo["http_version"] == "1.1" and echo["args"] == {"x": "1"}
    resp, data = request(hypercorn.http_port, "GET", "/stream/50000")
    assert resp.getheader("Transfer-Encoding") == "chunked" and data == pattern(50000)
    payload = os.urandom(100_000)
    resp, data = request(hypercorn.http_port, "POST", "/upload", body=payload)
    assert json.loads(data)["sha256"] == hashlib.sha256(payload).hexdigest()


def test_hypercorn_h2c_and_h2(hypercorn, tls):
    with socket.create_connection((HOST, hypercorn.h2c_port), timeout=5) as s:
        assert isinstance(h2_settings(s), dict)
    ctx = tls.client_context(alpn=["h2", "http/1.1"])
    with socket.create_connection((HOST, hypercorn.https_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.selected_alpn_protocol() == "h2"
            assert isinstance(h2_settings(s), dict)


# -- nghttpd -----------------------------------------------------------------------------------


def test_nghttpd_h2c(nghttpd):
    with socket.create_connection((HOST, nghttpd.port), timeout=5) as s:
        assert h2_settings(s)[SETTINGS_MAX_CONCURRENT_STREAMS] == 100


def test_nghttpd_tls(nghttpd_tls, tls):
    ctx = tls.client_context(alpn=["h2"])
    with socket.create_connection((HOST, nghttpd_tls.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST) as s:
            assert s.selected_alpn_protocol() == "h2"
            assert SETTINGS_MAX_CONCURRENT_STREAMS in h2_settings(s)


def test_nghttpd_factory_max_streams(nghttpd_factory):
    server = nghttpd_factory(max_concurrent_streams=5)
    with socket.create_connection((HOST, server.port), timeout=5) as s:
        assert h2_settings(s)[SETTINGS_MAX_CONCURRENT_STREAMS] == 5


# -- redis -------------------------------------------------------------------------------------


def test_redis_ping_raw(redis):
    with socket.create_connection((redis.host, redis.port), timeout=5) as s:
        s.sendall(b"PING\r\n")  # inline command
        assert s.recv(100) == b"+PONG\r\n"
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    key = f"smoke:{time.monotonic_ns()}"
    assert redis.execute("SET", key, "v") == "OK" and redis.execute("GET", key) == "v"


def test_redis_unix_socket(redis):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(redis.unix_path))
        s.sendall(encode_command("PING"))
        assert read_reply(s.makefile("rb")) == "PONG"


def test_redis_requirepass(redis_factory):
    server = redis_factory(requirepass="s3cret:/@")
    assert server.url == f"redis://:s3cret%3A%2F%40@127.0.0.1:{server.port}/0"
    with pytest.raises(RedisReplyError, match="NOAUTH"):
        server.execute("PING", auth=False)
    with pytest.raises(RedisReplyError, match="WRONGPASS|invalid password"):
        server.execute("AUTH", "nope", auth=False)
    assert server.execute("PING") == "PONG"  # AUTH with the right password first


def test_redis_restart_same_port(redis_factory):
    server = redis_factory()
    port, pid = server.port, server.pid
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(encode_command("PING"))
        f = s.makefile("rb")
        assert read_reply(f) == "PONG"
        started = time.monotonic()
        server.restart()
        assert time.monotonic() - started < 2
        assert server.port == port and server.pid != pid
        assert f.read(1) == b""  # the old connection saw EOF
    assert server.execute("PING") == "PONG"
    server.kill()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=1).close()
    server.start()
    assert server.execute("PING") == "PONG"


# -- process life ------------------------------------------------------------------------------


def all_dead(procs: Any, timeout: float = 5.0) -> list:
    """Wait until every psutil.Process is gone or a zombie; return those still alive."""
    psutil = pytest.importorskip("psutil")

    def dead(p: Any) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE  # reparented, waiting for init to reap
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + timeout
    while not all(dead(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [p for p in procs if not dead(p)]


def test_stop_reaps_the_whole_group(gunicorn_factory):
    psutil = pytest.importorskip("psutil")
    server = gunicorn_factory(workers=2)
    leader = psutil.Process(server.pid)
    deadline = time.monotonic() + 5
    while len(leader.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    family = [leader] + leader.children(recursive=True)
    assert len(family) >= 3
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    assert all_dead(family, timeout=2) == []


def test_nginx_with_workers_stops_as_a_group(nginx_factory):
    psutil = pytest.importorskip("psutil")
    server = nginx_factory(workers=2)
    head, body = get_close(server.http_port)
    assert head.startswith(b"HTTP/1.1 200") and body == SMALL_BODY
    family = [psutil.Process(server.pid)] + psutil.Process(server.pid).children(recursive=True)
    assert len(family) >= 4  # guard shell, master, 2 workers
    server.stop()
    assert all_dead(family, timeout=2) == []


def test_servers_die_with_the_test_process(tmp_path):
    """SIGKILL the process that started servers: PDEATHSIG takes them down too."""
    psutil = pytest.importorskip("psutil")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from servers import TLS, Gunicorn, Nginx, Redis
        r = Redis({str(tmp_path / 'redis')!r}).start()
        g = Gunicorn({str(tmp_path / 'gunicorn')!r}, workers=1).start()
        n = Nginx({str(tmp_path / 'nginx')!r}, TLS({str(tmp_path / 'tls')!r}), workers=2).start()
        print(r.pid, g.pid, n.pid, flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             env={**os.environ, "CI": ""})
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        assert line, "child did not start its servers"
        pids = [int(p) for p in line.split()]
        procs = [psutil.Process(p) for p in pids]
        procs += [c for p in procs for c in p.children(recursive=True)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]

    assert all_dead(procs) == []


# -- the leak check itself ---------------------------------------------------------------------


def test_leak_check_passes_when_clean(no_leaks):
    s = socket.socket()
    s.close()


def test_leak_check_catches_fds_and_greenlets():
    gevent = pytest.importorskip("gevent")
    from conftest import leak_check

    leaked: Optional[socket.socket] = None
    try:
        with pytest.raises(pytest.fail.Exception, match=r"new fd \d+: socket:"):
            with leak_check(settle=0.1):
                leaked = socket.socket()
    finally:
        if leaked is not None:
            leaked.close()
    g = None
    try:
        with pytest.raises(pytest.fail.Exception, match=r"(?s)greenlets: .*new: <Greenlet"):
            with leak_check(settle=0.1):
                g = gevent.spawn(gevent.sleep, 30)
                gevent.sleep(0)
    finally:
        if g is not None:
            g.kill()
