"""The one exception tree of greenpool.

What this owns: every exception greenpool raises on purpose, and the mapping of
low-level errors (``OSError``, ``ssl.SSLError``, ``socket.gaierror``, our own
``gevent.Timeout``) onto that tree at the I/O boundary.

Rules:

* Everything greenpool raises derives from :class:`GreenPoolError`, except
  ``ValueError``/``TypeError`` for invalid arguments given by the caller
  (options are validated once, up front), which is what Python users expect.
* A ``gevent.Timeout`` started by greenpool never escapes: it becomes one of the
  :class:`TimeoutException` subclasses.  A ``gevent.Timeout`` started by the
  *caller* is never swallowed: it propagates untouched, after greenpool has
  released whatever it held.
* Messages say what happened and what to do next.

::

    GreenPoolError
    ├── PoolError                  (.pool: the pool's name)
    │   ├── PoolTimeout            (also a TimeoutException)
    │   ├── PoolClosed
    │   └── CheckinError           (foreign or already returned connection)
    ├── TransportError
    │   ├── ConnectError
    │   │   ├── DNSError
    │   │   ├── TLSError
    │   │   └── ConnectTimeout     (also a TimeoutException)
    │   ├── ReadError
    │   │   └── ConnectionClosed   (the peer closed the connection)
    │   ├── WriteError
    │   ├── ReadTimeout            (also a TimeoutException)
    │   └── WriteTimeout           (also a TimeoutException)
    ├── TimeoutException
    ├── ProtocolError
    │   ├── RemoteProtocolError    (the peer broke the protocol)
    │   │   └── LimitExceeded      (a configured size/count limit was hit)
    │   └── LocalProtocolError     (the request itself is invalid)
    ├── HTTPError
    │   ├── InvalidURL             (also a ValueError)
    │   ├── TooManyRedirects
    │   ├── DecodingError
    │   ├── StreamConsumed
    │   └── HTTPStatusError        (raise_for_status)
    └── RedisError
        ├── ResponseError          (the server answered with an error reply)
        │   ├── MovedError         (MOVED slot host:port: the slot lives elsewhere now)
        │   ├── AskError           (ASK slot host:port: this one command goes elsewhere)
        │   ├── TryAgainError      (TRYAGAIN: a multi-key command during a slot migration)
        │   └── ClusterDownError   (CLUSTERDOWN: the cluster cannot serve the slot now)
        ├── TransactionAborted     (EXEC returned nil or EXECABORT)
        ├── ReplyDecodeError       (a reply not valid in the encoding; decode_responses)
        ├── MasterNotFound         (no sentinel names a usable node; also a ConnectError)
        └── AuthenticationError
"""
from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from typing import Any, Iterator, Optional, Type

import gevent


class GreenPoolError(Exception):
    """Base class of every error greenpool raises on purpose."""


# -- timeouts --


class TimeoutException(GreenPoolError):
    """A greenpool deadline passed (connect, read, write or pool wait)."""


# -- pool --


class PoolError(GreenPoolError):
    """An error that concerns a pool as a whole; ``.pool`` names it."""

    def __init__(self, pool: Optional[str], message: str) -> None:
        self.pool = pool
        super().__init__(message if pool is None else "pool %r: %s" % (pool, message))


class PoolTimeout(PoolError, TimeoutException):
    """No connection could be had before the checkout deadline."""


class PoolClosed(PoolError):
    """The pool was stopped; it hands out nothing more."""


class CheckinError(PoolError):
    """A connection was returned to a pool that does not hold it."""


# -- transport --


class TransportError(GreenPoolError):
    """The network failed under a connection."""


class ConnectError(TransportError):
    """A connection could not be opened."""


class DNSError(ConnectError):
    """A host name could not be resolved."""


class TLSError(ConnectError):
    """The TLS handshake failed (certificate not trusted, wrong host, ...)."""


class ConnectTimeout(ConnectError, TimeoutException):
    """Opening a connection took longer than ``connect_timeout``."""


class ReadError(TransportError):
    """Reading from an open connection failed."""


class ConnectionClosed(ReadError):
    """The peer closed the connection."""


class WriteError(TransportError):
    """Writing to an open connection failed."""


class ReadTimeout(TransportError, TimeoutException):
    """The peer sent nothing for longer than the read timeout."""


class WriteTimeout(TransportError, TimeoutException):
    """The peer accepted nothing for longer than the write timeout."""


# -- protocol --


class ProtocolError(GreenPoolError):
    """A protocol rule was broken."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class LimitExceeded(RemoteProtocolError):
    """The peer sent more than a configured limit allows (headers, body, reply)."""


class LocalProtocolError(ProtocolError):
    """What we were asked to send is not valid (e.g. CR/LF in a header)."""


# -- HTTP --


class HTTPError(GreenPoolError):
    """Base class of the HTTP client's own errors."""


class InvalidURL(HTTPError, ValueError):
    """A URL could not be parsed or names an unsupported scheme."""


class TooManyRedirects(HTTPError):
    """More redirects than ``max_redirects`` were followed."""


class DecodingError(HTTPError):
    """A response body could not be decoded (bad gzip, decoded size over the cap)."""


class StreamConsumed(HTTPError):
    """A streamed body was read a second time."""


