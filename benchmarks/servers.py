"""The servers the suite measures against, started by the test suite's own launchers.

``tests/servers.py`` owns nginx and redis-server on loopback (free ports, readiness probes,
process groups, parent-death signals, an atexit stop), ``tests/h3servers.py`` Caddy (HTTP/1.1,
HTTP/2 and HTTP/3 on one port): they are imported here by path, not copied.  For the HTTP/3
cells the suite also starts two UDP relays in front of Caddy (:mod:`benchmarks.udprelay`):
one that drops nothing and one that drops 5% of the datagrams each way.  The benchmark nginx
differs from the tests' default in three directives only:

* ``keepalive_requests 1000000``: nginx's default (1000) would close every keep-alive
  connection after 1000 requests and measure reconnects;
* ``http2_max_concurrent_streams 1024``: C=500 streams fit on one HTTP/2 connection;
* ``gzip off`` (per server): clients that send ``Accept-Encoding: gzip`` (requests, httpx,
  niquests) would otherwise get a compressed 100-byte body and do different work.

The 1 MiB POST goes to ``/bench/upload`` (:data:`BENCH_LOCATIONS`), where nginx reads the
whole body before answering, on HTTP/1.1 and HTTP/2; :func:`check_upload` verifies it on one
keep-alive connection.
"""
from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
TESTS_SERVERS = ROOT / "tests" / "servers.py"


