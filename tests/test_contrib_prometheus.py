"""Tests for greenpool/contrib/prometheus.py (skipped without prometheus_client)."""
from __future__ import annotations

import subprocess
import sys

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

import greenpool  # noqa: E402
from greenpool import events  # noqa: E402
from greenpool.contrib.prometheus import PoolCollector, register  # noqa: E402

from fakes import FakeServer  # noqa: E402


@pytest.fixture
def server():
    with FakeServer() as srv:
        yield srv


@pytest.fixture
def registry():
    return prometheus_client.CollectorRegistry()


def test_gauges_and_counters_from_get_stats(registry, server):
    pool = greenpool.start_pool("prom-a", max_connections=7)
    collector = register(registry)
    try:
        conn = pool.checkout("127.0.0.1", server.port)
        value = registry.get_sample_value
        assert value("greenpool_in_use_count", {"pool": "prom-a"}) == 1
        assert value("greenpool_max", {"pool": "prom-a"}) == 7
        assert value("greenpool_created_total", {"pool": "prom-a"}) == 1
        pool.checkin(conn)
        assert value("greenpool_in_use_count", {"pool": "prom-a"}) == 0
        assert value("greenpool_free_count", {"pool": "prom-a"}) == 1
        text = prometheus_client.generate_latest(registry).decode()
        assert "# TYPE greenpool_created_total counter" in text
        assert "# TYPE greenpool_open gauge" in text
        assert 'greenpool_open{pool="prom-a"} 1.0' in text
    finally:
        registry.unregister(collector)
        greenpool.stop_pool("prom-a")
    assert registry.get_sample_value("greenpool_open", {"pool": "prom-a"}) is None


def test_every_registered_pool_and_redis_stats(registry):
    greenpool.start_pool("prom-b")
    greenpool.start_pool("prom-c")
    try:
        collector = PoolCollector(namespace="app")
        registry.register(collector)
        assert registry.get_sample_value("app_open", {"pool": "prom-b"}) == 0
        assert registry.get_sample_value("app_open", {"pool": "prom-c"}) == 0
    finally:
        greenpool.stop_pool("prom-b")
        greenpool.stop_pool("prom-c")


def test_histograms_from_events(registry, server):
    pool = greenpool.GreenPool("prom-h", max_connections=1)
    collector = register(registry, pools=lambda: {"prom-h": pool}, histograms=True)
    try:
        assert collector._on_event in events.subscribed()
        conn = pool.checkout("127.0.0.1", server.port)
        with pytest.raises(greenpool.PoolTimeout):
            pool.checkout("127.0.0.1", server.port, timeout=0.02)
        pool.checkin(conn)
        value = registry.get_sample_value
        assert value("greenpool_connect_seconds_count", {"pool": "prom-h"}) == 1
        assert value("greenpool_checkout_wait_seconds_count", {"pool": "prom-h"}) == 1
        assert value("greenpool_checkout_wait_seconds_sum", {"pool": "prom-h"}) >= 0.02
        assert value("greenpool_checkout_wait_seconds_bucket", {"pool": "prom-h", "le": "+Inf"}) == 1
        assert value("greenpool_checkout_wait_seconds_bucket", {"pool": "prom-h", "le": "0.01"}) == 0
    finally:
        registry.unregister(collector)
        collector.close()
        pool.close()
    assert collector._on_event not in events.subscribed()


def test_clear_import_error_without_prometheus_client():
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "try:\n    import greenpool.contrib.prometheus\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install prometheus_client" in out.stdout, out.stderr
    # and greenpool itself never imports it
    code = "import greenpool, sys; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
