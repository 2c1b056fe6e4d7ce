"""The clients under test: one runner class per row of the table.

Imported only by :mod:`benchmarks.worker`, after ``monkey.patch_all()``.

A runner is built from the worker's spec (``spec["workload"]``, ``["concurrency"]``,
``["targets"]``), then ``worker(i)`` returns the callable that greenlet ``i`` calls once per
request.  Every callable does the whole request -- send, read the full body, check the status
and the body length -- so no client is measured doing less work than another.  A runner whose
library is missing or whose API is not there yet raises :class:`Unavailable`; the worker
reports it as ``unavailable: <why>`` and the table shows that instead of a number.

Which family a client belongs to, and which greenpool row it is compared with, is in
:mod:`benchmarks.catalog`.
"""
from __future__ import annotations

import inspect
import os
import socket
import ssl
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from benchmarks.catalog import NIQUESTS_TARGET, REDIS_KEY, REDIS_VALUE


class Unavailable(Exception):
    """The client cannot run here (not installed, or its API is not written yet)."""


class BadResponse(Exception):
    pass


def _check(status: int, n: int, expect: int) -> None:
    if status != 200 or n != expect:
        raise BadResponse("status %s, %d body bytes (expected 200, %d)" % (status, n, expect))


class Runner:
    """Base: a client shared by every greenlet (most rows)."""

    #: a short note for the table/JSON (library version, parser ...)
    note = ""

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.spec = spec
        self.wl = spec["workload"]
        self.c = int(spec["concurrency"])
        self.t = spec["targets"]
        self.method = self.wl["method"]
        self.path = self.wl["path"]
        self.body: Optional[bytes] = b"x" * self.wl["body_size"] if self.wl["body_size"] else None
        self.expect = int(self.wl["expect"])

    def url(self, key: str = "http") -> str:
        return self.t[key] + self.path

    def request(self) -> None:
        raise NotImplementedError

    def worker(self, i: int) -> Callable[[], None]:
        return self.request

    def close(self) -> None:
        pass


# -------------------------------------------------------------------------------------------
# greenpool (fail soft until the HTTP and Redis clients land)


def _greenpool() -> Any:
    try:
        import greenpool
    except ImportError as e:
        raise Unavailable("greenpool not importable: %s" % e)
    return greenpool


def _body_kwarg(fn: Callable[..., Any]) -> str:
    """The keyword greenpool.request takes a bytes body as (the API is not frozen yet)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return "body"
    for name in ("body", "content", "data"):
        if name in params:
            return name
    return "body"


class GreenpoolHTTP(Runner):
    parser: Optional[str] = None
    http2: Any = None
    http3: Any = None
    target = "http"
    #: pool options of the runner's pool besides max_connections
    pool_options: Dict[str, Any] = {}

    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        gp = _greenpool()
        request = getattr(gp, "request", None)
        if request is None:
            raise Unavailable("greenpool.request is not implemented yet")
        self.pool_name = "bench"
        if self.target.startswith("h3") and self.target not in self.t:
            raise Unavailable("no %s server (Caddy and its UDP relays)" % self.target)
        gp.start_pool(self.pool_name, max_connections=self.c, **self.pool_options)
        kw: Dict[str, Any] = {"pool": self.pool_name}
        if self.parser is not None:
            kw["http1_parser"] = self.parser
        if self.http2 is not None:
            kw["http2"] = self.http2
        if self.http3 is not None:
            kw["http3"] = self.http3
        if self.target == "https":
            kw["verify"] = self.t["ca"]
        elif self.target.startswith("h3"):
            kw["verify"] = self.t["h3_ca"]
        if self.body is not None:
            kw[_body_kwarg(request)] = self.body
        self._request = request
        self._url = self.url(self.target)
        self._kw = kw
        self.note = "greenpool %s" % getattr(gp, "__version__", "?")

    def request(self) -> None:
        r = self._request(self.method, self._url, **self._kw)
        data = r.read()
        _check(r.status, len(data), self.expect)

    def close(self) -> None:
        try:
            _greenpool().stop_pool(self.pool_name)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class GreenpoolH11(GreenpoolHTTP):
    parser = "h11"


class GreenpoolHttptools(GreenpoolHTTP):
    parser = "httptools"


class GreenpoolH2(GreenpoolHTTP):
    """greenpool's HTTP/2 on a chosen core (GREENPOOL_H2_BACKEND, set before greenpool
    imports its HTTP/2 adapter: the core is chosen once per process)."""

    core = "h2"

    def __init__(self, spec: Dict[str, Any]) -> None:
        os.environ["GREENPOOL_H2_BACKEND"] = self.core
        try:
            from greenpool.http.h2 import backend as h2backend
        except ImportError as e:
            raise Unavailable("greenpool HTTP/2 core %s: %s" % (self.core, e))
        if h2backend.name != self.core:
            raise Unavailable("greenpool HTTP/2 core is already %s" % h2backend.name)
        super().__init__(spec)
        self.note += ", %s %s" % (h2backend.name, h2backend.version)


class GreenpoolH2c(GreenpoolH2):
    http2 = "prior_knowledge"
    target = "h2c"


class GreenpoolH2TLS(GreenpoolH2):
    http2 = True
    target = "https"


class GreenpoolH2cJh2(GreenpoolH2c):
    core = "jh2"


class GreenpoolH2TLSJh2(GreenpoolH2TLS):
    core = "jh2"


class GreenpoolH2TLSCaddy(GreenpoolH2TLSJh2):
    """greenpool's HTTP/2 over TLS (jh2) to the Caddy that serves the HTTP/3 rows."""

    target = "h3"


