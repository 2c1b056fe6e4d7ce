"""The command line (greenpool/__main__.py, greenpool/cli/), run as a subprocess: output,
one-line errors and exit codes."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from fakes import refused_port

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def cli(args: List[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "greenpool", *args], cwd=ROOT, env=_env(),
                          timeout=timeout, **kw)


def popen(args: List[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "greenpool", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stats(text: str) -> dict:
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def test_demo():
    out = cli(["demo", "-n", "500", "-c", "20"])
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert "500 GETs from 20 greenlets" in text and "500 requests in" in text and "0 errors" in text
    stats = _stats(text)
    assert stats["name"] == "demo" and stats["created"] <= 20 and stats["in_use_count"] == 0


@pytest.mark.parametrize("n, c, greenlets", [(10, 200, 10), (7, 3, 3), (1, 1, 1)])
def test_demo_runs_exactly_n_requests(n, c, greenlets):
    out = cli(["demo", "-n", str(n), "-c", str(c)])
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert "%d GETs from %d greenlets" % (n, greenlets) in text
    assert "\n%d requests in " % n in text
    stats = _stats(text)
    assert stats["created"] + stats["reused"] == n and stats["created"] <= greenlets


def test_demo_shows_progress_with_rate_and_eta():
    out = cli(["demo", "-n", "300", "-c", "10", "--progress", "30"])
    assert out.returncode == 0, out.stderr
    # the final state is always drawn; not a terminal: plain lines
    last = out.stderr.decode().splitlines()[-1]
    assert re.fullmatch(r"\[#{30}\] 300/300  \d+ req/s  ETA 0\.0s", last), last


def test_progress_on_a_terminal_is_one_line_redrawn():
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "greenpool", "demo", "-n", "200", "-c", "5"],
                                cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = -1
        got = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            got += chunk
        proc.communicate(timeout=60)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert proc.returncode == 0
    assert got.startswith(b"\r[") and b"\x1b[K" in got and got.rstrip().endswith(b"ETA 0.0s\x1b[K")
    assert b"\n[" not in got   # redrawn in place, not a line per update


BAD_INPUTS = [
    (["get", "-H", "X-Foo", "http://127.0.0.1:1/"], "greenpool get: error: argument -H/--header: 'X-Foo'"),
    (["get", "-H", ": v", "http://127.0.0.1:1/"], "argument -H/--header"),
    (["get", "not a url"], "argument url"),
    (["get", "ftp://127.0.0.1/"], "argument url"),
    (["get", "--timeout", "0", "http://127.0.0.1:1/"], "argument --timeout: must be a number of seconds"),
    (["get", "--cacert", "/no/such/ca.pem", "http://127.0.0.1:1/"], "--cacert /no/such/ca.pem: no such file"),
    (["get", "-k", "--cacert", __file__, "https://127.0.0.1:1/"], "contradict"),
    (["demo", "-c", "0"], "greenpool demo: error: argument -c/--greenlets: must be at least 1, not 0"),
    (["demo", "-c", "-5"], "argument -c/--greenlets: must be at least 1, not -5"),
    (["demo", "-n", "0"], "argument -n/--requests"),
    (["demo", "-n", "ten"], "argument -n/--requests: 'ten' is not a whole number"),
    (["demo", "--max-connections", "0"], "argument --max-connections: must be at least 1"),
    (["demo", "--progress", "-1"], "argument --progress"),
    (["bench", "-c", "0", "http://127.0.0.1:1/"], "greenpool bench: error: argument -c/--concurrency"),
    (["bench", "-n", "-3", "http://127.0.0.1:1/"], "argument -n/--requests"),
    (["bench", "--timeout", "-1", "http://127.0.0.1:1/"], "argument --timeout: must be a number of seconds"),
    (["bench", "--timeout", "nan", "http://127.0.0.1:1/"], "argument --timeout"),
    (["bench", "http://127.0.0.1:1/", "-H", "nocolon"], "argument -H/--header"),
    (["bench"], "the following arguments are required: url"),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ([], "choose a command"),
    (["get", "http://127.0.0.1:1/", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) or "(none)" for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(args, message):
    out = cli(args, timeout=60)
    err = out.stderr.decode()
    assert out.returncode == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert message in err and "Traceback" not in err
    assert out.stdout == b""


def test_help_is_plain_text_with_every_flag_and_its_default():
    from greenpool.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in [("", parser)] + sorted(sub.choices.items()):
        out = cli(([name] if name else []) + ["--help"])
        text = out.stdout.decode()
        assert out.returncode == 0 and text.startswith("usage: greenpool")
        assert "``" not in text and ":class:" not in text and ":func:" not in text
        flat = " ".join(text.split())
        for action in p._actions:
            assert action.help, (name, action.dest)
            if action.option_strings:
                assert action.option_strings[-1] in text
            if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
                assert "(default: %s)" % action.default in flat, (name, action.dest)
    assert "(default: 1000)" in cli(["bench", "--help"]).stdout.decode()


def test_version():
    import greenpool

    out = cli(["--version"])
    assert out.returncode == 0 and out.stdout.decode().startswith("greenpool %s (Python " % greenpool.__version__)


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
    assert out.returncode == 2 and out.stderr.startswith(b"greenpool: TLSError: ") and b"not trusted" in out.stderr
    assert out.stderr.endswith(b"; on the command line: --cacert FILE, or -k to skip verification\n")
    assert out.stderr.count(b"\n") == 1
    out = cli(["get", "-k", "--http2", nginx.https_url + "/", "-i"])
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/2 200")


def test_get_exit_codes():
    out = cli(["get", "http://127.0.0.1:%d/" % refused_port()])
    assert out.returncode == 2 and out.stderr.startswith(b"greenpool: ConnectError:")
    assert b"Traceback" not in out.stderr and out.stderr.count(b"\n") == 1


def test_get_http_error_status_is_22(gunicorn):
    out = cli(["get", gunicorn.url + "/status/404"])
    assert out.returncode == 22 and out.stdout == b"404\n"


def test_get_read_timeout(gunicorn):
    out = cli(["get", gunicorn.url + "/slow/3", "--timeout", "0.3"])
    err = out.stderr.decode()
    # the seconds the socket waited: the read timeout, lowered to what the total deadline left
    m = re.fullmatch(r"greenpool: ReadTimeout: no data from 127\.0\.0\.1:%d within the read timeout "
                     r"\((0\.\d+)s\)\n" % gunicorn.port, err)
    assert out.returncode == 2 and m and 0 < float(m.group(1)) <= 0.3, err


def test_get_refused_ipv6_is_bracketed():
    s = socket.socket(socket.AF_INET6)
    try:
        s.bind(("::1", 0))
    except OSError:
        s.close()
        pytest.skip("no IPv6 loopback")
    port = s.getsockname()[1]
    s.close()
    out = cli(["get", "http://[::1]:%d/" % port])
    assert out.returncode == 2
    assert out.stderr.decode() == ("greenpool: ConnectError: connection to [::1]:%d refused: is the server "
                                   "running?\n" % port)


def test_get_into_a_closed_pipe_ends_quietly(nginx):
    r, w = os.pipe()
    os.close(r)
    try:
        out = cli(["get", "-i", nginx.http_url + "/"], stdout=w, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(w)
    assert out.returncode == 141 and out.stderr == b""


def test_get_ctrl_c_is_one_line_and_130():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    lst.settimeout(60)
    proc = popen(["get", "http://127.0.0.1:%d/" % lst.getsockname()[1]])
    try:
        conn, _ = lst.accept()        # the request is on its way: the client now waits for an answer
        try:
            conn.settimeout(60)
            assert conn.recv(65536).startswith(b"GET / HTTP/1.1")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            conn.close()
    finally:
        lst.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and err == b"greenpool: interrupted\n" and out == b""


def test_get_cacert_and_insecure(nginx, tls):
    out = cli(["get", "--cacert", str(tls.ca_path), nginx.https_url + "/"])
    assert out.returncode == 0 and out.stdout == nginx.small_body, out.stderr
    out = cli(["get", "-k", nginx.https_url + "/"])
    assert out.returncode == 0 and out.stdout == nginx.small_body


def test_bench(nginx):
    out = cli(["bench", nginx.http_url + "/", "-n", "200", "-c", "10"])
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert text.startswith("200 requests, 0 errors") and "\nstatus: 2xx 200\n" in text
    assert re.fullmatch(r"\[#{30}\] 200/200  \d+ req/s  ETA 0\.0s\n", out.stderr.decode())
    for p in ("p50", "p90", "p99", "p100"):
        assert p in text
    assert "histogram (ms):" in text
    histogram = text[text.index("histogram (ms):"):text.index("<GreenPool")].splitlines()[1:]
    assert len(histogram) == 10 and sum(int(line.rsplit(" ", 1)[1]) for line in histogram) == 200
    assert "<GreenPool 'bench'" in text


def test_bench_http2(nginx):
    out = cli(["bench", nginx.h2c_url + "/", "-n", "200", "-c", "10", "--http2"])
    assert out.returncode == 0 and out.stdout.startswith(b"200 requests, 0 errors")


def test_bench_errors_exit_1_and_say_which():
    port = refused_port()
    out = cli(["bench", "http://127.0.0.1:%d/" % port, "-n", "20", "-c", "4", "--progress", "0"])
    text = out.stdout.decode()
    assert out.returncode == 1 and text.startswith("20 requests, 20 errors") and out.stderr == b""
    assert "\nstatus: none\n" in text
    assert ("\nerror: ConnectError x20, e.g.: connection to 127.0.0.1:%d refused: is the server running?\n"
            % port) in text


def test_bench_counts_status_classes_and_4xx_exits_1(nginx):
    out = cli(["bench", nginx.http_url + "/no/such/file", "-n", "30", "-c", "3"])
    text = out.stdout.decode()
    assert out.returncode == 1 and text.startswith("30 requests, 0 errors"), text
    assert "\nstatus: 4xx 30\n" in text and "error:" not in text


def test_bench_tls_untrusted_cacert_and_insecure(nginx, tls):
    out = cli(["bench", nginx.https_url + "/", "-n", "6", "-c", "2"])
    text = out.stdout.decode()
    assert out.returncode == 1 and "\nerror: TLSError x6, e.g.: TLS certificate of " in text, text
    assert "--cacert FILE, or -k" in text
    out = cli(["bench", nginx.https_url + "/", "-n", "6", "-c", "2", "--cacert", str(tls.ca_path)])
    assert out.returncode == 0 and "\nstatus: 2xx 6\n" in out.stdout.decode(), out.stdout + out.stderr
    out = cli(["bench", nginx.https_url + "/", "-n", "6", "-c", "2", "-k", "--http2"])
    assert out.returncode == 0 and "\nstatus: 2xx 6\n" in out.stdout.decode()


def interrupt_once_running(args):
    """Start the CLI with ``args`` (100,000,000 requests, progress on stderr), send SIGINT
    once a request has completed; return (exit code, stdout text, stderr bytes)."""
    proc = popen(args + ["-n", "100000000", "-c", "4", "--progress", "0.05"])
    try:
        assert proc.stderr is not None
        while True:   # wait until requests are completing
            line = proc.stderr.readline().decode()
            assert line, "%s ended early" % args[0]
            m = re.match(r"\[#*\s*\] (\d+)/100000000 ", line)
            if m and int(m.group(1)) > 0:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(), err


def test_bench_ctrl_c_prints_the_partial_summary_and_exits_130(nginx):
    code, text, err = interrupt_once_running(["bench", nginx.http_url + "/"])
    assert code == 130, text + err.decode()
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err
    m = re.match(r"interrupted: (\d+) of 100000000 requests completed\n(\d+) requests, 0 errors, ", text)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) > 0, text
    assert "\nstatus: 2xx %s\n" % m.group(1) in text
    assert "<GreenPool 'bench'" in text


def test_console_script_entry_point_is_main():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["options.entry_points"]["console_scripts"].strip() == "greenpool = greenpool.__main__:main"
    from greenpool.__main__ import main
    assert callable(main)


def test_demo_ctrl_c_prints_the_partial_summary_and_exits_130():
    code, text, err = interrupt_once_running(["demo"])
    assert code == 130, text + err.decode()
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err
    m = re.search(r"\ninterrupted: (\d+) of 100000000 requests completed\n(\d+) requests in ", text)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) > 0, text
    stats = _stats(text)
    assert stats["in_use_count"] == 0 and stats["open"] == stats["free_count"]
