"""Running N requests from C greenlets, for ``bench`` and ``demo``.

What this owns: handing out exactly N requests to C workers, recording each
outcome (latency, status class, or error type with one example message), the
progress line (rate and ETA) and stopping early on Ctrl-C, after which the
summary covers what completed.  Requests cut short by the stop are not counted.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict, List, Optional, TextIO

import gevent

from greenpool.cli.args import describe

#: one request: returns the response status (raises on failure)
Fetch = Callable[[], int]


class LoadRun:
    """``total`` calls of ``fetch`` from ``concurrency`` greenlets (never more than ``total``)."""

    def __init__(self, fetch: Fetch, total: int, concurrency: int) -> None:
        self.fetch = fetch
        self.total = total
        self.concurrency = min(concurrency, total)
        self.todo = total
        self.latencies: List[float] = []
        self.statuses: Dict[str, int] = {}      # "2xx" -> count
        self.errors: Dict[str, int] = {}        # exception type name -> count
        self.examples: Dict[str, str] = {}      # exception type name -> its first message
        self.interrupted = False
        self.took = 0.0
        self._started = 0.0
        self._workers: List[gevent.Greenlet] = []

    # -- running ---------------------------------------------------------------------------

    def _worker(self) -> None:
        while self.todo > 0 and not self.interrupted:
            self.todo -= 1
            t0 = time.perf_counter()
            try:
                status = self.fetch()
            except Exception as e:  # noqa: BLE001 - counted by type, one example shown
                name = type(e).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
                if name not in self.examples:
                    self.examples[name] = describe(e)
            else:
                cls = "%dxx" % (status // 100)
                self.statuses[cls] = self.statuses.get(cls, 0) + 1
            self.latencies.append(time.perf_counter() - t0)

    def interrupt(self) -> None:
        """Stop now (Ctrl-C): workers are killed, requests in flight are not counted."""
        if not self.interrupted:
            self.interrupted = True
            gevent.killall(self._workers, block=False)

    def run(self, progress: Optional["Progress"] = None) -> None:
        self._started = time.perf_counter()
        self._workers = [gevent.spawn(self._worker) for _ in range(self.concurrency)]
        ticker = gevent.spawn(progress.run, self) if progress is not None else None
        try:
            gevent.joinall(self._workers)
        finally:
            self.took = time.perf_counter() - self._started
            if ticker is not None:
                ticker.kill()
            if progress is not None:
                progress.finish(self)

    # -- results ---------------------------------------------------------------------------

    @property
    def done(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started if self._started else 0.0

    def bad(self) -> bool:
        """Any request failed or got a status >= 400."""
        return bool(self.errors) or any(c >= "4xx" for c in self.statuses)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    def status_line(self) -> str:
        return ", ".join("%s %d" % (c, n) for c, n in sorted(self.statuses.items())) or "none"

    def error_lines(self) -> List[str]:
        return ["%s x%d, e.g.: %s" % (name, n, self.examples[name])
                for name, n in sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))]


class Progress:
    """Done/total, rate and ETA on ``stream`` every ``interval`` seconds and once at
    the end: one line redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, interval: float, stream: TextIO = sys.stderr, tty: Optional[bool] = None) -> None:
        self.interval = interval
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty

    @staticmethod
    def line(done: int, total: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = "%.1fs" % ((total - done) / rate) if rate > 0 else "?"
        bar = "#" * int(30 * done / total) if total else ""
        return "[%-30s] %d/%d  %.0f req/s  ETA %s" % (bar, done, total, rate, eta)

    def show(self, run: LoadRun) -> None:
        text = self.line(run.done, run.total, run.elapsed)
        try:
            if self.tty:
                self.stream.write("\r%s\x1b[K" % text)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def run(self, load: LoadRun) -> None:
        while True:
            gevent.sleep(self.interval)
            self.show(load)

    def finish(self, load: LoadRun) -> None:
        """The final state (so even a run shorter than the interval shows one)."""
        self.show(load)
        if self.tty:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
