"""Smoke test of the benchmark suite (benchmarks/): it runs, end to end, in seconds.

Not a benchmark: the micro-benchmarks with a tiny N, and the harness in --quick mode with
one client (the raw h11 loop, which needs only nginx) on a few hundred requests.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(args, timeout=60):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", *args], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_micro_benchmarks_run() -> None:
    proc = _run(["benchmarks.micro", "-n", "50", "--json"])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["uncontended"]["us_per_pair"] > 0
    contended = result["contended"]
    assert contended["greenlets"] == 50 and contended["completions"] > 0
    assert contended["timeouts"] == 0
    assert result["idle_memory"]["connections"] >= 10


def test_harness_quick_one_client(tmp_path: Path) -> None:
    if shutil.which("nginx") is None and shutil.which("nginx", path="/usr/sbin:/usr/local/sbin") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is required under CI")
        pytest.skip("nginx not installed")
    out = tmp_path / "bench.json"
    chart = tmp_path / "chart.png"
    args = ["benchmarks", "--quick", "--clients", "raw-h11", "--workloads", "get-100B",
            "--requests", "300", "--no-micro", "--out", str(out), "--chart", str(chart)]
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "raw-h11" in proc.stdout
    doc = json.loads(out.read_text())
    (row,) = doc["summary"]
    assert row["client"] == "raw-h11" and row["status"] == "ok", row
    assert row["rps"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert row["cpu_per_1k"] > 0 and row["peak_rss_mb"] > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert chart.stat().st_size > 1000


def test_instruction_counts_one_client() -> None:
    """benchmarks.instructions: the worker under callgrind twice, a positive count per request
    (400 requests apart, so what a busy machine adds to either run stays far below the gap)."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")
    if shutil.which("nginx") is None and shutil.which("nginx", path="/usr/sbin:/usr/local/sbin") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is required under CI")
        pytest.skip("nginx not installed")
    proc = _run(["benchmarks.instructions", "raw-httptools", "--concurrency", "2",
                 "--small", "50", "--large", "450"], timeout=1200)   # callgrind on a busy machine
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("raw-httptools")]
    assert line and "instructions/request" in line[0], proc.stdout
    count = float(line[0].split()[-2])
    assert 1_000 < count < 10_000_000, line   # a bare httptools exchange: tens of thousands


