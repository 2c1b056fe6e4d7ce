"""greenpool's HTTP client: ``request()``, ``Client``, and the values they use.

Protocol-free modules: ``client`` (the API and its policies), ``models`` (Timeout, Headers,
URL, Request, Response), ``decoding`` (Content-Encoding), ``retry`` (the Retry policy),
``cookies`` (the cookie jar's adapters), ``auth`` (Basic, Digest, custom flows),
``multipart`` (multipart/form-data bodies).  One package per HTTP version, each its sans-IO
connection and its transport side by side: ``h1`` (HTTP/1.1: ``h1.conn`` over
``h1.parser_h11`` / ``h1.parser_httptools``, ``h1.transport``), ``h2`` (HTTP/2:
``h2.backend``, ``h2.conn``, ``h2.transport``), ``h3`` (HTTP/3 over QUIC).
"""
from greenpool.http.auth import Auth, BasicAuth, DigestAuth
from greenpool.http.client import (
    Client,
    delete,
    get,
    head,
    options,
    patch,
    post,
    put,
    request,
)
from greenpool.http.decoding import DEFAULT_MAX_DECODED_SIZE
from greenpool.http.models import URL, Headers, Request, Response, Timeout
from greenpool.http.retry import Retry

__all__ = [
    "request", "get", "post", "put", "patch", "delete", "head", "options", "Client",
    "Response", "Request", "Headers", "Timeout", "URL", "Retry", "DEFAULT_MAX_DECODED_SIZE",
    "Auth", "BasicAuth", "DigestAuth",
]
