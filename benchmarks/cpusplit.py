"""CPU time per request, user vs kernel by system call, sampled by perf.

    python -m benchmarks.cpusplit greenpool-httptools geventhttpclient [--concurrency 50] [--workload get-100B]

Timings on the shared 2-core machine move by 20-50% from run to run, and callgrind's
instruction counts (:mod:`benchmarks.instructions`) leave out the kernel and the cycles per
instruction.  This shows where the CPU time goes: it starts the suite's servers
(:mod:`benchmarks.servers`), runs each client's benchmark worker (:mod:`benchmarks.worker`)
under ``perf record -e cpu-clock -g -k CLOCK_MONOTONIC``, keeps the samples taken during the
worker's measured phase (it reports that phase's start and end on the same clock), sorts
each by where it landed (the interpreter, C extensions, libc; in the kernel, the outermost
system call it is under: send, recv, wait, ...) and prints, per category, the CPU
microseconds per request: the median of ``--reps`` runs, the clients interleaved.
cpu-clock is a software event, so it works inside VMs without hardware counters; it is
sampled, and CPU time moves with the machine's load (by tens of per cent on a busy 2-core
machine): compare the columns of one run.  Needs perf (Debian package ``linux-perf``); each
run takes a few seconds.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.catalog import CLIENTS, TARGETS
from benchmarks.instructions import client_arguments, workload_servers
from benchmarks.run import ROOT, _env, worker_result, worker_spec

USER = ("python", "C extensions", "libc", "other user")
KERNEL = ("send", "recv", "wait", "other syscalls", "page faults", "interrupts and other kernel")
#: kernel samples under a send system call that are in ``sock_def_readable``: on loopback the
#: sender's system call delivers the bytes to the peer's socket and wakes the peer
WAKING = "waking the reader"

_SYSCALLS = {name: cat for cat, names in [
    ("send", ("send", "sendto", "sendmsg", "sendmmsg", "write", "writev")),
    ("recv", ("recv", "recvfrom", "recvmsg", "recvmmsg", "read", "readv")),
    ("wait", ("poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait", "epoll_pwait2")),
] for name in names}
_SYSCALL_FRAME = re.compile(r"__(?:x64|ia32|se)_sys_(\w+)$")
_INNER_FRAME = re.compile(r"(?:ksys|__sys)_(\w+)$")
_ENTRY = ("do_syscall_64", "do_int80_syscall_32", "__do_fast_syscall_32")
_FRAME = re.compile(r"([0-9a-fA-F]+)\s+(.*?)\s+\(([^()]*)\)$")
_KERNEL_SPACE = 0xFFFF800000000000  # x86-64: addresses above this are the kernel's
_LIBC = ("libc.so", "libc-", "libm.so", "libm-", "ld-linux")


_TIME = re.compile(r"\s*(\d+\.\d+):\s*$")


def _samples(text: str) -> List[Tuple[Optional[float], List[Tuple[int, str, str]]]]:
    """``perf script -F [time,]ip,sym,dso`` output as (time or None, call stack of (address,
    symbol, dso), leaf first).  Stacks are separated by blank lines; a line that is not
    indented, or is a time (the sample's header: ``comm tid``, or its time, which perf may
    pad with blanks), starts a new one."""
    samples: List[Tuple[Optional[float], List[Tuple[int, str, str]]]] = []
    when: Optional[float] = None
    current: List[Tuple[int, str, str]] = []
    for line in text.splitlines():
        m = _TIME.match(line)
        if not line.strip() or not line[0].isspace() or m is not None:
            if current:
                samples.append((when, current))
            current = []
            when = float(m.group(1)) if m is not None else None
            continue
        m = _FRAME.match(line.strip())
        if m is not None:
            current.append((int(m.group(1), 16), m.group(2), m.group(3)))
    if current:
        samples.append((when, current))
    return samples


def _user_category(dso: str) -> str:
    name = dso.rsplit("/", 1)[-1]
    if name.startswith("libpython"):
        return "python"
    if name.startswith(_LIBC):
        return "libc"
    if "site-packages" in dso or re.search(r"\.so(\.|$)", name):
        return "C extensions"
    return "other user"


def _libc_name(sym: str) -> str:
    """The system call a libc wrapper makes: ``__libc_recv`` -> ``recv``, ``__close_nocancel``
    -> ``close``, ``__GI___poll`` -> ``poll``."""
    name = sym.split("@")[0]
    while True:
        bare = name.lstrip("_")
        for prefix in ("GI_", "libc_"):
            if bare.startswith(prefix):
                bare = bare[len(prefix):]
        if bare == name:
            break
        name = bare
    return name[:-len("_nocancel")] if name.endswith("_nocancel") else name


def _syscall(stack: List[Tuple[int, str, str]]) -> Optional[str]:
    """The system call a kernel sample is in ("" if its name cannot be told; None: it is in
    none): the outermost ``__x64_sys_<name>`` frame; when the compiler left that frame out
    (``ksys_read`` called straight from ``do_syscall_64``) the outermost ``ksys_<name>`` or
    ``__sys_<name>``; when the sample is in the system call's entry or exit (scheduling on the
    way back to user space), the libc wrapper the call came from."""
    syms = [sym for _, sym, _ in stack]
    entry = max((i for i, sym in enumerate(syms) if sym in _ENTRY or sym.startswith("entry_SYSCALL")),
                default=None)
    if entry is None:
        return None
    for pattern in (_SYSCALL_FRAME, _INNER_FRAME):
        for sym in reversed(syms[:entry]):
            m = pattern.match(sym)
            if m is not None:
                return m.group(1)
    for ip, sym, dso in stack[entry + 1:]:
        if dso != "[kernel.kallsyms]" and ip < _KERNEL_SPACE:
            return _libc_name(sym) if sym != "[unknown]" else ""
    return ""


def _kernel_category(stack: List[Tuple[int, str, str]]) -> Tuple[str, bool]:
    """The category of a kernel sample, and whether it is waking the reader of a send."""
    name = _syscall(stack)
    if name is not None:
        cat = _SYSCALLS.get(name, "other syscalls")
        return cat, cat == "send" and any(sym == "sock_def_readable" for _, sym, _ in stack)
    if any(sym == "asm_exc_page_fault" for _, sym, _ in stack):
        return "page faults", False
    return "interrupts and other kernel", False


def classify(perf_script_text: str, phase: Optional[Tuple[float, float]] = None) -> Counter[str]:
    """Samples per category (:data:`USER`, :data:`KERNEL` and :data:`WAKING`) in the output of
    ``perf script -F time,ip,sym,dso`` for a ``perf record -g`` run; with ``phase`` (start,
    end), only the samples taken in it.  A sample is the kernel's when its leaf frame is (dso
    ``[kernel.kallsyms]`` or a kernel address), and is then counted under the system call it
    is in (:func:`_syscall`), else as a page fault (``asm_exc_page_fault`` in its stack),
    else as an interrupt or other kernel work; a user sample goes by the dso of its leaf
    frame."""
    counts: Counter[str] = Counter()
    for when, stack in _samples(perf_script_text):
        if phase is not None and (when is None or not phase[0] <= when <= phase[1]):
            continue
        ip, _, dso = stack[0]
        if dso == "[kernel.kallsyms]" or ip >= _KERNEL_SPACE:
            cat, waking = _kernel_category(stack)
            counts[cat] += 1
            if waking:
                counts[WAKING] += 1
        else:
            counts[_user_category(dso)] += 1
    return counts


def per_request(counts: Counter[str], frequency: int, requests: int) -> Dict[str, float]:
    """CPU microseconds per request in each category (and the totals ``user``, ``kernel``,
    ``total``), one sample being 1/frequency seconds."""
    out = {cat: counts[cat] / frequency / requests * 1e6 for cat in USER + KERNEL + (WAKING,)}
    out["user"] = sum(out[c] for c in USER)
    out["kernel"] = sum(out[c] for c in KERNEL)
    out["total"] = out["user"] + out["kernel"]
    return out


def median_split(runs: List[Dict[str, float]]) -> Dict[str, float]:
    """The median of each category over runs (the totals are the medians of the totals)."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


