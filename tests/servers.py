"""Real servers on loopback for the interop tests.

This module owns every server process the test suite starts: nginx, gunicorn (gevent worker,
serving ``tests/apps/wsgi_app.py``), hypercorn (serving ``tests/apps/asgi_app.py``), nghttpd
and redis-server, plus the certificates they present (:class:`TLS`).

Rules it keeps:

- Everything binds to 127.0.0.1 on a free port (:func:`free_port`) and lives in a directory
  the caller gives it (a pytest tmp dir). Nothing here contacts any other address.
- A server is *ready* when :meth:`Server.start` returns: the port answers (for HTTP servers,
  a real ``GET`` got a status line). Start-up is expected to take well under 2 seconds; a
  server that exits or does not answer within ``start_timeout`` raises :class:`ServerError`
  carrying the tail of its log. A start that lost a race for its port is retried on new ports.
- A server never outlives the test process. Each one runs in its own session (process group)
  with ``PR_SET_PDEATHSIG=SIGKILL`` on its leader; :meth:`Server.stop` signals the whole group
  and SIGKILLs whatever is left; an ``atexit`` hook stops every server still running. Multi
  process servers (gunicorn) have workers that exit when their parent changes.
- A missing binary skips the test with a message, except under ``CI=true`` where it fails:
  CI must never silently skip the interop suite.

Stdout and stderr of each server go to ``<dir>/<name>.log`` (:meth:`Server.log`); the
conftest attaches the tail of that log to the report of a failing test.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import pytest

HOST = "127.0.0.1"
APPS_DIR = Path(__file__).resolve().parent / "apps"

#: The body nginx and nghttpd serve at ``/``: exactly 100 bytes.
SMALL_BODY = (b"greenpool test body " * 5)[:99] + b"\n"
assert len(SMALL_BODY) == 100

#: Static files served by nginx and nghttpd, path -> size. Content is :func:`pattern`.
STATIC_FILES = {"/bytes/64k": 64 * 1024, "/bytes/1m": 1024 * 1024}

_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class ServerError(RuntimeError):
    """A server failed to start or to stop; the message carries the tail of its log."""


def pattern(n: int) -> bytes:
    """The deterministic body of ``n`` bytes used by every ``/bytes`` endpoint: 0..255 cycled."""
    block = bytes(range(256))
    return (block * (n // 256 + 1))[:n]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def missing(message: str) -> None:
    """Skip the test, or fail it under ``CI=true``: a CI run must not skip interop tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: interop servers are required)", pytrace=False)
    pytest.skip(message)


def find_binary(name: str, package: str) -> str:
    """The path of a server binary, looking in PATH and the sbin directories too."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))
    if path is None:
        missing(f"{name} not found: install the Debian package {package!r} (see .ci/run)")
        raise AssertionError("unreachable")  # for type checkers; missing() raises
    return path


def require_module(module: str, dist: str) -> None:
    """Skip (or fail under CI) when a Python server package is not importable."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        missing(f"{module} is not installed: pip install {dist} (it is in the 'test' extra)")


# --------------------------------------------------------------------------------------------
# Process life: parent-death signal, process groups, and an atexit safety net

_PR_SET_PDEATHSIG = 1
_LIVE: Dict[int, "Server"] = {}


def _libc() -> Optional[Any]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _preexec_die_with_parent(parent_pid: int,
                             sig: int = signal.SIGKILL) -> Callable[[], None]:
    # Runs in the child between fork and exec. PDEATHSIG survives exec (not for set-uid
    # binaries, which ours are not) and fires when the forking *thread* of the parent dies;
    # servers are started from the main thread. The getppid() check closes the race where
    # the parent died before prctl ran.
    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE.values()):
        try:
            server.stop(timeout=1.0)
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


def group_guard(cmd: List[str]) -> List[str]:
    """Wrap a server whose workers ignore their master's death (nginx with a master process).

    The wrapping shell leads the process group; on SIGTERM (its parent-death signal, or a
    stop) it SIGKILLs the whole group, itself included.
    """
    return ["/bin/sh", "-c", 'trap "kill -KILL 0" TERM; "$@" & wait', "group-guard", *cmd]


