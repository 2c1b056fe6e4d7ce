"""``greenpool demo``: the pool in action against an HTTP server in this process.

What this owns: a tiny WSGI app on a free 127.0.0.1 port (gevent's pywsgi),
exactly N GETs of it from C greenlets through the pool ``"demo"``, then the
throughput, latency and the pool's stats.  Needs nothing but greenpool's own
dependencies.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any, Callable, Dict, List, Optional

import greenpool
from greenpool.cli import args as _args
from greenpool.cli.load import LoadRun, Progress

DESCRIPTION = """\
Starts an HTTP server on 127.0.0.1 in this process, sends it exactly N GETs from
C greenlets through the pool "demo", then prints throughput, latency and the
pool's stats. Exit 0, or 1 when a request failed, 130 when interrupted.
"""

BODY = b'{"hello": "greenpool"}'


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the pool against an HTTP server in this process",
                       description=DESCRIPTION, formatter_class=_args.HelpFormatter)
    p.add_argument("-n", "--requests", type=_args.positive_int, default=5000, metavar="N",
                   help="how many requests in all")
    p.add_argument("-c", "--greenlets", type=_args.positive_int, default=200, metavar="C",
                   help="greenlets sending at once (never more than N)")
    p.add_argument("--max-connections", type=_args.positive_int, default=20, metavar="M",
                   help="the pool's max_connections")
    _args.add_progress(p)
    p.set_defaults(run=run)


def serve() -> Any:
    """A tiny WSGI app on a free loopback port, served by gevent's pywsgi."""
    from gevent.pywsgi import WSGIServer

    def app(environ: Any, start_response: Callable[..., Any]) -> List[bytes]:
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
        return [BODY]

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
         out: Callable[[str], None] = print, progress: Optional[Progress] = None,
         on_interrupt: Optional[List[Any]] = None) -> Dict[str, Any]:
    """Drive an in-process server through the pool "demo"; returns the pool's stats
    plus ``errors`` (failed requests) and ``interrupted``."""
    server = serve()
    url = "http://127.0.0.1:%d/" % server.server_port
    pool = greenpool.start_pool("demo", max_connections=max_connections)
    try:
        def fetch() -> int:
            r = greenpool.request("GET", url, pool="demo")
            if r.content != BODY:
                raise AssertionError("unexpected body %r" % r.content)
            return r.status

        load = LoadRun(fetch, requests, greenlets)
        out("greenpool %s demo: %d GETs from %d greenlets to %s through pool %r (max_connections=%d)"
            % (greenpool.__version__, requests, load.concurrency, url, "demo", max_connections))
        if on_interrupt is not None:
            on_interrupt[0] = load.interrupt
        load.run(progress)
        if on_interrupt is not None:
            on_interrupt[0] = None
        n = load.done
        if load.interrupted:
            out("interrupted: %d of %d requests completed" % (n, requests))
        if n:
            out("%d requests in %.2fs: %.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors"
                % (n, load.took, n / load.took, load.quantile(0.5) * 1e3, load.quantile(0.99) * 1e3,
                   load.failed))
        for line in load.error_lines():
            out("error: %s" % line)
        stats = pool.get_stats()
        out(repr(pool))
        out(json.dumps(stats, indent=2, sort_keys=True))
    finally:
        greenpool.stop_pool("demo")
        server.stop()
    stats["errors"] = load.failed
    stats["interrupted"] = load.interrupted
    return stats


def run(args: argparse.Namespace) -> int:
    interval = _args.progress_interval(args, sys.stderr.isatty())
    stats = demo(args.greenlets, args.requests, args.max_connections,
                 progress=Progress(interval) if interval else None, on_interrupt=args.on_interrupt)
    if stats["interrupted"]:
        return 130
    return 1 if stats["errors"] else 0