#: (group shown on its first row, label, key in :func:`per_request`'s result)
_ROWS = ([("user", c, c) for c in USER] + [("kernel", KERNEL[0], KERNEL[0]),
                                          ("kernel", "  of which " + WAKING, WAKING)]
         + [("kernel", c, c) for c in KERNEL[1:]] + [("total", c, c) for c in ("user", "kernel", "total")])


def table(results: Dict[str, Dict[str, float]], workload: str, concurrency: int) -> List[str]:
    """One column per client, one row per category, in µs of CPU per request."""
    widths = {c: max(len(c), 7) for c in results}
    lines = ["%-38s" % ("µs of CPU per request, %s C=%d" % (workload, concurrency))
             + "".join("  %*s" % (w, c) for c, w in widths.items())]
    previous = None
    for group, label, key in _ROWS:
        lines.append("%-8s%-30s" % (group if group != previous else "", label)
                     + "".join("  %*.1f" % (w, results[c][key]) for c, w in widths.items()))
        previous = group
    return lines


def _ratio(results: Dict[str, Dict[str, float]], gp: str, peer: str, key: str) -> str:
    base = results[gp][key]
    return "%.2fx" % (results[peer][key] / base) if base > 0 else "n/a"


def target_lines(results: Dict[str, Dict[str, float]], workload: str, concurrency: int) -> List[str]:
    """The throughput targets (``catalog.TARGETS``) whose two clients were both measured, as
    ratios of CPU per request: the peer's over greenpool's, for user, kernel and total."""
    out = []
    for label, gp, peer, wl, c, minimum in TARGETS:
        if wl == workload and c == concurrency and gp in results and peer in results:
            out.append("  %s: user %s, kernel %s, total %s (target %gx)" % (
                label, _ratio(results, gp, peer, "user"), _ratio(results, gp, peer, "kernel"),
                _ratio(results, gp, peer, "total"), minimum))
    return (["Targets, in CPU per request (the peer's over greenpool's):"] + out) if out else []


