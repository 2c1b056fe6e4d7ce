"""A Prometheus collector for greenpool's pools (``prometheus_client`` imported lazily).

::

    from greenpool.contrib.prometheus import register
    register()                     # into prometheus_client's default REGISTRY
    # then serve it as usual: prometheus_client.start_http_server(9100), or a /metrics view

What this owns: turning :meth:`GreenPool.get_stats` of every registered pool
(:func:`greenpool.start_pool`) into metric families at scrape time, and,
optionally, histograms of checkout wait and connect time fed by
:mod:`greenpool.events`.

Rules:

* ``get_stats()`` is the source of truth: gauges and counters are read from
  it at each scrape; nothing is counted twice and no hook is installed for
  them.  Every family has a ``pool`` label (the pool's name).
* Counters (``created``, ``reused``, ``closed``, ``timeouts``, ...) become
  ``<namespace>_<name>_total``; the other numbers (``open``, ``in_use_count``,
  ``free_count``, ``queue_count``, ``max``, ...) become gauges
  ``<namespace>_<name>``.  A pool class that reports more numbers (RedisPool)
  gets them as gauges too.
* A sub-dict of ``get_stats()`` (a protocol's numbers, e.g. ``"http3"``, added by
  :meth:`GreenPool.add_stats`) becomes ``<namespace>_<sub>_<name>``: a counter
  when :meth:`GreenPool.stats_counters` names ``"<sub>.<name>"``, else a gauge.
  Sub-dicts under a key that is not an identifier (a cluster's ``"host:port"``
  per node) are not exported, as before.
* ``histograms=True`` subscribes one event hook (removed by
  :meth:`PoolCollector.close`) that observes ``wait`` and ``timeout`` seconds
  into ``<namespace>_checkout_wait_seconds`` and ``connect`` seconds into
  ``<namespace>_connect_seconds``, labelled by pool.
* Importing this module without prometheus_client installed raises an
  ImportError that says what to install; greenpool itself never imports it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError as e:
    raise ImportError("greenpool.contrib.prometheus needs prometheus_client: "
                      "pip install prometheus_client (%s)" % (e,)) from e

from greenpool import events
from greenpool.registry import all_pools

__all__ = ["PoolCollector", "register", "COUNTERS"]

#: get_stats() keys that only grow (exported as counters)
COUNTERS = frozenset(("created", "reused", "closed", "timeouts", "connect_errors", "reclaimed",
                      "expired", "dropped", "shed", "pings", "ping_failures"))

_HELP = {
    "max": "max_connections of the pool",
    "max_per_host": "max_per_host of the pool",
    "open": "open connections (in use + idle + connecting)",
    "in_use_count": "connections in use (shared ones with at least one user)",
    "free_count": "idle connections",
    "queue_count": "callers waiting for a connection",
    "connecting": "connections being opened",
    "shared_count": "shared (multiplexed) connections",
    "shared_users": "users of shared connections",
    "created": "connections opened",
    "reused": "checkouts served by an idle connection",
    "closed": "connections closed",
    "timeouts": "checkouts that gave up waiting",
    "connect_errors": "failed connects",
    "reclaimed": "connections reclaimed from dead greenlets",
    "expired": "connections closed by idle timeout or max_lifetime",
    "dropped": "idle connections closed by the peer",
    "shed": "checkouts shed by queue_target (CoDel)",
    "pings": "health pings",
    "ping_failures": "failed health pings",
    "http3.quic_connections": "open QUIC (HTTP/3) connections",
    "http3.quic_streams": "HTTP/3 streams in use",
    "http3.blocked_origins": "https origins served over TCP because QUIC failed there",
    "http3.alt_svc_origins": "https origins that advertised HTTP/3 (Alt-Svc) and are remembered",
    "http3.session_tickets": "TLS session tickets kept for QUIC resumption",
    "http3.handshakes": "QUIC handshakes completed",
    "http3.resumed": "QUIC handshakes that resumed a session",
    "http3.handshake_failures": "QUIC handshakes that failed",
    "http3.goaway": "QUIC connections that got a GOAWAY",
    "http3.dead_peer": "QUIC connections closed because the server stopped answering",
    "http3.closed_by_peer": "QUIC connections the server closed",
    "http3.retried": "HTTP/3 requests sent again on another connection",
}

WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, float("inf"))


class PoolCollector:
    """A collector for prometheus_client's registry: ``REGISTRY.register(PoolCollector())``.

    ``pools``: a callable returning ``{name: pool}`` (default: every pool
    started with :func:`greenpool.start_pool`).  ``namespace``: the metric
    name prefix.  ``histograms``: also observe wait and connect times from
    event hooks (see the module docstring).
    """

    def __init__(self, pools: Optional[Callable[[], Dict[str, Any]]] = None, namespace: str = "greenpool",
                 histograms: bool = False, buckets: Iterable[float] = WAIT_BUCKETS) -> None:
        self.pools = pools if pools is not None else all_pools
        self.namespace = namespace
        self.buckets = tuple(sorted(set(buckets) | {float("inf")}))
        # pool -> [bucket counts..., sum]: observed inline by the hook, cheap and non-blocking
        self._wait: Dict[str, List[Any]] = {}
        self._connect: Dict[str, List[Any]] = {}
        self._hook: Optional[Callable[[events.Event], None]] = None
        if histograms:
            self._hook = events.subscribe(self._on_event)

    def _on_event(self, event: events.Event) -> None:
        kind = event.kind
        if kind == "wait" or kind == "timeout":
            table = self._wait
        elif kind == "connect":
            table = self._connect
        else:
            return
        seconds = event.seconds or 0.0
        row = table.get(event.pool)
        if row is None:
            row = table[event.pool] = [0] * len(self.buckets) + [0.0]
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                row[i] += 1
                break
        row[-1] += seconds

    def close(self) -> None:
        """Remove the event hook (histograms stop growing)."""
        if self._hook is not None:
            events.unsubscribe(self._hook)
            self._hook = None

    def describe(self) -> Iterator[Any]:
        # families depend on the pools running at scrape time: let the registry call collect()
        return iter(())

    def collect(self) -> Iterator[Any]:
        ns = self.namespace
        families: Dict[str, Any] = {}
        for name, pool in sorted(self.pools().items()):
            if getattr(pool, "closed", False):
                continue
            stats = pool.get_stats()
            counters = pool.stats_counters() if hasattr(pool, "stats_counters") else COUNTERS
            for key, value in stats.items():
                if isinstance(value, dict):
                    if not key.isidentifier():   # e.g. a cluster's per-node dicts ("host:port")
                        continue
                    for sub, v in value.items():
                        self._add(families, "%s.%s" % (key, sub), v, name, counters)
                else:
                    self._add(families, key, value, name, counters)
        yield from families.values()
        if self._hook is not None:
            yield self._histogram("%s_checkout_wait_seconds" % ns,
                                  "seconds callers waited in a pool's queue (served or timed out)",
                                  self._wait)
            yield self._histogram("%s_connect_seconds" % ns, "seconds to open a connection",
                                  self._connect)

    def _add(self, families: Dict[str, Any], key: str, value: Any, pool: str,
             counters: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        fam = families.get(key)
        if fam is None:
            doc = _HELP.get(key, "greenpool pool stat %s" % key)
            metric = "%s_%s" % (self.namespace, key.replace(".", "_"))
            if key in counters:
                fam = CounterMetricFamily(metric, doc, labels=["pool"])
            else:
                fam = GaugeMetricFamily(metric, doc, labels=["pool"])
            families[key] = fam
        fam.add_metric([pool], value)

    def _histogram(self, name: str, doc: str, table: Dict[str, List[Any]]) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        fam = HistogramMetricFamily(name, doc, labels=["pool"])
        for pool, row in sorted(table.items()):
            cumulative = 0
            buckets = []
            for bound, count in zip(self.buckets, row):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            fam.add_metric([pool], buckets, row[-1])
        return fam


def register(registry: Any = None, **kw: Any) -> PoolCollector:
    """Make a :class:`PoolCollector` (``kw`` as it takes) and register it
    (default: ``prometheus_client.REGISTRY``); returns it (unregister it with
    ``registry.unregister(collector)`` and ``collector.close()``)."""
    collector = PoolCollector(**kw)
    (registry if registry is not None else prometheus_client.REGISTRY).register(collector)
    return collector
