"""Pool options: validated once, immutable, defaults in one place.

What this owns: every knob a :class:`~greenpool.pool.GreenPool` has, its
default, and the check that rejects a bad value with a ``ValueError`` (or
``TypeError`` for a value of the wrong type) naming the option.  Per-call
overrides use :meth:`PoolOptions.replace`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple, TypedDict, Union

from greenpool.backoff import BACKOFF_TYPES

STRATEGIES = ("round_robin", "random", "least_busy")

Seconds = Optional[float]
Lifetime = Union[None, float, Tuple[float, float]]


class PoolOptionsDict(TypedDict, total=False):
    """The keywords ``GreenPool(...)`` and ``start_pool(...)`` take: the fields of
    :class:`PoolOptions` (a test keeps the two equal), so type checkers reject a
    misspelled option (``**options: Unpack[PoolOptionsDict]``)."""

    max_connections: int
    max_per_host: Optional[int]
    timeout: Seconds
    checkout_timeout: Seconds
    connect_timeout: Seconds
    max_lifetime: Lifetime
    max_requests: Optional[int]
    prewarm_count: int
    queue_target: Seconds
    queue_interval: Seconds
    idle_interval: Seconds
    backoff_min: float
    backoff_max: float
    backoff_type: str
    strategy: str
    checkout_yield: bool
    adaptive_idle_timeout: bool
    h3_race_delay: float
    h3_blocked_ttl: float
    zero_rtt: bool


def _seconds(name: str, value: Any, allow_none: bool = True, allow_zero: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        raise TypeError("%s must be a number of seconds, not None" % name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds or None, not %s" % (name, type(value).__name__))
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError("%s must be %s, got %r" % (name, ">= 0" if allow_zero else "> 0", value))


def _count(name: str, value: Any, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("%s must be an int, not %s" % (name, type(value).__name__))
    if value < minimum:
        raise ValueError("%s must be >= %d, got %r" % (name, minimum, value))


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    """All options of a pool.  See README.rst "Pool options" for each one."""

    #: cap on OPEN connections (in use + idle + connecting) across all keys
    max_connections: int = 50
    #: cap on open connections per (host, port, transport); None = max_connections
    max_per_host: Optional[int] = None
    #: idle keep-alive: an idle connection closes itself after this many seconds
    timeout: Seconds = 30.0
    #: how long checkout() waits for a connection before PoolTimeout
    checkout_timeout: Seconds = 8.0
    #: DNS + TCP connect + TLS handshake deadline
    connect_timeout: Seconds = 8.0
    #: a connection is retired after this age (seconds, or a (min, max) range for jitter)
    max_lifetime: Lifetime = None
    #: a connection is retired after this many checkouts
    max_requests: Optional[int] = None
    #: connections opened in the background when a host is first used
    prewarm_count: int = 0
    #: CoDel load shedding (DBConnection): target wait and measuring interval
    queue_target: Seconds = None
    queue_interval: Seconds = None
    #: health ping of idle connections every this many seconds (+-20% jitter)
    idle_interval: Seconds = None
    #: reconnect backoff (prewarm, shared connections)
    backoff_min: float = 1.0
    backoff_max: float = 30.0
    backoff_type: str = "rand_exp"
    #: how a shared (multiplexed) connection is picked
    strategy: str = "round_robin"
    #: an exclusive checkout yields once to the hub first when other connections of its
    #: key are in use (greenlets ready in the same loop turn then send together)
    checkout_yield: bool = True
    #: learn per host how long the server keeps an idle connection (idle closes seen, a
    #: ``Keep-Alive: timeout=``) and retire idle connections a margin before that
    adaptive_idle_timeout: bool = True
    #: HTTP/3 racing: when no QUIC connection to an origin is open and its handshake has
    #: not finished after this many seconds, TCP serves the request (QUIC goes on for the
    #: next ones); 0 = TCP at once
    h3_race_delay: float = 0.25
    #: HTTP/3: an origin where QUIC failed is served over TCP for this many seconds
    h3_blocked_ttl: float = 300.0
    #: HTTP/3: with a session ticket for the origin, idempotent requests without a body
    #: go in 0-RTT (replayable by an attacker on the path); sent again at 1-RTT if refused
    zero_rtt: bool = False

    def __post_init__(self) -> None:
        _count("max_connections", self.max_connections)
        _count("max_per_host", self.max_per_host, allow_none=True)
        _seconds("timeout", self.timeout)
        _seconds("checkout_timeout", self.checkout_timeout, allow_zero=True)
        _seconds("connect_timeout", self.connect_timeout)
        lt = self.max_lifetime
        if isinstance(lt, (tuple, list)):
            if len(lt) != 2:
                raise ValueError("max_lifetime range must be (min, max), got %r" % (lt,))
            _seconds("max_lifetime", lt[0], allow_none=False)
            _seconds("max_lifetime", lt[1], allow_none=False)
            if lt[1] < lt[0]:
                raise ValueError("max_lifetime range must be (min, max) with min <= max, got %r" % (lt,))
            object.__setattr__(self, "max_lifetime", (float(lt[0]), float(lt[1])))
        else:
            _seconds("max_lifetime", lt)
        _count("max_requests", self.max_requests, allow_none=True)
        _count("prewarm_count", self.prewarm_count, minimum=0)
        _seconds("queue_target", self.queue_target)
        _seconds("queue_interval", self.queue_interval)
        if (self.queue_target is None) != (self.queue_interval is None):
            raise ValueError("queue_target and queue_interval go together: set both or neither")
        _seconds("idle_interval", self.idle_interval)
        _seconds("backoff_min", self.backoff_min, allow_none=False, allow_zero=True)
        _seconds("backoff_max", self.backoff_max, allow_none=False, allow_zero=True)
        if self.backoff_max < self.backoff_min:
            raise ValueError("backoff_max (%r) must be >= backoff_min (%r)" % (self.backoff_max, self.backoff_min))
        if self.backoff_type not in BACKOFF_TYPES:
            raise ValueError("backoff_type must be one of %s, not %r" % (", ".join(BACKOFF_TYPES), self.backoff_type))
        if self.strategy not in STRATEGIES:
            raise ValueError("strategy must be one of %s, not %r" % (", ".join(STRATEGIES), self.strategy))
        if not isinstance(self.checkout_yield, bool):
            raise TypeError("checkout_yield must be True or False, not %r" % (self.checkout_yield,))
        if not isinstance(self.zero_rtt, bool):
            raise TypeError("zero_rtt must be True or False, not %r" % (self.zero_rtt,))
        if not isinstance(self.adaptive_idle_timeout, bool):
            raise TypeError("adaptive_idle_timeout must be True or False, not %r"
                            % (self.adaptive_idle_timeout,))
        _seconds("h3_race_delay", self.h3_race_delay, allow_none=False, allow_zero=True)
        _seconds("h3_blocked_ttl", self.h3_blocked_ttl, allow_none=False, allow_zero=True)

    @property
    def per_host(self) -> int:
        return self.max_connections if self.max_per_host is None else self.max_per_host

    def replace(self, **changes: Any) -> "PoolOptions":
        """A copy with some options changed, validated again."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError("unknown pool option(s): %s" % ", ".join(sorted(unknown)))
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_kwargs(cls, **kw: Any) -> "PoolOptions":
        unknown = set(kw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError("unknown pool option(s): %s (known: %s)" % (
                ", ".join(sorted(unknown)), ", ".join(f.name for f in dataclasses.fields(cls))))
        return cls(**kw)