def _http_probe(port: int, *, timeout: float = 1.0, tls: Optional[ssl.SSLContext] = None) -> bool:
    """True when a GET / on the port returns an HTTP status line."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if tls is not None:
                sock = tls.wrap_socket(raw, server_hostname=HOST)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.")
    except (OSError, ssl.SSLError):
        return False


def _tcp_probe(port: int, *, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# The Server base


class Server:
    """One server process bound to 127.0.0.1.

    Subclasses say which ports they need (:attr:`port_names`), write their config
    (:meth:`prepare`), build the command line (:meth:`command`) and say when they are ready
    (:meth:`ready`). Ports are picked once; :meth:`restart` keeps them.
    """

    name = "server"
    #: names of the ports this server listens on; ``self.ports[name]`` after construction
    port_names: Sequence[str] = ("port",)
    #: signal for a quick shutdown; the whole process group gets it
    stop_signal = signal.SIGTERM
    #: send stop_signal to the whole group (False: to the leader only, which stops its workers)
    stop_group = True
    #: what the leader gets when the test process dies (see :func:`group_guard`)
    death_signal = signal.SIGKILL
    start_timeout = 15.0
    #: log lines meaning the port was taken between free_port() and bind()
    _bind_errors: Tuple[str, ...] = (
        "Address already in use", "EADDRINUSE", "Connection in use", "bind()")

    def __init__(self, directory: Union[str, Path], ports: Optional[Dict[str, int]] = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fixed_ports = ports is not None
        self.ports: Dict[str, int] = dict(ports) if ports else self._pick_ports()
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log_path = self.dir / f"{self.name}.log"
        self.starts = 0

    # -- what subclasses provide ---------------------------------------------------------

    def command(self) -> List[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files; called before every start (ports may have changed)."""

    def ready(self) -> bool:
        return _tcp_probe(self.port)

    def env(self) -> Dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Path:
        return self.dir

    # -- common API ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.ports[self.port_names[0]]

    @property
    def host(self) -> str:
        return HOST

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "Server":
        """Start and wait until the server answers; retried on new ports if one was taken."""
        if self.running:
            return self
        attempts = 1 if self._fixed_ports or self.starts else 3
        for attempt in range(attempts):
            try:
                self._start_once()
                return self
            except ServerError as exc:
                lost_race = any(e in str(exc) for e in self._bind_errors)
                if not lost_race or attempt == attempts - 1:
                    raise
                self.ports = self._pick_ports()
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the whole process group: :attr:`stop_signal`, then SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None:
            return
        _LIVE.pop(id(self), None)
        if proc.poll() is None:
            if self.stop_group:
                self._signal_group(self.stop_signal)
            else:
                proc.send_signal(self.stop_signal)
            if not self._wait_exit(proc, timeout):
                self._signal_group(signal.SIGKILL)
        # The leader has exited but is not reaped yet, so its pid (= the group id) cannot
        # have been reused: kill any worker still in the group, then reap.
        self._signal_group(signal.SIGKILL)
        proc.wait()
        self.proc = None

    def restart(self, *, downtime: float = 0.0) -> "Server":
        """Stop and start again on the same ports (clients see their connections drop)."""
        self.stop()
        if downtime:
            time.sleep(downtime)
        return self.start()

    def kill(self) -> None:
        """SIGKILL the server (no graceful close), as a crash would."""
        if self.running:
            self._signal_group(signal.SIGKILL)
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        ports = " ".join(f"{k}={v}" for k, v in self.ports.items())
        return f"<{type(self).__name__} {ports} {state}>"

    # -- internals -----------------------------------------------------------------------

    def _pick_ports(self) -> Dict[str, int]:
        ports: Dict[str, int] = {}
        while len(ports) < len(self.port_names):
            p = free_port()
            if p not in ports.values():
                ports[self.port_names[len(ports)]] = p
        return ports

    def _start_once(self) -> None:
        self.prepare()
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts + 1}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.cwd()),
                env=self.env(),
                start_new_session=True,
                close_fds=True,
                preexec_fn=_preexec_die_with_parent(os.getpid(), self.death_signal),
            )
        _LIVE[id(self)] = self
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise ServerError(f"{self.name} exited with {code} while starting; log:\n"
                                  f"{self.log_tail()}")
            if self.ready() and self._listens_on_its_ports():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"{self.name} did not answer on {self.ports} within "
                                  f"{self.start_timeout}s; log:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _listens_on_its_ports(self) -> bool:
        """True when this server's processes hold every port (not a stranger that took one)."""
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil is in the test extra
            return True
        assert self.proc is not None
        try:
            leader = psutil.Process(self.proc.pid)
            family = [leader, *leader.children(recursive=True)]
            listening: Set[int] = set()
            for member in family:
                conns = (member.net_connections(kind="tcp")
                         if hasattr(member, "net_connections") else member.connections("tcp"))
                listening.update(c.laddr[1] for c in conns if c.status == psutil.CONN_LISTEN)
        except psutil.Error:
            return False
        return set(self.ports.values()) <= listening

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover - group gone and pid reused elsewhere
            pass

    @staticmethod
    def _wait_exit(proc: "subprocess.Popen[bytes]", timeout: float) -> bool:
        """Wait for the leader to exit *without reaping it* (WNOWAIT)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True
            if info is not None and info.si_pid == proc.pid:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# TLS material


class TLS:
    """A trustme CA and the server certificates the tests need, written to ``directory``.

    - ``ca_path``: the CA bundle; pass it as ``verify=`` (or ``cafile=``) in clients.
    - ``cert_path``/``key_path``: valid for ``localhost``, ``127.0.0.1`` and ``::1``.
    - ``expired_cert_path``/``expired_key_path``: same names, expired yesterday.
    - ``wrong_host_cert_path``/``wrong_host_key_path``: valid, but only for
      ``wrong.host.invalid``.
    - ``untrusted_cert_path``/``untrusted_key_path``: valid names, signed by another CA that
      is not in ``ca_path``.
    """

    HOSTNAMES = ("localhost", "127.0.0.1", "::1")
    WRONG_HOST = "wrong.host.invalid"

    def __init__(self, directory: Union[str, Path]):
        import trustme

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="greenpool tests")
        now = datetime.datetime.now(datetime.timezone.utc)
        leafs = {
            "server": self.ca.issue_cert(*self.HOSTNAMES),
            "expired": self.ca.issue_cert(
                *self.HOSTNAMES,
                not_before=now - datetime.timedelta(days=30),
                not_after=now - datetime.timedelta(days=1),
            ),
            "wrong_host": self.ca.issue_cert(self.WRONG_HOST),
            "untrusted": trustme.CA(organization_name="not trusted").issue_cert(*self.HOSTNAMES),
        }
        self.ca_path = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self.paths: Dict[str, Tuple[Path, Path]] = {}
        for name, leaf in leafs.items():
            cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
            leaf.private_key_pem.write_to_path(str(key))
            cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
            self.paths[name] = (cert, key)
        self.cert_path, self.key_path = self.paths["server"]
        self.expired_cert_path, self.expired_key_path = self.paths["expired"]
        self.wrong_host_cert_path, self.wrong_host_key_path = self.paths["wrong_host"]
        self.untrusted_cert_path, self.untrusted_key_path = self.paths["untrusted"]

    @property
    def ca_bundle(self) -> str:
        return str(self.ca_path)

    def client_context(self, alpn: Optional[Sequence[str]] = None) -> ssl.SSLContext:
        """A stdlib client context trusting only the test CA (optionally offering ALPN)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx

    def server_context(self, which: str = "server") -> ssl.SSLContext:
        cert, key = self.paths[which]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        return ctx


