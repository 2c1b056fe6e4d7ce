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
    """benchmarks.instructions: the worker under callgrind twice, a positive count per request."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")
    if shutil.which("nginx") is None and shutil.which("nginx", path="/usr/sbin:/usr/local/sbin") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is required under CI")
        pytest.skip("nginx not installed")
    proc = _run(["benchmarks.instructions", "raw-httptools", "--concurrency", "2",
                 "--small", "20", "--large", "60"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("raw-httptools")]
    assert line and "instructions/request" in line[0], proc.stdout
    count = float(line[0].split()[-2])
    assert 1_000 < count < 10_000_000, line   # a bare httptools exchange: tens of thousands


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
