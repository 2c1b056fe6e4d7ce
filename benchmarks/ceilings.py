"""The C ceilings: wrk (HTTP/1.1), h2load (HTTP/2) and redis-benchmark, when installed.

Each tool runs as a child; its CPU time and peak RSS come from ``os.wait4`` (that child
only).  A missing binary gives ``status="unavailable"`` (install: ``apt-get install wrk
nghttp2-client redis-tools``), never an error.  Latency percentiles are reported where the
tool prints them (wrk ``--latency``, redis-benchmark's CSV; h2load prints none).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.catalog import Workload

BINARIES = {"wrk": "wrk", "h2load": "h2load", "h2load-tls": "h2load",
            "redis-benchmark": "redis-benchmark"}


def _run(cmd: List[str], timeout: float) -> Tuple[str, float, float]:
    """Run; returns (stdout+stderr, CPU seconds, peak RSS MiB) of that child alone."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return text, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_ceiling(name: str, wl: Workload, c: int, n: int, seconds: float,
                targets: Dict[str, Any]) -> Dict[str, Any]:
    result: Dict[str, Any] = {"client": name, "workload": wl.name, "concurrency": c}
    binary = shutil.which(BINARIES[name])
    if wl.blockers:
        result.update(status="unavailable", error="%s cannot keep blocking commands in flight"
                      % BINARIES[name])
        return result
    if binary is None:
        result.update(status="unavailable", error="%s not installed" % BINARIES[name])
        return result
    try:
        if name == "wrk":
            parsed = _wrk(binary, wl, c, seconds, targets)
        elif name.startswith("h2load"):
            parsed = _h2load(binary, wl, c, n, seconds, targets, tls=name == "h2load-tls")
        else:
            parsed = _redis_benchmark(binary, wl, c, n, seconds, targets)
    except Exception as e:  # noqa: BLE001 - reported in the table
        result.update(status="error", error="%s: %s" % (type(e).__name__, e))
        return result
    result.update(parsed)
    result.setdefault("status", "ok")
    return result


def _wrk(binary: str, wl: Workload, c: int, seconds: float,
         targets: Dict[str, Any]) -> Dict[str, Any]:
    url = targets["http"] + wl.path
    cmd = [binary, "-t1", "-c%d" % c, "-d%ds" % max(1, round(seconds)), "--latency",
           "--timeout", "30s"]
    script = None
    if wl.body_size:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write('wrk.method = "%s"\nwrk.body = string.rep("x", %d)\n'
                     'wrk.headers["Content-Type"] = "application/octet-stream"\n'
                     % (wl.method, wl.body_size))
        script.close()
        cmd += ["-s", script.name]
    try:
        text, cpu, rss = _run(cmd + [url], seconds + 30)
    finally:
        if script is not None:
            os.unlink(script.name)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m or not rps:
        raise RuntimeError("cannot parse wrk output: %s" % text[-300:])
    done = int(m.group(1))
    res: Dict[str, Any] = {"requests": done, "rps": float(rps.group(1)),
                           "cpu_per_1k": cpu / done * 1000 if done else None, "peak_rss_mb": rss,
                           "note": "wrk -t1 -c%d" % c}
    for q, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        lm = re.search(r"\s%s\s+([\d.]+)(us|ms|s|m)\b" % q, text)
        if lm:
            res[key] = _ms(lm.group(1), lm.group(2))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errs = re.search(r"Socket errors: .*", text)
    if bad or errs:
        res["status"] = "error"
        res["error"] = (bad.group(0) if bad else "") + " " + (errs.group(0) if errs else "")
    return res


def _h2load(binary: str, wl: Workload, c: int, n: int, seconds: float,
            targets: Dict[str, Any], tls: bool) -> Dict[str, Any]:
    url = (targets["https"] if tls else targets["h2c"]) + wl.path
    # timing-based (-D): one connection, C streams, for `seconds`
    cmd = [binary, "-c1", "-m%d" % c, "-D%d" % max(1, round(seconds))]
    body_file = None
    if wl.body_size:
        body_file = tempfile.NamedTemporaryFile(delete=False)
        body_file.write(b"x" * wl.body_size)
        body_file.close()
        cmd += ["-d", body_file.name]
    try:
        text, cpu, rss = _run(cmd + [url], seconds + 30)
    finally:
        if body_file is not None:
            os.unlink(body_file.name)
    m = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", text)
    done_m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored", text)
    if not m or not done_m:
        raise RuntimeError("cannot parse h2load output: %s" % text[-300:])
    done = int(done_m.group(1))
    res: Dict[str, Any] = {"requests": done, "rps": float(m.group(3)),
                           "cpu_per_1k": cpu / done * 1000 if done else None, "peak_rss_mb": rss,
                           "note": "h2load -c1 -m%d%s" % (c, " (TLS)" if tls else "")}
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", text)
    if mean:
        res["mean_ms"] = _ms(mean.group(1), mean.group(2))
    if int(done_m.group(3)) or int(done_m.group(4)):
        res["status"] = "error"
        res["error"] = done_m.group(0)
    return res


def _redis_benchmark(binary: str, wl: Workload, c: int, n: int, seconds: float,
                     targets: Dict[str, Any]) -> Dict[str, Any]:
    test = "get" if wl.method == "GET" else "set"
    count = max(n, int(seconds * 50000))
    cmd = [binary, "-h", str(targets["redis_host"]), "-p", str(targets["redis_port"]),
           "-c", str(c), "-n", str(count), "-d", "100", "-t", test, "--csv"]
    text, cpu, rss = _run(cmd, seconds * 4 + 30)
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    row: Optional[List[str]] = None
    for line in text.splitlines():
        cells = [x.strip('"') for x in line.strip().split(",")]
        if cells and cells[0].upper() == test.upper():
            row = cells
    if row is None:
        raise RuntimeError("cannot parse redis-benchmark output: %s" % text[-300:])
    res: Dict[str, Any] = {"requests": count, "rps": float(row[1]),
                           "cpu_per_1k": cpu / count * 1000, "peak_rss_mb": rss,
                           "note": "redis-benchmark -c%d -d100" % c}
    if len(row) >= 7:
        res["p50_ms"] = float(row[4])
        res["p99_ms"] = float(row[6])
    return res
