"""Tests for greenpool/errors.py: how messages show addresses and durations, map_exceptions."""
from __future__ import annotations

import gevent
import pytest

import greenpool
from greenpool.errors import ConnectTimeout, ReadTimeout, format_address, format_seconds, map_exceptions

from fakes import FakeServer, assert_exact


@pytest.mark.parametrize("seconds, shown", [
    (1.9998761890000196, "2s"), (0.25, "0.25s"), (0.123456, "0.12s"), (0.2876, "0.29s"), (30.0, "30s"),
    (5, "5s"), (2.5, "2.5s"), (12.3456, "12s"), (120.4, "120s"), (3600.0, "3600s"), (0.001234, "0.0012s"),
    (None, "no limit"),
])
def test_format_seconds(seconds, shown):
    assert format_seconds(seconds) == shown


@pytest.mark.parametrize("host, port, shown", [
    ("example.org", 443, "example.org:443"), ("127.0.0.1", 80, "127.0.0.1:80"),
    ("::1", 24001, "[::1]:24001"), ("fe80::1%eth0", 80, "[fe80::1%eth0]:80"),
    ("[::1]", 81, "[::1]:81"), ("example.org", None, "example.org"),
])
def test_format_address(host, port, shown):
    assert format_address(host, port) == shown


def test_map_exceptions_names_our_timeout_rounded():
    t = gevent.Timeout(0.0123456)
    t.start()
    try:
        with pytest.raises(ReadTimeout, match=r"^timed out after 0\.012s$"):
            with map_exceptions(t):
                gevent.sleep(1)
    finally:
        t.close()
    t = gevent.Timeout(0.01)
    t.start()
    try:
        with pytest.raises(ConnectTimeout, match="connecting"):
            with map_exceptions(t, on_timeout=ConnectTimeout, message="connecting"):
                gevent.sleep(1)
    finally:
        t.close()


def test_http2_handshake_timeout_names_the_peer_and_rounds_seconds(no_leaks):
    """A peer that accepts and never sends its SETTINGS (messages of h2/conn.py)."""
    def silent(sock, server):
        while sock.recv(65536):
            pass

    with FakeServer(silent) as srv:
        pool = greenpool.GreenPool("h2-silent")
        try:
            with pytest.raises(ConnectTimeout) as e:
                greenpool.get("http://127.0.0.1:%d/" % srv.port, pool=pool, http2="prior_knowledge",
                              timeout=greenpool.Timeout(5, connect=0.1234567))
            assert str(e.value) == "HTTP/2 handshake with 127.0.0.1:%d timed out after 0.12s" % srv.port
            assert_exact(pool)
        finally:
            pool.close()