# --------------------------------------------------------------------------------------------
# nginx


def _write_static(docroot: Path) -> None:
    (docroot / "bytes").mkdir(parents=True, exist_ok=True)
    (docroot / "index.html").write_bytes(SMALL_BODY)
    for path, size in STATIC_FILES.items():
        target = docroot / path.lstrip("/")
        if not target.exists() or target.stat().st_size != size:
            target.write_bytes(pattern(size))
    data = {"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b", "c"]} for i in range(64)]}
    import json

    (docroot / "data.json").write_text(json.dumps(data))


class Nginx(Server):
    """nginx, one process (``master_process off``) with several listeners.

    ==================  =============================================================
    ``http_url``        plain HTTP/1.1
    ``https_url``       TLS, ALPN ``h2`` + ``http/1.1`` (alias ``h2_tls_url``)
    ``https_h1_url``    TLS, ALPN ``http/1.1`` only (no h2 on that port)
    ``h2c_url``         cleartext HTTP/2 with prior knowledge only (``h2c_port``)
    ``expired_url``     TLS with an expired certificate
    ``wrong_host_url``  TLS with a certificate for ``wrong.host.invalid``
    ``untrusted_url``   TLS with a certificate from a CA not in ``tls.ca_path``
    ==================  =============================================================

    Locations on every listener: ``/`` (:data:`SMALL_BODY`, 100 bytes), ``/bytes/64k`` and
    ``/bytes/1m`` (static, :func:`pattern`), ``/data.json`` (gzip when asked),
    ``/close`` (answers with ``Connection: close``), ``/status/<code>`` for common codes,
    ``/redirect`` (302 to ``/``), ``/upload`` (POST, body discarded, ``ok``).

    ``conf`` entries become ``http``-level directives (``keepalive_timeout="1s"``,
    ``keepalive_requests=3``, ``http2_max_concurrent_streams=100`` …); ``extra_http`` and
    ``extra_server`` are raw text; ``workers=N`` (N > 1) runs a master and N workers.
    """

    name = "nginx"
    port_names = ("http", "https", "https_h1", "h2c", "expired", "wrong_host", "untrusted")
    STATUS_CODES = (200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504)

    def __init__(self, directory: Union[str, Path], tls: TLS, *, workers: int = 1,
                 extra_http: str = "", extra_server: str = "", **conf: Any):
        self.binary = find_binary("nginx", "nginx")
        self.tls = tls
        self.workers = workers
        self.extra_http = extra_http
        self.extra_server = extra_server
        self.conf = conf
        super().__init__(directory)
        self.docroot = self.dir / "html"
        self.conf_path = self.dir / "nginx.conf"
        if workers > 1:  # nginx workers outlive a SIGKILLed master: guard the group
            self.death_signal = signal.SIGTERM

    # URLs -----------------------------------------------------------------------------
    http_port = property(lambda self: self.ports["http"])
    https_port = property(lambda self: self.ports["https"])
    h2_tls_port = https_port
    https_h1_port = property(lambda self: self.ports["https_h1"])
    h2c_port = property(lambda self: self.ports["h2c"])
    http_url = property(lambda self: f"http://{HOST}:{self.ports['http']}")
    https_url = property(lambda self: f"https://{HOST}:{self.ports['https']}")
    h2_tls_url = https_url
    https_h1_url = property(lambda self: f"https://{HOST}:{self.ports['https_h1']}")
    h2c_url = property(lambda self: f"http://{HOST}:{self.ports['h2c']}")
    expired_url = property(lambda self: f"https://{HOST}:{self.ports['expired']}")
    wrong_host_url = property(lambda self: f"https://{HOST}:{self.ports['wrong_host']}")
    untrusted_url = property(lambda self: f"https://{HOST}:{self.ports['untrusted']}")
    url = http_url

    small_body = SMALL_BODY

    def file_bytes(self, path: str) -> bytes:
        """The exact bytes nginx serves for a static path such as ``/bytes/64k``."""
        return (self.docroot / path.lstrip("/")).read_bytes()

    def prepare(self) -> None:
        _write_static(self.docroot)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render())

    def render(self) -> str:
        t = self.tls
        http_directives = "\n".join(f"    {k} {v};" for k, v in self.conf.items())
        body = SMALL_BODY.decode().replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        statuses = "\n".join(
            f"        location = /status/{c} {{ return {c}"
            + ("" if c in (204, 304) or 300 <= c < 400 else f' "{c}\\n"')
            + (" /" if 300 <= c < 304 else "")
            + "; }"
            for c in self.STATUS_CODES
        )
        locations = f"""
        root {self.docroot};
        location = / {{ default_type text/plain; return 200 "{body}"; }}
        location /bytes/ {{ default_type application/octet-stream; }}
        location = /data.json {{ default_type application/json; }}
        location = /close {{
            keepalive_timeout 0; default_type text/plain; return 200 "closing\\n";
        }}
        location = /redirect {{ return 302 /; }}
        location = /upload {{
            client_max_body_size 64m; default_type text/plain; return 200 "ok\\n";
        }}
{statuses}
{self.extra_server}"""

        def server(listen: str, cert_key: Optional[Tuple[Path, Path]] = None) -> str:
            tls_lines = ""
            if cert_key is not None:
                tls_lines = (f"        ssl_certificate {cert_key[0]};\n"
                             f"        ssl_certificate_key {cert_key[1]};\n")
            return (f"    server {{\n        listen {HOST}:{listen};\n"
                    f"{tls_lines}{locations}\n    }}\n")

        p = self.ports
        master = "on" if self.workers > 1 else "off"
        return f"""# generated by tests/servers.py
daemon off;
master_process {master};
worker_processes {self.workers};
pid {self.dir / 'nginx.pid'};
error_log stderr warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {self.dir / 'tmp/body'};
    proxy_temp_path {self.dir / 'tmp/proxy'};
    fastcgi_temp_path {self.dir / 'tmp/fastcgi'};
    uwsgi_temp_path {self.dir / 'tmp/uwsgi'};
    scgi_temp_path {self.dir / 'tmp/scgi'};
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    server_tokens off;
    gzip on;
    gzip_min_length 100;
    gzip_types application/json text/plain;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
{http_directives}
{self.extra_http}
{server(str(p['http']))}
{server(f"{p['https']} ssl http2", (t.cert_path, t.key_path))}
{server(f"{p['https_h1']} ssl", (t.cert_path, t.key_path))}
{server(f"{p['h2c']} http2")}
{server(f"{p['expired']} ssl", (t.expired_cert_path, t.expired_key_path))}
{server(f"{p['wrong_host']} ssl", (t.wrong_host_cert_path, t.wrong_host_key_path))}
{server(f"{p['untrusted']} ssl", (t.untrusted_cert_path, t.untrusted_key_path))}
}}
"""

    def command(self) -> List[str]:
        cmd = [self.binary, "-p", str(self.dir), "-c", str(self.conf_path), "-e", "stderr"]
        return group_guard(cmd) if self.workers > 1 else cmd

    def ready(self) -> bool:
        return _http_probe(self.ports["http"]) and _tcp_probe(self.ports["untrusted"])


