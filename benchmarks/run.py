"""The benchmark suite's one command: ``python -m benchmarks`` (see benchmarks/README.rst).

What it does, in order:

1. starts nginx (HTTP/1.1, h2c, TLS+ALPN h2), redis-server and, for the HTTP/3 cells, Caddy
   (HTTP/1.1, HTTP/2 and HTTP/3 on one port) with two UDP relays in front of it (one
   dropping nothing, one dropping 5% each way) on free loopback ports
   (:mod:`benchmarks.servers`, which reuses tests/servers.py and tests/h3servers.py);
2. for each repetition, for each workload and concurrency, runs every client once, each in
   its own process (:mod:`benchmarks.worker`, monkey-patched first) or as a C tool
   (:mod:`benchmarks.ceilings`) -- so repetitions interleave: A, B, C, B, C, A, ... (the
   order turns by one each repetition, so no client always runs after the same one).
   The cells the targets compare (``catalog.TARGETS``: C=50) get ``--target-reps``
   repetitions (default 7 in a full run), the others ``--reps``: on a shared machine one
   run's throughput moves by 20-40% from the next, and a median of 3 does not settle that;
3. runs the pool micro-benchmarks (:mod:`benchmarks.micro`) in their own process;
4. prints the table of medians and the targets, writes the JSON (``--out``) and the chart.

A client that cannot run (not installed, or greenpool's API not written yet) shows as
``unavailable: <why>`` and is not retried in later repetitions; the run goes on.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from benchmarks import report
from benchmarks.catalog import CLIENTS, TARGETS, WORKLOADS, Workload, clients_for

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "latest.json"
COMMITTED_CHART = HERE / "chart.png"
RESULT_MARK = "@@RESULT@@"


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    for k in list(env):  # loopback only: never through a proxy
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            del env[k]
    return env


def worker_spec(client: str, workload: str, concurrency: int, targets: Dict[str, Any],
                requests: int, max_seconds: float, **extra: Any) -> Dict[str, Any]:
    """What :mod:`benchmarks.worker` is given: one client, one workload, one C."""
    return dict({"client": client, "workload": WORKLOADS[workload].spec(),
                 "concurrency": concurrency, "targets": targets, "requests": requests,
                 "max_seconds": max_seconds}, **extra)


def worker_result(stdout: str) -> Optional[Dict[str, Any]]:
    """The worker's JSON result (its last ``RESULT_MARK`` line), None if it printed none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            try:
                return json.loads(line[len(RESULT_MARK):])  # type: ignore[no-any-return]
            except ValueError:
                return None
    return None


