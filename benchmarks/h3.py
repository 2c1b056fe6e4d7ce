"""The HTTP/3 cell alone, in one process: C greenlets over ONE QUIC connection to Caddy,
against greenpool's HTTP/2 over TLS to the same Caddy (and niquests' HTTP/3 when it is
importable).

    python -m benchmarks.h3 [--requests N] [--concurrency C] [--reps R]

The main suite measures the same cells, each client in its own process, with the raw qh3
floor and the 5%-loss cell besides (``python -m benchmarks --clients h3``).

Caddy (Debian package ``caddy``) is started on a free loopback port through
tests/h3servers.py with a trustme CA.  Each client runs in this process, one after the
other, repetitions interleaved (the order turned by one each time); every request reads its
body and checks it.  Prints req/s per repetition and the medians.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import gevent

from benchmarks.catalog import NIQUESTS_TARGET
from benchmarks.servers import load_h3_servers

ROOT = Path(__file__).resolve().parent.parent


def _h3servers() -> Any:
    return load_h3_servers()


def run_greenpool(url: str, ca: str, n: int, c: int, **client_options: Any) -> float:
    import greenpool
    pool = greenpool.GreenPool("bench-h3-%s" % sorted(client_options), max_connections=c)
    client = greenpool.Client(pool=pool, verify=ca, **client_options)
    try:
        assert client.get(url).content      # warm-up: the connection is open
        return _drive(lambda: client.get(url).content, n, c)
    finally:
        client.close()
        pool.close()


def run_niquests(url: str, ca: str, n: int, c: int) -> float:
    import niquests  # type: ignore[import-not-found]
    s = niquests.Session(multiplexed=False, disable_http2=True)
    s.quic_cache_layer.add_domain("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0]))
    try:   # verify per request: Session.verify does not reach niquests' QUIC TLS
        assert s.get(url, verify=ca).content
        return _drive(lambda: s.get(url, verify=ca).content, n, c)
    finally:
        s.close()


def _drive(fn: Callable[[], bytes], n: int, c: int) -> float:
    left = [n]

    def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            assert fn()
    t0 = time.perf_counter()
    gs = [gevent.spawn(worker) for _ in range(c)]
    gevent.joinall(gs, raise_error=True)
    return n / (time.perf_counter() - t0)


def main(argv: List[str] = sys.argv[1:]) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.h3")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    h3s = _h3servers()
    tmp = Path(tempfile.mkdtemp(prefix="greenpool-bench-h3-"))
    tls = h3s.TLS(tmp / "tls")
    caddy = h3s.Caddy(tmp / "caddy", tls).start()
    ca = str(tls.ca_path)
    url = caddy.url + "/"
    clients: Dict[str, Callable[[], float]] = {
        "greenpool-h3": lambda: run_greenpool(url, ca, args.requests, args.concurrency,
                                              http3="prior_knowledge"),
        "greenpool-h2-tls": lambda: run_greenpool(url, ca, args.requests, args.concurrency, http2=True),
    }
    if os.path.isdir(NIQUESTS_TARGET) and NIQUESTS_TARGET not in sys.path:
        sys.path.append(NIQUESTS_TARGET)   # where `python -m benchmarks --install` puts it
    if importlib.util.find_spec("niquests") is not None:
        clients["niquests-h3"] = lambda: run_niquests(url, ca, args.requests, args.concurrency)
    results: Dict[str, List[float]] = {k: [] for k in clients}
    names = list(clients)
    try:
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                rate = clients[name]()
                results[name].append(rate)
                print("rep %d %-18s %8.0f req/s" % (rep + 1, name, rate), flush=True)
    finally:
        caddy.stop()
    print("\nC=%d, %d GETs of %d bytes per run, medians of %d:" % (
        args.concurrency, args.requests, len(h3s.CADDY_BODY), args.reps))
    base = statistics.median(results["greenpool-h2-tls"])
    for name, rates in results.items():
        med = statistics.median(rates)
        print("  %-18s %8.0f req/s  %.2fx greenpool-h2-tls" % (name, med, med / base))


if __name__ == "__main__":
    main()