# --------------------------------------------------------------------------------------------
# gunicorn + WSGI app


class Gunicorn(Server):
    """gunicorn with the gevent worker serving ``tests/apps/wsgi_app.py`` (``url``)."""

    name = "gunicorn"
    stop_signal = signal.SIGINT  # quick shutdown (TERM is graceful)
    stop_group = False  # the arbiter stops its workers; signalled directly they log tracebacks

    def __init__(self, directory: Union[str, Path], *, workers: int = 2,
                 worker_class: str = "gevent", keepalive: float = 5,
                 app: str = "wsgi_app:app", extra_args: Sequence[str] = ()):
        require_module("gunicorn", "gunicorn")
        if worker_class == "gevent":
            require_module("gevent", "gevent")
        self.workers = workers
        self.worker_class = worker_class
        self.keepalive = keepalive
        self.app = app
        self.extra_args = list(extra_args)
        super().__init__(directory)
        self.state_dir = self.dir / "state"

    url = property(lambda self: f"http://{HOST}:{self.port}")

    def prepare(self) -> None:
        self.state_dir.mkdir(exist_ok=True)

    def cwd(self) -> Path:
        return APPS_DIR

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.pop("GUNICORN_CMD_ARGS", None)
        env["GREENPOOL_TEST_STATE"] = str(self.state_dir)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APPS_DIR), env.get("PYTHONPATH")]))
        return env

    def command(self) -> List[str]:
        return [
            sys.executable, "-m", "gunicorn",
            # the app module doubles as the config module: it defines pre_request (/close)
            "-c", "python:wsgi_app",
            "-b", f"{HOST}:{self.port}",
            "-k", self.worker_class, "-w", str(self.workers),
            "--keep-alive", str(self.keepalive),
            "--timeout", "60", "--graceful-timeout", "1",
            "--worker-tmp-dir", str(self.dir),
            "--no-control-socket",
            "--log-level", "warning",
            *self.extra_args,
            self.app,
        ]

    def ready(self) -> bool:
        return _http_probe(self.port)


