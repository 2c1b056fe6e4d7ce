"""greenpool's Redis client: :class:`RedisPool` (shared, auto-pipelined connections), and
:class:`RedisClusterPool` (Redis Cluster: one RedisPool per node) and
:class:`RedisSentinelPool` (the master Sentinel names, followed across failovers).

::

    from greenpool.redis import RedisPool
    with RedisPool(pool_size=5, host="127.0.0.1", port=6379) as rp:
        rp.command(["SET", "k", "v"])
        rp.pipeline([["GET", "k"], ["INCR", "n"]])
        rp.transaction([["INCR", "n"], ["GET", "n"]])

Errors are greenpool's (:mod:`greenpool.errors`), re-exported here.
"""
from greenpool.errors import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    ConnectError,
    ConnectionClosed,
    GreenPoolError,
    LimitExceeded,
    MasterNotFound,
    MovedError,
    PoolClosed,
    PoolTimeout,
    ReadTimeout,
    RedisError,
    RemoteProtocolError,
    ResponseError,
    TransactionAborted,
    TryAgainError,
)
from greenpool.redis.cluster import RedisClusterPool, key_slot
from greenpool.redis.pool import READ_ONLY_COMMANDS, RedisPool, is_read_only, parse_url
from greenpool.redis.resp import pack_command, pack_commands
from greenpool.redis.sentinel import RedisSentinelPool

__all__ = [
    "RedisPool", "RedisClusterPool", "RedisSentinelPool", "key_slot", "parse_url", "pack_command", "pack_commands",
    "READ_ONLY_COMMANDS", "is_read_only",
    "RedisError", "ResponseError", "TransactionAborted", "AuthenticationError",
    "MovedError", "AskError", "TryAgainError", "ClusterDownError", "MasterNotFound",
    "ConnectError", "ConnectionClosed", "RemoteProtocolError", "LimitExceeded",
    "ReadTimeout", "PoolTimeout", "PoolClosed", "GreenPoolError",
]
