"""Named pools, as in hackney: one process-wide registry of GreenPool objects.

What this owns: the mapping ``name -> GreenPool``, the lazily started
``"default"`` pool, and fork safety.

Promises:

* ``start_pool(name, **opts)`` is idempotent: an existing pool of that name is
  returned as it is (its options are not changed; stop it first to change them).
* ``stop_pool(name)`` closes every connection of the pool, fails its waiters
  with ``PoolClosed`` and removes it; later use of the stopped object raises
  ``PoolClosed``.
* After ``os.fork()`` the child keeps the same pool objects, emptied: every
  inherited descriptor is dropped without a byte sent to the peer, so parent
  and child never share a socket (``os.register_at_fork``).  That includes the
  sockets still being opened when the parent forked (no pool holds them yet;
  :func:`greenpool.net.sever_inherited` reaches them): the child's copy of a
  greenlet that was connecting fails instead of going on with the parent's
  connection.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Literal, Optional, TypedDict, overload

from greenpool import net
from greenpool.connection import Connector
from greenpool.options import PoolOptionsDict
from greenpool.pool import _ALL_POOLS, GreenPool

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from greenpool.redis import RedisPool


class RedisPoolOptionsDict(TypedDict, total=False):
    """The keywords of ``start_pool(name, protocol="redis", ...)``: RedisPool's but
    ``name`` and ``protocol`` (start_pool's own; a test keeps the rest equal)."""

    pool_size: int
    host: Optional[str]
    port: Optional[int]
    db: Optional[int]
    username: Optional[str]
    password: Optional[str]
    ssl: Optional[bool]
    strategy: str
    timeout: float
    connect_timeout: float
    backoff_min: float
    backoff_max: float
    backoff_type: str
    url: Optional[str]
    decode_responses: bool
    parser: str
    max_reply_size: int
    start: str
    client_name: Optional[str]
    verify: Any
    retry_reads: int
    push_handler: Optional[Callable[[List[Any]], Any]]
    idle_interval: Optional[float]
    unix_socket_path: Optional[str]
    max_blocking: int


DEFAULT = "default"

_pools: Dict[str, GreenPool] = {}


PROTOCOLS = ("generic", "redis")


@overload
def start_pool(name: str, *, protocol: Literal["generic"] = "generic",
               connector: Optional[Connector] = None,
               **options: Unpack[PoolOptionsDict]) -> GreenPool: ...


@overload
def start_pool(name: str, *, protocol: Literal["redis"],
               **options: Unpack[RedisPoolOptionsDict]) -> "RedisPool": ...


def start_pool(name: str, *, protocol: str = "generic", connector: Optional[Connector] = None,
               **options: Any) -> GreenPool:
    """Start the pool ``name`` (or return the running one).

    ``protocol="redis"`` starts a :class:`greenpool.redis.RedisPool` (options
    as RedisPool takes them); the default is a generic pool of TCP/TLS
    connections, which the HTTP client uses.
    """
    pool = _pools.get(name)
    if pool is not None and not pool.closed:
        return pool
    if protocol == "redis":
        from greenpool.redis import RedisPool
        pool = RedisPool(name=name, **options)
    elif protocol == "generic":
        pool = GreenPool(name, connector=connector, **options)
    else:
        raise ValueError("protocol must be one of %s, not %r" % (", ".join(PROTOCOLS), protocol))
    _pools[name] = pool
    return pool


def find_pool(name: str) -> Optional[GreenPool]:
    """The running pool called ``name``, or None."""
    return _pools.get(name)


def stop_pool(name: str) -> bool:
    """Stop and forget the pool ``name``; False when there was none."""
    pool = _pools.pop(name, None)
    if pool is None:
        return False
    pool.close()
    return True


def get_pool(name: str = DEFAULT) -> GreenPool:
    """The pool ``name``; the ``"default"`` pool is started on first use."""
    pool = _pools.get(name)
    if pool is None:
        if name != DEFAULT:
            from greenpool.errors import PoolError
            raise PoolError(name, "no such pool; start it with greenpool.start_pool(%r, ...)" % (name,))
        pool = start_pool(DEFAULT)
    return pool


def resolve_pool(pool: Any) -> GreenPool:
    """A GreenPool given itself or its name (``"default"`` is started lazily)."""
    if isinstance(pool, GreenPool):
        return pool
    if pool is None:
        return get_pool(DEFAULT)
    if isinstance(pool, str):
        return get_pool(pool)
    raise TypeError("pool must be a pool name or a GreenPool, not %s" % type(pool).__name__)


def all_pools() -> Dict[str, GreenPool]:
    return dict(_pools)


def _after_fork_in_child() -> None:
    # a plain os.fork() in an unpatched process leaves gevent's hub and its
    # resolver threadpool as the parent had them; gevent.reinit() (idempotent,
    # and what gevent.fork() does itself) makes them usable in the child
    import gevent
    gevent.reinit()
    # registered pools and every other live one (a pool made
    # directly with GreenPool(...)): none may hand the parent's sockets to the child
    pools = list(_pools.values())
    pools += [p for p in list(_ALL_POOLS) if p not in pools]
    for pool in pools:
        pool._after_fork_in_child()
    # then every other socket greenpool opened in the parent: the ones still connecting
    # (DNS, TCP, a TLS handshake, a proxy's tunnel) when it forked, which no pool holds yet;
    # the child's copies of the greenlets opening them fail instead of going on with the
    # parent's connection
    net.sever_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