def run_worker(spec: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    base = {"client": spec["client"], "workload": spec["workload"]["name"],
            "concurrency": spec["concurrency"]}
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
                              cwd=str(ROOT), env=_env(), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(base, status="error", error="worker timed out after %.0fs" % timeout)
    result = worker_result(proc.stdout)
    if result is not None:
        return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return dict(base, status="error", error="worker exited %s: %s" % (proc.returncode, " | ".join(tail)))


def schedule(plan: List[Tuple[str, int, List[str]]], reps: int,
             target_reps: int) -> List[Tuple[int, int, str]]:
    """The runs in order, as (repetition, index into ``plan``, client).

    Repetition by repetition, cell by cell; within a cell every client once, the order
    turned by one each repetition.  Cells a target compares get ``target_reps``
    repetitions, the others ``reps``.
    """
    cell_reps = [target_reps if _target_cell(wl, c, cl) else reps for wl, c, cl in plan]
    out: List[Tuple[int, int, str]] = []
    for rep in range(max(cell_reps, default=0)):
        for i, ((_wl, _c, clients), cr) in enumerate(zip(plan, cell_reps)):
            if rep < cr and clients:
                turn = rep % len(clients)
                out += [(rep, i, name) for name in clients[turn:] + clients[:turn]]
    return out


def _target_cell(workload: str, c: int, clients: List[str]) -> bool:
    """Does a target compare two of ``clients`` at this workload and concurrency?"""
    return any(workload == wl and c == tc and gp in clients and peer in clients
               for _label, gp, peer, wl, tc, _minimum in TARGETS)


def _names(selection: Optional[str]) -> List[str]:
    if not selection:
        return list(CLIENTS)
    out: List[str] = []
    for item in selection.split(","):
        item = item.strip()
        if not item:
            continue
        matches = [n for n, c in CLIENTS.items()
                   if item in (n, c.family, c.kind) or (item.endswith("*") and n.startswith(item[:-1]))]
        if not matches:
            raise SystemExit("unknown client %r; known: %s (or a family: http1, h2c, h2-tls, h3, redis, redis-cluster;"
                             " or a kind: python, floor, ceiling; or a prefix*)"
                             % (item, ", ".join(CLIENTS)))
        out += [m for m in matches if m not in out]
    return out


def install() -> int:
    """pip install the peers; niquests apart (its urllib3-future would replace urllib3)."""
    from benchmarks.catalog import NIQUESTS_TARGET

    pip = [sys.executable, "-m", "pip", "install"]
    steps = [pip + ["-r", str(HERE / "requirements.txt")],
             pip + ["--upgrade", "--target", NIQUESTS_TARGET, "niquests"]]
    for cmd in steps:
        print("+", " ".join(cmd), flush=True)
        if subprocess.call(cmd) != 0:
            return 1
    print("Servers and C ceilings come from Debian: apt-get install -y nginx redis-server "
          "wrk nghttp2-client")
    return 0


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="greenpool vs its peers: loopback nginx, Caddy and redis, one process per client.")
    ap.add_argument("--quick", action="store_true",
                    help="C=50 only, fewer requests, 1 repetition (about 2 minutes)")
    ap.add_argument("--clients", help="comma list of clients, families (http1, h2c, h2-tls, h3, "
                                      "redis), kinds (python, floor, ceiling) or prefix* "
                                      "(default: all; --list shows them)")
    ap.add_argument("--workloads", help="comma list of workloads (default: all): %s"
                                        % ", ".join(WORKLOADS))
    ap.add_argument("--concurrency", help="comma list of C, replacing each workload's own")
    ap.add_argument("--requests", type=int, help="N requests per run (default: per workload)")
    ap.add_argument("--seconds", type=float, help="stop a run after this long (default: 2 quick, 6 full)")
    ap.add_argument("--reps", type=int, help="repetitions, interleaved (default: 1 quick, 3 full)")
    ap.add_argument("--target-reps", type=int,
                    help="repetitions of the cells the targets compare (default: 7 full, "
                         "else --reps; never fewer than --reps)")
    ap.add_argument("--redis-pool-size", type=int, default=1,
                    help="greenpool RedisPool pool_size (default 1: one multiplexed connection)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (default: %(default)s)")
    ap.add_argument("--chart", help="PNG chart path (default: benchmarks/chart.png for a full "
                                    "run of every client, else next to --out)")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--no-micro", action="store_true", help="skip the pool micro-benchmarks")
    ap.add_argument("--micro-n", type=int, help="micro-benchmark size (smoke runs)")
    ap.add_argument("--list", action="store_true", help="list clients and workloads, then exit")
    ap.add_argument("--install", action="store_true",
                    help="pip install the peers (niquests into its own directory), then exit")
    return ap.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.install:
        return install()
    if args.list:
        for c in CLIENTS.values():
            print("%-20s %-7s %-8s %s" % (c.name, c.family, c.kind, c.about))
        print()
        for w in WORKLOADS.values():
            print("%-10s C=%-10s N=%-6d %s" % (w.name, ",".join(map(str, w.concurrency)),
                                              w.requests, w.about))
        return 0

    quick = args.quick
    names = _names(args.clients)
    workloads: List[Workload] = [WORKLOADS[w.strip()] for w in args.workloads.split(",")] \
        if args.workloads else list(WORKLOADS.values())
    reps = args.reps or (1 if quick else 3)
    target_reps = max(reps, args.target_reps or (reps if quick or args.reps else 7))
    seconds = args.seconds or (2.0 if quick else 6.0)
    cs_override = [int(x) for x in args.concurrency.split(",")] if args.concurrency else None

    plan = []  # (workload, C, [clients])
    for wl in workloads:
        clients = clients_for(wl, names)
        if not clients:
            continue
        for c in cs_override or (wl.quick_concurrency if quick else wl.concurrency):
            plan.append((wl, c, clients))
    if not plan and args.no_micro:
        print("nothing to run", file=sys.stderr)
        return 2

    need_http = any(wl.protocol == "http" for wl, _, cl in plan
                    if any(CLIENTS[n].family != "redis" for n in cl))
    need_redis = any(wl.protocol == "redis" for wl, _, _ in plan)
    need_cluster = any(wl.protocol == "redis-cluster" for wl, _, _ in plan)
    need_h3 = any(wl.protocol == "h3" for wl, _, _ in plan)
    started = time.monotonic()
    runs: List[Dict[str, Any]] = []
    problems: Dict[str, str] = {}
    micro: Optional[Dict[str, Any]] = None

    from benchmarks.catalog import REDIS_KEY, REDIS_VALUE
    from benchmarks.ceilings import run_ceiling
    from benchmarks.servers import Servers, check_upload

    with tempfile.TemporaryDirectory(prefix="greenpool-bench-") as tmp:
        servers = Servers(Path(tmp), need_http=need_http and bool(plan),
                          need_redis=need_redis and bool(plan),
                          need_cluster=need_cluster and bool(plan), need_h3=need_h3)
        try:
            problems.update(servers.problems)
            targets = servers.targets
            if servers.nginx is not None and any(wl.body_size for wl, _, _ in plan):
                check_upload(targets["http"])
            servers.prepare_redis(REDIS_KEY, REDIS_VALUE)
            unavailable: Dict[str, str] = {}
            order = schedule([(wl.name, c, cl) for wl, c, cl in plan], reps, target_reps)
            total = len(order)
            done = 0
            for rep, i, name in order:
                wl, c, _clients = plan[i]
                n = args.requests or (wl.quick_requests if quick else wl.requests)
                done += 1
                info = CLIENTS[name]
                base = {"client": name, "workload": wl.name, "concurrency": c, "rep": rep}
                fam_server = info.family if info.family in ("redis", "redis-cluster", "h3") else "http"
                if fam_server in problems:
                    res = dict(base, status="unavailable", error=problems[fam_server])
                elif name in unavailable:
                    res = dict(base, status="unavailable", error=unavailable[name])
                elif info.kind == "ceiling":
                    res = run_ceiling(name, wl, c, n, seconds, targets)
                else:
                    spec = worker_spec(name, wl.name, c, targets, n, seconds,
                                       redis_pool_size=args.redis_pool_size)
                    res = run_worker(spec, timeout=seconds + 45)
                res.setdefault("rep", rep)
                if res.get("status") == "unavailable":
                    unavailable.setdefault(name, res.get("error", ""))
                runs.append(res)
                _progress(done, total, res)
        finally:
            servers.stop()

    if not args.no_micro:
        micro = run_micro(quick, args.micro_n)

    rows = report.summarize(runs)
    ts = report.targets(rows)
    print()
    print(report.table(rows))
    print()
    if micro:
        print(report.micro_text(micro))
        print()
    print(report.targets_text(ts, micro))

    full_run = not quick and not args.clients and not args.workloads and not args.concurrency \
        and not args.requests
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chart_path: Optional[Path] = None
    if not args.no_chart and rows:
        chart_path = Path(args.chart) if args.chart else (
            COMMITTED_CHART if full_run else out.with_suffix(".png"))
        title = "greenpool benchmarks (%s, %s reps, %s, %s)" % (
            "quick" if quick else "full",
            reps if target_reps == reps else "%d-%d" % (reps, target_reps),
            platform.python_implementation()
            + " " + platform.python_version(), datetime.date.today().isoformat())
        err = report.chart(rows, str(chart_path), title)
        if err:
            print("chart: %s" % err, file=sys.stderr)
            chart_path = None
    doc = {
        "meta": dict(_meta(args, quick, reps, seconds, time.monotonic() - started),
                     target_reps=target_reps),
        "summary": rows, "targets": ts, "micro": micro, "runs": runs,
        "server_problems": problems, "chart": str(chart_path) if chart_path else None,
    }
    out.write_text(json.dumps(doc, indent=1, default=str))
    print("\nJSON: %s%s  (%.0f s)" % (out, "  chart: %s" % chart_path if chart_path else "",
                                     time.monotonic() - started))
    return 0