class HTTPStatusError(HTTPError):
    """Raised by ``Response.raise_for_status()`` for 4xx and 5xx responses."""

    def __init__(self, message: str, response: Any = None) -> None:
        super().__init__(message)
        self.response = response


# -- Redis --


class RedisError(GreenPoolError):
    """Base class of the Redis client's own errors."""


class ResponseError(RedisError):
    """The server answered a command with an error reply (``-ERR ...``)."""


class _Redirect(ResponseError):
    """An error reply naming where to go: ``MOVED|ASK <slot> <host>:<port>``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        parts = message.split()
        self.slot = -1
        self.host = ""
        self.port = 0
        if len(parts) >= 3 and parts[1].isdigit():
            host, _, port = parts[2].rpartition(":")
            if port.isdigit():
                self.slot = int(parts[1])
                self.host = host
                self.port = int(port)


class MovedError(_Redirect):
    """``MOVED <slot> <host>:<port>``: the slot is served by another node now.

    :attr:`slot`, :attr:`host` and :attr:`port` say where (``host`` may be ``""``: the
    node that answered, as Redis says for an unknown endpoint).
    """


class AskError(_Redirect):
    """``ASK <slot> <host>:<port>``: the slot is migrating; send this command (after
    ASKING) to that node once; the slot map does not change."""


class TryAgainError(ResponseError):
    """``TRYAGAIN``: a multi-key command during a slot migration; retry a bit later."""


class ClusterDownError(ResponseError):
    """``CLUSTERDOWN``: the cluster cannot serve the slot now (a failover in progress)."""


_REPLY_CLASSES = {"MOVED": MovedError, "ASK": AskError, "TRYAGAIN": TryAgainError,
                  "CLUSTERDOWN": ClusterDownError}
#: every class error_reply() builds: ``type(reply) in REPLY_ERRORS`` tells an error reply
#: with one set lookup (isinstance() costs more on the path of every successful reply)
REPLY_ERRORS = frozenset((ResponseError, *_REPLY_CLASSES.values()))


def error_reply(message: str) -> ResponseError:
    """The :class:`ResponseError` for an error reply's text: the subclass its first word
    names (MOVED, ASK, TRYAGAIN, CLUSTERDOWN), else a plain ResponseError."""
    cls = _REPLY_CLASSES.get(message.partition(" ")[0])
    return ResponseError(message) if cls is None else cls(message)


class TransactionAborted(RedisError):
    """A MULTI/EXEC transaction was discarded (WATCH conflict or EXECABORT)."""


class ReplyDecodeError(RedisError):
    """A reply could not be decoded (``decode_responses=True`` and bytes not valid in the
    encoding).  Only that command fails: the reply was read whole, the connection stays."""
class MasterNotFound(RedisError, ConnectError):
    """No sentinel named a usable node of the service (or none answered)."""


class AuthenticationError(RedisError, ConnectError):
    """The server refused our credentials."""


# -- mapping at the I/O boundary --


@contextlib.contextmanager
def map_exceptions(
    timeout: Optional[gevent.Timeout] = None,
    on_timeout: Type[GreenPoolError] = ReadTimeout,
    on_error: Type[GreenPoolError] = ReadError,
    message: str = "",
) -> Iterator[None]:
    """Turn socket-level failures inside the block into greenpool errors.

    ``timeout`` is *our own* ``gevent.Timeout`` (if any): only that instance
    becomes ``on_timeout``; any other ``gevent.Timeout`` (the caller's)
    propagates unchanged.
    """
    try:
        yield
    except gevent.Timeout as t:
        if t is not timeout or timeout is None:
            raise
        raise on_timeout(message or "timed out after %s" % (format_seconds(timeout.seconds),)) from None
    except GreenPoolError:
        raise
    except socket.timeout as e:  # a socket-level timeout (sock.settimeout)
        raise on_timeout(message or "timed out") from e
    except ssl.SSLError as e:
        raise (TLSError if on_error is ConnectError else on_error)(
            "%s%s" % (message + ": " if message else "", e)
        ) from e
    except socket.gaierror as e:
        raise DNSError("%s%s" % (message + ": " if message else "", e)) from e
    except OSError as e:
        if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED) and on_error is ReadError:
            raise ConnectionClosed("%sconnection reset by peer" % (message + ": " if message else "")) from e
        raise on_error("%s%s" % (message + ": " if message else "", e)) from e


def format_address(host: str, port: Optional[int]) -> str:
    """``host:port`` as a message shows it: an IPv6 literal in brackets
    (``[::1]:24001``), the port left off when it is None."""
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    return host if port is None else "%s:%s" % (host, port)


def format_seconds(seconds: Optional[float]) -> str:
    """A duration as a message shows it, to two significant digits (whole seconds
    from 10 s): ``2s`` for 1.99987..., ``0.25s``, ``0.29s`` for 0.2876,
    ``120s``; ``no limit`` for None."""
    if seconds is None:
        return "no limit"
    if seconds >= 10:
        return "%.0fs" % seconds
    return "%.2gs" % seconds


__all__ = [
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
    "error_reply",
    "REPLY_ERRORS",
    "TransactionAborted",
    "ReplyDecodeError",
    "MasterNotFound",
    "AuthenticationError",
    "map_exceptions",
    "format_address",
    "format_seconds",
]
