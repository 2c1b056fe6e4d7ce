"""greenpool: a gevent-native client connection pool, with HTTP/1.1, HTTP/2 and Redis clients."""
from greenpool.errors import *  # noqa: F401,F403
from greenpool.errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["__version__"] + list(_errors_all)
