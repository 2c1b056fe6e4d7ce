"""HTTP/3 at the surface: the pool options ``h3_race_delay`` and ``h3_blocked_ttl``, HTTP/3 in
``get_stats()``/``host_stats()``, events and the Prometheus exporter, the CLI's ``--http3``,
and hypercorn (aioquic) as a second real HTTP/3 server beside Caddy.

Fallback cases use nginx (TCP only: its UDP port is closed, so QUIC fails at once with an
ICMP port-unreachable).  Each test ends with exact pool books and, through ``no_leaks``, no
file descriptor or greenlet left.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Dict, List, Tuple

import gevent
import pytest
from gevent.event import Event

pytest.importorskip("qh3")

from test_main import cli  # noqa: E402

from greenpool import Client, GreenPool, PoolOptions, events  # noqa: E402
from greenpool.http.h3 import origins  # noqa: E402
from greenpool.http.models import URL  # noqa: E402

from fakes import assert_exact  # noqa: E402
from h3servers import CADDY_BODY, Caddy, pattern  # noqa: E402
from servers import HOST, SMALL_BODY, Hypercorn, require_module  # noqa: E402

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def caddy(tls, tmp_path_factory):
    server = Caddy(tmp_path_factory.mktemp("caddy"), tls)
    server.start()
    yield server
    server.stop()


def route_pool(c: Client, pool: GreenPool, url: str) -> GreenPool:
    """The pool that holds the connections of ``url`` (the Client's own)."""
    return c._route(pool, URL(url)).pool


def tags(c: Client, pool: GreenPool, url: str) -> Tuple[str, str]:
    """The key transports of ``url``'s TCP and QUIC connections (tagged for a private CA:
    ``"ssl|tls1"``, ``"quic|tls1"``)."""
    route = c._route(pool, URL(url))
    assert route.quic is not None
    return route.key[2], route.quic


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


class Recorder:
    """The events of one pool, as (kind, key, seconds, reason)."""

    def __init__(self) -> None:
        self.seen: List[Tuple[str, Any, Any, Any]] = []
        self.pool = ""

    def __call__(self, e: events.Event) -> None:
        if e.pool.startswith(self.pool):
            self.seen.append((e.kind, e.key, e.seconds, e.reason))

    def kinds(self, key: Any) -> List[str]:
        return [k for k, kk, _, _ in self.seen if kk == key]


@pytest.fixture
def recorder():
    r = Recorder()
    events.subscribe(r)
    yield r
    events.unsubscribe(r)


# -- the options --


def test_h3_options_defaults_validation_and_tagged_routes(tls):
    o = PoolOptions()
    assert (o.h3_race_delay, o.h3_blocked_ttl) == (0.25, 300.0)
    assert PoolOptions(h3_race_delay=0, h3_blocked_ttl=0).h3_race_delay == 0
    for kw, exc in [({"h3_race_delay": -0.1}, ValueError), ({"h3_race_delay": None}, TypeError),
                    ({"h3_race_delay": "1"}, TypeError), ({"h3_blocked_ttl": -1}, ValueError),
                    ({"h3_blocked_ttl": True}, TypeError), ({"h3_blocked_ttl": None}, TypeError)]:
        name = next(iter(kw))
        with pytest.raises(exc, match=name):
            PoolOptions(**kw)
        with pytest.raises(exc, match=name):
            GreenPool("bad", **kw)
    # a private CA's connections live in the same pool (a tagged key): the same options
    p = GreenPool("h3opts", h3_race_delay=2.5, h3_blocked_ttl=7.0)
    try:
        with Client(pool=p, http3=True, verify=str(tls.ca_path)) as c:
            assert route_pool(c, p, "https://127.0.0.1:1/") is p
            tcp, quic = tags(c, p, "https://127.0.0.1:1/")
            assert tcp.startswith("ssl|tls") and quic == "quic|" + tcp.partition("|")[2]
    finally:
        p.close()


def test_blocked_origin_expires_after_h3_blocked_ttl(no_leaks, nginx, tls, recorder):
    """nginx has no UDP: QUIC fails at once and the origin is blocked for the pool's ttl."""
    short = GreenPool("h3ttl-short", h3_blocked_ttl=0.5)
    long = GreenPool("h3ttl-long")
    recorder.pool = "h3ttl-"
    port = port_of(nginx.https_url)
    try:
        cs = Client(pool=short, http3="prior_knowledge", verify=str(tls.ca_path))
        cl = Client(pool=long, http3="prior_knowledge", verify=str(tls.ca_path))
        for c in (cs, cl):
            r = c.get(nginx.https_url + "/")
            assert (r.http_version, r.content) == ("HTTP/1.1", SMALL_BODY)
        rs, rl = route_pool(cs, short, nginx.https_url), route_pool(cl, long, nginx.https_url)
        assert origins.blocked(rs, HOST, port) and origins.blocked(rl, HOST, port)
        blocked = [(k, key, s) for k, key, s, _ in recorder.seen if k == "blocked"]
        assert sorted(blocked) == sorted([("blocked", (HOST, port, "quic"), 0.5),
                                          ("blocked", (HOST, port, "quic"), 300.0)])
        reasons = [reason for k, _, _, reason in recorder.seen if k == "blocked"]
        assert all(reason and reason.startswith("Connect") for reason in reasons), reasons
        deadline = time.monotonic() + 30        # generous: only the order matters
        while origins.blocked(rs, HOST, port) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert not origins.blocked(rs, HOST, port)
        assert origins.blocked(rl, HOST, port)       # 300 s: still served over TCP only
        assert rs.get_stats()["http3"]["blocked_origins"] == 0
        assert rl.get_stats()["http3"]["blocked_origins"] == 1
        # the expired origin tries QUIC again (and is blocked again); the other does not
        for c in (cs, cl):
            assert c.get(nginx.https_url + "/").http_version == "HTTP/1.1"
        assert origins.blocked(rs, HOST, port)
        assert [k for k, _, _, _ in recorder.seen].count("blocked") == 3
        assert rs.get_stats()["http3"]["blocked_origins"] == 1
        for p in (short, long, rs, rl):
            assert_exact(p)
            assert p.host_stats(HOST, port, "quic")["active"] == 0
    finally:
        short.close()
        long.close()


def test_race_delay_zero_starts_tcp_at_once(no_leaks, caddy, tls):
    """``h3_race_delay=0``: the first request goes over TCP while the handshake goes on;
    the next one takes the QUIC connection.  A long delay: the first one waits for QUIC."""
    at_once = GreenPool("h3race0", h3_race_delay=0)
    patient = GreenPool("h3race30", h3_race_delay=30.0)
    try:
        c0 = Client(pool=at_once, http3="prior_knowledge", verify=str(tls.ca_path))
        r = c0.get(caddy.url + "/")
        assert r.http_version == "HTTP/1.1" and r.content == CADDY_BODY
        r = c0.get(caddy.url + "/")
        assert r.http_version == "HTTP/3" and r.content == CADDY_BODY
        c30 = Client(pool=patient, http3="prior_knowledge", verify=str(tls.ca_path))
        r = c30.get(caddy.url + "/")
        assert r.http_version == "HTTP/3" and r.content == CADDY_BODY
        rp0, rp30 = route_pool(c0, at_once, caddy.url), route_pool(c30, patient, caddy.url)
        tcp, _ = tags(c0, at_once, caddy.url)
        # the second request waited for the handshake in progress: one QUIC connection
        assert rp0.get_stats()["http3"]["quic_connections"] == 1
        assert rp30.get_stats()["http3"]["quic_connections"] == 1
        assert rp30.host_stats(HOST, caddy.port, tcp)["active"] == 0     # TCP never opened
        assert rp0.host_stats(HOST, caddy.port, tcp)["active"] == 1
        for p in (rp0, rp30):
            assert_exact(p)
            assert p.get_stats()["shared_users"] == 0
    finally:
        at_once.close()
        patient.close()


# -- stats, events, Prometheus --


def test_get_stats_and_host_stats_count_quic_connections(no_leaks, caddy, tls, recorder):
    pool = GreenPool("h3stats", h3_race_delay=30.0)
    recorder.pool = "h3stats"
    try:
        c3 = Client(pool=pool, http3="prior_knowledge", verify=str(tls.ca_path))
        rp = route_pool(c3, pool, caddy.url)
        assert "http3" not in rp.get_stats()
        r = c3.get(caddy.url + "/bytes/64k", stream=True)
        assert r.http_version == "HTTP/3"
        s = rp.get_stats()
        assert (s["open"], s["shared_count"], s["shared_users"], s["in_use_count"], s["free_count"]) \
            == (1, 1, 1, 1, 0)
        h3 = s["http3"]
        assert (h3["quic_connections"], h3["quic_streams"], h3["handshakes"], h3["blocked_origins"],
                h3["goaway"], h3["retried"]) == (1, 1, 1, 0, 0, 0)
        assert rp.host_stats(HOST, caddy.port)["shared_users"] == 1
        assert r.read() == pattern(64 * 1024)
        s = rp.get_stats()
        assert (s["open"], s["shared_count"], s["shared_users"], s["in_use_count"], s["free_count"]) \
            == (1, 1, 0, 0, 1)
        assert s["http3"]["quic_streams"] == 0
        # an HTTP/2 connection to the same origin beside it: both shared, counted alike
        c2 = Client(pool=pool, http2=True, verify=str(tls.ca_path))
        assert route_pool(c2, pool, caddy.url) is rp
        assert c2.get(caddy.url + "/").http_version == "HTTP/2"
        s = rp.get_stats()
        assert (s["open"], s["shared_count"], s["free_count"]) == (2, 2, 2)
        assert s["http3"]["quic_connections"] == 1
        assert rp.host_stats(HOST, caddy.port)["active"] == 2
        tcp, quic = tags(c3, pool, caddy.url)
        assert rp.host_stats(HOST, caddy.port, quic)["active"] == 1
        assert rp.host_stats(HOST, caddy.port, tcp)["active"] == 1
        assert c3.get(caddy.url + "/").http_version == "HTTP/3"       # the same QUIC connection
        assert "http3.handshakes" in rp.stats_counters() and "created" in rp.stats_counters()
        assert "http3.quic_connections" not in rp.stats_counters()
        assert_exact(rp)
        key = (HOST, caddy.port, quic)
    finally:
        pool.close()
    kinds = recorder.kinds(key)
    assert kinds[0] == "connect" and kinds[-1] == "close", kinds
    assert kinds.count("connect") == kinds.count("close") == 1
    assert kinds.count("checkout") == kinds.count("checkin") == 2
    assert [reason for k, kk, _, reason in recorder.seen if kk == key and k == "close"] == ["pool stopped"]
    assert rp.get_stats()["http3"]["quic_connections"] == 0


def test_prometheus_exports_the_http3_numbers(no_leaks, caddy, tls):
    prometheus_client = pytest.importorskip("prometheus_client")
    from greenpool.contrib.prometheus import PoolCollector
    pool = GreenPool("h3prom", h3_race_delay=30.0)
    registry = prometheus_client.CollectorRegistry()
    try:
        c = Client(pool=pool, http3="prior_knowledge", verify=str(tls.ca_path))
        assert c.get(caddy.url + "/").http_version == "HTTP/3"
        rp = route_pool(c, pool, caddy.url)
        registry.register(PoolCollector(pools=lambda: {"h3prom": rp}))
        value = registry.get_sample_value
        assert value("greenpool_http3_quic_connections", {"pool": "h3prom"}) == 1
        assert value("greenpool_http3_handshakes_total", {"pool": "h3prom"}) == 1
        assert value("greenpool_http3_blocked_origins", {"pool": "h3prom"}) == 0
        assert value("greenpool_shared_count", {"pool": "h3prom"}) == 1
        text = prometheus_client.generate_latest(registry).decode()
        assert "# TYPE greenpool_http3_goaway_total counter" in text
        assert "# TYPE greenpool_http3_quic_connections gauge" in text
        assert "# HELP greenpool_http3_quic_connections open QUIC (HTTP/3) connections" in text
    finally:
        pool.close()


def test_prometheus_sub_dicts_only_under_identifiers():
    prometheus_client = pytest.importorskip("prometheus_client")
    from greenpool.contrib.prometheus import PoolCollector

    class ClusterLike:
        closed = False

        def get_stats(self):
            return {"127.0.0.1:7000": {"open": 1, "name": "node"}, "proto": {"seen": 2, "now": 1},
                    "open": 3}

        def stats_counters(self):
            return frozenset(["proto.seen"])
    registry = prometheus_client.CollectorRegistry()
    registry.register(PoolCollector(pools=lambda: {"c": ClusterLike()}))
    text = prometheus_client.generate_latest(registry).decode()
    assert 'greenpool_proto_seen_total{pool="c"} 2.0' in text
    assert 'greenpool_proto_now{pool="c"} 1.0' in text and 'greenpool_open{pool="c"} 3.0' in text
    assert "7000" not in text


def test_add_stats_rules():
    p = GreenPool("addstats")
    try:
        calls = []

        def source() -> Dict[str, int]:
            calls.append(1)
            return {"things": len(calls), "seen": 3}
        p.add_stats("proto", source, counters=("seen",))
        p.add_stats("proto", lambda: {"other": 1})            # the first source stays
        assert p.get_stats()["proto"] == {"things": 1, "seen": 3}
        assert "proto.seen" in p.stats_counters() and "proto.things" not in p.stats_counters()
        for bad in ("open", "created", "shared_count", "not a name", ""):
            with pytest.raises(ValueError, match="add_stats"):
                p.add_stats(bad, source)
    finally:
        p.close()


# -- the command line --


def test_cli_get_http3_prior_knowledge(caddy, tls):
    out = cli(["get", "--http3", "prior_knowledge", "--cacert", str(tls.ca_path), caddy.url + "/", "-i"])
    assert out.returncode == 0, out.stderr
    # HTTP/3 unless the handshake took longer than the race delay (0.25 s) on a busy
    # machine: then TCP answered, as it should (bench below shows QUIC taking over)
    assert out.stdout.startswith((b"HTTP/3 200", b"HTTP/1.1 200")) and out.stdout.endswith(CADDY_BODY)
    # "on": QUIC only for origins that advertised it; one request has seen no Alt-Svc yet
    out = cli(["get", "--http3", "on", "-k", caddy.url + "/", "-i"])
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.1 200"), out.stderr
    assert b"\nalt-svc: h3=" in out.stdout.lower()
    out = cli(["get", "--http3", "off", "--http2", "-k", caddy.url + "/", "-i"])
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/2 200"), out.stderr


def test_cli_bench_http3_learns_alt_svc(caddy, tls):
    out = cli(["bench", caddy.url + "/", "-n", "300", "-c", "10", "--http3", "on", "--http2",
               "--cacert", str(tls.ca_path), "--progress", "0"])
    text = out.stdout.decode()
    assert out.returncode == 0 and text.startswith("300 requests, 0 errors"), text + out.stderr.decode()
    versions = dict(v.rsplit(" ", 1) for v in text.split("\nversions: ", 1)[1].split("\n", 1)[0].split(", "))
    assert set(versions) <= {"HTTP/3", "HTTP/2"} and sum(map(int, versions.values())) == 300
    assert int(versions["HTTP/2"]) >= 1 and int(versions["HTTP/3"]) >= 1, versions
    out = cli(["bench", caddy.url + "/", "-n", "50", "-c", "5", "--http3", "prior_knowledge", "-k",
               "--progress", "0"])
    text = out.stdout.decode()
    assert out.returncode == 0 and "\nstatus: 2xx 50\n" in text and "HTTP/3 " in text, text


def test_cli_http3_bad_arguments_are_one_line():
    out = cli(["get", "--http3", "prior_knowledge", "http://127.0.0.1:1/"])
    assert out.returncode == 2 and out.stdout == b""
    assert out.stderr == b"greenpool get: error: --http3 prior_knowledge needs an https:// URL " \
                         b"(QUIC always runs TLS)\n"
    out = cli(["bench", "https://127.0.0.1:1/", "--http3", "yes"])
    assert out.returncode == 2 and out.stderr.count(b"\n") == 1 and b"invalid choice: 'yes'" in out.stderr
    out = cli(["get", "--help"])
    assert out.returncode == 0 and b"--http3 MODE" in out.stdout and b"prior_knowledge" in out.stdout
    assert b"--http3 MODE" in cli(["bench", "--help"]).stdout


# -- hypercorn (aioquic) as a second HTTP/3 server --


class Hypercorn3(Hypercorn):
    """hypercorn serving tests/apps/asgi_app.py over HTTP/3 too: QUIC on the UDP port of
    the same number as ``https_url``'s TCP port (it advertises it by Alt-Svc)."""

    name = "hypercorn-h3"

    def command(self) -> List[str]:
        cmd = super().command()
        return cmd[:-1] + ["--quic-bind", "%s:%d" % (HOST, self.ports["https"]), cmd[-1]]

    def ready(self) -> bool:
        if not super().ready():
            return False
        import psutil
        assert self.proc is not None
        try:
            conns = psutil.Process(self.proc.pid).net_connections(kind="udp")
        except psutil.Error:
            return False
        return any(c.laddr[1] == self.ports["https"] for c in conns)


@pytest.fixture(scope="module")
def hypercorn3(tls, tmp_path_factory):
    require_module("aioquic", "hypercorn[h3]")
    server = Hypercorn3(tmp_path_factory.mktemp("hypercorn3"), tls)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hpool():
    # the race delay long: aioquic's handshake in Python can take longer than 0.25 s on a
    # busy machine, and these tests want the first request over QUIC
    p = GreenPool("h3hyper", max_connections=20, max_per_host=4, h3_race_delay=30.0)
    yield p
    p.close()


def quic_books(rp: GreenPool) -> Tuple[int, int]:
    """(open QUIC connections, streams in use) of a route's pool, its books exact."""
    assert_exact(rp)
    s = rp.get_stats()["http3"]
    return s["quic_connections"], s["quic_streams"]


def test_hypercorn_get_and_post_echo(no_leaks, hypercorn3, hpool, tls):
    url = hypercorn3.https_url
    with Client(pool=hpool, http3="prior_knowledge", verify=str(tls.ca_path)) as c:
        r = c.get(url + "/echo?x=1", headers={"X-Test": "h3"})
        assert (r.status, r.http_version) == (200, "HTTP/3")
        j = r.json()
        assert (j["method"], j["path"], j["http_version"], j["query"]) == ("GET", "/echo", "3", "x=1")
        assert j["headers"]["x-test"] == "h3"
        r = c.post(url + "/echo", body=b"posted over quic")
        assert r.http_version == "HTTP/3" and r.json()["body"] == "posted over quic"
        body = pattern(300000)
        r = c.post(url + "/upload", body=body)
        assert r.http_version == "HTTP/3" and r.json()["length"] == 300000
        r = c.get(url + "/bytes/200000")
        assert r.content == pattern(200000)
        rp = route_pool(c, hpool, url)
        assert quic_books(rp) == (1, 0)
    hpool.close()
    assert quic_books(rp) == (0, 0)


def test_hypercorn_concurrent_streams_share_one_connection(no_leaks, hypercorn3, hpool, tls):
    url = hypercorn3.https_url
    c = Client(pool=hpool, http3="prior_knowledge", verify=str(tls.ca_path))
    assert c.get(url + "/bytes/10").http_version == "HTTP/3"     # the connection exists
    gate = Event()

    def one(i: int) -> bool:
        gate.wait()
        r = c.get(url + "/bytes/%d" % (i * 101), timeout=30)
        return r.http_version == "HTTP/3" and r.content == pattern(i * 101)
    gs = [gevent.spawn(one, i) for i in range(50)]
    gevent.sleep(0.01)
    gate.set()
    assert all(g.get(timeout=60) for g in gs)
    rp = route_pool(c, hpool, url)
    assert rp.get_stats()["http3"]["handshakes"] == 1
    assert quic_books(rp) == (1, 0)
    hpool.close()
    assert quic_books(rp) == (0, 0)


def test_hypercorn_alt_svc_discovery(no_leaks, hypercorn3, hpool, tls):
    url = hypercorn3.https_url
    c = Client(pool=hpool, http3=True, http2=True, verify=str(tls.ca_path))
    r = c.get(url + "/echo")
    assert r.http_version == "HTTP/2" and r.headers["alt-svc"].startswith('h3=":%d"' % hypercorn3.https_port)
    rp = route_pool(c, hpool, url)
    assert origins.alt_svc(rp, HOST, hypercorn3.https_port) == hypercorn3.https_port
    r = c.get(url + "/echo")
    assert r.http_version == "HTTP/3" and r.json()["http_version"] == "3"
    s = rp.get_stats()
    assert (s["shared_count"], s["http3"]["alt_svc_origins"], s["http3"]["quic_connections"]) == (2, 1, 1)
    assert_exact(rp)
    hpool.close()


if __name__ == "__main__":   # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
