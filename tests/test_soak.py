"""The short soak of issue 7 (the 10-minute one is ``python tools/soak.py``): 35 s of mixed
HTTP/1.1 + HTTP/2 + Redis traffic on loopback, in a child process; RSS, fds and greenlets
must be flat after a 10 s warm-up, every answer the caller's own, the books exact."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "tools" / "soak.py"


@pytest.mark.slow
def test_short_soak(tmp_path):
    pytest.importorskip("h2")
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--duration", "35", "--warmup", "10", "--concurrency", "40",
         "--max-rss-growth-mb", "12", "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert out.exists(), proc.stdout + proc.stderr
    summary = json.loads(out.read_text())["summary"]
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert summary["wrong_answers"] == 0 and summary["books_exact"], summary
    assert summary["requests"] > 10_000, summary
    assert summary["growth"]["fds"] <= 5 and summary["growth"]["greenlets"] <= 20, summary
