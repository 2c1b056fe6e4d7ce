"""The command line: ``python -m greenpool {demo,get,bench}`` (also the ``greenpool`` script).

What this owns: argument parsing and printing; every command uses only the
public API (start_pool, request, Client, get_stats).

* ``demo``: starts an HTTP server on 127.0.0.1 in this process, drives it
  through a named pool from many greenlets, prints throughput and the pool's
  stats.  Needs nothing but greenpool's own dependencies.
* ``get URL``: one request, like curl (``-X``, ``-H``, ``-d``, ``-i``, ``--http2``).
* ``bench URL -n N -c C``: a small load generator with a latency histogram.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import gevent

import greenpool


def _serve_demo_app() -> Any:
    """A tiny WSGI app on a free loopback port, served by gevent's pywsgi."""
    from gevent.pywsgi import WSGIServer

    body = b'{"hello": "greenpool"}'

    def app(environ: Any, start_response: Callable[..., Any]) -> List[bytes]:
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    class Server(WSGIServer):  # type: ignore[misc]
        def handle(self, sock: Any, address: Any) -> None:
            # pywsgi writes the head and the body separately: without NODELAY,
            # Nagle and the client's delayed ACK add 40 ms to every response
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    server = Server(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    return server


def demo(greenlets: int = 200, requests: int = 5000, max_connections: int = 20,
         out: Callable[[str], None] = print) -> Dict[str, Any]:
    """Drive an in-process server through the pool "demo"; returns the pool's stats."""
    server = _serve_demo_app()
    url = "http://127.0.0.1:%d/" % server.server_port
    pool = greenpool.start_pool("demo", max_connections=max_connections)
    latencies: List[float] = []
    errors: List[BaseException] = []
    per = max(1, requests // greenlets)

    def worker() -> None:
        for _ in range(per):
            t0 = time.perf_counter()
            try:
                r = greenpool.request("GET", url, pool="demo")
                if r.json() != {"hello": "greenpool"}:
                    raise AssertionError("unexpected body %r" % r.content)
            except Exception as e:  # noqa: BLE001 - counted and shown
                errors.append(e)
            latencies.append(time.perf_counter() - t0)

    out("greenpool %s demo: %d greenlets x %d GETs to %s through pool %r (max_connections=%d)"
        % (greenpool.__version__, greenlets, per, url, "demo", max_connections))
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(greenlets)])
    took = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    stats = pool.get_stats()
    out("%d requests in %.2fs: %.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors"
        % (n, took, n / took, latencies[n // 2] * 1e3, latencies[min(n - 1, int(n * 0.99))] * 1e3, len(errors)))
    out(repr(pool))
    out(json.dumps(stats, indent=2, sort_keys=True))
    greenpool.stop_pool("demo")
    server.stop()
    if errors:
        out("first error: %r" % (errors[0],))
    stats["errors"] = len(errors)
    return stats


def get(args: argparse.Namespace) -> int:
    headers = [tuple(h.split(":", 1)) for h in args.header]
    kw: Dict[str, Any] = {"headers": [(k.strip(), v.strip()) for k, v in headers], "timeout": args.timeout,
                "follow_redirects": args.location}
    if args.data is not None:
        kw["body"] = args.data.encode()
    if args.http2:
        kw["http2"] = "prior_knowledge" if args.url.startswith("http://") else True
    if args.insecure:
        kw["verify"] = False
    r = greenpool.request(args.method or ("POST" if args.data is not None else "GET"), args.url, **kw)
    if args.include:
        sys.stdout.write("%s %d %s\n" % (r.http_version, r.status, r.reason))
        for k, v in r.headers.items():
            sys.stdout.write("%s: %s\n" % (k, v))
        sys.stdout.write("\n")
    sys.stdout.flush()
    sys.stdout.buffer.write(r.content)
    sys.stdout.flush()
    return 0 if r.status < 400 else 22


def bench(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    pool = greenpool.start_pool("bench", max_connections=args.concurrency)
    kw: Dict[str, Any] = {"pool": "bench", "timeout": args.timeout}
    if args.http2:
        kw["http2"] = "prior_knowledge" if args.url.startswith("http://") else True
    latencies: List[float] = []
    errors = [0]
    todo = [args.requests]

    def worker() -> None:
        while todo[0] > 0:
            todo[0] -= 1
            t0 = time.perf_counter()
            try:
                greenpool.request("GET", args.url, **kw).read()
            except greenpool.GreenPoolError:
                errors[0] += 1
            latencies.append(time.perf_counter() - t0)

    def progress() -> None:
        while True:
            gevent.sleep(0.5)
            done = len(latencies)
            bar = "#" * int(40 * done / args.requests)
            sys.stderr.write("\r[%-40s] %d/%d" % (bar, done, args.requests))

    ticker = gevent.spawn(progress) if sys.stderr.isatty() else None
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(args.concurrency)])
    took = time.perf_counter() - started
    if ticker is not None:
        ticker.kill()
        sys.stderr.write("\n")
    latencies.sort()
    n = len(latencies)
    out("%d requests, %d errors, %.2fs, %.0f req/s" % (n, errors[0], took, n / took if took else 0))
    if n:
        for q in (0.5, 0.9, 0.99, 1.0):
            out("  p%-4s %8.2f ms" % (("%g" % (q * 100)), latencies[min(n - 1, int(n * q))] * 1e3))
        out("histogram (ms):")
        lo, hi = latencies[0], latencies[-1]
        buckets = 10
        width = (hi - lo) / buckets or 1e-9
        counts = [0] * buckets
        for v in latencies:
            counts[min(buckets - 1, int((v - lo) / width))] += 1
        for i, c in enumerate(counts):
            out("  %8.2f | %s %d" % ((lo + i * width) * 1e3, "#" * int(40 * c / max(counts)), c))
    out(repr(pool))
    greenpool.stop_pool("bench")
    return 0 if not errors[0] else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="greenpool", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the built-in demo against an in-process server")
    p.add_argument("-c", "--greenlets", type=int, default=200)
    p.add_argument("-n", "--requests", type=int, default=5000)
    p.add_argument("--max-connections", type=int, default=20)
    p = sub.add_parser("get", help="one request, like curl")
    p.add_argument("url")
    p.add_argument("-X", "--method")
    p.add_argument("-H", "--header", action="append", default=[])
    p.add_argument("-d", "--data")
    p.add_argument("-i", "--include", action="store_true", help="print the status line and headers")
    p.add_argument("-L", "--location", action="store_true", help="follow redirects")
    p.add_argument("-k", "--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--http2", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    p = sub.add_parser("bench", help="a small load generator")
    p.add_argument("url")
    p.add_argument("-n", "--requests", type=int, default=1000)
    p.add_argument("-c", "--concurrency", type=int, default=50)
    p.add_argument("--http2", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            stats = demo(args.greenlets, args.requests, args.max_connections)
            return 0 if not stats["errors"] else 1
        if args.command == "get":
            return get(args)
        return bench(args)
    except greenpool.GreenPoolError as e:
        sys.stderr.write("greenpool: %s: %s\n" % (type(e).__name__, e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
