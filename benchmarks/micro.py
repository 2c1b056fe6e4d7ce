"""Pool micro-benchmarks: the cost of greenpool/pool.py alone, no protocol.

``python -m benchmarks.micro [--quick] [--json]`` (also run by ``python -m benchmarks``).

* **uncontended**: one greenlet, ``pool.checkout(host, port)`` + ``pool.checkin(conn)`` on a
  warm connection, in microseconds per pair (median of several timed runs), next to a
  baseline of what the design calls the floor: a gevent ``Semaphore`` acquire+release plus
  a deque pop+append.  Target: <= 5 us.
* **contended**: 10,000 greenlets share 10 connections for a fixed time; each checkout holds
  its connection across one ``gevent.sleep(0)`` (a stand-in for I/O).  Throughput, and
  fairness as max/min completions per greenlet (FIFO waiters should keep it near 1).
* **idle memory**: RSS growth over 1,000 idle pooled connections, divided by 1,000.
  Target: <= 16 KiB.

The peer is a gevent StreamServer in a *separate process* (``--serve``), so its own
per-connection greenlets and sockets are not counted in this process's RSS.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import deque
from typing import Any, Dict, List, Optional

HOST = "127.0.0.1"


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard) if hard > 0 else n, hard))


def serve() -> None:
    """The loopback peer: accepts, then holds each connection open without a byte."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    from gevent.server import StreamServer

    _raise_nofile(8192)

    def handle(sock: Any, addr: Any) -> None:
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass

    server = StreamServer((HOST, 0), handle, backlog=4096)
    server.start()
    sys.stdout.write("%d\n" % server.address[1])
    sys.stdout.flush()
    # die with the parent: its stdin closes
    gevent.spawn(lambda: sys.stdin.read()).join()
    server.stop(timeout=0.1)


class Peer:
    def __init__(self) -> None:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.micro", "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     cwd=root)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the micro-benchmark peer did not start")
        self.port = int(line)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def uncontended(port: int, n: int, runs: int) -> Dict[str, Any]:
    import gevent
    from gevent.lock import Semaphore

    from greenpool.pool import GreenPool

    pool = GreenPool("micro-uncontended", max_connections=10)
    conn = pool.checkout(HOST, port)
    pool.checkin(conn)
    checkout, checkin = pool.checkout, pool.checkin
    perf = time.perf_counter
    samples: List[float] = []
    for _ in range(runs):
        t0 = perf()
        for _ in range(n):
            checkin(checkout(HOST, port))
        samples.append((perf() - t0) / n * 1e6)
        gevent.sleep(0)  # let the hub run between runs, as it would between requests

    sem = Semaphore(10)
    dq: deque = deque([object()])
    base: List[float] = []
    for _ in range(runs):
        t0 = perf()
        for _ in range(n):
            sem.acquire()
            dq.append(dq.pop())
            sem.release()
        base.append((perf() - t0) / n * 1e6)
    pool.close()
    return {"n": n, "runs": runs, "us_per_pair": statistics.median(samples),
            "best_us": min(samples), "baseline_us": statistics.median(base)}


def contended(port: int, greenlets: int, connections: int, seconds: float) -> Dict[str, Any]:
    import gevent

    from greenpool.errors import PoolTimeout
    from greenpool.pool import GreenPool

    pool = GreenPool("micro-contended", max_connections=connections, checkout_timeout=120.0)
    # open the connections first: the measurement is about handing them out
    conns = [pool.checkout(HOST, port) for _ in range(connections)]
    for c in conns:
        pool.checkin(c)
    counts = [0] * greenlets
    timeouts = [0]
    stop = [False]
    started = gevent.event.Event()

    def work(i: int) -> None:
        started.wait()
        sleep = gevent.sleep
        while not stop[0]:
            try:
                conn = pool.checkout(HOST, port)
            except PoolTimeout:
                timeouts[0] += 1
                continue
            sleep(0)
            pool.checkin(conn)
            counts[i] += 1

    gs = [gevent.spawn(work, i) for i in range(greenlets)]
    gevent.sleep(0)
    t0 = time.perf_counter()
    started.set()
    gevent.sleep(seconds)
    stop[0] = True
    elapsed = time.perf_counter() - t0
    total = sum(counts)  # counted at the stop: in-flight ones finishing later are not timed
    gevent.joinall(gs, timeout=30)
    pool.close()
    lo, hi = min(counts), max(counts)
    return {"greenlets": greenlets, "connections": connections, "seconds": elapsed,
            "completions": total, "per_second": total / elapsed, "min": lo, "max": hi,
            "mean": statistics.mean(counts), "fairness": (hi / lo) if lo else None,
            "timeouts": timeouts[0]}


def idle_memory(port: int, count: int) -> Dict[str, Any]:
    import gevent

    from greenpool.pool import GreenPool

    _raise_nofile(count * 2 + 256)
    pool = GreenPool("micro-memory", max_connections=count + 10, timeout=600.0)
    # one connection first, so lazily built state (the host record, SSL/DNS caches, the
    # hub's first watchers) is not charged to the thousand
    pool.checkin(pool.checkout(HOST, port))
    gevent.sleep(0.05)
    gc.collect()
    before = _rss_kib()
    conns = [pool.checkout(HOST, port) for _ in range(count)]
    for c in conns:
        pool.checkin(c)
    del conns, c
    gevent.sleep(0.1)
    gc.collect()
    after = _rss_kib()
    open_now = pool.count()
    pool.close()
    return {"connections": open_now, "rss_delta_mb": (after - before) / 1024.0,
            "kib_per_connection": (after - before) / max(1, open_now - 1)}


def run(quick: bool = False, n: Optional[int] = None) -> Dict[str, Any]:
    peer = Peer()
    try:
        out: Dict[str, Any] = {}
        # memory first: memory freed by the other sections would be reused and hide growth
        out["idle_memory"] = idle_memory(peer.port, 1000 if n is None else max(10, min(1000, n)))
        n_pairs = n or (20000 if quick else 100000)
        out["uncontended"] = uncontended(peer.port, n_pairs, 5 if quick else 9)
        greenlets = 10000 if n is None else max(20, min(10000, n))
        out["contended"] = contended(peer.port, greenlets, 10, 1.0 if quick else 3.0)
        return out
    finally:
        peer.stop()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a few seconds)")
    ap.add_argument("-n", type=int, default=None,
                    help="size for a smoke run (pairs, greenlets and idle connections)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve()
        return 0
    result = run(args.quick, args.n)
    if args.json:
        print(json.dumps(result))
    else:
        from benchmarks.report import micro_text

        print(micro_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
