"""Argument types and the parser class shared by the commands.

What this owns: turning a bad argument into one line on stderr and exit 2
(``greenpool get: error: argument -H/--header: ...``), never a usage dump nor a
traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, NoReturn, Optional, Tuple

import greenpool


class CLIError(Exception):
    """An invalid argument found while running a command: one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write("%s: error: %s (see %s --help)\n" % (self.prog, message, self.prog))
        sys.exit(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """An option's help ends with its default, unless that is off/none (a flag, an
    unset option: its help says what happens then); descriptions keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % (text,)) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, not %d" % value)
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % (text,)) from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds above 0, not %s" % (text,))
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % (text,)) from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds, 0 or more, not %s" % (text,))
    return value


def header(text: str) -> Tuple[str, str]:
    """``-H 'Name: value'`` (curl's form)."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError("%r is not a header: write 'Name: value'" % (text,))
    return name, value.strip()


def http_url(text: str) -> str:
    try:
        url = greenpool.URL(text)
    except (greenpool.InvalidURL, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if url.scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError("%r is not an http:// or https:// URL" % (text,))
    return text


def add_tls(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", "--insecure", action="store_true",
                   help="do not verify the server's TLS certificate")
    p.add_argument("--cacert", metavar="FILE",
                   help="verify the server's certificate with the CA bundle FILE (PEM) "
                        "instead of the system's CAs")


def add_http2(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http2", action="store_true",
                   help="use HTTP/2: negotiated by ALPN on https://, prior knowledge on http://")


#: ``--http3 MODE`` -> ``Client(http3=...)``
HTTP3_MODES = {"off": False, "on": True, "prior_knowledge": "prior_knowledge"}


def add_http3(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http3", choices=tuple(HTTP3_MODES), default="off", metavar="MODE",
                   help="HTTP/3 over QUIC for https:// (needs the http3 extra): off; on (origins "
                        "that advertised it by Alt-Svc in an earlier response); prior_knowledge "
                        "(QUIC first, TCP when it fails or is slower than the race delay)")


def client_options(args: argparse.Namespace, url: str) -> Dict[str, Any]:
    """Client keywords for ``-k``, ``--cacert``, ``--http2``, ``--http3``, ``--timeout``."""
    kw: Dict[str, Any] = {"timeout": args.timeout}
    if args.insecure and args.cacert:
        raise CLIError("-k/--insecure and --cacert contradict each other: choose one")
    if args.cacert:
        if not os.path.isfile(args.cacert):
            raise CLIError("--cacert %s: no such file" % args.cacert)
        kw["verify"] = args.cacert
    elif args.insecure:
        kw["verify"] = False
    if args.http2:
        kw["http2"] = "prior_knowledge" if url.startswith("http://") else True
    http3 = HTTP3_MODES[getattr(args, "http3", "off")]
    if http3:
        if not url.startswith("https://"):
            raise CLIError("--http3 %s needs an https:// URL (QUIC always runs TLS)" % args.http3)
        kw["http3"] = http3
    return kw


def describe(e: BaseException) -> str:
    """An error's message for the command line: a TLS verification failure also says
    which flags help (the library's message speaks of ``verify=``)."""
    text = str(e)
    if isinstance(e, greenpool.TLSError) and "not trusted" in text:
        text += "; on the command line: --cacert FILE, or -k to skip verification"
    return text


def progress_interval(args: argparse.Namespace, tty: bool) -> Optional[float]:
    """``--progress``: seconds between progress updates (None: none)."""
    seconds = args.progress
    if seconds is None:
        seconds = 0.5 if tty else 2.0
    return seconds or None


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", type=non_negative_float, metavar="SECONDS", default=None,
                   help="seconds between progress updates on stderr (done/total, req/s, ETA): "
                        "default 0.5 on a terminal (one line, redrawn), 2 otherwise (plain "
                        "lines); 0: none")
