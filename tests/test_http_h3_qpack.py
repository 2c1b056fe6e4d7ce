"""greenpool.http.h3.qpack: request field sections with the static table only, checked against
the QUIC library's own QPACK decoder (ls-qpack inside qh3).  Interop with real servers is in
test_http_h3.py (the in-process qh3 server, Caddy)."""
from __future__ import annotations

import pytest

pytest.importorskip("qh3")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from qh3._hazmat import QpackDecoder  # noqa: E402

from greenpool.http.h3 import qpack  # noqa: E402
from greenpool.http.h3.qpack import STATIC_TABLE, encode_field, encode_section  # noqa: E402

_sid = iter(range(0, 1 << 40, 4))


def decode(section: bytes):
    """What the library's decoder reads from ``section`` (and must say back: nothing)."""
    decoder = QpackDecoder(4096, 16)
    instructions, headers = decoder.feed_header(next(_sid), section)
    assert instructions == b""          # Required Insert Count 0: nothing to acknowledge
    return list(headers)


def test_the_static_table_is_the_decoders():
    assert len(STATIC_TABLE) == 99
    for index, field in enumerate(STATIC_TABLE):
        line = bytes([0xC0 | index]) if index < 63 else bytes([0xFF, index - 63])
        assert decode(b"\x00\x00" + line) == [field], index


def test_each_representation_and_prefix_boundary():
    cases = [
        (b":method", b"GET"),                      # indexed, index < 63
        (b"x-frame-options", b"sameorigin"),       # indexed, index 98 (two bytes)
        (b":path", b"/bytes/100"),                 # static name reference, index 1
        (b"user-agent", b"greenpool/0.1.0"),       # static name reference, index 95
        (b"x-abcd", b"v"),                         # literal name of 6 bytes (under 7)
        (b"x-abcde", b"v"),                        # 7 bytes: the 3-bit prefix is full
        (b"x-" + b"n" * 300, b"v"),                # a long literal name
        (b"x-v", b"a" * 126), (b"x-v", b"a" * 127), (b"x-v", b"a" * 128),
        (b"x-v", b"b" * 20000),                    # a value length of three bytes
        (b"x-empty", b""), (b":authority", b""), (b"cookie", b"a=1; b=2"),
    ]
    for field in cases:
        assert decode(b"\x00\x00" + encode_field(*field)) == [field], field
    assert decode(encode_section(cases)) == cases
    assert encode_field(b":method", b"GET") == bytes([0xC0 | 17])
    # a value that is not UTF-8 (obs-text) goes as its bytes: literal, no Huffman coding
    assert encode_field(b"x-l", b"caf\xe9") == b"\x23x-l\x04caf\xe9"


_names = st.one_of(
    st.sampled_from(sorted({name for name, _ in STATIC_TABLE})),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=40)
    .map(lambda s: s.encode("ascii")),
)
_values = st.one_of(
    st.sampled_from(sorted({value for _, value in STATIC_TABLE})),
    # the reference decoder reads values as UTF-8 (the encoder sends any bytes as they are)
    st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs", "Cc")), max_size=300)
    .map(lambda s: s.encode("utf-8")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_names, _values), min_size=1, max_size=30))
def test_random_sections_decode_to_what_was_encoded(headers):
    assert decode(encode_section(headers)) == headers
    assert decode(encode_section(headers)) == headers      # again, from the field cache


def test_the_field_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(qpack, "_cache", {})
    for i in range(qpack.MAX_CACHED * 3):
        encode_section([(b":path", b"/%d" % i)])
        assert len(qpack._cache) <= qpack.MAX_CACHED
    encode_section([(b"x-big", b"v" * 1000)])
    assert (b"x-big", b"v" * 1000) not in qpack._cache     # long fields are not kept
