"""``greenpool bench URL``: a small HTTP load generator.

What this owns: N GETs from C greenlets through the pool ``"bench"``
(``max_connections`` = C), then the summary: requests, errors, rate, the status
classes, the HTTP versions that answered, each error type with one example message, latency quantiles and a
histogram.  Exit 1 when any request failed or got a status >= 400; Ctrl-C
prints the summary of what completed and exits 130.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, Optional

import greenpool
from greenpool.cli import args as _args
from greenpool.cli.load import LoadRun, Progress

DESCRIPTION = """\
N GETs of URL from C greenlets through the pool "bench" (max_connections = C).
Prints requests, errors, req/s, the status classes (2xx, 3xx, 4xx, 5xx), the
HTTP versions that answered, each error type with one example message, latency quantiles and a histogram.
Exit codes: 0 all requests got a status < 400, 1 some failed or got >= 400,
2 invalid arguments, 130 interrupted (the summary covers what completed).
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="a small HTTP load generator", description=DESCRIPTION,
                       formatter_class=_args.HelpFormatter)
    p.add_argument("url", type=_args.http_url, help="the URL to GET")
    p.add_argument("-n", "--requests", type=_args.positive_int, default=1000, metavar="N",
                   help="how many requests in all")
    p.add_argument("-c", "--concurrency", type=_args.positive_int, default=50, metavar="C",
                   help="greenlets sending at once (and the pool's max_connections)")
    p.add_argument("-H", "--header", type=_args.header, action="append", default=[], metavar="'NAME: VALUE'",
                   help="a request header (repeatable)")
    p.add_argument("--timeout", type=_args.positive_float, default=30.0, metavar="SECONDS",
                   help="each request's timeout")
    _args.add_http2(p)
    _args.add_http3(p)
    _args.add_tls(p)
    _args.add_progress(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    kw = _args.client_options(args, args.url)
    pool = greenpool.start_pool("bench", max_connections=args.concurrency)
    try:
        with greenpool.Client(pool=pool, headers=args.header, **kw) as client:
            versions: Dict[str, int] = {}

            def fetch() -> int:
                r = client.get(args.url)
                r.read()
                versions[r.http_version] = versions.get(r.http_version, 0) + 1
                return r.status

            load = LoadRun(fetch, args.requests, args.concurrency)
            args.on_interrupt[0] = load.interrupt
            interval = _args.progress_interval(args, sys.stderr.isatty())
            load.run(Progress(interval) if interval else None)
            args.on_interrupt[0] = None
            report(load, out, versions)
            out(repr(pool))
    finally:
        greenpool.stop_pool("bench")
    if load.interrupted:
        return 130
    return 1 if load.bad() else 0


def report(load: LoadRun, out: Callable[[str], None], versions: Optional[Dict[str, int]] = None) -> None:
    if load.interrupted:
        out("interrupted: %d of %d requests completed" % (load.done, load.total))
    n = load.done
    out("%d requests, %d errors, %.2fs, %.0f req/s" % (n, load.failed, load.took, n / load.took if load.took else 0))
    out("status: %s" % load.status_line())
    if versions:
        out("versions: %s" % ", ".join("%s %d" % kv for kv in sorted(versions.items(), reverse=True)))
    for line in load.error_lines():
        out("error: %s" % line)
    if not n:
        return
    for q in (0.5, 0.9, 0.99, 1.0):
        out("  p%-4s %8.2f ms" % (("%g" % (q * 100)), load.quantile(q) * 1e3))
    out("histogram (ms):")
    latencies = sorted(load.latencies)
    lo, hi = latencies[0], latencies[-1]
    buckets = 10
    width = (hi - lo) / buckets or 1e-9
    counts = [0] * buckets
    for v in latencies:
        counts[min(buckets - 1, int((v - lo) / width))] += 1
    for i, c in enumerate(counts):
        out("  %8.2f | %s %d" % ((lo + i * width) * 1e3, "#" * int(40 * c / max(counts)), c))
