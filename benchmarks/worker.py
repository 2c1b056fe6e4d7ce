"""One measurement in its own process: ``python -m benchmarks.worker '<spec json>'``.

Monkey-patches first (before any other import), then builds the client named in the spec,
makes one checked request (a failure here reports the client *unavailable*), warms up, and
runs ``requests`` requests from ``concurrency`` greenlets sharing the client, stopping early
at ``max_seconds``.  Prints one JSON line: req/s, latency percentiles, CPU seconds per 1k
requests over the measured phase (``getrusage`` of this process) and its peak RSS.
"""
from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any, Callable, Dict, List  # noqa: E402

import gevent  # noqa: E402


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


STALL_GRACE = 10.0


class Stalled(Exception):
    """Requests in flight did not complete: the client is stuck (deadlock, lost wake-up)."""


def _drive(workers: List[Callable[[], None]], total: int, deadline: float,
           latencies: List[float], errors: List[str]) -> int:
    """Run ``total`` requests over the workers' greenlets; returns how many completed."""
    left = [total]
    done = [0]
    perf = time.perf_counter
    record = latencies.append

    def loop(one: Callable[[], None]) -> None:
        while left[0] > 0:
            left[0] -= 1
            t0 = perf()
            try:
                one()
            except Exception as e:  # noqa: BLE001 - counted and reported
                if len(errors) < 5:
                    errors.append("%s: %s" % (type(e).__name__, e))
                else:
                    errors.append("")
                if len(errors) > max(10, total // 10):
                    left[0] = 0
                continue
            record(perf() - t0)
            done[0] += 1
            if perf() > deadline:
                left[0] = 0

    greenlets = [gevent.spawn(loop, w) for w in workers]
    # a client that deadlocks must not hang the suite: give up STALL_GRACE s after the deadline
    stalled = gevent.joinall(greenlets, timeout=max(0.0, deadline - perf()) + STALL_GRACE,
                             raise_error=True)
    if len(stalled) < len(greenlets):
        left[0] = 0
        gevent.killall(greenlets, block=False)
        raise Stalled("%d of %d requests done; the rest did not complete within %.0f s of the "
                      "deadline" % (done[0], total, STALL_GRACE))
    return done[0]


def measure(spec: Dict[str, Any]) -> Dict[str, Any]:
    from benchmarks.clients import RUNNERS, Unavailable

    name = spec["client"]
    c = int(spec["concurrency"])
    n = int(spec["requests"])
    result: Dict[str, Any] = {"client": name, "workload": spec["workload"]["name"],
                              "concurrency": c}
    try:
        runner = RUNNERS[name](spec)
        workers = [runner.worker(i) for i in range(c)]
        workers[0]()  # one checked request: the client works against this server
    except Unavailable as e:
        result.update(status="unavailable", error=str(e))
        return result
    except Exception as e:  # noqa: BLE001 - any failure to set up means "unavailable"
        result.update(status="unavailable", error="%s: %s" % (type(e).__name__, e),
                      traceback=traceback.format_exc(limit=4))
        return result
    result["note"] = runner.note

    # warm-up: opens the connections, fills caches; not measured
    errors: List[str] = []
    warm = int(spec.get("warmup", min(max(c * 2, n // 10), 2000)))
    try:
        _drive(workers, warm, time.perf_counter() + 5.0, [], errors)
    except Stalled as e:
        errors.append("stalled: %s" % e)
    if errors:
        result.update(status="error", error="warm-up: " + errors[0])
        return result

    latencies: List[float] = []
    gc.collect()
    cpu0 = _cpu()
    m0 = time.monotonic()
    t0 = time.perf_counter()
    try:
        done = _drive(workers, n, t0 + float(spec["max_seconds"]), latencies, errors)
    except Stalled as e:
        result.update(status="error", error="stalled: %s" % e)
        return result
    elapsed = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    m1 = time.monotonic()
    runner.close()

    latencies.sort()
    result.update(
        status="ok" if not errors else "error",
        requests=done,
        errors=len(errors),
        seconds=elapsed,
        rps=done / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile(latencies, 0.50) * 1e3,
        p99_ms=_percentile(latencies, 0.99) * 1e3,
        cpu_per_1k=cpu / done * 1000 if done else None,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        phase=[m0, m1],  # CLOCK_MONOTONIC: what benchmarks.cpusplit keeps of its samples
    )
    if errors:
        result["error"] = "%d errors; first: %s" % (len(errors), errors[0])
    return result


def main() -> int:
    spec = json.loads(sys.argv[1])
    try:
        result = measure(spec)
    except Exception as e:  # noqa: BLE001 - the parent shows it in the table
        result = {"client": spec.get("client"), "status": "error",
                  "error": "%s: %s" % (type(e).__name__, e), "traceback": traceback.format_exc()}
    sys.stdout.write("\n@@RESULT@@" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
