"""greenpool's HTTP client: ``request()``, ``Client``, and the values they use.

Modules: ``client`` (the API and its policies), ``h1transport`` / ``h2transport``
(one exchange over HTTP/1.1 / HTTP/2), ``h1`` (+ ``h1_h11``, ``h1_httptools``:
the sans-IO HTTP/1.1 adapters), ``models`` (Timeout, Headers, URL, Request,
Response), ``decoding`` (Content-Encoding), ``retry`` (the Retry policy), ``cookies``
(the cookie jar's adapters), ``auth`` (Basic, Digest, custom flows), ``multipart``
(multipart/form-data bodies).
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
