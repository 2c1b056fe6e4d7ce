"""What the suite measures: the clients (rows) and the workloads (columns).

Pure data, no imports of gevent or of any client: the runner (benchmarks/run.py) reads it
without monkey-patching, and the worker maps the names to runners (benchmarks/clients.py).

Each client has a *family* (which server listener and workloads it uses) and a *reference*:
the greenpool row its ratio is computed against, ``ratio = greenpool req/s / client req/s``,
so a target such as ">= 2x urllib3" reads directly off the urllib3 row.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

#: where ``python -m benchmarks --install`` puts niquests: apart, because its dependency
#: urllib3-future installs a .pth that overwrites the real urllib3 at every interpreter start
NIQUESTS_TARGET = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "greenpool-bench", "niquests")

REDIS_KEY = "greenpool:bench:key"
REDIS_VALUE = b"v" * 100


@dataclass(frozen=True)
class ClientInfo:
    name: str
    family: str          # "http1", "h2c", "h2-tls", "h3" (Caddy), "redis", "redis-cluster"
    reference: str       # the greenpool row it is compared with
    kind: str = "python"  # "python" (a worker process), "floor" (python, protocol only), "ceiling"
    about: str = ""


_C = ClientInfo
CLIENTS: Dict[str, ClientInfo] = {c.name: c for c in [
    # HTTP/1.1
    _C("greenpool-httptools", "http1", "greenpool-httptools", about="greenpool.request, http1_parser='httptools'"),
    _C("greenpool-h11", "http1", "greenpool-httptools", about="greenpool.request, http1_parser='h11'"),
    _C("geventhttpclient", "http1", "greenpool-httptools", about="HTTPClient(concurrency=C)"),
    _C("urllib3", "http1", "greenpool-h11", about="PoolManager(maxsize=C, block=True)"),
    _C("requests", "http1", "greenpool-h11", about="Session + HTTPAdapter(pool_maxsize=C, pool_block=True)"),
    _C("httpx", "http1", "greenpool-h11", about="httpx.Client(limits=C)"),
    _C("niquests", "http1", "greenpool-h11", about="niquests.Session(pool_maxsize=C)"),
    _C("raw-h11", "http1", "greenpool-h11", kind="floor", about="h11, one pre-opened socket per greenlet"),
    _C("raw-httptools", "http1", "greenpool-httptools", kind="floor",
       about="httptools, one pre-opened socket per greenlet"),
    _C("wrk", "http1", "greenpool-httptools", kind="ceiling", about="wrk -t1 -cC (C ceiling)"),
    # HTTP/2 cleartext, prior knowledge
    _C("greenpool-h2c-jh2", "h2c", "greenpool-h2c-jh2",
       about="greenpool.request, http2='prior_knowledge', GREENPOOL_H2_BACKEND=jh2"),
    _C("greenpool-h2c", "h2c", "greenpool-h2c-jh2",
       about="greenpool.request, http2='prior_knowledge', GREENPOOL_H2_BACKEND=h2"),
    _C("httpx-h2c", "h2c", "greenpool-h2c-jh2", about="httpx.Client(http1=False, http2=True)"),
    _C("raw-h2", "h2c", "greenpool-h2c-jh2", kind="floor", about="h2, one pre-opened connection, C streams"),
    _C("raw-jh2", "h2c", "greenpool-h2c-jh2", kind="floor", about="jh2, one pre-opened connection, C streams"),
    _C("h2load", "h2c", "greenpool-h2c-jh2", kind="ceiling", about="h2load -c1 -mC (C ceiling)"),
    # HTTP/2 over TLS (ALPN h2)
    _C("greenpool-h2-tls-jh2", "h2-tls", "greenpool-h2-tls-jh2",
       about="greenpool.request, http2=True, https, GREENPOOL_H2_BACKEND=jh2"),
    _C("greenpool-h2-tls", "h2-tls", "greenpool-h2-tls-jh2",
       about="greenpool.request, http2=True, https, GREENPOOL_H2_BACKEND=h2"),
    _C("httpx-h2-tls", "h2-tls", "greenpool-h2-tls-jh2", about="httpx.Client(http2=True), https"),
    _C("raw-h2-tls", "h2-tls", "greenpool-h2-tls-jh2", kind="floor", about="h2 over TLS, one connection"),
    _C("raw-jh2-tls", "h2-tls", "greenpool-h2-tls-jh2", kind="floor", about="jh2 over TLS, one connection"),
    _C("h2load-tls", "h2-tls", "greenpool-h2-tls-jh2", kind="ceiling", about="h2load -c1 -mC https"),
    # HTTP/3 and its comparisons, all against Caddy (TCP and UDP on one port, one CA)
    _C("greenpool-h3", "h3", "greenpool-h3",
       about="greenpool.request, http3='prior_knowledge': one QUIC connection, C streams"),
    _C("greenpool-h2-tls-caddy", "h3", "greenpool-h3",
       about="greenpool.request, http2=True, https to the same Caddy (GREENPOOL_H2_BACKEND=jh2)"),
    _C("niquests-h3", "h3", "greenpool-h3",
       about="niquests.Session(multiplexed=False, disable_http2=True), HTTP/3 to Caddy"),
    _C("raw-qh3", "h3", "greenpool-h3", kind="floor",
       about="qh3 alone: one pre-opened QUIC connection, C streams, one flush per loop turn"),
    _C("greenpool-h3-relay", "h3", "greenpool-h3",
       about="greenpool HTTP/3 through a UDP relay process that drops nothing"),
    _C("greenpool-h3-loss5", "h3", "greenpool-h3-relay",
       about="greenpool HTTP/3 through the same relay dropping 5% of datagrams each way"),
    # Redis
    _C("greenpool-redis", "redis", "greenpool-redis", about="greenpool.redis.RedisPool(pool_size=1)"),
    _C("redis-py", "redis", "greenpool-redis", about="BlockingConnectionPool(max_connections=C), hiredis"),
    _C("redis-benchmark", "redis", "greenpool-redis", kind="ceiling", about="redis-benchmark -cC (C ceiling)"),
    # Redis Cluster (3 masters)
    _C("greenpool-redis-cluster", "redis-cluster", "greenpool-redis-cluster",
       about="greenpool.redis.RedisClusterPool(pool_size=1 per node)"),
    _C("redis-py-cluster", "redis-cluster", "greenpool-redis-cluster",
       about="redis.cluster.RedisCluster(max_connections=C), hiredis"),
]}


@dataclass(frozen=True)
class Workload:
    name: str
    protocol: str        # "http", "redis" or "redis-cluster"
    method: str
    path: str
    body_size: int
    expect: int          # body bytes every response must carry
    concurrency: Tuple[int, ...]
    quick_concurrency: Tuple[int, ...]
    requests: int        # N per run (full mode)
    quick_requests: int
    about: str = ""
    blockers: int = 0    # Redis: greenlets looping BLPOP (0.2 s) on the same client meanwhile

    def spec(self) -> Dict[str, object]:
        return {"name": self.name, "protocol": self.protocol, "method": self.method,
                "path": self.path, "body_size": self.body_size, "expect": self.expect,
                "blockers": self.blockers}


KIB = 1024
WORKLOADS: Dict[str, Workload] = {w.name: w for w in [
    Workload("get-100B", "http", "GET", "/", 0, 100, (1, 50, 500), (50,), 20000, 2000,
             "GET of a 100-byte body"),
    Workload("get-64KiB", "http", "GET", "/bytes/64k", 0, 64 * KIB, (50,), (50,), 5000, 600,
             "GET of a 64 KiB static file"),
    Workload("post-1MiB", "http", "POST", "/bench/upload", KIB * KIB, 3, (50,), (50,), 1000, 120,
             "POST of 1 MiB, read whole by nginx, 3-byte answer"),
    Workload("h3-get-100B", "h3", "GET", "/bytes/100", 0, 100, (50,), (50,), 20000, 2000,
             "GET of a 100-byte static file from Caddy (HTTP/3, and HTTP/2 over TLS)"),
    Workload("redis-get", "redis", "GET", "", 0, 100, (50,), (50,), 20000, 2000,
             "GET of a 100-byte value"),
    Workload("redis-set", "redis", "SET", "", 0, 0, (50,), (50,), 20000, 2000,
             "SET of a 100-byte value"),
    Workload("redis-get-blocking", "redis", "GET", "", 0, 100, (50,), (50,), 20000, 2000,
             "GET of a 100-byte value with 5 blocking waiters in flight (BLPOP 0.2 s in a loop)",
             blockers=5),
    Workload("redis-cluster-get", "redis-cluster", "GET", "", 0, 100, (50,), (50,), 20000, 2000,
             "GET of a 100-byte value on a 3-master Redis Cluster"),
]}

#: families that can run each protocol's workloads
PROTOCOL_FAMILIES: Dict[str, Tuple[str, ...]] = {
    "http": ("http1", "h2c", "h2-tls"),
    "h3": ("h3",),
    "redis": ("redis",),
    "redis-cluster": ("redis-cluster",),
}


def clients_for(workload: Workload, names: List[str]) -> List[str]:
    fams = PROTOCOL_FAMILIES[workload.protocol]
    return [n for n in names if CLIENTS[n].family in fams]


#: The issue's targets: (label, greenpool row, peer row, workload, C, minimum ratio)
TARGETS: List[Tuple[str, str, str, str, int, float]] = [
    ("HTTP/1.1 speedups >= 1.5x geventhttpclient", "greenpool-httptools", "geventhttpclient",
     "get-100B", 50, 1.5),
    ("HTTP/1.1 h11 >= 0.85x raw h11 loop", "greenpool-h11", "raw-h11", "get-100B", 50, 0.85),
    ("HTTP/1.1 h11 >= 2x urllib3", "greenpool-h11", "urllib3", "get-100B", 50, 2.0),
    ("h2c >= 0.7x raw h2 loop", "greenpool-h2c", "raw-h2", "get-100B", 50, 0.7),
    ("h2c >= 2.5x httpx http2", "greenpool-h2c", "httpx-h2c", "get-100B", 50, 2.5),
    ("h2 TLS >= 0.7x raw h2 loop", "greenpool-h2-tls", "raw-h2-tls", "get-100B", 50, 0.7),
    ("h2 TLS >= 2.5x httpx http2", "greenpool-h2-tls", "httpx-h2-tls", "get-100B", 50, 2.5),
    ("Redis GET >= 2x redis-py+hiredis", "greenpool-redis", "redis-py", "redis-get", 50, 2.0),
    ("Redis Cluster GET >= 3x redis-py RedisCluster", "greenpool-redis-cluster", "redis-py-cluster",
     "redis-cluster-get", 50, 3.0),
    # HTTP/2 with the speedups extra (the jh2 core)
    ("h2c speedups >= 1.5x raw h2 loop", "greenpool-h2c-jh2", "raw-h2", "get-100B", 50, 1.5),
    ("h2c speedups >= 0.9x raw jh2 loop", "greenpool-h2c-jh2", "raw-jh2", "get-100B", 50, 0.9),
    ("h2c speedups >= 4x httpx http2", "greenpool-h2c-jh2", "httpx-h2c", "get-100B", 50, 4.0),
    ("h2 TLS speedups >= 1.5x raw h2 loop", "greenpool-h2-tls-jh2", "raw-h2-tls", "get-100B", 50, 1.5),
    ("h2 TLS speedups >= 0.9x raw jh2 loop", "greenpool-h2-tls-jh2", "raw-jh2-tls", "get-100B", 50, 0.9),
    ("h2 TLS speedups >= 4x httpx http2", "greenpool-h2-tls-jh2", "httpx-h2-tls", "get-100B", 50, 4.0),
    ("h2c speedups GET 64 KiB >= 1x raw h2 loop", "greenpool-h2c-jh2", "raw-h2", "get-64KiB", 50, 1.0),
    # HTTP/3 (issue 18), all to the same Caddy
    ("HTTP/3 >= 1.5x greenpool HTTP/2 TLS", "greenpool-h3", "greenpool-h2-tls-caddy", "h3-get-100B", 50, 1.5),
    ("HTTP/3 >= 0.8x raw qh3 loop", "greenpool-h3", "raw-qh3", "h3-get-100B", 50, 0.8),
    ("HTTP/3 >= 5x niquests HTTP/3", "greenpool-h3", "niquests-h3", "h3-get-100B", 50, 5.0),
    ("HTTP/3 5% loss each way >= 0.5x no loss", "greenpool-h3-loss5", "greenpool-h3-relay",
     "h3-get-100B", 50, 0.5),
]