def run_micro(quick: bool, n: Optional[int]) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.micro", "--json"]
    if quick:
        cmd.append("--quick")
    if n:
        cmd += ["-n", str(n)]
    try:
        proc = subprocess.run(cmd, cwd=str(ROOT), env=_env(), capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired:
        return {"error": "micro-benchmarks timed out"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": "exit %s: %s" % (proc.returncode, tail)}


def _progress(done: int, total: int, res: Dict[str, Any]) -> None:
    if res.get("status") == "ok":
        what = "%s req/s" % format(res.get("rps", 0), ",.0f")
    else:
        what = "%s: %s" % (res.get("status"), (res.get("error") or "")[:80])
    print("[%d/%d] %-20s %-10s C=%-4s %s" % (done, total, res["client"], res["workload"],
                                              res["concurrency"], what), file=sys.stderr, flush=True)


def _versions() -> Dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("gevent", "greenlet", "h11", "h2", "httptools", "hiredis", "geventhttpclient",
                 "urllib3", "requests", "httpx", "redis", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _meta(args: argparse.Namespace, quick: bool, reps: int, seconds: float,
          elapsed: float) -> Dict[str, Any]:
    try:
        nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    except OSError:
        nginx = None
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full", "reps": reps, "max_seconds": seconds,
        "argv": sys.argv[1:], "python": sys.version.split()[0], "platform": platform.platform(),
        "cpus": os.cpu_count(), "nginx": nginx, "versions": _versions(),
        "elapsed_s": round(elapsed, 1),
    }