class GreenpoolH3(GreenpoolHTTP):
    """greenpool's HTTP/3: C greenlets over one QUIC connection.  The race delay is long
    so the first (checked) request waits for QUIC instead of going over TCP; every
    measured response must have come over HTTP/3."""

    http3 = "prior_knowledge"
    target = "h3"
    pool_options = {"h3_race_delay": 10.0}

    def __init__(self, spec: Dict[str, Any]) -> None:
        try:
            import qh3
        except ImportError as e:
            raise Unavailable("greenpool HTTP/3 needs qh3 (pip install greenpool[http3]): %s" % e)
        super().__init__(spec)
        self.note += ", qh3 %s" % getattr(qh3, "__version__", "?")

    def request(self) -> None:
        r = self._request(self.method, self._url, **self._kw)
        data = r.read()
        if r.http_version != "HTTP/3":
            raise BadResponse("answered over %s, not HTTP/3" % r.http_version)
        _check(r.status, len(data), self.expect)


class GreenpoolH3Relay(GreenpoolH3):
    target = "h3_relay"


class GreenpoolH3Loss5(GreenpoolH3):
    target = "h3_loss5"


class GreenpoolRedis(Runner):
    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        gp = _greenpool()
        try:
            import greenpool.redis as gpr
        except ImportError as e:
            raise Unavailable("greenpool.redis not importable: %s" % e)
        cls = getattr(gpr, "RedisPool", None)
        if cls is None:
            raise Unavailable("greenpool.redis.RedisPool is not implemented yet")
        size = int(spec.get("redis_pool_size") or 1)
        self.rp = cls(pool_size=size, host=self.t["redis_host"], port=self.t["redis_port"])
        self.cmd = _redis_cmd(self.wl)
        self.note = "greenpool %s, pool_size=%d" % (getattr(gp, "__version__", "?"), size)
        self.blockers = _Blockers(self.wl, lambda: self.rp.command(BLOCKING_CMD))

    def request(self) -> None:
        reply = self.rp.command(self.cmd)
        _check_redis(self.wl, reply)

    def close(self) -> None:
        self.blockers.close()
        try:
            self.rp.stop()
        except Exception:  # noqa: BLE001
            pass


class _Blockers:
    """``wl["blockers"]`` greenlets calling ``call()`` (a BLPOP that waits 0.2 s for
    nothing) in a loop on the client under test, until ``close()``."""

    def __init__(self, wl: Dict[str, Any], call: Callable[[], Any]) -> None:
        self.running = True
        self.calls = 0
        self.greenlets = [gevent.spawn(self._loop, call) for _ in range(int(wl.get("blockers") or 0))]

    def _loop(self, call: Callable[[], Any]) -> None:
        while self.running:
            if call() is not None:
                raise BadResponse("BLPOP on an empty list returned a value")
            self.calls += 1

    def close(self) -> None:
        self.running = False
        gevent.joinall(self.greenlets, timeout=2)
        gevent.killall(self.greenlets)


