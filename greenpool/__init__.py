"""greenpool: a gevent-native client connection pool, with HTTP/1.1, HTTP/2 and Redis clients.

Public names are grouped here; see README.rst for the guide.
"""
from greenpool.backoff import Backoff
from greenpool.connection import Connection, Connector
from greenpool.errors import *  # noqa: F401,F403
from greenpool.errors import __all__ as _errors_all
from greenpool.http import (
    URL,
    Client,
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
    "Client", "Response", "Headers", "Timeout", "URL", "Retry",
] + list(_errors_all)
