"""greenpool's Redis client: :class:`RedisPool` (shared, auto-pipelined connections, and
dedicated ones for blocking commands, pub/sub, MONITOR, WATCH and stateful sequences),
:class:`RedisClusterPool` (Redis Cluster: one RedisPool per node) and
:class:`RedisSentinelPool` (the master Sentinel names, followed across failovers).

::

    from greenpool.redis import RedisPool
    with RedisPool(pool_size=5, host="127.0.0.1", port=6379) as rp:
        rp.command(["SET", "k", "v"])
        rp.pipeline([["GET", "k"], ["INCR", "n"]])
        rp.transaction([["INCR", "n"], ["GET", "n"]])
        rp.command(["BLPOP", "jobs", 5])            # on a dedicated connection
        with rp.pubsub() as p:
            p.subscribe("news")
            p.get_message(timeout=1.0)

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
    ReplyDecodeError,
    ResponseError,
    TransactionAborted,
    TryAgainError,
)
from greenpool.redis.cluster import RedisClusterPool, key_slot
from greenpool.redis.dedicated import BLOCKING_COMMANDS, DedicatedConnection, blocking_time
from greenpool.redis.pool import READ_ONLY_COMMANDS, RedisPool, is_read_only, parse_url
from greenpool.redis.pubsub import Monitor, PubSub
from greenpool.redis.resp import pack_command, pack_commands
from greenpool.redis.scripts import Script, ScriptCommand
from greenpool.redis.sentinel import RedisSentinelPool

__all__ = [
    "RedisPool", "RedisClusterPool", "RedisSentinelPool", "key_slot", "parse_url", "pack_command",
    "pack_commands", "READ_ONLY_COMMANDS", "is_read_only",
    "DedicatedConnection", "PubSub", "Monitor", "Script", "ScriptCommand", "BLOCKING_COMMANDS",
    "blocking_time",
    "RedisError", "ResponseError", "TransactionAborted", "ReplyDecodeError", "AuthenticationError",
    "MovedError", "AskError", "TryAgainError", "ClusterDownError", "MasterNotFound",
    "ConnectError", "ConnectionClosed", "RemoteProtocolError", "LimitExceeded",
    "ReadTimeout", "PoolTimeout", "PoolClosed", "GreenPoolError",
]