def test_cpu_split_one_client() -> None:
    """benchmarks.cpusplit: the worker under perf, a table of CPU per request by category."""
    from benchmarks.cpusplit import perf_problem

    problem = perf_problem()
    if problem is not None:
        pytest.skip(problem)
    if shutil.which("nginx") is None and shutil.which("nginx", path="/usr/sbin:/usr/local/sbin") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is required under CI")
        pytest.skip("nginx not installed")
    proc = _run(["benchmarks.cpusplit", "raw-httptools", "--concurrency", "2",
                 "--requests", "3000", "--reps", "1"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "failed" not in proc.stdout, proc.stdout
    lines = proc.stdout.splitlines()
    head = [i for i, ln in enumerate(lines) if ln.startswith("µs of CPU per request")]
    assert head and lines[head[0]].split()[-1] == "raw-httptools", proc.stdout
    rows = {ln[8:38].strip(): ln[38:] for ln in lines[head[0] + 1:]}
    for label in ("python", "send", "of which waking the reader", "recv", "wait", "user", "kernel"):
        assert label in rows, proc.stdout
    total = float(rows["total"].split()[0])   # the last row, labelled "total" twice
    assert 1 < total < 10_000, proc.stdout   # a bare httptools exchange: tens of microseconds


_PERF_SCRIPT = """
\tffffffff81b2c3d0 _raw_spin_unlock_irqrestore ([kernel.kallsyms])
\tffffffff81a01234 __wake_up_sync_key ([kernel.kallsyms])
\tffffffff81c41000 sock_def_readable ([kernel.kallsyms])
\tffffffff81c52000 tcp_data_queue ([kernel.kallsyms])
\tffffffff81c60000 tcp_v4_rcv ([kernel.kallsyms])
\tffffffff81c31000 __dev_queue_xmit ([kernel.kallsyms])
\tffffffff81c70000 tcp_sendmsg ([kernel.kallsyms])
\tffffffff81c10000 __sys_sendto ([kernel.kallsyms])
\tffffffff81c10100 __x64_sys_sendto ([kernel.kallsyms])
\tffffffff8225aa01 do_syscall_64 ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t          1177a0 __send (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t    7f0000001234 [unknown] ([unknown])

python 12949\x20
\tffffffff81c71000 tcp_sendmsg_locked ([kernel.kallsyms])
\tffffffff81c70000 tcp_sendmsg ([kernel.kallsyms])
\tffffffff81c10100 __x64_sys_sendto ([kernel.kallsyms])
\tffffffff8225aa01 do_syscall_64 ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t          1177a0 __send (/usr/lib/x86_64-linux-gnu/libc.so.6)

\tffffffff81400000 finish_task_switch.isra.0 ([kernel.kallsyms])
\tffffffff82260000 __schedule ([kernel.kallsyms])
\tffffffff82260100 schedule ([kernel.kallsyms])
\tffffffff81300000 exit_to_user_mode_loop ([kernel.kallsyms])
\tffffffff8225aa01 do_syscall_64 ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t          1177a0 __send (/usr/lib/x86_64-linux-gnu/libc.so.6)


\tffffffff81d00000 _copy_to_iter ([kernel.kallsyms])
\tffffffff81c80000 tcp_recvmsg ([kernel.kallsyms])
\tffffffff81c11000 __sys_recvfrom ([kernel.kallsyms])
\tffffffff81c11100 __x64_sys_recvfrom ([kernel.kallsyms])
\tffffffff8225aa01 do_syscall_64 ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t          117500 __libc_recv (/usr/lib/x86_64-linux-gnu/libc.so.6)

\tffffffff81700000 filemap_read ([kernel.kallsyms])
\tffffffff81701000 vfs_read ([kernel.kallsyms])
\tffffffff81702000 ksys_read ([kernel.kallsyms])
\tffffffff8225aa01 do_syscall_64 ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t          1a0000 read (/usr/lib/x86_64-linux-gnu/libc.so.6)

\tffffffff81800000 ep_poll ([kernel.kallsyms])
\tffffffff81801000 do_epoll_wait ([kernel.kallsyms])
\tffffffff81802000 __x64_sys_epoll_wait ([kernel.kallsyms])
\tffffffff8225aa01 do_syscall_64 ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t          120000 epoll_wait (/usr/lib/x86_64-linux-gnu/libc.so.6)

\tffffffff8223bdc8 mas_empty_area_rev ([kernel.kallsyms])
\tffffffff8225aa01 do_syscall_64 ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t           20ca3 mmap64 (/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2)

\tffffffff81604ac0 __handle_mm_fault ([kernel.kallsyms])
\tffffffff81605a20 handle_mm_fault ([kernel.kallsyms])
\tffffffff822605c6 exc_page_fault ([kernel.kallsyms])
\tffffffff81000c82 asm_exc_page_fault ([kernel.kallsyms])
\t          13a34 _PyObject_Malloc (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)

\tffffffff81900000 handle_softirqs ([kernel.kallsyms])
\tffffffff81901000 __irq_exit_rcu ([kernel.kallsyms])
\tffffffff81902000 sysvec_apic_timer_interrupt ([kernel.kallsyms])
\tffffffff81000c00 asm_sysvec_apic_timer_interrupt ([kernel.kallsyms])
\t          200000 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)

\t          200000 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)
\t    7f0000001234 [unknown] ([unknown])

\t          200100 PyObject_GetAttr (/usr/lib/libpython3.11.so.1.0)

\t            9a10 parser_execute (/venv/site-packages/httptools/parser/parser.cpython-311-x86_64-linux-gnu.so)

\t            4000 EVP_DecryptUpdate (/usr/lib/x86_64-linux-gnu/libcrypto.so.3)

\t          165b5d __memmove_avx_unaligned_erms (/usr/lib/x86_64-linux-gnu/libc.so.6)

\t    7ffd505a8bad [unknown] ([unknown])
"""


def test_cpu_split_classifies_perf_samples() -> None:
    """Each sample is counted once: a kernel one under the system call it is in (its outermost
    __x64_sys_ frame, else ksys_/__sys_, else the libc wrapper it came from), a user one by
    the dso of its leaf frame."""
    from benchmarks.cpusplit import KERNEL, USER, classify

    counts = classify(_PERF_SCRIPT)
    assert dict(counts) == {
        "send": 3, "waking the reader": 1, "recv": 2, "wait": 1, "other syscalls": 1,
        "page faults": 1, "interrupts and other kernel": 1,
        "python": 2, "C extensions": 2, "libc": 1, "other user": 1}
    assert sum(counts[c] for c in USER + KERNEL) == 15
    assert classify("") == {}


def test_cpu_split_keeps_the_measured_phase() -> None:
    """With a phase, only the samples whose time (perf script's time field) falls in it count."""
    from benchmarks.cpusplit import classify

    text = ("100.500000: \n\t  200000 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)\n\n"
            "101.000000: \n\t  200000 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)\n\n"
            "  101.250000: \n\tffffffff81c10100 __x64_sys_sendto ([kernel.kallsyms])\n"
            "\tffffffff8225aa01 do_syscall_64 ([kernel.kallsyms])\n\n"
            "102.500000: \n\t    9a10 parser_execute (/x/site-packages/parser.cpython-311.so)\n")
    assert classify(text, (101.0, 102.0)) == {"python": 1, "send": 1}
    assert classify(text) == {"python": 2, "send": 1, "C extensions": 1}
    assert classify(_PERF_SCRIPT, (0.0, 1e9)) == {}  # no times: nothing is known to be in it


def test_cpu_split_table_and_target_lines() -> None:
    """Samples per category as microseconds per request; the median of runs per category; a
    target whose two clients were measured as the peer's CPU per request over greenpool's."""
    from collections import Counter

    from benchmarks.cpusplit import median_split, per_request, table, target_lines

    # 1000 requests at 2000 samples a second: 2 samples are 1 us per request
    counts = Counter({"python": 40, "send": 20, "waking the reader": 4, "recv": 10, "libc": 2})
    gp = per_request(counts, 2000, 1000)
    assert gp["python"] == 20.0 and gp["libc"] == 1.0 and gp["send"] == 10.0
    assert gp["waking the reader"] == 2.0 and gp["wait"] == 0.0
    assert (gp["user"], gp["kernel"], gp["total"]) == (21.0, 15.0, 36.0)
    slow = dict(gp, python=50.0, total=66.0)
    fast = dict(gp, python=10.0, total=26.0)
    assert median_split([slow, gp, fast]) == gp
    peer = dict(gp, user=42.0, kernel=22.5, total=64.5)
    results = {"greenpool-httptools": gp, "geventhttpclient": peer}
    lines = table(results, "get-100B", 50)
    assert "greenpool-httptools" in lines[0] and "geventhttpclient" in lines[0]
    assert lines[1].split() == ["user", "python", "20.0", "20.0"]
    assert [ln.split()[:-2] for ln in lines[5:7]] == [["kernel", "send"], ["of", "which", "waking", "the", "reader"]]
    assert [ln.split() for ln in lines[-3:]] == [["total", "user", "21.0", "42.0"], ["kernel", "15.0", "22.5"],
                                                 ["total", "36.0", "64.5"]]
    assert target_lines(results, "get-100B", 50) == [
        "Targets, in CPU per request (the peer's over greenpool's):",
        "  HTTP/1.1 speedups >= 1.5x geventhttpclient: user 2.00x, kernel 1.50x, total 1.79x (target 1.5x)"]
    assert target_lines(results, "get-100B", 1) == []
    assert target_lines({"greenpool-httptools": gp}, "get-100B", 50) == []
    zero = dict(gp, kernel=0.0)
    assert "kernel n/a" in target_lines({"greenpool-httptools": zero, "geventhttpclient": peer},
                                        "get-100B", 50)[1]


def test_schedule_turns_the_order_and_repeats_target_cells() -> None:
    """Each repetition runs a cell's clients once, starting one further along; the cells a
    target compares (C=50 here) get target_reps repetitions, the rest reps."""
    from benchmarks.run import schedule

    plan = [("get-100B", 50, ["greenpool-h11", "raw-h11", "urllib3"]),
            ("get-100B", 1, ["greenpool-h11", "raw-h11"])]
    order = schedule(plan, reps=2, target_reps=4)
    target_runs = [(rep, name) for rep, i, name in order if i == 0]
    other_runs = [(rep, name) for rep, i, name in order if i == 1]
    assert [name for rep, name in target_runs if rep == 0] == ["greenpool-h11", "raw-h11", "urllib3"]
    assert [name for rep, name in target_runs if rep == 1] == ["raw-h11", "urllib3", "greenpool-h11"]
    assert [name for rep, name in target_runs if rep == 2] == ["urllib3", "greenpool-h11", "raw-h11"]
    assert [name for rep, name in target_runs if rep == 3] == ["greenpool-h11", "raw-h11", "urllib3"]
    assert len(target_runs) == 3 * 4 and len(other_runs) == 2 * 2
    assert {rep for rep, _ in other_runs} == {0, 1}
    # repetitions interleave: all of repetition 0 before any of repetition 1
    reps_in_order = [rep for rep, _, _ in order]
    assert reps_in_order == sorted(reps_in_order)
    # a cell with only one side of a target is not a target cell
    assert len(schedule([("get-100B", 50, ["greenpool-h11"])], reps=1, target_reps=5)) == 1


def test_instruction_target_lines() -> None:
    """A target whose two clients were counted is shown as the peer's count over greenpool's."""
    from benchmarks.instructions import target_lines

    lines = target_lines({"greenpool-h11": 500_000.0, "raw-h11": 450_000.0, "urllib3": 900_000.0},
                         "get-100B", 50)
    assert lines[0].startswith("Targets")
    assert any("raw h11" in ln and "met 0.90x" in ln for ln in lines), lines
    assert any("urllib3" in ln and "NOT met 1.80x" in ln for ln in lines), lines
    assert target_lines({"greenpool-h11": 500_000.0}, "get-100B", 50) == []
    assert target_lines({"greenpool-h11": 5.0, "raw-h11": 5.0}, "get-100B", 1) == []


def test_udp_relay_relays_and_drops() -> None:
    """benchmarks/udprelay.py (the HTTP/3 loss cell's relay, its own process): loss 0 relays
    every datagram both ways, loss 1 none; it ends when stopped."""
    import socket
    import threading

    from benchmarks.servers import Relay

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        echo.settimeout(0.2)
        while not stop.is_set():
            try:
                data, addr = echo.recvfrom(65536)
            except socket.timeout:
                continue
            echo.sendto(b"echo:" + data, addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    relays = [Relay(echo.getsockname()[1], 0.0), Relay(echo.getsockname()[1], 1.0)]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.settimeout(10)
        for i in range(50):
            client.sendto(b"%d" % i, ("127.0.0.1", relays[0].port))
            assert client.recvfrom(65536)[0] == b"echo:%d" % i
        client.settimeout(0.3)
        for i in range(5):
            client.sendto(b"%d" % i, ("127.0.0.1", relays[1].port))
        with pytest.raises(socket.timeout):
            client.recvfrom(65536)
    finally:
        for r in relays:
            r.stop()
        stop.set()
        t.join(5)
        client.close()
        echo.close()
    assert all(r.proc.returncode is not None for r in relays)


def test_harness_quick_h3_cells(tmp_path: Path) -> None:
    """The HTTP/3 cells end to end: Caddy and the relays started by the suite, greenpool's
    HTTP/3 and the raw qh3 floor measured, a target line for them."""
    pytest.importorskip("qh3")
    if shutil.which("caddy") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("caddy is required under CI")
        pytest.skip("caddy not installed")
    out = tmp_path / "bench.json"
    args = ["benchmarks", "--quick", "--clients", "greenpool-h3,raw-qh3,greenpool-h3-loss5",
            "--workloads", "h3-get-100B", "--requests", "300", "--no-micro", "--no-chart",
            "--out", str(out)]
    proc = _run(args, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = {r["client"]: r for r in doc["summary"]}
    assert set(rows) == {"greenpool-h3", "raw-qh3", "greenpool-h3-loss5"}
    for row in rows.values():
        assert row["status"] == "ok" and row["rps"] > 0, row
    verdicts = {t["target"]: t["verdict"] for t in doc["targets"]}
    assert verdicts["HTTP/3 >= 0.8x raw qh3 loop"] in ("met", "NOT met")
    assert verdicts["HTTP/3 5% loss each way >= 0.5x no loss"] == "not run"   # no relay row