BLOCKING_CMD = ["BLPOP", REDIS_KEY + ":blocking", "0.2"]


class GreenpoolRedisCluster(Runner):
    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        gp = _greenpool()
        try:
            from greenpool.redis import RedisClusterPool
        except ImportError as e:
            raise Unavailable("greenpool.redis.RedisClusterPool not importable: %s" % e)
        size = int(spec.get("redis_pool_size") or 1)
        nodes = [(h, int(p)) for h, p in self.t["redis_cluster"]]
        self.rc = RedisClusterPool(nodes, pool_size=size)
        self.cmd = _redis_cmd(self.wl)
        self.note = "greenpool %s, pool_size=%d per node" % (getattr(gp, "__version__", "?"), size)

    def request(self) -> None:
        reply = self.rc.command(self.cmd)
        _check_redis(self.wl, reply)

    def close(self) -> None:
        try:
            self.rc.stop()
        except Exception:  # noqa: BLE001
            pass


class RedisPyCluster(Runner):
    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        import redis
        import redis.utils
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, int(p)) for h, p in self.t["redis_cluster"]]
        self.r = RedisCluster(startup_nodes=nodes, max_connections=self.c)
        self.cmd = _redis_cmd(self.wl)
        hiredis = getattr(redis.utils, "HIREDIS_AVAILABLE", False)
        self.note = "redis-py %s RedisCluster, %s" % (
            redis.__version__, "hiredis" if hiredis else "NO hiredis")

    def request(self) -> None:
        reply = self.r.execute_command(*self.cmd)
        _check_redis(self.wl, reply)

    def close(self) -> None:
        self.r.close()


def _redis_cmd(wl: Dict[str, Any]) -> List[Any]:
    if wl["method"] == "GET":
        return ["GET", REDIS_KEY]
    return ["SET", REDIS_KEY + ":set", REDIS_VALUE]


def _check_redis(wl: Dict[str, Any], reply: Any) -> None:
    if wl["method"] == "GET":
        if reply is None or len(reply) != len(REDIS_VALUE):
            raise BadResponse("GET returned %r" % (reply,))
    elif reply not in (b"OK", "OK", True):
        raise BadResponse("SET returned %r" % (reply,))


# -------------------------------------------------------------------------------------------
# HTTP peers


class Geventhttpclient(Runner):
    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        import geventhttpclient
        from geventhttpclient import HTTPClient

        host, port = _hostport(self.t["http"])
        self.client = HTTPClient(host, port, concurrency=self.c,
                                 connection_timeout=30, network_timeout=30)
        self.note = "geventhttpclient %s" % geventhttpclient.__version__

    def request(self) -> None:
        if self.body is None:
            r = self.client.request(self.method, self.path)
        else:
            r = self.client.request(self.method, self.path, body=self.body)
        data = r.read()
        _check(r.status_code, len(data), self.expect)

    def close(self) -> None:
        self.client.close()


class Urllib3(Runner):
    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        import urllib3

        _refuse_urllib3_future(urllib3)
        self.pm = urllib3.PoolManager(maxsize=self.c, block=True)
        self._url = self.url()
        self.note = "urllib3 %s" % urllib3.__version__

    def request(self) -> None:
        r = self.pm.request(self.method, self._url, body=self.body)
        _check(r.status, len(r.data), self.expect)


class Requests(Runner):
    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        import requests
        import urllib3
        from requests.adapters import HTTPAdapter

        _refuse_urllib3_future(urllib3)
        self.s = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.c, pool_block=True)
        self.s.mount("http://", adapter)
        self.s.mount("https://", adapter)
        self._url = self.url()
        self.note = "requests %s" % requests.__version__

    def request(self) -> None:
        r = self.s.request(self.method, self._url, data=self.body)
        _check(r.status_code, len(r.content), self.expect)


