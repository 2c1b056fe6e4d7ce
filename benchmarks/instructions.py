"""Instructions per request, counted by callgrind: a measure that does not move with the load.

    python -m benchmarks.instructions greenpool-h11 raw-h11 [--concurrency 50] [--workload get-100B]

Timings on a shared 2-core machine move by 20-50% from run to run, which hides changes of a
few microseconds per request.  This starts the suite's servers (:mod:`benchmarks.servers`),
then runs each client's benchmark worker (:mod:`benchmarks.worker`, the same code the timed
suite runs) under ``valgrind --tool=callgrind`` twice, with ``--small`` and ``--large``
requests and a fixed warm-up, and prints ``(Ir(large) - Ir(small)) / (large - small)``: what
one more request costs, start-up and warm-up cancelled out.  The count is the same from run to
run within about 1% (``PYTHONHASHSEED=0``, as the suite sets).  It counts instructions, not
cycles: cache misses and the kernel's share are not in it.  Needs valgrind (Debian package
``valgrind``); each client takes about a minute.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from benchmarks.catalog import CLIENTS, REDIS_KEY, REDIS_VALUE, TARGETS, WORKLOADS
from benchmarks.run import ROOT, _env, worker_result, worker_spec
from benchmarks.servers import Servers

WARMUP = 200
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def collected(spec: Dict[str, Any], timeout: float = 900.0) -> Optional[int]:
    """Instructions the worker executed for ``spec`` (None: the run failed)."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, "-m", "benchmarks.worker", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=str(ROOT), env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    m = _COLLECTED.search(proc.stderr)
    result = worker_result(proc.stdout)
    if m is None or result is None or result.get("status") != "ok":
        return None
    return int(m.group(1))


def per_request(client: str, workload: str, concurrency: int, targets: Dict[str, Any],
                small: int, large: int) -> Optional[float]:
    a = collected(worker_spec(client, workload, concurrency, targets, small, 600, warmup=WARMUP))
    b = collected(worker_spec(client, workload, concurrency, targets, large, 600, warmup=WARMUP))
    if a is None or b is None:
        return None
    return (b - a) / (large - small)


@contextlib.contextmanager
def workload_servers(workload: str) -> Iterator[Optional[Servers]]:
    """The suite's servers that ``workload`` needs, ready, for this tool and
    :mod:`benchmarks.cpusplit` (None, said on stderr, when they could not start)."""
    protocol = WORKLOADS[workload].protocol
    with tempfile.TemporaryDirectory(prefix="greenpool-tool-") as d, \
            Servers(Path(d), need_http=protocol == "http", need_redis=protocol == "redis",
                    need_cluster=protocol == "redis-cluster", need_h3=protocol == "h3") as servers:
        if servers.problems:
            print("servers: %s" % servers.problems, file=sys.stderr)
            yield None
            return
        servers.prepare_redis(REDIS_KEY, REDIS_VALUE)
        yield servers


def client_arguments(prog: str, doc: Optional[str]) -> argparse.ArgumentParser:
    """The arguments this tool and :mod:`benchmarks.cpusplit` share: clients, workload, C."""
    ap = argparse.ArgumentParser(prog=prog, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clients", nargs="+", help="client names (python -m benchmarks --list)")
    ap.add_argument("--workload", default="get-100B", choices=sorted(WORKLOADS))
    ap.add_argument("--concurrency", type=int, default=50)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = client_arguments("python -m benchmarks.instructions", __doc__)
    ap.add_argument("--small", type=int, default=300, help="requests in the short run (300)")
    ap.add_argument("--large", type=int, default=1300, help="requests in the long run (1300)")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    unknown = [c for c in args.clients if c not in CLIENTS or CLIENTS[c].kind == "ceiling"]
    if unknown or args.large <= args.small:
        ap.error("unknown (or C ceiling) clients: %s" % ", ".join(unknown) if unknown
                 else "--large must be more than --small")
    with workload_servers(args.workload) as servers:
        if servers is None:
            return 2
        counts: Dict[str, float] = {}
        for client in args.clients:
            n = per_request(client, args.workload, args.concurrency, servers.targets,
                            args.small, args.large)
            shown = "failed (run the worker by hand to see why)" if n is None else "%9.0f" % n
            print("%-22s %s C=%-4d %s instructions/request" % (
                client, args.workload, args.concurrency, shown), flush=True)
            if n is not None:
                counts[client] = n
    for line in target_lines(counts, args.workload, args.concurrency):
        print(line)
    return 0


def target_lines(counts: Dict[str, float], workload: str, concurrency: int) -> List[str]:
    """The throughput targets (``catalog.TARGETS``) whose two clients were both counted,
    as instruction ratios: the peer's count over greenpool's (fewer instructions per
    request, more requests per second of CPU)."""
    out = []
    for label, gp, peer, wl, c, minimum in TARGETS:
        if wl == workload and c == concurrency and counts.get(gp) and counts.get(peer):
            ratio = counts[peer] / counts[gp]
            out.append("  %-44s %s %.2fx in instructions" % (
                label, "met" if ratio >= minimum else "NOT met", ratio))
    return (["Targets, counted in instructions:"] + out) if out else []


if __name__ == "__main__":
    sys.exit(main())
