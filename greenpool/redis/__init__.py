"""greenpool's Redis client: :class:`RedisPool` (shared, auto-pipelined connections).

::

    from greenpool.redis import RedisPool
    with RedisPool(pool_size=5, host="127.0.0.1", port=6379) as rp:
        rp.command(["SET", "k", "v"])
        rp.pipeline([["GET", "k"], ["INCR", "n"]])
        rp.transaction([["INCR", "n"], ["GET", "n"]])

Errors are greenpool's (:mod:`greenpool.errors`), re-exported here.
"""
from greenpool.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    GreenPoolError,
    LimitExceeded,
    PoolClosed,
    PoolTimeout,
    ReadTimeout,
    RedisError,
    RemoteProtocolError,
    ReplyDecodeError,
    ResponseError,
    TransactionAborted,
)
from greenpool.redis.pool import READ_ONLY_COMMANDS, RedisPool, is_read_only, parse_url
from greenpool.redis.resp import pack_command, pack_commands

__all__ = [
    "RedisPool", "parse_url", "pack_command", "pack_commands", "READ_ONLY_COMMANDS", "is_read_only",
    "RedisError", "ResponseError", "TransactionAborted", "ReplyDecodeError", "AuthenticationError",
    "ConnectError", "ConnectionClosed", "RemoteProtocolError", "LimitExceeded",
    "ReadTimeout", "PoolTimeout", "PoolClosed", "GreenPoolError",
]
