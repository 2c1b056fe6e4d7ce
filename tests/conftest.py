"""Shared fixtures: real loopback servers (see tests/servers.py) and the ``no_leaks`` check.

Session-scoped servers start on first use and stop at the end of the session; the
``*_factory`` fixtures start servers with custom settings that stop when the test ends.
Tests that use a server fixture are marked ``interop`` automatically.

No monkey-patching happens here: greenpool uses gevent sockets explicitly, and the fixtures
use blocking stdlib sockets and subprocesses.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Set

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import TLS, Gunicorn, Hypercorn, Nghttpd, Nginx, Redis, Server  # noqa: E402  (tests/ is not a package)

SERVER_FIXTURES = {
    "nginx", "nginx_factory", "gunicorn", "gunicorn_factory", "hypercorn", "hypercorn_factory",
    "nghttpd", "nghttpd_tls", "nghttpd_factory", "redis", "redis_factory",
    "redis_cluster", "redis_cluster_factory", "sentinel_group", "sentinel_factory",
}


def pytest_report_header() -> str:
    """Which HTTP/2 core this run's HTTP/2 tests use (GREENPOOL_H2_BACKEND; see
    tests/test_http_h2backend.py, which runs them once more on the other core)."""
    try:
        from greenpool.http.h2 import backend as h2backend
    except (ImportError, ValueError) as e:   # the HTTP/2 tests report it again, each
        return "greenpool HTTP/2 core: none (%s)" % (e,)
    return "greenpool HTTP/2 core: %s %s" % (h2backend.name, h2backend.version)


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.interop)


# ---------------------------------------------------------------------------------------------
# Servers


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    """CA + certificates: ``ca_path`` (pass as ``verify=``), ``cert_path``/``key_path``,
    ``expired_*``, ``wrong_host_*``, ``untrusted_*``; ``client_context(alpn=...)``."""
    pytest.importorskip("trustme")
    return TLS(tmp_path_factory.mktemp("tls"))


class ServerFactory:
    """Calls ``make(directory, **kwargs)``, starts the server, and stops them all at teardown."""

    def __init__(self, name: str, tmp: pytest.TempPathFactory, make: Callable[..., Server]):
        self.name = name
        self.tmp = tmp
        self.make = make
        self.servers: List[Server] = []

    def __call__(self, **kwargs: Any) -> Any:
        server = self.make(self.tmp.mktemp(self.name), **kwargs)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def _session_server(server: Server) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _factory(name: str, tmp: pytest.TempPathFactory,
             make: Callable[..., Server]) -> Iterator[ServerFactory]:
    factory = ServerFactory(name, tmp, make)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def nginx(tls: TLS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx with default settings: ``http_url``, ``https_url`` (= ``h2_tls_url``, ALPN h2 and
    http/1.1), ``https_h1_url``, ``h2c_url``/``h2c_port`` (prior knowledge), ``expired_url``,
    ``wrong_host_url``, ``untrusted_url``; ``small_body``; ``file_bytes(path)``."""
    yield from _session_server(Nginx(tmp_path_factory.mktemp("nginx"), tls))