def load_test_servers() -> Any:
    """tests/servers.py as a module (it needs pytest and trustme: both in requirements.txt)."""
    name = "_greenpool_test_servers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS_SERVERS)
    if spec is None or spec.loader is None:
        raise RuntimeError("cannot load %s" % TESTS_SERVERS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: added to every server block.  /bench/upload makes nginx READ the whole body before it
#: answers, over HTTP/1.1 and HTTP/2 alike: the mirror module reads it (mirror_request_body)
#: into memory (client_body_buffer_size) in the precontent phase; the static handler then
#: finds no file and error_page turns that into 200 "ok".  (A plain `return 200` answers at
#: once: HTTP/1.1 then discards the body, but HTTP/2 resets the stream after a window's
#: worth, so the "1 MiB POST" would not upload 1 MiB.)
BENCH_LOCATIONS = """
        gzip off;
        location = /bench/upload {
            client_max_body_size 64m;
            client_body_buffer_size 2m;
            mirror /bench/_mirror;
            mirror_request_body on;
            log_not_found off;
            error_page 404 405 =200 /bench/ok;
        }
        location = /bench/_mirror { internal; return 204; }
        location = /bench/ok { internal; default_type text/plain; return 200 "ok\\n"; }
"""


def load_h3_servers() -> Any:
    """tests/h3servers.py as a module (Caddy; it needs qh3 and imports tests/servers.py as
    ``servers``)."""
    name = "_greenpool_h3servers"
    if name in sys.modules:
        return sys.modules[name]
    sys.modules.setdefault("servers", load_test_servers())
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "h3servers.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("cannot load tests/h3servers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def bench_caddy(h3s: Any) -> Any:
    """The tests' Caddy plus ``/bytes/100`` (the HTTP/3 workload's 100-byte file)."""

    class BenchCaddy(h3s.Caddy):  # type: ignore[misc]
        def prepare(self) -> None:
            super().prepare()
            (self.dir / "html" / "bytes" / "100").write_bytes(h3s.pattern(100))

    return BenchCaddy


class Relay:
    """A :mod:`benchmarks.udprelay` process in front of a UDP port (stopped by :meth:`stop`,
    or when this process dies: its stdin closes)."""

    def __init__(self, upstream_port: int, loss: float) -> None:
        self.loss = loss
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.udprelay", str(upstream_port),
                                      repr(loss)], cwd=str(ROOT), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError("the UDP relay did not start: %r" % (line,))
        self.port = int(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


class Missing(Exception):
    """A server binary is not installed."""


def _guard(fn: Any, what: str) -> Any:
    # tests/servers.py skips (pytest.skip, a BaseException) when a binary is missing
    try:
        return fn()
    except Exception:
        raise
    except BaseException as e:  # noqa: B036 - pytest's Skipped/Failed outcomes
        if type(e).__name__ in ("Skipped", "Failed"):
            raise Missing("%s: %s" % (what, e)) from None
        raise


def load_redis_topologies() -> Any:
    """tests/redis_servers.py (Redis Cluster, Sentinel); it imports tests/servers.py as
    ``servers``, so tests/ goes on sys.path."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    import redis_servers
    return redis_servers


class Servers:
    """nginx, redis-server and a 3-master Redis Cluster in ``directory``; ``targets`` is
    what workers get."""

    def __init__(self, directory: Path, need_http: bool = True, need_redis: bool = True,
                 need_cluster: bool = False, need_h3: bool = False) -> None:
        self.dir = Path(directory)
        self.ts = load_test_servers()
        self.nginx: Optional[Any] = None
        self.redis: Optional[Any] = None
        self.cluster: Optional[Any] = None
        self.caddy: Optional[Any] = None
        self.relays: List[Relay] = []
        self.problems: Dict[str, str] = {}
        if need_h3:
            try:
                h3s = load_h3_servers()
                self.caddy = _guard(lambda: bench_caddy(h3s)(self.dir / "caddy", self.ts.TLS(self.dir / "tls-h3")),
                                    "caddy")
                self.caddy.start()
                self.relays = [Relay(self.caddy.port, 0.0), Relay(self.caddy.port, 0.05)]
            except (Missing, ImportError) as e:
                self.problems["h3"] = "%s: %s" % (type(e).__name__, e)
                self.caddy = None
        if need_http:
            try:
                tls = self.ts.TLS(self.dir / "tls")
                self.nginx = _guard(lambda: self.ts.Nginx(
                    self.dir / "nginx", tls, keepalive_requests=1000000,
                    http2_max_concurrent_streams=1024, keepalive_timeout="75s",
                    extra_server=BENCH_LOCATIONS), "nginx")
                self.nginx.start()
            except Missing as e:
                self.problems["http"] = str(e)
                self.nginx = None
        if need_redis:
            try:
                self.redis = _guard(lambda: self.ts.Redis(self.dir / "redis"), "redis-server")
                self.redis.start()
            except Missing as e:
                self.problems["redis"] = str(e)
                self.redis = None
        if need_cluster:
            try:
                self.cluster = _guard(lambda: load_redis_topologies().RedisCluster(
                    self.dir / "redis-cluster", masters=3, replicas=0), "redis-server")
                self.cluster.start()
            except Missing as e:
                self.problems["redis-cluster"] = str(e)
                self.cluster = None

    @property
    def targets(self) -> Dict[str, Any]:
        t: Dict[str, Any] = {}
        if self.nginx is not None:
            n = self.nginx
            t.update(http=n.http_url, https=n.https_url, h2c=n.h2c_url, ca=str(n.tls.ca_path))
        if self.redis is not None:
            t.update(redis_host=self.redis.host, redis_port=self.redis.port)
        if self.cluster is not None:
            t.update(redis_cluster=[list(a) for a in self.cluster.startup_nodes])
        if self.caddy is not None:
            t.update(h3=self.caddy.url, h3_ca=str(self.caddy.tls.ca_path))
            for relay in self.relays:
                key = "h3_relay" if relay.loss == 0 else "h3_loss%d" % round(relay.loss * 100)
                t[key] = "https://127.0.0.1:%d" % relay.port
        return t

    def prepare_redis(self, key: str, value: bytes) -> None:
        if self.redis is not None:
            self.redis.execute("SET", key, value)
        if self.cluster is not None:
            slot = int(self.cluster.nodes[0].execute("CLUSTER", "KEYSLOT", key))
            self.cluster.owner(slot).execute("SET", key, value)

    def stop(self) -> None:
        for relay in self.relays:
            relay.stop()
        self.relays = []
        for s in (self.caddy, self.cluster, self.redis, self.nginx):
            if s is not None:
                s.stop()

    def __enter__(self) -> "Servers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_upload(http_url: str, size: int = 1024 * 1024, rounds: int = 3) -> None:
    """POST ``size`` bytes ``rounds`` times on ONE connection; each must get 200 "ok".

    Proves nginx consumed each body (else the next request would be read from the middle of
    the previous body and fail) and kept the connection alive.
    """
    host, port = http_url.split("://", 1)[1].rsplit(":", 1)
    body = b"x" * size
    head = ("POST /bench/upload HTTP/1.1\r\nHost: %s:%s\r\nContent-Length: %d\r\n\r\n"
            % (host, port, size)).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        f = s.makefile("rb")
        for i in range(rounds):
            s.sendall(head)
            s.sendall(body)
            status = f.readline()
            length = 0
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
                if k.strip().lower() == b"connection" and b"close" in v.lower():
                    raise AssertionError("nginx closed the connection after upload %d" % i)
            data = f.read(length)
            if not status.startswith(b"HTTP/1.1 200") or data != b"ok\n":
                raise AssertionError("upload %d: %r %r" % (i, status, data))