def _refuse_urllib3_future(urllib3: Any) -> None:
    # niquests' dependency urllib3-future installs a .pth that overwrites the real urllib3 at
    # every interpreter start: that would measure the fork under urllib3's name.
    if int(urllib3.__version__.split(".")[1]) >= 20 or hasattr(urllib3, "AsyncPoolManager"):
        raise Unavailable("urllib3 is urllib3-future %s (niquests overwrote it): pip uninstall "
                          "niquests urllib3-future, reinstall urllib3, and use "
                          "`python -m benchmarks --install`" % urllib3.__version__)


class Httpx(Runner):
    http2 = False
    http1 = True
    target = "http"

    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        # httpcore imports trio when it is installed (hypercorn brings it); trio's import
        # needs select.epoll, which gevent's patch removes.  trio is only for async use.
        if "trio" not in sys.modules:
            sys.modules["trio"] = None  # type: ignore[assignment]
        import httpx

        if self.http2:
            try:
                import h2  # noqa: F401
            except ImportError:
                raise Unavailable("httpx http2 needs h2: pip install 'httpx[http2]'")
        limits = httpx.Limits(max_connections=self.c, max_keepalive_connections=self.c)
        verify: Any = self.t["ca"] if self.target == "https" else True
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        self.client = httpx.Client(http1=self.http1, http2=self.http2, limits=limits,
                                   timeout=httpx.Timeout(60.0), verify=verify)
        self._url = self.url(self.target)
        self.note = "httpx %s" % httpx.__version__

    def request(self) -> None:
        r = self.client.request(self.method, self._url, content=self.body)
        _check(r.status_code, len(r.content), self.expect)

    def close(self) -> None:
        self.client.close()


class HttpxH2TLS(Httpx):
    http2 = True
    target = "https"


class HttpxH2c(Httpx):
    http1 = False  # prior knowledge over cleartext
    http2 = True
    target = "h2c"


def _niquests_path() -> None:
    # niquests is installed apart (see run.py --install): its urllib3-future would otherwise
    # replace urllib3 for every other client.  Appended, so the real urllib3 still wins.
    if os.path.isdir(NIQUESTS_TARGET) and NIQUESTS_TARGET not in sys.path:
        sys.path.append(NIQUESTS_TARGET)


class Niquests(Runner):
    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        _niquests_path()
        try:
            import niquests
        except ImportError:
            raise Unavailable("niquests not installed (python -m benchmarks --install puts it in %s)"
                              % NIQUESTS_TARGET)
        self.s = niquests.Session(pool_connections=1, pool_maxsize=self.c, disable_http3=True)
        self._url = self.url()
        self.note = "niquests %s" % niquests.__version__

    def request(self) -> None:
        r = self.s.request(self.method, self._url, data=self.body)
        _check(r.status_code, len(r.content or b""), self.expect)


