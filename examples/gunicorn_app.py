"""A WSGI app for gunicorn's gevent worker that calls an upstream API through greenpool.

Run it with the recommended configuration (examples/gunicorn.conf.py)::

    UPSTREAM_URL=http://127.0.0.1:8080 gunicorn -c examples/gunicorn.conf.py \\
        --chdir examples gunicorn_app:app

Endpoints:

* ``/``       calls ``UPSTREAM_URL`` + ``/`` and reports what came back
* ``/fanout`` calls the upstream ``?n=`` times at once (one greenlet each) through the pool
* ``/stats``  this worker's pool numbers (``GreenPool.get_stats()``) as JSON; point your
              monitoring at it, or use greenpool.contrib.prometheus for a /metrics page
"""
import json
import os

import gevent

import greenpool

UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8080").rstrip("/")
POOL = "upstream"   # started in gunicorn.conf.py's post_fork
client = greenpool.Client(pool=POOL, base_url=UPSTREAM_URL, timeout=greenpool.Timeout(5.0))


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    try:
        if path == "/stats":
            pool = greenpool.find_pool(POOL)
            return _json(start_response, {"pid": os.getpid(), "pool": pool.get_stats() if pool else None})
        if path == "/fanout":
            n = int(environ.get("QUERY_STRING", "").partition("n=")[2] or 10)
            jobs = [gevent.spawn(client.get, "/") for _ in range(min(n, 1000))]
            gevent.joinall(jobs, raise_error=True)
            return _json(start_response, {"statuses": sorted({j.value.status for j in jobs}), "calls": len(jobs)})
        if path == "/":
            r = client.get("/")
            return _json(start_response, {"upstream_status": r.status, "upstream_bytes": len(r.content),
                                          "http_version": r.http_version})
        return _json(start_response, {"error": "not found"}, "404 Not Found")
    except greenpool.GreenPoolError as e:
        # PoolTimeout, ConnectError, ReadTimeout...: the message says which pool/host and why
        return _json(start_response, {"error": type(e).__name__, "detail": str(e)}, "502 Bad Gateway")


application = app
