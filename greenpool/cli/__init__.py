"""The command line: ``python -m greenpool {demo,get,bench}`` (also the ``greenpool`` script).

What this owns: parsing arguments, running one command, and turning every way
a run can end into an exit code with at most one line on stderr:

* 0: done; 1: ``bench``/``demo`` saw failed requests or statuses >= 400;
  22: ``get`` got a status >= 400 (as ``curl -f``);
* 2: an invalid argument, or a greenpool error (``greenpool: ConnectError: ...``);
* 130: interrupted (Ctrl-C); ``bench`` and ``demo`` print what they measured so far;
* 141: stdout was closed (``greenpool get URL | head``): the run ends quietly.

An unexpected exception is also one line and exit 2; ``--traceback`` shows it whole.
Each command is a module with ``add_parser(subparsers)`` and ``run(args) -> int``;
they use only the public API.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, Callable, List, Optional, Sequence

import gevent
import greenlet

import greenpool
from greenpool.cli import bench, demo, get
from greenpool.cli.args import CLIError, Parser, describe

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_HTTP_ERROR = 22
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

DESCRIPTION = """\
A gevent-native client connection pool, with HTTP/1.1, HTTP/2 and Redis clients.
"greenpool COMMAND --help" describes each command.

exit codes: 0 ok, 1 bench/demo saw failed requests or statuses >= 400,
2 invalid arguments or a greenpool error, 22 get got a status >= 400,
130 interrupted (bench and demo print their partial summary), 141 stdout closed.
"""

COMMANDS = (demo, get, bench)


def build_parser() -> Parser:
    parser = Parser(prog="greenpool", description=DESCRIPTION,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="greenpool %s (Python %s, gevent %s)" % (
        greenpool.__version__, sys.version.split()[0], gevent.__version__))
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an unexpected error (default: one line "
                             "on stderr)")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="{demo,get,bench}",
                                help="greenpool COMMAND --help describes each one")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _interrupt_main(handler: List[Optional[Callable[[], None]]], main: Any) -> None:
    """SIGINT, as a gevent signal handler: the running command's own reaction
    (``bench`` stops its workers), else KeyboardInterrupt in the main greenlet.
    Without it the hub would print a traceback before passing it on."""
    react = handler[0]
    if react is not None:
        react()
    else:
        gevent.kill(main, KeyboardInterrupt)


def _quiet_stdout() -> None:
    """stdout is gone: point it at /dev/null so the interpreter's last flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns its exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("choose a command: demo, get or bench")
    on_interrupt: List[Optional[Callable[[], None]]] = [None]
    args.on_interrupt = on_interrupt
    watcher = gevent.signal_handler(signal.SIGINT, _interrupt_main, on_interrupt, greenlet.getcurrent())
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        sys.stderr.write("greenpool: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except CLIError as e:
        sys.stderr.write("greenpool %s: error: %s\n" % (args.command, e))
        return EXIT_ERROR
    except greenpool.GreenPoolError as e:
        sys.stderr.write("greenpool: %s: %s\n" % (type(e).__name__, describe(e)))
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - one line, unless asked for the traceback
        if args.traceback:
            raise
        sys.stderr.write("greenpool: unexpected %s: %s (run again with --traceback to see where)\n"
                         % (type(e).__name__, e))
        return EXIT_ERROR
    finally:
        watcher.cancel()


__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_ERROR", "EXIT_HTTP_ERROR",
           "EXIT_INTERRUPTED", "EXIT_BROKEN_PIPE"]
