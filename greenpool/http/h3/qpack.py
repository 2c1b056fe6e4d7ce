"""QPACK encoding of request field sections with the static table only (RFC 9204).

What this owns: :func:`encode_section`, the payload of a request's HEADERS frame, which
:mod:`.conn` sends instead of the QUIC library's encoder.  That encoder zeroes two 4 KiB
buffers per field (~8k instructions per field, ~57k for a plain GET: the largest single
cost of an HTTP/3 request); a section that never refers to the dynamic table costs a
dictionary lookup per field here.

Promises:

* Every section has Required Insert Count 0 and Base 0: it never refers to the dynamic
  table, so the server's decoder never blocks on it and never acknowledges it, and our
  encoder stream stays silent (RFC 9204 2.1.1, 4.4.1).  Using no dynamic table is always
  allowed, whatever the server's ``SETTINGS_QPACK_MAX_TABLE_CAPACITY``.
* Each field is an indexed field line when the static table holds the name and value, a
  literal with a static name reference when it holds the name, else a literal with a
  literal name; no Huffman coding (optional) and the N bit clear.
* Names and values are sent as given: the request path (``h2.transport.build_headers``)
  has already refused upper-case names, connection-specific fields and CR/LF/NUL.
* :data:`STATIC_TABLE` is RFC 9204 Appendix A; the tests check every entry, and random
  sections, against the QUIC library's decoder.
* Encoded fields are kept for reuse: at most :data:`MAX_CACHED` fields of up to 256 bytes
  (values such as ``:path`` vary; the cache is cleared when full).
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

__all__ = ["STATIC_TABLE", "encode_section", "encode_field", "MAX_CACHED"]

#: RFC 9204 Appendix A: index -> (name, value)
STATIC_TABLE: Tuple[Tuple[bytes, bytes], ...] = (
    (b":authority", b""), (b":path", b"/"), (b"age", b"0"), (b"content-disposition", b""),
    (b"content-length", b"0"), (b"cookie", b""), (b"date", b""), (b"etag", b""),
    (b"if-modified-since", b""), (b"if-none-match", b""), (b"last-modified", b""),
    (b"link", b""), (b"location", b""), (b"referer", b""), (b"set-cookie", b""),
    (b":method", b"CONNECT"), (b":method", b"DELETE"), (b":method", b"GET"),
    (b":method", b"HEAD"), (b":method", b"OPTIONS"), (b":method", b"POST"),
    (b":method", b"PUT"), (b":scheme", b"http"), (b":scheme", b"https"),
    (b":status", b"103"), (b":status", b"200"), (b":status", b"304"), (b":status", b"404"),
    (b":status", b"503"), (b"accept", b"*/*"), (b"accept", b"application/dns-message"),
    (b"accept-encoding", b"gzip, deflate, br"), (b"accept-ranges", b"bytes"),
    (b"access-control-allow-headers", b"cache-control"),
    (b"access-control-allow-headers", b"content-type"),
    (b"access-control-allow-origin", b"*"), (b"cache-control", b"max-age=0"),
    (b"cache-control", b"max-age=2592000"), (b"cache-control", b"max-age=604800"),
    (b"cache-control", b"no-cache"), (b"cache-control", b"no-store"),
    (b"cache-control", b"public, max-age=31536000"), (b"content-encoding", b"br"),
    (b"content-encoding", b"gzip"), (b"content-type", b"application/dns-message"),
    (b"content-type", b"application/javascript"), (b"content-type", b"application/json"),
    (b"content-type", b"application/x-www-form-urlencoded"), (b"content-type", b"image/gif"),
    (b"content-type", b"image/jpeg"), (b"content-type", b"image/png"),
    (b"content-type", b"text/css"), (b"content-type", b"text/html; charset=utf-8"),
    (b"content-type", b"text/plain"), (b"content-type", b"text/plain;charset=utf-8"),
    (b"range", b"bytes=0-"), (b"strict-transport-security", b"max-age=31536000"),
    (b"strict-transport-security", b"max-age=31536000; includesubdomains"),
    (b"strict-transport-security", b"max-age=31536000; includesubdomains; preload"),
    (b"vary", b"accept-encoding"), (b"vary", b"origin"),
    (b"x-content-type-options", b"nosniff"), (b"x-xss-protection", b"1; mode=block"),
    (b":status", b"100"), (b":status", b"204"), (b":status", b"206"), (b":status", b"302"),
    (b":status", b"400"), (b":status", b"403"), (b":status", b"421"), (b":status", b"425"),
    (b":status", b"500"), (b"accept-language", b""),
    (b"access-control-allow-credentials", b"FALSE"),
    (b"access-control-allow-credentials", b"TRUE"), (b"access-control-allow-headers", b"*"),
    (b"access-control-allow-methods", b"get"),
    (b"access-control-allow-methods", b"get, post, options"),
    (b"access-control-allow-methods", b"options"),
    (b"access-control-expose-headers", b"content-length"),
    (b"access-control-request-headers", b"content-type"),
    (b"access-control-request-method", b"get"), (b"access-control-request-method", b"post"),
    (b"alt-svc", b"clear"), (b"authorization", b""),
    (b"content-security-policy", b"script-src 'none'; object-src 'none'; base-uri 'none'"),
    (b"early-data", b"1"), (b"expect-ct", b""), (b"forwarded", b""), (b"if-range", b""),
    (b"origin", b""), (b"purpose", b"prefetch"), (b"server", b""),
    (b"timing-allow-origin", b"*"), (b"upgrade-insecure-requests", b"1"),
    (b"user-agent", b""), (b"x-forwarded-for", b""), (b"x-frame-options", b"deny"),
    (b"x-frame-options", b"sameorigin"),
)

_BY_FIELD: Dict[Tuple[bytes, bytes], int] = {}
_BY_NAME: Dict[bytes, int] = {}
for _i, (_name, _value) in enumerate(STATIC_TABLE):
    _BY_FIELD.setdefault((_name, _value), _i)
    _BY_NAME.setdefault(_name, _i)
del _i, _name, _value

#: Required Insert Count 0, Base 0 (sign bit clear, delta 0)
_PREFIX = b"\x00\x00"
MAX_CACHED = 512
_cache: Dict[Tuple[bytes, bytes], bytes] = {}


def _integer(first: int, bits: int, value: int) -> bytes:
    """A prefixed integer (RFC 7541 5.1) in the low ``bits`` of ``first``."""
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field line (see the module docstring for which representation)."""
    index = _BY_FIELD.get((name, value))
    if index is not None:
        return _integer(0xC0, 6, index)                     # 1 T=1 index(6+)
    index = _BY_NAME.get(name)
    if index is not None:                                   # 0 1 N=0 T=1 index(4+)
        return _integer(0x50, 4, index) + _integer(0, 7, len(value)) + value
    return (_integer(0x20, 3, len(name)) + name              # 0 0 1 N=0 H=0 length(3+)
            + _integer(0, 7, len(value)) + value)


def encode_section(headers: Iterable[Tuple[bytes, bytes]]) -> bytes:
    """The encoded field section of ``headers`` (``[(name, value)]``, bytes)."""
    cache = _cache
    parts = [_PREFIX]
    append = parts.append
    for field in headers:
        line = cache.get(field)
        if line is None:
            line = encode_field(field[0], field[1])
            if len(line) <= 256:
                if len(cache) >= MAX_CACHED:
                    cache.clear()
                cache[field] = line
        append(line)
    return b"".join(parts)