# --------------------------------------------------------------------------------------------
# hypercorn + ASGI app


class Hypercorn(Server):
    """hypercorn (asyncio, one process) serving ``tests/apps/asgi_app.py``.

    ``url`` is cleartext and speaks HTTP/1.1 and h2c (prior knowledge or Upgrade);
    ``https_url`` is TLS with ALPN ``h2`` and ``http/1.1``.
    """

    name = "hypercorn"
    port_names = ("http", "https")

    def __init__(self, directory: Union[str, Path], tls: TLS, *, keep_alive: float = 5,
                 app: str = "asgi_app:app", extra_args: Sequence[str] = ()):
        require_module("hypercorn", "hypercorn")
        self.tls = tls
        self.keep_alive = keep_alive
        self.app = app
        self.extra_args = list(extra_args)
        super().__init__(directory)

    url = property(lambda self: f"http://{HOST}:{self.ports['http']}")
    h2c_url = url
    https_url = property(lambda self: f"https://{HOST}:{self.ports['https']}")
    h2_tls_url = https_url
    http_port = property(lambda self: self.ports["http"])
    h2c_port = http_port
    https_port = property(lambda self: self.ports["https"])

    def cwd(self) -> Path:
        return APPS_DIR

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APPS_DIR), env.get("PYTHONPATH")]))
        return env

    def command(self) -> List[str]:
        return [
            sys.executable, "-m", "hypercorn",
            "--workers", "0",  # serve in this process: no multiprocessing children
            "--certfile", str(self.tls.cert_path), "--keyfile", str(self.tls.key_path),
            "--bind", f"{HOST}:{self.ports['https']}",
            "--insecure-bind", f"{HOST}:{self.ports['http']}",
            "--keep-alive", str(self.keep_alive),
            "--graceful-timeout", "1",
            "--log-level", "warning",
            *self.extra_args,
            self.app,
        ]

    def ready(self) -> bool:
        return _http_probe(self.ports["http"]) and _tcp_probe(self.ports["https"])


