"""gunicorn configuration for examples/gunicorn_app.py: the recommended greenpool set-up.

    UPSTREAM_URL=http://127.0.0.1:8080 gunicorn -c examples/gunicorn.conf.py \\
        --chdir examples gunicorn_app:app

* ``worker_class = "gevent"``: every request runs in a greenlet; greenpool uses gevent
  sockets itself, and gunicorn's gevent worker monkey-patches the rest of the app.
* The pool is started in ``post_fork``, in each worker, never in the master: sockets must not
  be shared across fork (greenpool also drops inherited connections in a child, but a pool made
  before the fork would be made for nothing).  Do not start pools at import time with
  ``--preload``.
* ``prewarm``: each worker opens a few connections to the upstream before its first request.
* ``worker_exit`` stops the pool: connections closed, waiters failed with PoolClosed.
"""
import os

import greenpool

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "2"))
worker_class = "gevent"
worker_connections = 1000     # greenlets per worker
keepalive = 5
graceful_timeout = 5

UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8080")
POOL = "upstream"


def post_fork(server, worker):
    # the upstream sees at most workers x max_connections connections from this app
    pool = greenpool.start_pool(POOL, max_connections=int(os.environ.get("POOL_SIZE", "20")),
                                timeout=30.0, checkout_timeout=5.0, connect_timeout=2.0)
    url = greenpool.URL(UPSTREAM_URL)
    pool.prewarm(url.host, url.port, count=int(os.environ.get("PREWARM", "2")), transport=url.transport)
    server.log.info("worker %s: pool %r started, prewarming %s", worker.pid, POOL, UPSTREAM_URL)


def worker_exit(server, worker):
    greenpool.stop_pool(POOL)
