"""The command line (greenpool/__main__.py), run as a subprocess: output and exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

from fakes import refused_port

ROOT = Path(__file__).resolve().parent.parent


def cli(args: List[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "greenpool", *args], cwd=ROOT, env=env,
                          capture_output=True, timeout=timeout)


def test_demo():
    out = cli(["demo", "-n", "500", "-c", "20"])
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert "20 greenlets x 25 GETs" in text and "500 requests in" in text and "0 errors" in text
    stats = json.loads(text[text.index("{"):text.rindex("}") + 1])
    assert stats["name"] == "demo" and stats["created"] <= 20 and stats["in_use_count"] == 0


def test_get_include(gunicorn):
    out = cli(["get", gunicorn.url + "/echo?a=1", "-i", "-H", "X-Test: yes"])
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\n\n")
    assert head.startswith(b"HTTP/1.1 200 OK\n") and b"\ncontent-type: application/json" in head.lower()
    echo = json.loads(body)
    assert echo["method"] == "GET" and echo["args"] == {"a": "1"} and echo["headers"]["x-test"] == "yes"


def test_get_body_only_and_post_data(gunicorn):
    out = cli(["get", gunicorn.url + "/bytes/1000"])
    assert out.returncode == 0 and len(out.stdout) == 1000
    out = cli(["get", gunicorn.url + "/echo", "-d", "k=v", "-H", "Content-Type: text/plain"])
    echo = json.loads(out.stdout)
    assert echo["method"] == "POST" and echo["body"] == "k=v" and echo["headers"]["content-type"] == "text/plain"
    out = cli(["get", "-X", "PUT", gunicorn.url + "/echo", "-d", "x"])
    assert json.loads(out.stdout)["method"] == "PUT"


def test_get_follows_redirects_with_L(gunicorn):
    out = cli(["get", gunicorn.url + "/redirect/2", "-i"])
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.1 302")
    out = cli(["get", gunicorn.url + "/redirect/2", "-L"])
    assert out.returncode == 0 and json.loads(out.stdout)["path"] == "/echo"


def test_get_http2_prior_knowledge(nginx):
    out = cli(["get", "--http2", nginx.h2c_url + "/", "-i"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/2 200")
    assert out.stdout.endswith(nginx.small_body)


def test_get_https_insecure_and_untrusted(nginx):
    out = cli(["get", nginx.https_url + "/"])
    assert out.returncode == 2 and b"TLSError" in out.stderr and b"not trusted" in out.stderr
    out = cli(["get", "-k", "--http2", nginx.https_url + "/", "-i"])
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/2 200")


def test_get_exit_codes():
    out = cli(["get", "http://127.0.0.1:%d/" % refused_port()])
    assert out.returncode == 2 and out.stderr.startswith(b"greenpool: ConnectError:")
    assert b"Traceback" not in out.stderr
    out = cli(["get", "not a url"])
    assert out.returncode == 2 and b"greenpool:" in out.stderr and b"Traceback" not in out.stderr
    out = cli(["nosuchcommand"])
    assert out.returncode == 2 and b"usage:" in out.stderr


def test_get_http_error_status_is_22(gunicorn):
    out = cli(["get", gunicorn.url + "/status/404"])
    assert out.returncode == 22 and out.stdout == b"404\n"


def test_get_read_timeout(gunicorn):
    out = cli(["get", gunicorn.url + "/slow/3", "--timeout", "0.3"])
    assert out.returncode == 2 and b"ReadTimeout" in out.stderr


def test_bench(nginx):
    out = cli(["bench", nginx.http_url + "/", "-n", "200", "-c", "10"])
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert text.startswith("200 requests, 0 errors")
    for p in ("p50", "p90", "p99", "p100"):
        assert p in text
    assert "histogram (ms):" in text
    histogram = text[text.index("histogram (ms):"):text.index("<GreenPool")].splitlines()[1:]
    assert len(histogram) == 10 and sum(int(line.rsplit(" ", 1)[1]) for line in histogram) == 200
    assert "<GreenPool 'bench'" in text


def test_bench_http2(nginx):
    out = cli(["bench", nginx.h2c_url + "/", "-n", "200", "-c", "10", "--http2"])
    assert out.returncode == 0 and out.stdout.startswith(b"200 requests, 0 errors")


def test_bench_errors_exit_1():
    out = cli(["bench", "http://127.0.0.1:%d/" % refused_port(), "-n", "20", "-c", "4"])
    assert out.returncode == 1 and out.stdout.startswith(b"20 requests, 20 errors")


def test_console_script_entry_point_is_main():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["options.entry_points"]["console_scripts"].strip() == "greenpool = greenpool.__main__:main"
    from greenpool.__main__ import main
    assert callable(main)
