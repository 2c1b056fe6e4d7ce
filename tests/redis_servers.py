"""Redis topologies on loopback for the cluster and sentinel tests.

This module owns the multi-process Redis set-ups: a Redis Cluster (:class:`RedisCluster`, N
``redis-server --cluster-enabled yes`` processes joined by ``redis-cli --cluster create``)
and a Sentinel group (:class:`SentinelGroup`: one master, replicas, and sentinels started
with ``redis-server <conf> --sentinel``).  Every process is a :class:`servers.Server`, so the
rules of :mod:`servers` hold: 127.0.0.1 only, free ports, a process group per server that
dies with the test process, logs in the caller's directory.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from servers import HOST, Redis, RedisReplyError, Server, ServerError, find_binary, free_port


class ClusterNode(Redis):
    """One redis-server in cluster mode (its bus port is picked free, not port + 10000)."""

    name = "redis-node"
    port_names = ("port", "bus")

    def __init__(self, directory: Union[str, Path], *, node_timeout_ms: int = 1000,
                 extra_args: Sequence[str] = ()) -> None:
        self.node_timeout_ms = node_timeout_ms
        super().__init__(directory, extra_args=extra_args)

    def command(self) -> List[str]:
        return super().command() + [
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.ports["bus"]),
            "--cluster-config-file", str(self.dir / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "yes",
            "--cluster-allow-replica-migration", "no",
            "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1",
        ]

    def _pick_ports(self) -> Dict[str, int]:
        # a redis-server with port P also binds P + 10000 unless --cluster-port says
        # otherwise; keep both clear of each other
        ports = super()._pick_ports()
        while ports["bus"] == ports["port"]:
            ports["bus"] = free_port()
        return ports

    @property
    def addr(self) -> Tuple[str, int]:
        return (HOST, self.port)

    def node_id(self) -> str:
        return str(self.execute("CLUSTER", "MYID"))

    def role(self) -> str:
        return str(self.execute("ROLE")[0])


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, slots spread by redis-cli."""

    def __init__(self, directory: Union[str, Path], *, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1000) -> None:
        self.dir = Path(directory)
        self.cli = find_binary("redis-cli", "redis-tools")
        self.nodes = [ClusterNode(self.dir / ("node%d" % i), node_timeout_ms=node_timeout_ms)
                      for i in range(masters * (1 + replicas))]
        self.masters_wanted = masters
        self.replicas = replicas

    def start(self) -> "RedisCluster":
        try:
            for n in self.nodes:
                n.start()
            args = [self.cli, "--cluster", "create",
                    *("%s:%d" % n.addr for n in self.nodes),
                    "--cluster-replicas", str(self.replicas), "--cluster-yes"]
            out = subprocess.run(args, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            if out.returncode != 0:
                raise ServerError("redis-cli --cluster create failed:\n%s\n%s" % (
                    out.stdout.decode(errors="replace")[-2000:],
                    out.stderr.decode(errors="replace")[-2000:]))
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says cluster_state:ok and agrees on the masters."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = [str(n.execute("CLUSTER", "INFO")) for n in self.nodes if n.running]
                if all("cluster_state:ok" in s for s in states) and self._agree():
                    return
            except (OSError, RedisReplyError):
                pass
            if time.monotonic() > deadline:
                raise ServerError("the cluster did not reach cluster_state:ok within %ss:\n%s"
                                  % (timeout, "\n".join(
                                      "%r: %s" % (n, n.log_tail(5)) for n in self.nodes)))
            time.sleep(0.1)

    def _agree(self) -> bool:
        views = set()
        for n in self.nodes:
            if not n.running:
                continue
            slots = n.execute("CLUSTER", "SLOTS")
            views.add(tuple(sorted((int(r[0]), int(r[1]), int(r[2][1]), len(r) - 3)
                                   for r in slots)))
        if len(views) != 1:
            return False
        view = next(iter(views))
        if sum(e[1] - e[0] + 1 for e in view) != 16384:
            return False
        # every running replica is known, online and in sync with its master
        online = 0
        for shard in self.nodes_running()[0].execute("CLUSTER", "SHARDS"):
            for node in dict(zip(shard[::2], shard[1::2]))["nodes"]:
                d = dict(zip(node[::2], node[1::2]))
                if d["role"] == "replica" and d["health"] == "online":
                    online += 1
        replicas = sum(1 for n in self.nodes_running() if n.role() == "slave")
        return online == replicas

    def masters(self) -> List[ClusterNode]:
        return [n for n in self.nodes if n.running and n.role() == "master"]

    def replicas_of(self, master: ClusterNode) -> List[ClusterNode]:
        out = []
        for n in self.nodes:
            if n.running and n.role() == "slave":
                info = str(n.execute("INFO", "replication"))
                if "master_port:%d" % master.port in info:
                    out.append(n)
        return out

    def node_at(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def owner(self, slot: int) -> ClusterNode:
        for row in self.nodes_running()[0].execute("CLUSTER", "SLOTS"):
            if int(row[0]) <= slot <= int(row[1]):
                return self.node_at(int(row[2][1]))
        raise KeyError(slot)

    def nodes_running(self) -> List[ClusterNode]:
        return [n for n in self.nodes if n.running]

    @property
    def startup_nodes(self) -> List[Tuple[str, int]]:
        return [n.addr for n in self.nodes[:self.masters_wanted]]

    def cli_run(self, *args: str, timeout: float = 60.0) -> str:
        out = subprocess.run([self.cli, *args], capture_output=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise ServerError("redis-cli %s failed: %s %s" % (
                " ".join(args), out.stdout.decode(errors="replace")[-2000:],
                out.stderr.decode(errors="replace")[-2000:]))
        return out.stdout.decode(errors="replace")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> "RedisCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 10) -> str:
        return "\n".join("%r:\n%s" % (n, n.log_tail(lines)) for n in self.nodes)


class Sentinel(Server):
    """``redis-server sentinel.conf --sentinel`` watching one master as ``service``."""

    name = "sentinel"

    def __init__(self, directory: Union[str, Path], *, master_port: int, service: str,
                 quorum: int = 2, down_after_ms: int = 1000, failover_timeout_ms: int = 5000,
                 password: Optional[str] = None) -> None:
        self.binary = find_binary("redis-server", "redis-server")
        self.master_port = master_port
        self.service = service
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password
        super().__init__(directory)

    def prepare(self) -> None:
        conf = [
            "port %d" % self.port, "bind %s" % HOST, "daemonize no", "dir %s" % self.dir,
            "logfile \"\"", "loglevel notice",
            "sentinel resolve-hostnames no",
            "sentinel monitor %s %s %d %d" % (self.service, HOST, self.master_port, self.quorum),
            "sentinel down-after-milliseconds %s %d" % (self.service, self.down_after_ms),
            "sentinel failover-timeout %s %d" % (self.service, self.failover_timeout_ms),
            "sentinel parallel-syncs %s 1" % self.service,
        ]
        if self.password:
            conf += ["requirepass %s" % self.password, "sentinel sentinel-pass %s" % self.password]
        path = self.dir / "sentinel.conf"
        if not path.exists() or self.starts == 0:
            path.write_text("\n".join(conf) + "\n")

    def command(self) -> List[str]:
        return [self.binary, str(self.dir / "sentinel.conf"), "--sentinel"]

    def execute(self, *args: Union[str, bytes, int], timeout: float = 5.0) -> Any:
        r = Redis.__new__(Redis)
        r.ports = self.ports
        r.password = self.password
        r.tls = None
        return Redis.execute(r, *args, timeout=timeout)


class SentinelGroup:
    """One master, ``replicas`` replicas of it, and ``sentinels`` sentinels watching it."""

    def __init__(self, directory: Union[str, Path], *, service: str = "mymaster",
                 replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000,
                 sentinel_password: Optional[str] = None) -> None:
        self.dir = Path(directory)
        self.service = service
        fast = ["--repl-diskless-sync-delay", "0"]
        self.master = Redis(self.dir / "master", extra_args=fast)
        self.replicas = [Redis(self.dir / ("replica%d" % i), extra_args=fast)
                         for i in range(replicas)]
        self.n_sentinels = sentinels
        self.down_after_ms = down_after_ms
        self.sentinel_password = sentinel_password
        self.sentinels: List[Sentinel] = []

    @property
    def redis_nodes(self) -> List[Redis]:
        return [self.master, *self.replicas]

    def start(self) -> "SentinelGroup":
        try:
            self.master.start()
            for r in self.replicas:
                r.extra_args = r.extra_args + ["--replicaof", HOST, str(self.master.port)]
                r.start()
            self.sentinels = [Sentinel(self.dir / ("sentinel%d" % i), master_port=self.master.port,
                                       service=self.service, down_after_ms=self.down_after_ms,
                                       password=self.sentinel_password)
                              for i in range(self.n_sentinels)]
            for s in self.sentinels:
                s.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until replicas are in sync and every sentinel knows the replicas and the others."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._ready():
                    return
            except (OSError, RedisReplyError):
                pass
            if time.monotonic() > deadline:
                raise ServerError("the sentinel group was not ready within %ss" % timeout)
            time.sleep(0.1)

    def _ready(self) -> bool:
        master_port = self.master_port()
        for r in self.redis_nodes:
            if r.port != master_port and "master_link_status:up" not in str(
                    r.execute("INFO", "replication")):
                return False
        for s in self.sentinels:
            m = s.execute("SENTINEL", "MASTER", self.service)
            d = dict(zip(m[::2], m[1::2]))
            if int(d["num-slaves"]) < len(self.replicas) or \
                    int(d["num-other-sentinels"]) < len(self.sentinels) - 1:
                return False
        return True

    def master_port(self) -> int:
        addr = self.sentinels[0].execute("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(addr[1])

    def node_at(self, port: int) -> Redis:
        return next(r for r in self.redis_nodes if r.port == port)

    @property
    def sentinel_addrs(self) -> List[Tuple[str, int]]:
        return [(HOST, s.port) for s in self.sentinels]

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for r in self.redis_nodes:
            r.stop()

    def __enter__(self) -> "SentinelGroup":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["ClusterNode", "RedisCluster", "Sentinel", "SentinelGroup"]