_INSTALL = "install perf (Debian package linux-perf: apt-get install -y linux-perf)"


def perf_problem() -> Optional[str]:
    """Why ``perf record -e cpu-clock`` cannot sample here, kernel included (None: it can)."""
    if shutil.which("perf") is None:
        return "perf is not installed: " + _INSTALL
    with tempfile.TemporaryDirectory(prefix="greenpool-perf-") as d:
        try:
            proc = subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", str(Path(d) / "probe.data"),
                                   "--", "true"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            return "perf record -e cpu-clock true failed (%s): %s" % (e, _INSTALL)
    said = " ".join(proc.stderr.split())[-300:]
    if proc.returncode != 0 or "excluding kernel" in proc.stderr:
        return ("perf record -e cpu-clock true failed or left out the kernel (%s). If it was refused, "
                "allow it with: sysctl kernel.perf_event_paranoid=1; if perf is missing for this "
                "kernel, %s" % (said, _INSTALL))
    return None


def sampled(spec: Dict[str, Any], frequency: int,
            timeout: float = 900.0) -> Optional[Dict[str, float]]:
    """CPU microseconds per request by category in the worker's measured phase for ``spec``
    (None: the run failed)."""
    with tempfile.TemporaryDirectory(prefix="greenpool-perf-") as d:
        data = str(Path(d) / "perf.data")
        cmd = ["perf", "record", "-e", "cpu-clock", "-F", str(frequency), "-g",
               "-k", "CLOCK_MONOTONIC", "-o", data, "--",
               sys.executable, "-m", "benchmarks.worker", json.dumps(spec)]
        proc = subprocess.run(cmd, cwd=str(ROOT), env=_env(), capture_output=True, text=True,
                              timeout=timeout)
        result = worker_result(proc.stdout)
        if result is None or result.get("status") != "ok" or not result.get("requests") \
                or not result.get("phase"):
            return None
        script = subprocess.run(["perf", "script", "-i", data, "-F", "time,ip,sym,dso"],
                                cwd=str(ROOT), capture_output=True, text=True, errors="replace",
                                timeout=timeout)
        if script.returncode != 0:
            return None
        start, end = result["phase"]
        return per_request(classify(script.stdout, (start, end)), frequency, result["requests"])


def main(argv: Optional[List[str]] = None) -> int:
    ap = client_arguments("python -m benchmarks.cpusplit", __doc__)
    ap.add_argument("--requests", type=int, default=20000,
                    help="requests in each run's measured phase (20000)")
    ap.add_argument("--reps", type=int, default=3, help="runs per client, interleaved (3)")
    ap.add_argument("--frequency", type=int, default=2000, help="samples per CPU second (2000)")
    args = ap.parse_args(argv)
    unknown = [c for c in args.clients if c not in CLIENTS or CLIENTS[c].kind == "ceiling"]
    if unknown or args.requests <= 0 or args.reps <= 0 or args.frequency <= 0:
        ap.error("unknown (or C ceiling) clients: %s" % ", ".join(unknown) if unknown
                 else "--requests, --reps and --frequency must be positive")
    problem = perf_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    results: Dict[str, Dict[str, float]] = {}
    with workload_servers(args.workload) as servers:
        if servers is None:
            return 2
        runs: Dict[str, List[Dict[str, float]]] = {c: [] for c in args.clients}
        failed = set()
        for _ in range(args.reps):
            for client in args.clients:
                if client in failed:
                    continue
                # no "warmup": the worker's own, as in the timed suite
                split = sampled(worker_spec(client, args.workload, args.concurrency,
                                            servers.targets, args.requests, 600), args.frequency)
                if split is None:
                    failed.add(client)
                else:
                    runs[client].append(split)
        for client in args.clients:
            if client in failed or not runs[client]:
                shown = "failed (run the worker by hand to see why)"
            else:
                results[client] = median_split(runs[client])
                shown = "%.1f µs of CPU/request (runs: %s)" % (
                    results[client]["total"], ", ".join("%.1f" % r["total"] for r in runs[client]))
            print("%-22s %s C=%-4d %s" % (client, args.workload, args.concurrency, shown),
                  flush=True)
    if results:
        print()
        for line in table(results, args.workload, args.concurrency) + target_lines(
                results, args.workload, args.concurrency):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
