"""Run each example in examples/ as a subprocess against loopback servers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

import pytest

from servers import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def env(**extra: str) -> Dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e.pop("GUNICORN_CMD_ARGS", None)
    e.update(extra)
    return e


def run(args: List[str], timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env(**extra), capture_output=True,
                          text=True, timeout=timeout)


def fetch_json(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    last: Exception = RuntimeError("never answered")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            return fetch_json(url)
        except OSError as e:
            last = e
            time.sleep(0.1)
    out = ""
    if proc.poll() is not None and proc.stdout is not None:
        out = proc.stdout.read()
    raise AssertionError("%s did not answer: %r\n%s" % (url, last, out))


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout is not None else ""


def test_fanout(nginx):
    out = run([str(EXAMPLES / "fanout.py"), nginx.http_url + "/", "-n", "300", "-c", "20",
               "--max-connections", "5"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "300 requests in" in out.stdout and "statuses: {200: 300}" in out.stdout
    assert "errors: {}" in out.stdout
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["created"] <= 5 and stats["open"] <= 5
    assert "300/300" in out.stderr and "[####" in out.stderr  # the progress bar


def test_fanout_http2_prior_knowledge(nginx):
    out = run([str(EXAMPLES / "fanout.py"), nginx.h2c_url + "/", "-n", "200", "-c", "50", "--http2"])
    assert out.returncode == 0, out.stdout + out.stderr
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert "statuses: {200: 200}" in out.stdout and stats["created"] <= 2  # multiplexed


def test_fanout_reports_errors():
    out = run([str(EXAMPLES / "fanout.py"), "http://127.0.0.1:%d/" % free_port(), "-n", "10", "-c", "2",
               "--timeout", "2"])
    assert out.returncode == 1
    assert "ConnectError" in out.stdout


def test_wsgi_app(gunicorn):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "wsgi_app.py"), "--port", str(port)],
                            cwd=ROOT, env=env(UPSTREAM_URL=gunicorn.url + "/echo"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = "http://127.0.0.1:%d" % port
        assert wait_for(base + "/", proc)["status"] == 200
        many = fetch_json(base + "/many?n=30")
        assert many["calls"] == 30 and many["statuses"] == [200]
        assert many["pool"]["open"] <= 10 and many["pool"]["in_use_count"] == 0
        assert fetch_json(base + "/stats")["created"] >= 1
    finally:
        out = stop(proc, signal.SIGINT)
    assert "serving on" in out


def test_gunicorn_app(gunicorn, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn.conf.py"),
         "--chdir", str(EXAMPLES), "--worker-tmp-dir", str(tmp_path), "--no-control-socket",
         "gunicorn_app:app"],
        cwd=ROOT, env=env(UPSTREAM_URL=gunicorn.url, BIND="127.0.0.1:%d" % port, WORKERS="1",
                          PREWARM="3"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = "http://127.0.0.1:%d" % port
        stats = wait_for(base + "/stats", proc)
        deadline = time.monotonic() + 5
        while stats["pool"]["created"] < 3 and time.monotonic() < deadline:  # prewarm in the background
            time.sleep(0.05)
            stats = fetch_json(base + "/stats")
        assert stats["pool"]["name"] == "upstream" and stats["pool"]["created"] == 3
        assert stats["pool"]["free_count"] == 3
        r = fetch_json(base + "/")
        assert r == {"http_version": "HTTP/1.1", "upstream_bytes": 3, "upstream_status": 200}
        assert fetch_json(base + "/fanout?n=50") == {"calls": 50, "statuses": [200]}
        stats = fetch_json(base + "/stats")["pool"]
        assert stats["in_use_count"] == 0 and stats["open"] <= 20 and stats["reused"] >= 1
    finally:
        stop(proc, signal.SIGINT)


def test_redis_example(redis):
    out = run([str(EXAMPLES / "redis_example.py"), "10", "20"], REDIS_URL=redis.url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "200 INCRs from 10 greenlets" in out.stdout and "counter = 200" in out.stdout


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_test(name):
    tested = {"fanout.py", "wsgi_app.py", "gunicorn_app.py", "gunicorn.conf.py", "redis_example.py"}
    assert name in tested, "add a test for examples/%s to tests/test_examples.py" % name