# --------------------------------------------------------------------------------------------
# nghttpd


class Nghttpd(Server):
    """nghttpd, HTTP/2 only: cleartext with prior knowledge, or TLS (ALPN h2).

    Serves :data:`SMALL_BODY` at ``/``, the :data:`STATIC_FILES`, and echoes POST/PUT bodies
    (``--echo-upload``).
    """

    name = "nghttpd"

    def __init__(self, directory: Union[str, Path], tls: Optional[TLS] = None, *,
                 max_concurrent_streams: Optional[int] = None, workers: int = 1,
                 extra_args: Sequence[str] = ()):
        self.binary = find_binary("nghttpd", "nghttp2-server")
        self.tls = tls
        self.max_concurrent_streams = max_concurrent_streams
        self.workers = workers
        self.extra_args = list(extra_args)
        super().__init__(directory)
        self.docroot = self.dir / "html"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    small_body = SMALL_BODY

    def prepare(self) -> None:
        _write_static(self.docroot)

    def command(self) -> List[str]:
        cmd = [self.binary, "-a", HOST, "-d", str(self.docroot), "--echo-upload",
               "-n", str(self.workers)]
        if self.max_concurrent_streams is not None:
            cmd += ["-m", str(self.max_concurrent_streams)]
        cmd += self.extra_args
        if self.tls is None:
            return cmd + ["--no-tls", str(self.port)]
        return cmd + [str(self.port), str(self.tls.key_path), str(self.tls.cert_path)]


