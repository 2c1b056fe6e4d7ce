"""Soak test: a mixed HTTP/1.1 + HTTP/2 + Redis workload on loopback, watched every second.

    python tools/soak.py --duration 600            # the 10-minute run of issue 7
    python tools/soak.py --duration 40 --json out.json

What it does: starts an HTTP/1.1 server and an HTTP/2 (h2c, prior knowledge) server in this
process (gevent, the ``h2`` package) and a ``redis-server`` child process when the binary is
on PATH or given by ``--redis-server`` (``--no-redis`` to skip); then ``--concurrency``
greenlets loop over: GETs through HTTP/1.1 (plain and streamed-then-closed-early), GETs over
one multiplexed HTTP/2 pool, Redis SET/GET/INCR and pipelines, and now and then a request
whose greenlet is killed mid-flight or that times out.  Every second it records RSS, open
fds and live greenlets (a JSON line with ``--verbose``).

Pass/fail: after ``--warmup`` seconds, the median of the last 20% of samples minus the median
of the first 20% must stay under ``--max-rss-growth-mb``, ``--max-fd-growth`` and
``--max-greenlet-growth``; every answer must be the caller's own (an error from greenpool is
counted, a wrong answer fails the run); the pools' books must be exact at the end.  Prints a
summary; exits 1 on failure.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gevent  # noqa: E402
import greenlet  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

import greenpool  # noqa: E402
import greenpool.redis  # noqa: E402
from greenpool.errors import GreenPoolError  # noqa: E402

# -- servers ---------------------------------------------------------------------------------


def _h1_handler(sock: Any, addr: Any) -> None:
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            body = target * 8
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass
    finally:
        sock.close()


def _h2_handler(sock: Any, addr: Any) -> None:
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                               header_encoding=None))
    conn.initiate_connection()
    try:
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    path = dict(ev.headers)[b":path"]
                    body = path * 8
                    conn.send_headers(ev.stream_id, [(b":status", b"200"),
                                                     (b"content-length", b"%d" % len(body))])
                    conn.send_data(ev.stream_id, body, end_stream=True)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    return
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except Exception:  # noqa: BLE001 - a client went away mid-frame
        pass
    finally:
        sock.close()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _start_redis(binary: Optional[str] = None) -> Optional[Any]:
    binary = binary or shutil.which("redis-server")
    if binary is None:
        return None
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="soak-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp, "--logfile", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            proc.port = port  # type: ignore[attr-defined]
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


# -- measuring -------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def sample() -> Dict[str, float]:
    return {"t": time.monotonic(), "rss_mb": round(_rss_mb(), 2), "fds": _fds(),
            "greenlets": _greenlets()}


# -- the workload ----------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.ok: Dict[str, int] = {"h1": 0, "h2": 0, "redis": 0, "killed": 0}
        self.errors: Dict[str, int] = {}
        self.wrong: List[str] = []

    def error(self, e: BaseException) -> None:
        name = type(e).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


def _swallow_kill(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except gevent.Timeout:
        pass   # thrown in by the killer below, after it went through greenpool's code


def worker(n: int, stop: Any, stats: Stats, h1: Any, h2: Any, rp: Any, h1_url: str,
           h2_url: str) -> None:
    rng = random.Random(n)
    i = 0
    while not stop.is_set():
        i += 1
        tag = "/%d/%d" % (n, i)
        kind = rng.random()
        try:
            if kind < 0.35:
                stream = rng.random() < 0.1
                r = h1.get(h1_url + tag, stream=stream)
                if stream:
                    first = next(iter(r.iter_bytes()), b"")
                    r.close()   # closed early: the connection must not be reused
                    ok = (tag.encode() * 8).startswith(first)
                else:
                    ok = r.content == tag.encode() * 8
                stats.ok["h1"] += ok
            elif kind < 0.7:
                r = h2.get(h2_url + tag)
                ok = r.content == tag.encode() * 8
                stats.ok["h2"] += ok
            elif rp is not None and kind < 0.95:
                key = "soak:%d" % n
                if rng.random() < 0.5:
                    got = rp.pipeline([["SET", key, tag], ["GET", key]])
                    ok = got[1] == tag.encode()
                else:
                    ok = rp.command(["ECHO", tag]) == tag.encode()
                stats.ok["redis"] += ok
            else:
                # a caller that dies mid-request (kill or its own gevent.Timeout)
                c = h1 if rng.random() < 0.5 else h2
                url = (h1_url if c is h1 else h2_url) + tag
                g = gevent.spawn(_swallow_kill, c.get, url)
                gevent.sleep(0)   # let it start: killed before it ran, it would never reach greenpool
                gevent.sleep(rng.random() * 0.002)
                g.kill(gevent.Timeout(0) if rng.random() < 0.5 else gevent.GreenletExit)
                stats.ok["killed"] += 1
                ok = True
            if not ok:
                stats.wrong.append(tag)
        except GreenPoolError as e:
            stats.error(e)
        gevent.sleep(0)


def run(args: argparse.Namespace) -> int:
    h1_srv = StreamServer(("127.0.0.1", 0), _h1_handler, backlog=1024)
    h2_srv = StreamServer(("127.0.0.1", 0), _h2_handler, backlog=1024)
    h1_srv.start()
    h2_srv.start()
    redis_proc = None if args.no_redis else _start_redis(args.redis_server)
    h1_pool = greenpool.GreenPool("soak-h1", max_connections=args.pool_size)
    h2_pool = greenpool.GreenPool("soak-h2", max_connections=4)
    h1 = greenpool.Client(pool=h1_pool, timeout=10)
    h2 = greenpool.Client(pool=h2_pool, http2="prior_knowledge", timeout=10)
    rp = (greenpool.redis.RedisPool(pool_size=4, port=redis_proc.port, timeout=10)
          if redis_proc is not None else None)
    h1_url = "http://127.0.0.1:%d" % h1_srv.server_port
    h2_url = "http://127.0.0.1:%d" % h2_srv.server_port
    stats = Stats()
    stop = gevent.event.Event()
    samples: List[Dict[str, float]] = []
    start = time.monotonic()
    workers = [gevent.spawn(worker, n, stop, stats, h1, h2, rp, h1_url, h2_url)
               for n in range(args.concurrency)]
    code = 0
    try:
        while time.monotonic() - start < args.duration:
            gevent.sleep(1.0)
            s = sample()
            s["t"] = round(s["t"] - start, 1)
            s["requests"] = sum(stats.ok.values())
            samples.append(s)
            if args.verbose:
                print(json.dumps(s), flush=True)
    finally:
        stop.set()
        gevent.joinall(workers, timeout=10)
        gevent.sleep(0.2)
        books_ok = True
        for p in [h1_pool, h2_pool] + ([rp] if rp is not None else []):
            st = p.get_stats()
            books_ok &= st["in_use_count"] + st["free_count"] == st["open"]
        for p in (h1_pool, h2_pool):
            p.close()
        if rp is not None:
            rp.stop()
        h1_srv.stop(timeout=1)
        h2_srv.stop(timeout=1)
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait()

    steady = [s for s in samples if s["t"] >= args.warmup]
    if len(steady) < 5:
        print("soak: too short to judge (%d samples after warm-up)" % len(steady))
        return 2
    k = max(1, len(steady) // 5)
    growth = {m: round(statistics.median(x[m] for x in steady[-k:])
                       - statistics.median(x[m] for x in steady[:k]), 2)
              for m in ("rss_mb", "fds", "greenlets")}
    limits = {"rss_mb": args.max_rss_growth_mb, "fds": args.max_fd_growth,
              "greenlets": args.max_greenlet_growth}
    total = sum(stats.ok.values())
    summary = {
        "duration_s": args.duration, "warmup_s": args.warmup, "concurrency": args.concurrency,
        "requests": total, "per_second": round(total / max(1e-9, samples[-1]["t"]), 1),
        "ok": stats.ok, "greenpool_errors": stats.errors, "wrong_answers": len(stats.wrong),
        "start": {m: steady[0][m] for m in ("rss_mb", "fds", "greenlets")},
        "end": {m: steady[-1][m] for m in ("rss_mb", "fds", "greenlets")},
        "growth": growth, "limits": limits, "books_exact": books_ok,
        "redis": redis_proc is not None,
    }
    failures = [m for m in growth if growth[m] > limits[m]]
    if stats.wrong:
        failures.append("wrong answers: %s" % stats.wrong[:5])
    if not books_ok:
        failures.append("pool counts not exact")
    errors = sum(stats.errors.values())
    if errors > args.max_error_ratio * max(1, total):
        failures.append("too many errors: %d" % errors)
    summary["failures"] = failures
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "samples": samples}, f, indent=1)
    print("soak: %(requests)d requests in %(duration_s)ss (%(per_second)s/s), "
          "errors %(greenpool_errors)s, wrong %(wrong_answers)d" % summary)
    for m in ("rss_mb", "fds", "greenlets"):
        print("  %-9s start %8s  end %8s  growth %7s  (limit %s)"
              % (m, summary["start"][m], summary["end"][m], growth[m], limits[m]))
    print("soak: %s" % ("FAIL: " + "; ".join(map(str, failures)) if failures else "ok"))
    code = 1 if failures else 0
    return code


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds ignored at the start (default: 20%% of the run, at most 60)")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--pool-size", type=int, default=10)
    ap.add_argument("--max-rss-growth-mb", type=float, default=10.0)
    ap.add_argument("--max-fd-growth", type=float, default=5)
    ap.add_argument("--max-greenlet-growth", type=float, default=20)
    ap.add_argument("--max-error-ratio", type=float, default=0.001,
                    help="greenpool errors allowed per request (default 0.001)")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--redis-server", help="the redis-server binary (default: from PATH)")
    ap.add_argument("--json", help="write the summary and every sample here")
    ap.add_argument("--verbose", action="store_true", help="print each sample")
    args = ap.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(60.0, args.duration * 0.2)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