@pytest.fixture
def nginx_factory(tls: TLS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """``nginx_factory(keepalive_timeout="1s", keepalive_requests=3,
    http2_max_concurrent_streams=100, ...)``: any http-level directive; stops after the test."""
    yield from _factory("nginx", tmp_path_factory, lambda d, **kw: Nginx(d, tls, **kw))


@pytest.fixture(scope="session")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """gunicorn, gevent worker, 2 workers, serving tests/apps/wsgi_app.py: ``url``, ``port``."""
    yield from _session_server(Gunicorn(tmp_path_factory.mktemp("gunicorn")))


@pytest.fixture
def gunicorn_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """``gunicorn_factory(workers=1, keepalive=1, extra_args=[...])``."""
    yield from _factory("gunicorn", tmp_path_factory, Gunicorn)


@pytest.fixture(scope="session")
def hypercorn(tls: TLS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hypercorn]:
    """hypercorn serving tests/apps/asgi_app.py: ``url`` (HTTP/1.1 + h2c), ``https_url`` (h2)."""
    yield from _session_server(Hypercorn(tmp_path_factory.mktemp("hypercorn"), tls))


@pytest.fixture
def hypercorn_factory(tls: TLS,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """``hypercorn_factory(keep_alive=1, extra_args=[...])``."""
    yield from _factory("hypercorn", tmp_path_factory, lambda d, **kw: Hypercorn(d, tls, **kw))


@pytest.fixture(scope="session")
def nghttpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nghttpd]:
    """nghttpd, cleartext HTTP/2 with prior knowledge: ``url``, ``port``."""
    yield from _session_server(Nghttpd(tmp_path_factory.mktemp("nghttpd")))


@pytest.fixture(scope="session")
def nghttpd_tls(tls: TLS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nghttpd]:
    """nghttpd over TLS (ALPN h2): ``url`` (https), ``port``."""
    yield from _session_server(Nghttpd(tmp_path_factory.mktemp("nghttpd-tls"), tls))


@pytest.fixture
def nghttpd_factory(tls: TLS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """``nghttpd_factory(tls=False, max_concurrent_streams=10, workers=1, extra_args=[...])``."""

    def make(directory: Path, *, tls: bool = False, **kw: Any) -> Nghttpd:
        return Nghttpd(directory, tls_material if tls else None, **kw)

    tls_material = tls
    yield from _factory("nghttpd", tmp_path_factory, make)


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """redis-server, no password: ``host``, ``port``, ``url``, ``unix_path``, ``execute()``,
    ``flushall()``, ``restart()``. Shared by the session: use unique keys, or ``redis_factory``
    for tests that restart or kill the server."""
    yield from _session_server(Redis(tmp_path_factory.mktemp("redis")))


@pytest.fixture
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """``redis_factory(requirepass="s3cret", extra_args=[...], tls=<the tls fixture>)``:
    ``password``, ``restart()``; with ``tls=`` the port speaks TLS only (``rediss://`` url)."""
    yield from _factory("redis", tmp_path_factory, Redis)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Redis Cluster of 3 masters + 3 replicas (tests/redis_servers.py): ``startup_nodes``,
    ``nodes``, ``owner(slot)``. Shared by the session: tests that break it use
    ``redis_cluster_factory``."""
    from redis_servers import RedisCluster

    with RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """``redis_cluster_factory(masters=3, replicas=1, node_timeout_ms=1000)``: a started
    cluster of its own, stopped after the test."""
    from redis_servers import RedisCluster

    made: List[Any] = []

    def make(**kw: Any) -> Any:
        cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), **kw)
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A master, one replica and three sentinels watching it as "mymaster"
    (tests/redis_servers.py SentinelGroup). Shared by the session: tests that fail it over
    use ``sentinel_factory``."""
    from redis_servers import SentinelGroup

    with SentinelGroup(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


@pytest.fixture
def sentinel_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """``sentinel_factory(replicas=1, sentinels=3, service="mymaster")``: a master, its
    replicas and sentinels watching it (tests/redis_servers.py SentinelGroup), stopped after
    the test."""
    from redis_servers import SentinelGroup

    made: List[Any] = []

    def make(**kw: Any) -> Any:
        group = SentinelGroup(tmp_path_factory.mktemp("sentinel"), **kw)
        made.append(group)
        return group.start()

    try:
        yield make
    finally:
        for group in made:
            group.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach the tail of each server log the test used to its report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    seen: Set[int] = set()
    for value in getattr(item, "funcargs", {}).values():
        candidates = value.servers if isinstance(value, ServerFactory) else [value]
        for server in candidates:
            if isinstance(server, Server) and id(server) not in seen:
                seen.add(id(server))
                report.sections.append((f"{server!r} log (tail)", server.log_tail()))


# ---------------------------------------------------------------------------------------------
# Leak check


def _fd_table() -> Dict[int, str]:
    table = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return table


def _live_greenlets() -> List[Any]:
    """Greenlets of this thread that are started or pending (not dead), main excluded."""
    import greenlet

    def root(g: Any) -> Any:
        while g.parent is not None:
            g = g.parent
        return g

    main = root(greenlet.getcurrent())
    live = []
    for obj in gc.get_objects():
        if isinstance(obj, greenlet.greenlet) and obj is not main and not obj.dead:
            try:
                if root(obj) is main:
                    live.append(obj)
            except Exception:  # pragma: no cover - a greenlet of a dying thread
                pass
    return live


def _describe_greenlet(g: Any) -> str:
    text = repr(g)
    frame = getattr(g, "gr_frame", None)
    if frame is not None:
        text += "\n" + "".join(traceback.format_stack(frame, limit=6))
    return text


@contextlib.contextmanager
def leak_check(settle: float = 1.0) -> Iterator[None]:
    """Fail (``pytest.fail``) if the block left file descriptors or live greenlets behind.

    Counts are compared after ``gevent.sleep(0.05)`` + ``gc.collect()``, retried for up to
    ``settle`` seconds so that closes in flight can land. Only greenlets of the calling
    thread count; the hub is created before the baseline.
    """
    psutil = pytest.importorskip("psutil")
    gevent = pytest.importorskip("gevent")
    gevent.get_hub()
    gevent.sleep(0)
    gc.collect()
    proc = psutil.Process()
    fds_before = proc.num_fds()
    fd_table_before = _fd_table()
    greenlets_before = _live_greenlets()
    n_greenlets_before = len(greenlets_before)
    ids_before = {id(g) for g in greenlets_before}
    del greenlets_before

    yield

    fds_after = n_greenlets_after = 0
    deadline = time.monotonic() + settle
    while True:
        gevent.sleep(0.05)
        gc.collect()
        fds_after = proc.num_fds()
        n_greenlets_after = len(_live_greenlets())
        if fds_after <= fds_before and n_greenlets_after <= n_greenlets_before:
            return
        if time.monotonic() >= deadline:
            break

    problems = []
    if fds_after > fds_before:
        problems.append(f"file descriptors: {fds_before} before, {fds_after} after")
        table = _fd_table()
        try:
            conns = {c.fd: c for c in proc.net_connections(kind="all")}
        except AttributeError:  # psutil < 6 spells it connections()
            conns = {c.fd: c for c in proc.connections(kind="all")}
        for fd, target in sorted(table.items()):
            if fd_table_before.get(fd) != target:
                conn = conns.get(fd)
                detail = f" {conn.laddr} -> {conn.raddr} {conn.status}" if conn else ""
                problems.append(f"  new fd {fd}: {target}{detail}")
    live_after = _live_greenlets()
    if len(live_after) > n_greenlets_before:
        problems.append(f"greenlets: {n_greenlets_before} live before, {len(live_after)} after")
        for g in live_after:
            if id(g) not in ids_before:
                problems.append("  new: " + _describe_greenlet(g))
    del live_after
    pytest.fail("leak after test:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it left file descriptors or live (not dead) greenlets behind:
    compared after the test, retrying for up to ~1 s (see :func:`leak_check`)."""
    with leak_check():
        yield