# --------------------------------------------------------------------------------------------
# redis


class Redis(Server):
    """redis-server without persistence; ``requirepass`` optional; also a unix socket.

    ``tls=<TLS>``: TLS only on :attr:`port` (``--port 0 --tls-port``), serving
    ``tls.cert_path``, no client certificates; :attr:`url` is then ``rediss://``.

    :meth:`execute` sends one command over a fresh blocking socket (for test set-up such as
    ``FLUSHALL`` or ``CLIENT KILL``); ``DEBUG SLEEP`` is enabled for timeout tests.
    """

    name = "redis"
    _bind_errors = Server._bind_errors + ("Could not create server TCP listening socket",)

    def __init__(self, directory: Union[str, Path], *, requirepass: Optional[str] = None,
                 extra_args: Sequence[str] = (), port: Optional[int] = None,
                 tls: Optional[TLS] = None):
        self.binary = find_binary("redis-server", "redis-server")
        self.password = requirepass
        self.tls = tls
        self.extra_args = list(extra_args)
        super().__init__(directory, ports={"port": port} if port else None)
        self.unix_path = self.dir / "redis.sock"

    @property
    def url(self) -> str:
        auth = f":{_quote(self.password)}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{HOST}:{self.port}/0"

    def command(self) -> List[str]:
        cmd = [
            self.binary,
            "--port", str(self.port), "--bind", HOST,
            "--unixsocket", str(self.unix_path), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
            "--daemonize", "no", "--loglevel", "warning", "--logfile", "",
            "--enable-debug-command", "local",
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        if self.tls is not None:
            cmd[cmd.index("--port") + 1] = "0"
            cmd += ["--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert_path),
                    "--tls-key-file", str(self.tls.key_path),
                    "--tls-ca-cert-file", str(self.tls.ca_path), "--tls-auth-clients", "no"]
        return cmd + self.extra_args

    def ready(self) -> bool:
        try:
            reply = self.execute("PING", timeout=1.0)
        except OSError:
            return False
        except RedisReplyError as exc:  # up, unless still loading its dataset
            return not str(exc).startswith("LOADING")
        return bool(reply == "PONG")

    def execute(self, *args: Union[str, bytes, int], timeout: float = 5.0,
                auth: bool = True) -> Any:
        """Run one command (after AUTH when a password is set) and return the decoded reply."""
        with socket.create_connection((HOST, self.port), timeout=timeout) as raw:
            sock = raw
            if self.tls is not None:
                sock = self.tls.client_context().wrap_socket(raw, server_hostname=HOST)
            with sock:
                f = sock.makefile("rb")
                if auth and self.password:
                    sock.sendall(encode_command("AUTH", self.password))
                    read_reply(f)
                sock.sendall(encode_command(*args))
                return read_reply(f)

    def flushall(self) -> None:
        self.execute("FLUSHALL")


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``) from :meth:`Redis.execute`."""


def encode_command(*args: Union[str, bytes, int]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def read_reply(f: Any) -> Any:
    """A minimal RESP2 reader: bulk strings come back as ``str`` (utf-8, replace)."""
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    raise ValueError(f"unexpected RESP line {line!r}")


def _quote(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="")


# Re-exported for tests that build raw frames.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


__all__ = [
    "HOST", "SMALL_BODY", "STATIC_FILES", "H2_PREFACE", "EMPTY_SETTINGS_FRAME",
    "Server", "ServerError", "TLS", "Nginx", "Gunicorn", "Hypercorn", "Nghttpd", "Redis",
    "RedisReplyError", "free_port", "pattern", "find_binary", "missing", "encode_command",
    "read_reply",
]
