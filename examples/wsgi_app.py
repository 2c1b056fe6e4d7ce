"""A legacy, monkey-patched WSGI app calling an upstream API through greenpool.

Many old apps run under gevent with ``monkey.patch_all()`` and call their backends with
urllib/requests from every request greenlet.  Moving those calls onto one bounded greenpool
pool caps the connections to the backend, reuses them, and never hands out a dead one::

    UPSTREAM_URL=http://127.0.0.1:8080 python examples/wsgi_app.py --port 8000

(With requests code you would rather not touch, mount greenpool.contrib.requests'
``GreenPoolAdapter`` on the session instead.)  The same app under Flask::

    @flask_app.route("/")
    def index():
        return greenpool.get(UPSTREAM_URL + "/echo", pool="upstream").json()

Endpoints: ``/`` (one upstream call), ``/many?n=20`` (n calls at once), ``/stats``.
"""
from gevent import monkey

monkey.patch_all()  # first, as legacy apps do; greenpool needs it only for the app's own I/O

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

import greenpool  # noqa: E402

UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8080").rstrip("/")
pool = greenpool.start_pool("upstream", max_connections=10, checkout_timeout=5.0)


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def call_upstream(path="/"):
    r = greenpool.get(UPSTREAM_URL + path, pool="upstream", timeout=5.0)
    r.raise_for_status()
    return {"status": r.status, "bytes": len(r.content)}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    try:
        if path == "/":
            return _json(start_response, call_upstream())
        if path == "/many":
            n = min(int(environ.get("QUERY_STRING", "").partition("n=")[2] or 20), 500)
            jobs = gevent.joinall([gevent.spawn(call_upstream) for _ in range(n)], raise_error=True)
            return _json(start_response, {"calls": len(jobs), "statuses": sorted({j.value["status"] for j in jobs}),
                                          "pool": pool.get_stats()})
        if path == "/stats":
            return _json(start_response, pool.get_stats())
        return _json(start_response, {"error": "not found"}, "404 Not Found")
    except greenpool.GreenPoolError as e:
        return _json(start_response, {"error": type(e).__name__, "detail": str(e)}, "502 Bad Gateway")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    args = parser.parse_args(argv)
    server = WSGIServer((args.host, args.port), app, log=None)
    server.start()
    print("serving on http://%s:%d (upstream %s)" % (args.host, server.server_port, UPSTREAM_URL), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        greenpool.stop_pool("upstream")
    return 0


if __name__ == "__main__":
    sys.exit(main())
