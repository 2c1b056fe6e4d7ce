"""greenpool: a gevent-native client connection pool, with HTTP/1.1, HTTP/2 and Redis clients.

Public names are grouped here; see README.rst for the guide.
"""
import logging as _logging

from greenpool.backoff import Backoff
from greenpool.connection import Connection, Connector
from greenpool.errors import (  # noqa: F401
    AskError,
    AuthenticationError,
    CheckinError,
    ClusterDownError,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    DecodingError,
    DNSError,
    GreenPoolError,
    HTTPError,
    HTTPStatusError,
    InvalidURL,
    LimitExceeded,
    LocalProtocolError,
    MasterNotFound,
    MovedError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    ProtocolError,
    ReadError,
    ReadTimeout,
    RedisError,
    RemoteProtocolError,
    ReplyDecodeError,
    ResponseError,
    StreamConsumed,
    TimeoutException,
    TLSError,
    TooManyRedirects,
    TransactionAborted,
    TransportError,
    TryAgainError,
    WriteError,
    WriteTimeout,
)
from greenpool.http import (
    URL,
    Auth,
    BasicAuth,
    Client,
    DigestAuth,
    Headers,
    Response,
    Retry,
    Timeout,
    delete,
    get,
    head,
    options,
    patch,
    post,
    put,
    request,
)
from greenpool.options import PoolOptions
from greenpool.pool import GreenPool
from greenpool.registry import find_pool, get_pool, start_pool, stop_pool

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # pool and registry
    "GreenPool", "PoolOptions", "Connection", "Connector", "Backoff",
    "start_pool", "find_pool", "stop_pool", "get_pool",
    # HTTP
    "request", "get", "post", "put", "patch", "delete", "head", "options",
    "Client", "Response", "Headers", "Timeout", "URL", "Retry", "Auth", "BasicAuth", "DigestAuth",
    # errors (greenpool.errors)
    "GreenPoolError",
    "TimeoutException",
    "PoolError",
    "PoolTimeout",
    "PoolClosed",
    "CheckinError",
    "TransportError",
    "ConnectError",
    "DNSError",
    "TLSError",
    "ConnectTimeout",
    "ReadError",
    "ConnectionClosed",
    "WriteError",
    "ReadTimeout",
    "WriteTimeout",
    "ProtocolError",
    "RemoteProtocolError",
    "LimitExceeded",
    "LocalProtocolError",
    "HTTPError",
    "InvalidURL",
    "TooManyRedirects",
    "DecodingError",
    "StreamConsumed",
    "HTTPStatusError",
    "RedisError",
    "ResponseError",
    "MovedError",
    "AskError",
    "TryAgainError",
    "ClusterDownError",
    "MasterNotFound",
    "TransactionAborted",
    "ReplyDecodeError",
    "AuthenticationError",
]

# silent unless the application configures logging
_logging.getLogger("greenpool").addHandler(_logging.NullHandler())