class NiquestsH3(Runner):
    """niquests' HTTP/3 (qh3 through urllib3-future) to Caddy, told the origin speaks QUIC."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        if "h3" not in self.t:
            raise Unavailable("no HTTP/3 server (Caddy)")
        _niquests_path()
        try:
            import niquests
        except ImportError:
            raise Unavailable("niquests not installed (python -m benchmarks --install puts it in %s)"
                              % NIQUESTS_TARGET)
        self._url = self.url("h3")
        host, port = _hostport(self.t["h3"])
        self.s = niquests.Session(pool_connections=1, pool_maxsize=self.c, multiplexed=False,
                                  disable_http2=True)
        self.s.quic_cache_layer.add_domain(host, port)
        self._ca = self.t["h3_ca"]   # per request: Session.verify does not reach its QUIC TLS
        self.note = "niquests %s" % niquests.__version__

    def request(self) -> None:
        r = self.s.request(self.method, self._url, data=self.body, verify=self._ca)
        if r.http_version != 30:
            raise BadResponse("answered over HTTP/%s, not HTTP/3" % r.http_version)
        _check(r.status_code, len(r.content or b""), self.expect)

    def close(self) -> None:
        self.s.close()


class RedisPy(Runner):
    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        import redis
        import redis.utils

        self.pool = redis.BlockingConnectionPool(
            host=self.t["redis_host"], port=self.t["redis_port"], max_connections=self.c,
            timeout=60)
        self.r = redis.Redis(connection_pool=self.pool)
        self.cmd = _redis_cmd(self.wl)
        hiredis = getattr(redis.utils, "HIREDIS_AVAILABLE", False)
        self.note = "redis-py %s, %s" % (redis.__version__, "hiredis" if hiredis else "NO hiredis")
        self.blockers = _Blockers(self.wl, lambda: self.r.execute_command(*BLOCKING_CMD))

    def request(self) -> None:
        reply = self.r.execute_command(*self.cmd)
        _check_redis(self.wl, reply)

    def close(self) -> None:
        self.blockers.close()
        self.pool.disconnect()


# -------------------------------------------------------------------------------------------
# Floors: the protocol alone, on pre-opened gevent sockets


def _hostport(base: str) -> Tuple[str, int]:
    rest = base.split("://", 1)[1]
    host, port = rest.rsplit(":", 1)
    return host, int(port)


def _connect(base: str, alpn: Optional[str] = None, ca: Optional[str] = None) -> Any:
    host, port = _hostport(base)
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if alpn is not None:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols([alpn])
        sock = ctx.wrap_socket(sock, server_hostname=host)
        if sock.selected_alpn_protocol() != alpn:
            raise Unavailable("server did not select ALPN %s" % alpn)
    return sock


class RawH11(Runner):
    """h11 on one pre-opened socket per greenlet."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        import h11

        self.h11 = h11
        host, port = _hostport(self.t["http"])
        self.headers = [("Host", "%s:%d" % (host, port)), ("User-Agent", "raw-h11")]
        if self.body is not None:
            self.headers.append(("Content-Length", str(len(self.body))))
        self.note = "h11 %s" % h11.__version__

    def worker(self, i: int) -> Callable[[], None]:
        h11 = self.h11
        sock = _connect(self.t["http"])
        conn = h11.Connection(h11.CLIENT)
        Request, Data, EOM, Response, NEED_DATA = (
            h11.Request, h11.Data, h11.EndOfMessage, h11.Response, h11.NEED_DATA)
        method, path, headers, body, expect = (
            self.method, self.path, self.headers, self.body, self.expect)
        recv, sendall = sock.recv, sock.sendall

        def one() -> None:
            head = conn.send(Request(method=method, target=path, headers=headers))
            if body is not None:
                sendall(head)
                sendall(conn.send(Data(data=body)))
                sendall(conn.send(EOM()))
            else:
                sendall(head + conn.send(EOM()))
            status = 0
            n = 0
            while True:
                ev = conn.next_event()
                if ev is NEED_DATA:
                    data = recv(65536)
                    if not data:
                        raise BadResponse("server closed the connection")
                    conn.receive_data(data)
                    continue
                t = type(ev)
                if t is Data:
                    n += len(ev.data)
                elif t is Response:
                    status = ev.status_code
                elif t is EOM:
                    break
                else:
                    raise BadResponse("unexpected h11 event %r" % (ev,))
            conn.start_next_cycle()
            _check(status, n, expect)

        return one


