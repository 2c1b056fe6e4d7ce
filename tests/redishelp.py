"""Shared pieces of the Redis tests.

What this owns: the RESP parser parameters every Redis test file runs over (``PARSERS``,
hiredis skipped with a reason where it is not installed) and :func:`unique`, the maker of
keys and channel names no other test uses (the session's servers are shared), and
:func:`node_books`, the books check of a topology pool (Cluster, Sentinel).
"""
from __future__ import annotations

import itertools
import time

import pytest

from fakes import assert_exact

try:
    import hiredis  # noqa: F401

    HAVE_HIREDIS = True
except ImportError:  # pragma: no cover
    HAVE_HIREDIS = False

PARSERS = [
    "python",
    pytest.param("hiredis", marks=pytest.mark.skipif(not HAVE_HIREDIS, reason="hiredis missing")),
]

_counter = itertools.count()


def unique(scope: str, prefix: str) -> str:
    """``scope:prefix:<ns>:<n>``: a name no other test in this process uses."""
    return "%s:%s:%d:%d" % (scope, prefix, time.monotonic_ns(), next(_counter))


def node_books(topology) -> None:
    """Every node pool of a RedisClusterPool / RedisSentinelPool: counts exact, nothing in
    flight."""
    for p in topology.node_pools().values():
        assert_exact(p)
        assert p.info()["in_flight"] == 0, p.info()
