"""HTTP/2 against hostile and broken servers: bounded work, a fair hub, deadlines that hold,
dead peers noticed (greenpool/http/h2conn.py and h2transport.py).

The servers are in-process h2 servers scripted per test (``H2FakeServer`` from
test_http_h2.py), hand-built frames, and, where the point is that the client process keeps
running while a peer floods it, a raw-frame server in another process
(:class:`FloodServer`).  Every test ends with exact pool books and no leaked fd or greenlet.
"""
from __future__ import annotations

import time

import gevent
import pytest
from test_http_h2 import H2FakeServer

import greenpool
from greenpool import GreenPool
from greenpool.errors import ReadTimeout, TimeoutException
from greenpool.http.models import Timeout

from fakes import assert_exact

H2C = "prior_knowledge"


@pytest.fixture
def pool():
    p = GreenPool("h2hostile", max_connections=20, checkout_timeout=5.0)
    yield p
    p.close()


# ---------------------------------------------------------------------------------------------
# the total deadline covers the body (stream=False), as on HTTP/1.1


def drip(ctx, sid, headers, body):
    """A head at once, then one body byte every 0.1 s for 10 s."""
    ctx.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", b"100")])
    ctx.flush()
    for _ in range(100):
        gevent.sleep(0.1)
        ctx.h2.send_data(sid, b"x")
        ctx.flush()
    ctx.h2.end_stream(sid)
    ctx.flush()


def test_total_deadline_covers_a_dripped_body(pool, no_leaks):
    with H2FakeServer(drip) as srv, greenpool.Client(pool=pool, http2=H2C) as c:
        t0 = time.monotonic()
        with pytest.raises(ReadTimeout, match="total|read") as e:
            c.get(srv.url(), timeout=Timeout(10, total=1))
        elapsed = time.monotonic() - t0
        assert isinstance(e.value, TimeoutException)
        assert 0.9 <= elapsed < 4, elapsed     # the drip alone lasts 10 s
        gevent.sleep(0.05)
        assert len(srv.resets) == 1            # its stream was reset, the connection stays
        assert pool.get_stats()["shared_users"] == 0
        assert_exact(pool)
        # stream=True: the total deadline ends at the head, the body reads on
        r = c.get(srv.url(), timeout=Timeout(10, total=0.5), stream=True)
        r.close()
        assert len(srv.conns) == 1
        assert_exact(pool)
        pool.close()
    assert_exact(pool)