class _HttptoolsProto:
    __slots__ = ("done", "n", "headers")

    def __init__(self) -> None:
        self.done = False
        self.n = 0
        self.headers: List[Tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.n += len(body)

    def on_message_complete(self) -> None:
        self.done = True


class RawHttptools(Runner):
    """httptools (llhttp) on one pre-opened socket per greenlet; headers are collected."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        import httptools

        self.httptools = httptools
        host, port = _hostport(self.t["http"])
        head = "%s %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: raw-httptools\r\n" % (
            self.method, self.path, host, port)
        if self.body is not None:
            head += "Content-Length: %d\r\n" % len(self.body)
        self.head = (head + "\r\n").encode()
        self.note = "httptools %s" % httptools.__version__

    def worker(self, i: int) -> Callable[[], None]:
        sock = _connect(self.t["http"])
        proto = _HttptoolsProto()
        parser = self.httptools.HttpResponseParser(proto)
        head, body, expect = self.head, self.body, self.expect
        recv, sendall, feed = sock.recv, sock.sendall, parser.feed_data

        def one() -> None:
            proto.done = False
            proto.n = 0
            proto.headers = []
            if body is not None:
                sendall(head)
                sendall(body)
            else:
                sendall(head)
            while not proto.done:
                data = recv(65536)
                if not data:
                    raise BadResponse("server closed the connection")
                feed(data)
            _check(parser.get_status_code(), proto.n, expect)

        return one


class _Stream:
    __slots__ = ("done", "status", "n", "error")

    def __init__(self) -> None:
        self.done = Event()
        self.status = 0
        self.n = 0
        self.error: Optional[str] = None


class RawH2(Runner):
    """h2 (or jh2, its fork with a compiled core: ``core``) on one pre-opened connection, C
    concurrent streams; a reader greenlet dispatches."""

    tls = False
    core = "h2"

    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        import importlib

        try:
            h2 = importlib.import_module(self.core)
            for sub in ("config", "connection", "events", "settings"):
                importlib.import_module(self.core + "." + sub)
        except ImportError as e:
            raise Unavailable("%s is not installed (%s): pip install %s" % (self.core, e, self.core))
        self.ev = h2.events
        base = self.t["https" if self.tls else "h2c"]
        self.sock = _connect(base, alpn="h2" if self.tls else None, ca=self.t["ca"])
        host, port = _hostport(base)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        window = 1 << 24
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                              h2.settings.SettingCodes.ENABLE_PUSH: 0})
        conn.increment_flow_control_window(window)
        self.wlock = Semaphore(1)
        self.window_open = Event()
        self.settings = Event()
        self.streams: Dict[int, _Stream] = {}
        self.flush()
        self.reader = gevent.spawn(self._read)
        if not self.settings.wait(10):
            raise Unavailable("no SETTINGS from the server")
        max_streams = conn.remote_settings.max_concurrent_streams
        self.slots = Semaphore(min(self.c, max_streams))
        self.headers = [(b":method", self.method.encode()), (b":scheme", b"https" if self.tls else b"http"),
                        (b":authority", ("%s:%d" % (host, port)).encode()),
                        (b":path", self.path.encode()), (b"user-agent", b"raw-" + self.core.encode())]
        if self.body is not None:
            self.headers.append((b"content-length", str(len(self.body)).encode()))
        self.note = "%s %s, max_concurrent_streams=%d" % (self.core, h2.__version__, max_streams)

    def flush(self) -> None:
        with self.wlock:
            data = self.conn.data_to_send()
            if data:
                self.sock.sendall(data)

    def _read(self) -> None:
        ev = self.ev
        conn, streams, recv = self.conn, self.streams, self.sock.recv
        ResponseReceived, DataReceived, StreamEnded = (
            ev.ResponseReceived, ev.DataReceived, ev.StreamEnded)
        try:
            while True:
                data = recv(65536)
                if not data:
                    break
                for e in conn.receive_data(data):
                    t = type(e)
                    if t is DataReceived:
                        st = streams.get(e.stream_id)
                        if st is not None:
                            st.n += len(e.data)
                        conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                    elif t is ResponseReceived:
                        for k, v in e.headers:
                            if k == b":status":
                                streams[e.stream_id].status = int(v)
                    elif t is StreamEnded:
                        st = streams.pop(e.stream_id, None)
                        if st is not None:
                            st.done.set()
                    elif t is ev.WindowUpdated:
                        self.window_open.set()
                        self.window_open.clear()
                    elif t is ev.RemoteSettingsChanged:
                        self.settings.set()
                    elif t is ev.StreamReset:
                        st = streams.pop(e.stream_id, None)
                        if st is not None:
                            st.error = "stream reset: %r" % (e.error_code,)
                            st.done.set()
                    elif t is ev.ConnectionTerminated:
                        raise BadResponse("GOAWAY %r" % (e.error_code,))
                self.flush()
        finally:
            for st in list(streams.values()):
                st.error = "connection lost"
                st.done.set()
            streams.clear()

    def _send_body(self, sid: int, st: _Stream, body: bytes) -> None:
        conn = self.conn
        off, total = 0, len(body)
        while off < total:
            if st.done.is_set():
                return  # the server answered (or reset) before taking the whole body
            window = conn.local_flow_control_window(sid)
            if window <= 0:
                self.window_open.wait(1.0)
                continue
            size = min(window, conn.max_outbound_frame_size, total - off)
            conn.send_data(sid, body[off:off + size], end_stream=off + size == total)
            off += size
            self.flush()

    def request(self) -> None:
        with self.slots:
            conn = self.conn
            sid = conn.get_next_available_stream_id()
            st = self.streams[sid] = _Stream()
            conn.send_headers(sid, self.headers, end_stream=self.body is None)
            self.flush()
            if self.body is not None:
                self._send_body(sid, st, self.body)
            st.done.wait()
        if st.error:
            raise BadResponse(st.error)
        _check(st.status, st.n, self.expect)

    def close(self) -> None:
        self.reader.kill(block=False)
        self.sock.close()


class RawH2TLS(RawH2):
    tls = True


class RawJh2(RawH2):
    core = "jh2"


class RawJh2TLS(RawH2TLS):
    core = "jh2"


class RawQh3(Runner):
    """qh3 alone (the floor of greenpool's HTTP/3): one pre-opened QUIC connection to Caddy,
    C concurrent streams.  A reader greenlet owns the connected UDP socket, woken by it or by
    qh3's timer; a request only queues its frames and asks for one flush per loop turn, so
    the requests of one turn leave together (as greenpool does)."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        if "h3" not in self.t:
            raise Unavailable("no HTTP/3 server (Caddy)")
        try:
            import qh3
            from qh3.h3.connection import H3Connection
            from qh3.h3.events import DataReceived, HeadersReceived
            from qh3.quic.configuration import QuicConfiguration
            from qh3.quic.connection import QuicConnection
            from qh3.quic.events import ConnectionTerminated, HandshakeCompleted, StreamReset
        except ImportError as e:
            raise Unavailable("qh3 is not installed (%s): pip install qh3" % e)
        import time

        self._now = time.monotonic
        self._ev = (DataReceived, HeadersReceived, ConnectionTerminated, HandshakeCompleted, StreamReset)
        host, port = _hostport(self.t["h3"])
        cfg = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=host)
        cfg.load_verify_locations(cafile=self.t["h3_ca"])
        self.quic = QuicConnection(configuration=cfg)
        self.addr = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(self.addr)
        self.sock.settimeout(0.0)
        self.quic.connect(self.addr, self._now())
        self.h3 = H3Connection(self.quic)
        self.streams: Dict[int, _Stream] = {}
        self.ready = Event()
        self.error: Optional[str] = None
        self._flush_pending = False
        self._loop = gevent.get_hub().loop
        self._send()
        self.reader = gevent.spawn(self._read)
        if not self.ready.wait(10):
            raise Unavailable("no QUIC handshake with %s:%d within 10 s" % self.addr)
        core: Any = getattr(self.quic, "_core", None)
        limits = core.stream_limits if core is not None else None
        max_streams = limits[0] if limits else self.c
        self.slots = Semaphore(min(self.c, max_streams))
        self.headers = [(b":method", self.method.encode()), (b":scheme", b"https"),
                        (b":authority", ("%s:%d" % (host, port)).encode()),
                        (b":path", self.path.encode()), (b"user-agent", b"raw-qh3")]
        self.note = "qh3 %s, max_streams=%d" % (getattr(qh3, "__version__", "?"), max_streams)

    def _send(self) -> None:
        send = self.sock.send
        for data, _ in self.quic.datagrams_to_send(self._now()):
            try:
                send(data)
            except OSError:      # a full socket buffer: QUIC's loss recovery sends it again
                pass

    def _flush(self) -> None:
        self._flush_pending = False
        self._send()

    def _events(self) -> None:
        DataReceived, HeadersReceived, ConnectionTerminated, HandshakeCompleted, StreamReset = self._ev
        quic, h3, streams = self.quic, self.h3, self.streams
        while True:
            ev: Any = quic.next_event()
            if ev is None:
                return
            t = type(ev)
            if t is HandshakeCompleted:
                self.ready.set()
            elif t is ConnectionTerminated:
                raise BadResponse("CONNECTION_CLOSE: %s" % (ev.reason_phrase or ev.error_code))
            elif t is StreamReset:
                st = streams.pop(ev.stream_id, None)
                if st is not None:
                    st.error = "stream reset: %r" % (ev.error_code,)
                    st.done.set()
                continue
            hevents: List[Any] = h3.handle_event(ev)
            for h in hevents:
                st = streams.get(h.stream_id)
                if st is None:
                    continue
                if type(h) is DataReceived:
                    st.n += len(h.data)
                elif type(h) is HeadersReceived:
                    for k, v in h.headers:
                        if k == b":status":
                            st.status = int(v)
                if h.stream_ended:
                    del streams[h.stream_id]
                    st.done.set()

    def _read(self) -> None:
        from gevent.socket import wait_read

        quic, sock, now = self.quic, self.sock, self._now
        fd = sock.fileno()
        try:
            while True:
                timer = quic.get_timer()
                try:
                    wait_read(fd, None if timer is None else max(0.0, timer - now()))
                except TimeoutError:
                    pass
                t = now()
                for _ in range(64):
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    quic.receive_datagram(data, self.addr, t)
                timer = quic.get_timer()
                if timer is not None and timer <= now():
                    quic.handle_timer(now())
                self._events()
                self._send()
        except Exception as e:  # noqa: BLE001 - every waiting request learns it
            self.error = "%s: %s" % (type(e).__name__, e)
        finally:
            for st in list(self.streams.values()):
                st.error = self.error or "connection lost"
                st.done.set()
            self.streams.clear()

    def request(self) -> None:
        with self.slots:
            if self.error:
                raise BadResponse(self.error)
            sid = self.quic.get_next_available_stream_id()
            st = self.streams[sid] = _Stream()
            self.h3.send_headers(sid, self.headers, end_stream=self.body is None)
            if self.body is not None:
                self.h3.send_data(sid, self.body, end_stream=True)
            if not self._flush_pending:
                self._flush_pending = True
                self._loop.run_callback(self._flush)
            st.done.wait()
        if st.error:
            raise BadResponse(st.error)
        _check(st.status, st.n, self.expect)

    def close(self) -> None:
        self.quic.close()
        self._send()
        self.reader.kill(block=False)
        self.sock.close()


# -------------------------------------------------------------------------------------------
# name -> runner (families and ratio references are in benchmarks/catalog.py)

RUNNERS: Dict[str, type] = {
    "greenpool-httptools": GreenpoolHttptools,
    "greenpool-h11": GreenpoolH11,
    "geventhttpclient": Geventhttpclient,
    "urllib3": Urllib3,
    "requests": Requests,
    "httpx": Httpx,
    "niquests": Niquests,
    "raw-h11": RawH11,
    "raw-httptools": RawHttptools,
    "greenpool-h2c": GreenpoolH2c,
    "greenpool-h2c-jh2": GreenpoolH2cJh2,
    "httpx-h2c": HttpxH2c,
    "raw-h2": RawH2,
    "raw-jh2": RawJh2,
    "greenpool-h2-tls": GreenpoolH2TLS,
    "greenpool-h2-tls-jh2": GreenpoolH2TLSJh2,
    "httpx-h2-tls": HttpxH2TLS,
    "raw-h2-tls": RawH2TLS,
    "raw-jh2-tls": RawJh2TLS,
    "greenpool-h3": GreenpoolH3,
    "greenpool-h2-tls-caddy": GreenpoolH2TLSCaddy,
    "niquests-h3": NiquestsH3,
    "raw-qh3": RawQh3,
    "greenpool-h3-relay": GreenpoolH3Relay,
    "greenpool-h3-loss5": GreenpoolH3Loss5,
    "greenpool-redis": GreenpoolRedis,
    "redis-py": RedisPy,
    "greenpool-redis-cluster": GreenpoolRedisCluster,
    "redis-py-cluster": RedisPyCluster,
}
