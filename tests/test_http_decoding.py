"""greenpool.http.decoding: gzip/deflate/brotli decoders and the decoded-size cap."""
from __future__ import annotations

import gzip
import zlib

import pytest

from greenpool.errors import DecodingError
from greenpool.http import decoding
from greenpool.http.decoding import decode_all, make_decoder

DATA = b"greenpool " * 5000


def pieces(data, n=7):
    return [data[i:i + n] for i in range(0, len(data), n)]


@pytest.mark.parametrize("coding,compress", [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda d: zlib.compressobj(6, zlib.DEFLATED, -15).compress(d) + b""),
])
def test_roundtrip_in_pieces(coding, compress):
    if compress is not gzip.compress and compress is not zlib.compress:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        z = c.compress(DATA) + c.flush()
    else:
        z = compress(DATA)
    d = make_decoder(coding)
    out = b"".join(d.decode(p) for p in pieces(z, 13)) + d.flush()
    assert out == DATA
    assert decode_all(make_decoder(coding), z) == DATA


def test_multi_member_gzip_and_padding():
    z = gzip.compress(b"one ") + gzip.compress(b"two") + b"\x00\x00"
    assert decode_all(make_decoder("gzip"), z) == b"one two"


def test_identity_unknown_and_empty():
    assert make_decoder(None) is None
    assert make_decoder("") is None
    assert make_decoder("identity") is None
    assert make_decoder("compress") is None  # unknown: the raw body is returned


def test_chain():
    z = zlib.compress(gzip.compress(DATA))  # gzip applied first, then deflate
    assert decode_all(make_decoder("gzip, deflate"), z) == DATA


def test_invalid_data():
    with pytest.raises(DecodingError):
        decode_all(make_decoder("gzip"), b"definitely not gzip")
    with pytest.raises(DecodingError):
        decode_all(make_decoder("deflate"), b"\xff\xfe\xfd not deflate")


def test_truncated_gzip():
    z = gzip.compress(DATA)
    with pytest.raises(DecodingError):
        decode_all(make_decoder("gzip"), z[: len(z) // 2])


@pytest.mark.parametrize("coding,compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_cap_stops_a_bomb(coding, compress):
    bomb = compress(b"\0" * (50 * 1024 * 1024))  # ~50 KiB on the wire
    d = make_decoder(coding, max_decoded_size=1024 * 1024)
    with pytest.raises(DecodingError, match="max_decoded_size"):
        for p in pieces(bomb, 4096):
            d.decode(p)
        d.flush()
    assert d.produced <= 1024 * 1024 + 256 * 1024  # never inflated much past the cap


def test_cap_exact_size_is_allowed():
    d = make_decoder("gzip", max_decoded_size=len(DATA))
    assert decode_all(d, gzip.compress(DATA)) == DATA
    d = make_decoder("gzip", max_decoded_size=None)
    assert decode_all(d, gzip.compress(DATA)) == DATA


def test_default_cap_and_accept_encoding():
    assert decoding.DEFAULT_MAX_DECODED_SIZE == 64 * 1024 * 1024
    assert "gzip" in decoding.ACCEPT_ENCODING and "deflate" in decoding.ACCEPT_ENCODING
    assert ("br" in decoding.ACCEPT_ENCODING) == ("br" in decoding.supported())


def test_brotli():
    brotli = pytest.importorskip("brotli")
    z = brotli.compress(DATA)
    d = make_decoder("br")
    assert b"".join(d.decode(p) for p in pieces(z, 11)) + d.flush() == DATA
    with pytest.raises(DecodingError):
        decode_all(make_decoder("br"), b"not brotli data at all")
    with pytest.raises(DecodingError):
        decode_all(make_decoder("br", max_decoded_size=1000), z)
    with pytest.raises(DecodingError):
        decode_all(make_decoder("br"), z[: len(z) // 2])
