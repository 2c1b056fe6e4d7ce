"""Tests for greenpool/options.py: defaults and validation naming the option."""
from __future__ import annotations

import pytest

from greenpool import GreenPool, PoolOptions


def test_defaults():
    o = PoolOptions()
    assert (o.max_connections, o.max_per_host, o.timeout, o.checkout_timeout, o.connect_timeout) == (
        50, None, 30.0, 8.0, 8.0)
    assert o.per_host == 50 and o.max_lifetime is None and o.max_requests is None
    assert o.prewarm_count == 0 and o.queue_target is None and o.idle_interval is None
    assert (o.backoff_min, o.backoff_max, o.backoff_type, o.strategy) == (1.0, 30.0, "rand_exp", "round_robin")
    assert o.checkout_yield is True


@pytest.mark.parametrize("kw, exc, name", [
    ({"max_connections": 0}, ValueError, "max_connections"),
    ({"max_connections": -1}, ValueError, "max_connections"),
    ({"max_connections": 2.5}, TypeError, "max_connections"),
    ({"max_connections": True}, TypeError, "max_connections"),
    ({"max_per_host": 0}, ValueError, "max_per_host"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"timeout": "30"}, TypeError, "timeout"),
    ({"checkout_timeout": -0.1}, ValueError, "checkout_timeout"),
    ({"connect_timeout": 0}, ValueError, "connect_timeout"),
    ({"max_lifetime": (5, 1)}, ValueError, "max_lifetime"),
    ({"max_lifetime": (1, 2, 3)}, ValueError, "max_lifetime"),
    ({"max_requests": 0}, ValueError, "max_requests"),
    ({"prewarm_count": -1}, ValueError, "prewarm_count"),
    ({"queue_target": 0.05}, ValueError, "queue_target"),
    ({"idle_interval": 0}, ValueError, "idle_interval"),
    ({"backoff_min": 5, "backoff_max": 1}, ValueError, "backoff_max"),
    ({"backoff_type": "linear"}, ValueError, "backoff_type"),
    ({"strategy": "fastest"}, ValueError, "strategy"),
    ({"checkout_yield": 1}, TypeError, "checkout_yield"),
])
def test_bad_values_name_the_option(kw, exc, name):
    with pytest.raises(exc, match=name):
        PoolOptions(**kw)
    with pytest.raises(exc, match=name):
        GreenPool("bad", **kw)


def test_unknown_option_and_replace():
    with pytest.raises(TypeError, match="unknown pool option"):
        GreenPool("bad", max_conns=3)
    o = PoolOptions(max_connections=5)
    p = o.replace(timeout=None, max_lifetime=[1, 2])
    assert p.timeout is None and p.max_lifetime == (1.0, 2.0) and o.timeout == 30.0
    with pytest.raises(ValueError, match="timeout"):
        o.replace(timeout=-5)
    with pytest.raises(TypeError, match="unknown"):
        o.replace(nope=1)
    with pytest.raises(Exception):
        o.max_connections = 3  # frozen


def test_queue_options_go_together():
    assert PoolOptions(queue_target=0.05, queue_interval=1.0).queue_target == 0.05
    with pytest.raises(ValueError, match="queue_interval"):
        PoolOptions(queue_interval=1.0)
