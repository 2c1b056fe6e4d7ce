"""An ad hoc fan-out script: 10,000 URLs, bounded concurrency, a progress bar on stderr.

    python examples/fanout.py http://127.0.0.1:8080/ -n 10000 -c 100 [--http2]

Each URL is ``BASE?i=<n>``.  ``-c`` greenlets take URLs from one iterator (no more greenlets
than that, whatever N is), and the pool caps connections at ``--max-connections`` (default:
``-c``): a greenlet that finds every connection busy waits in the pool's FIFO queue.  At the end
it prints the status counts, errors by type, throughput and the pool's stats.  No
monkey-patching is needed: greenpool uses gevent sockets itself.
"""
import argparse
import collections
import json
import sys
import time

import gevent

import greenpool


def progress_bar(done, total, started, width=40, out=sys.stderr):
    filled = int(width * done / total) if total else width
    rate = done / max(time.perf_counter() - started, 1e-9)
    out.write("\r[%s%s] %d/%d %.0f req/s" % ("#" * filled, "." * (width - filled), done, total, rate))
    out.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base_url")
    parser.add_argument("-n", "--count", type=int, default=10_000)
    parser.add_argument("-c", "--concurrency", type=int, default=100)
    parser.add_argument("--max-connections", type=int)
    parser.add_argument("--http2", action="store_true", help="h2 by ALPN (https) or prior knowledge (http)")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)

    pool = greenpool.start_pool("fanout", max_connections=args.max_connections or args.concurrency,
                                checkout_timeout=args.timeout)
    http2 = ("prior_knowledge" if args.base_url.startswith("http://") else True) if args.http2 else False
    client = greenpool.Client(pool=pool, timeout=args.timeout, http2=http2)
    sep = "&" if "?" in args.base_url else "?"
    urls = iter("%s%si=%d" % (args.base_url, sep, i) for i in range(args.count))
    statuses = collections.Counter()
    errors = collections.Counter()
    done = [0]

    def worker():
        for url in urls:  # a shared iterator: each URL is taken by exactly one greenlet
            try:
                r = client.get(url)
                statuses[r.status] += 1
            except greenpool.GreenPoolError as e:
                errors[type(e).__name__] += 1
            done[0] += 1

    def ticker():
        while True:
            progress_bar(done[0], args.count, started)
            gevent.sleep(0.2)

    started = time.perf_counter()
    bar = gevent.spawn(ticker)
    gevent.joinall([gevent.spawn(worker) for _ in range(args.concurrency)])
    bar.kill()
    progress_bar(done[0], args.count, started)
    sys.stderr.write("\n")
    took = time.perf_counter() - started
    print("%d requests in %.2fs (%.0f req/s) with %d greenlets" % (done[0], took, done[0] / took, args.concurrency))
    print("statuses:", dict(sorted(statuses.items())))
    print("errors:", dict(errors))
    print(repr(pool))
    print(json.dumps(pool.get_stats(), sort_keys=True))
    greenpool.stop_pool("fanout")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
