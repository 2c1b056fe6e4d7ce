"""``greenpool get URL``: one request, like curl.

What this owns: building one request from curl-like flags and writing the
response (``-i``: status line and headers first) to stdout.  Exit 22 when the
status is >= 400, as ``curl -f``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import greenpool
from greenpool.cli import args as _args

DESCRIPTION = """\
One request, like curl: the body goes to stdout (-i: the status line and the
headers first). -d sends a body and makes the method POST unless -X says otherwise.
Exit codes: 0 a status < 400, 22 a status >= 400, 2 invalid arguments or a
greenpool error (one line on stderr), 130 interrupted, 141 stdout closed.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("get", help="one request, like curl", description=DESCRIPTION,
                       formatter_class=_args.HelpFormatter)
    p.add_argument("url", type=_args.http_url, help="the URL to request")
    p.add_argument("-X", "--method", metavar="METHOD",
                   help="the request method (default: GET, or POST with -d)")
    p.add_argument("-H", "--header", type=_args.header, action="append", default=[], metavar="'NAME: VALUE'",
                   help="a request header (repeatable)")
    p.add_argument("-d", "--data", metavar="TEXT", help="the request body (UTF-8)")
    p.add_argument("-i", "--include", action="store_true", help="print the status line and headers")
    p.add_argument("-L", "--location", action="store_true", help="follow redirects")
    p.add_argument("--timeout", type=_args.positive_float, default=30.0, metavar="SECONDS",
                   help="the request's timeout")
    _args.add_http2(p)
    _args.add_http3(p)
    _args.add_tls(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    kw = _args.client_options(args, args.url)
    kw["headers"] = args.header
    kw["follow_redirects"] = args.location
    if args.data is not None:
        kw["body"] = args.data.encode()
    method = (args.method or ("POST" if args.data is not None else "GET")).upper()
    r = greenpool.request(method, args.url, **kw)
    out = sys.stdout.buffer
    if args.include:
        head = ["%s %d %s" % (r.http_version, r.status, r.reason)]
        head += ["%s: %s" % (k, v) for k, v in r.headers.items()]
        out.write(("\n".join(head) + "\n\n").encode("latin-1", "replace"))
    out.write(r.content)
    out.flush()
    return 0 if r.status < 400 else 22
