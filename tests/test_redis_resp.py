"""Tests for greenpool/redis/resp.py: the sans-IO RESP codec.

Every reader test runs over both backends (the ``make`` fixture); the few
behaviours that differ on purpose are marked as such.
"""
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenpool.errors import LimitExceeded, RemoteProtocolError, ReplyDecodeError, ResponseError
from greenpool.redis import resp
from greenpool.redis.resp import (
    NOT_ENOUGH,
    HiredisReader,
    Push,
    Reader,
    make_reader,
    pack_command,
    pack_commands,
)

from redishelp import HAVE_HIREDIS, PARSERS

BACKENDS = PARSERS


@pytest.fixture(params=BACKENDS)
def make(request):
    def factory(**kw):
        return make_reader(request.param, **kw)

    factory.backend = request.param
    return factory


def drain(reader):
    out = []
    while True:
        reply = reader.gets()
        if reply is NOT_ENOUGH:
            return out
        out.append(reply)


def feed_pieces(reader, data, cuts):
    """Feed ``data`` split at ``cuts``, draining after each piece."""
    out = []
    prev = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        reader.feed(data[prev:cut])
        prev = cut
        out.extend(drain(reader))
    return out


def norm(value):
    """Make replies comparable: errors by type and message, floats NaN-safe."""
    if isinstance(value, ResponseError):
        return ("ResponseError", str(value))
    if isinstance(value, ReplyDecodeError):
        return ("ReplyDecodeError", None)
    if isinstance(value, list):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {norm(k): norm(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def parse_all(make, data, **kw):
    reader = make(**kw)
    reader.feed(data)
    return [norm(r) for r in drain(reader)]


# -- a test-side encoder: nodes -> (wire bytes, expected value) ------------------------


def encode(node):
    kind, v = node
    if kind == "simple":
        return b"+%s\r\n" % v.encode()
    if kind == "error":
        return b"-%s\r\n" % v.encode()
    if kind == "int":
        return b":%d\r\n" % v
    if kind == "bulk":
        return b"$%d\r\n%s\r\n" % (len(v), v) if v is not None else b"$-1\r\n"
    if kind == "text":
        b = v.encode()
        return b"$%d\r\n%s\r\n" % (len(b), b)
    if kind == "null":
        return b"_\r\n"
    if kind == "bool":
        return b"#t\r\n" if v else b"#f\r\n"
    if kind == "double":
        return b",%s\r\n" % repr(v).encode()
    if kind == "bignum":
        return b"(%d\r\n" % v
    if kind == "bulkerror":
        b = v.encode()
        return b"!%d\r\n%s\r\n" % (len(b), b)
    if kind == "verbatim":
        b = b"txt:" + v.encode()
        return b"=%d\r\n%s\r\n" % (len(b), b)
    if kind == "nullarray":
        return b"*-1\r\n"
    if kind in ("array", "set", "push"):
        head = {"array": b"*", "set": b"~", "push": b">"}[kind]
        return head + b"%d\r\n" % len(v) + b"".join(encode(c) for c in v)
    if kind == "map":
        return b"%%%d\r\n" % len(v) + b"".join(encode(k) + encode(x) for k, x in v)
    raise AssertionError(kind)


def expect(node, decode=False):
    kind, v = node
    if kind in ("simple", "text", "verbatim"):
        return v if decode else v.encode()
    if kind in ("error", "bulkerror"):
        return ("ResponseError", v)
    if kind == "bulk":
        return v
    if kind == "bignum":
        return str(v) if decode else str(v).encode()
    if kind in ("null", "nullarray"):
        return None
    if kind in ("array", "set", "push"):
        return [expect(c, decode) for c in v]
    if kind == "map":
        return {expect(k, decode): expect(x, decode) for k, x in v}
    if kind == "double" and math.isnan(v):
        return "NaN"
    return v


line_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20
)
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)

scalar_keys = st.one_of(
    st.tuples(st.just("simple"), line_text),
    st.tuples(st.just("text"), any_text),
    st.tuples(st.just("int"), st.integers(-(2**63), 2**63 - 1)),
)
scalars = st.one_of(
    scalar_keys,
    st.tuples(st.just("error"), line_text.map(lambda s: "ERR " + s)),
    st.tuples(st.just("null"), st.none()),
    st.tuples(st.just("nullarray"), st.none()),
    st.tuples(st.just("bool"), st.booleans()),
    st.tuples(st.just("double"), st.floats(allow_nan=True, allow_infinity=True)),
    st.tuples(st.just("bignum"), st.integers(-(10**40), 10**40)),
    st.tuples(st.just("bulkerror"), any_text.map(lambda s: "ERR " + s)),
    st.tuples(st.just("verbatim"), any_text),
)
nodes = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.tuples(st.sampled_from(["array", "set", "push"]), st.lists(children, max_size=4)),
        st.tuples(
            st.just("map"),
            st.lists(
                st.tuples(scalar_keys, children), max_size=3, unique_by=lambda kv: expect(kv[0])
            ),
        ),
    ),
    max_leaves=12,
)
binary_nodes = st.one_of(
    st.tuples(st.just("bulk"), st.one_of(st.none(), st.binary(max_size=40))),
    st.tuples(
        st.just("array"), st.lists(st.tuples(st.just("bulk"), st.binary(max_size=40)), max_size=4)
    ),
)


# -- whole, byte at a time, random splits ---------------------------------------------

BASIC = [
    (b"+OK\r\n", b"OK"),
    (b"-ERR unknown command 'FOO'\r\n", ("ResponseError", "ERR unknown command 'FOO'")),
    (b":42\r\n", 42),
    (b":-7\r\n", -7),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n", [b"a", [1, None]]),
    (b"*1\r\n-ERR inside\r\n", [("ResponseError", "ERR inside")]),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (b"_\r\n", None),
    (b"#t\r\n", True),
    (b"#f\r\n", False),
    (b",3.25\r\n", 3.25),
    (b",inf\r\n", math.inf),
    (b",-inf\r\n", -math.inf),
    (b",nan\r\n", "NaN"),
    (b"(34928903284092385093248509438509438250\r\n", b"34928903284092385093248509438509438250"),
    (b"!21\r\nSYNTAX invalid syntax\r\n", ("ResponseError", "SYNTAX invalid syntax")),
    (b"=15\r\ntxt:Some string\r\n", b"Some string"),
    (b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n:2\r\n", {b"first": 1, b"second": 2}),
    (b"%0\r\n", {}),
    (b"~3\r\n+a\r\n+b\r\n+a\r\n", [b"a", b"b", b"a"]),
    (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", [b"message", b"ch", b"hi"]),
]


@pytest.mark.parametrize("data,value", BASIC)
def test_whole(make, data, value):
    assert parse_all(make, data) == [value]


@pytest.mark.parametrize("data,value", BASIC)
def test_byte_at_a_time(make, data, value):
    reader = make()
    out = feed_pieces(reader, data, range(1, len(data)))
    assert [norm(r) for r in out] == [value]
    assert reader.gets() is NOT_ENOUGH


def test_all_basic_replies_in_one_buffer_and_random_splits(make):
    data = b"".join(d for d, _ in BASIC) * 20
    values = [v for _, v in BASIC] * 20
    assert parse_all(make, data) == values
    rnd = random.Random(1234)
    for _ in range(20):
        cuts = rnd.sample(range(1, len(data)), rnd.randint(1, 60))
        assert [norm(r) for r in feed_pieces(make(), data, cuts)] == values


def test_gets_on_empty_and_partial(make):
    reader = make()
    assert reader.gets() is NOT_ENOUGH
    reader.feed(b"*2\r\n:1\r\n")
    assert reader.gets() is NOT_ENOUGH
    assert reader.gets() is NOT_ENOUGH
    reader.feed(b":2\r\n+OK\r")
    assert reader.gets() == [1, 2]
    assert reader.gets() is NOT_ENOUGH
    reader.feed(b"\n")
    assert reader.gets() == b"OK"


def test_feed_accepts_bytearray_and_memoryview(make):
    reader = make()
    buf = bytearray(b"$3\r\nabc\r\n")
    reader.feed(buf)
    buf[:] = b"XXXXXXXXX"  # the reader must have copied what it needs
    reader.feed(memoryview(b"+OK\r\n"))
    assert drain(reader) == [b"abc", b"OK"]


def test_error_reply_is_returned_not_raised(make):
    reader = make()
    reader.feed(b"-WRONGTYPE Operation against a key\r\n+OK\r\n")
    err = reader.gets()
    assert isinstance(err, ResponseError)
    assert str(err) == "WRONGTYPE Operation against a key"
    assert reader.gets() == b"OK"


def test_large_bulk_fed_in_small_pieces(make):
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = b"$%d\r\n%s\r\n" % (len(payload), payload) + b":1\r\n"
    reader = make()
    out = []
    for i in range(0, len(data), 997):
        reader.feed(data[i : i + 997])
        out.extend(drain(reader))
    assert out == [payload, 1]


def test_large_array_fed_in_small_pieces(make):
    n = 30000
    data = b"*%d\r\n" % n + b"".join(b"$5\r\n%05d\r\n" % i for i in range(n))
    reader = make()
    out = []
    for i in range(0, len(data), 4096):
        reader.feed(data[i : i + 4096])
        out.extend(drain(reader))
    assert out == [[b"%05d" % i for i in range(n)]]


def test_many_small_replies_and_stream_longer_than_the_log_cap(make):
    # More than 1 MiB of pipelined replies with no clean boundary between feeds:
    # HiredisReader starts scanning and must neither lose sync nor raise.
    one = b"$10\r\n0123456789\r\n:12345\r\n+OK\r\n"
    data = one * 40000
    reader = make()
    count = 0
    for i in range(0, len(data), 65531):
        reader.feed(data[i : i + 65531])
        count += len(drain(reader))
    assert count == 3 * 40000


@pytest.mark.parametrize("backend_name", BACKENDS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(nodes, min_size=1, max_size=6), st.data())
def test_hypothesis_roundtrip_random_splits(backend_name, values, data):
    wire = b"".join(encode(v) for v in values)
    cuts = data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=12))
    for decode in (False, True):
        expected = [expect(v, decode) for v in values]
        reader = make_reader(backend_name, decode_responses=decode)
        assert [norm(r) for r in feed_pieces(reader, wire, cuts)] == expected
        assert reader.gets() is NOT_ENOUGH


@pytest.mark.parametrize("backend_name", BACKENDS)
@settings(max_examples=150, deadline=None)
@given(st.lists(binary_nodes, min_size=1, max_size=8), st.data())
def test_hypothesis_binary_with_small_limit(backend_name, values, data):
    # max_reply_size=64 makes HiredisReader scan almost always; nothing is over it.
    wire = b"".join(encode(v) for v in values)
    cuts = data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=12))
    reader = make_reader(backend_name, max_reply_size=64)
    assert feed_pieces(reader, wire, cuts) == [expect(v) for v in values]


# -- decode_responses ------------------------------------------------------------------


def test_decode_responses(make):
    reader = make(decode_responses=True)
    reader.feed(
        b"+OK\r\n$5\r\n\xc3\xa9t\xc3\xa9\r\n*2\r\n+a\r\n:1\r\n-ERR no\r\n%1\r\n+k\r\n$1\r\nv\r\n"
        b"=9\r\ntxt:\xc3\xa9t\xc3\xa9\r\n"
    )
    out = [norm(r) for r in drain(reader)]
    assert out == ["OK", "été", ["a", 1], ("ResponseError", "ERR no"), {"k": "v"}, "été"]


def test_decode_responses_other_encoding(make):
    reader = make(decode_responses=True, encoding="latin-1")
    reader.feed(b"$2\r\n\xe9\xe8\r\n")
    assert reader.gets() == "éè"


def test_undecodable_reply_is_returned_as_an_error_and_the_stream_stays_in_step(make):
    reader = make(decode_responses=True)
    reader.feed(b"$2\r\n\xff\xfe\r\n*3\r\n+a\r\n$1\r\n\xff\r\n:1\r\n+after\r\n")
    for _ in range(2):
        err = reader.gets()
        assert type(err) is ReplyDecodeError and "not valid utf-8" in str(err)
        assert "decode_responses=False" in str(err)
    assert reader.gets() == "after"
    assert reader.gets() is NOT_ENOUGH


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_undecodable_reply_split_anywhere(make, step):
    data = b"+x\r\n*2\r\n$3\r\nab\xff\r\n$2\r\nok\r\n$1\r\ny\r\n"
    reader = make(decode_responses=True)
    assert [norm(r) for r in feed_pieces(reader, data, list(range(step, len(data), step)))] == [
        "x", ("ReplyDecodeError", None), "y"]


def test_encoding_errors_replace(make):
    reader = make(decode_responses=True, encoding_errors="replace")
    reader.feed(b"$2\r\n\xff\xfe\r\n")
    assert reader.gets() == "\ufffd\ufffd"


# -- garbage -----------------------------------------------------------------------------

GARBAGE = [
    b"?what\r\n",
    b"$abc\r\n",
    b"$-2\r\n",
    b"*x\r\n",
    b"*-5\r\n",
    b":12a\r\n",
    b":\r\n",
    b"#x\r\n",
    b"_x\r\n",
    b",abc\r\n",
    b"(12x\r\n",
    b"=3\r\nabc\r\n",
    b"+OK\r\n*2\r\n:1\r\n@\r\n",
]


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_raises_and_reader_is_unusable(make, data):
    reader = make()
    reader.feed(data)
    with pytest.raises(RemoteProtocolError) as exc:
        while reader.gets() is not NOT_ENOUGH:
            pass
    assert not isinstance(exc.value, LimitExceeded)
    with pytest.raises(RemoteProtocolError):
        reader.gets()
    with pytest.raises(RemoteProtocolError):
        reader.feed(b"+OK\r\n")
        reader.gets()


def test_garbage_message_names_the_problem():
    reader = Reader()
    reader.feed(b"?what\r\n")
    with pytest.raises(RemoteProtocolError, match="unknown reply type byte b'\\?'"):
        reader.gets()


def test_pure_reader_checks_crlf_after_bulk():
    # hiredis does not check this (documented); the pure reader does.
    reader = Reader()
    reader.feed(b"$3\r\nabcXY+OK\r\n")
    with pytest.raises(RemoteProtocolError, match="no CRLF"):
        reader.gets()


def test_pure_reader_drops_attributes():
    reader = Reader()
    reader.feed(b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:1\r\n|0\r\n:2\r\n")
    assert reader.gets() == [1, 2]


# -- out-of-band frames: pushes and attributes (resp3=True) ----------------------------------

OOB = (
    b">3\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$0\r\n\r\n"  # a push
    b"+OK\r\n"
    b"|1\r\n+key-popularity\r\n*2\r\n$1\r\na\r\n,0.19\r\n"  # an attribute, then its value
    b"$39\r\nSome real reply following the attribute\r\n"
    b"*2\r\n$7\r\nmessage\r\n:1\r\n"  # an array that looks like a push: a reply
    b">2\r\n$16\r\nserver-cpu-usage\r\n:42\r\n"
    b"$5\r\nhello\r\n"
)
OOB_EXPECTED = [
    [b"invalidate", [b"k"], b""], b"OK", b"Some real reply following the attribute",
    [b"message", 1], [b"server-cpu-usage", 42], b"hello",
]


@pytest.mark.parametrize("step", [1, 2, 7, 40, len(OOB)])
def test_pushes_are_typed_and_attributes_never_returned(make, step):
    reader = make(resp3=True)
    out = feed_pieces(reader, OOB, list(range(step, len(OOB), step)))
    assert [norm(r) for r in out] == OOB_EXPECTED
    assert [type(r) is Push for r in out] == [True, False, False, False, True, False]


def test_pushes_after_a_clean_boundary_and_an_undecodable_push(make):
    reader = make(resp3=True, decode_responses=True)
    reader.feed(b"+a\r\n")
    assert reader.gets() == "a"
    reader.feed(b">2\r\n$7\r\nmessage\r\n$1\r\n\xff\r\n+b\r\n")
    push = reader.gets()
    assert type(push) is Push
    assert reader.gets() == "b"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, len(OOB) - 1), max_size=10))
def test_hypothesis_oob_random_splits_both_backends(cuts):
    for backend in ("python", "hiredis") if HAVE_HIREDIS else ("python",):
        reader = make_reader(backend, resp3=True)
        out = feed_pieces(reader, OOB, cuts)
        assert [norm(r) for r in out] == OOB_EXPECTED
        assert [type(r) is Push for r in out] == [True, False, False, False, True, False]


def test_short_repr_is_short_whatever_the_size():
    big = b"x" * (64 * 1024 * 1024)
    text = resp.short_repr(big)
    assert len(text) < 120 and "more" in text
    assert len(resp.short_repr([big] * 1000)) < 200
    assert len(resp.short_repr({b"k": big})) < 200
    assert resp.short_repr(b"ok") == "b'ok'"


def test_map_with_unhashable_key(make):
    reader = make()
    reader.feed(b"%1\r\n*1\r\n:1\r\n:2\r\n")
    with pytest.raises(RemoteProtocolError, match="hash"):
        reader.gets()


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [b"$5000\r\n", b"*5000\r\n", b"%5000\r\n", b"!5000\r\n",
                                    b"~5000\r\n", b">5000\r\n", b"=5000\r\n"])
@pytest.mark.parametrize("before", [b"", b"+OK\r\n", b"*2\r\n:1\r\n"])
def test_declared_length_over_limit_is_refused_at_its_header(make, header, before):
    # Both readers refuse the header in the gets() after the feed() that brought it,
    # before a single byte of what it declares was fed.
    reader = make(max_reply_size=1000)
    with pytest.raises(LimitExceeded, match="max_reply_size=1000"):
        for piece in (before, header[:2], header[2:]):
            reader.feed(piece)
            while reader.gets() is not NOT_ENOUGH:
                pass
    with pytest.raises(RemoteProtocolError):
        reader.gets()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_2_to_the_40_bulk_header_is_refused_at_once_with_the_default_limit(backend_name):
    reader = make_reader(backend_name)
    reader.feed(b"+OK\r\n$%d\r\nabc" % (1 << 40))
    assert reader.gets() == b"OK"
    with pytest.raises(LimitExceeded, match="bulk length of 1099511627776"):
        reader.gets()


@pytest.mark.skipif(not HAVE_HIREDIS, reason="hiredis missing")
def test_hiredis_payload_that_looks_like_a_long_header_is_fine():
    # A payload holding "$99999" makes HiredisReader walk the headers: nothing is over.
    reader = HiredisReader(max_reply_size=1000)
    data = b"$20\r\nxx$99999999 yy*12345\r\n" + b"$10\r\n" + b"0123"
    reader.feed(data)
    assert reader.gets() == b"xx$99999999 yy*12345"
    assert reader.gets() is NOT_ENOUGH
    reader.feed(b"456789\r\n")
    assert reader.gets() == b"0123456789"


def test_pure_reader_raises_at_the_header():
    reader = Reader(max_reply_size=512 * 1024 * 1024)
    reader.feed(b"$600000000\r\n")
    with pytest.raises(LimitExceeded, match="bulk length of 600000000"):
        reader.gets()


def test_nested_length_over_limit(make):
    reader = make(max_reply_size=100)
    with pytest.raises(LimitExceeded):
        reader.feed(b"*2\r\n:1\r\n*3\r\n$200\r\n")
        reader.gets()
        for _ in range(10):
            reader.feed(b"x" * 50)
            reader.gets()


def test_line_without_crlf_over_limit(make):
    reader = make(max_reply_size=100)
    with pytest.raises(LimitExceeded, match="without CRLF"):
        reader.feed(b"+")
        for _ in range(10):
            reader.feed(b"x" * 50)
            reader.gets()


def test_lengths_at_the_limit_are_fine(make):
    reader = make(max_reply_size=100)
    payload = b"y" * 100
    data = (b"*2\r\n$100\r\n%s\r\n$100\r\n%s\r\n" % (payload, payload)) * 30
    assert len(feed_pieces(reader, data, range(7, len(data), 7))) == 30


def test_bad_max_reply_size(make):
    with pytest.raises(ValueError):
        make(max_reply_size=0)


# -- hiredis specifics ----------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_HIREDIS, reason="hiredis missing")
def test_hiredis_falls_back_for_bulk_error_mid_stream():
    reader = HiredisReader()
    reader.feed(b"+a\r\n+b\r\n*2\r\n:1\r\n!7\r\nERR bad\r\n+c\r\n")
    assert reader.gets() == b"a"
    assert reader.gets() == b"b"
    reply = reader.gets()
    assert reply[0] == 1 and str(reply[1]) == "ERR bad"
    assert reader.gets() == b"c"
    reader.feed(b"$1\r\nd\r\n")
    assert reader.gets() == b"d"


@pytest.mark.skipif(not HAVE_HIREDIS, reason="hiredis missing")
def test_hiredis_replays_after_a_long_stream():
    # Over 1 MiB without a clean boundary: the scanner rebases at the last reply
    # boundary, so a later bulk error can still be replayed.
    reader = HiredisReader()
    one = b"$10\r\n0123456789\r\n"
    reader.feed(one * 70000 + b"*2\r\n:1\r\n")
    assert len(drain(reader)) == 70000
    reader.feed(b"!3\r\nERR\r\n")
    reply = reader.gets()
    assert reply[0] == 1 and str(reply[1]) == "ERR"


@pytest.mark.skipif(not HAVE_HIREDIS, reason="hiredis missing")
def test_hiredis_gives_up_when_too_much_to_replay():
    reader = HiredisReader()
    one = b"$10\r\n0123456789\r\n"
    reader.feed(b"*70001\r\n" + one * 70000)  # one reply of ~1.2 MiB, still open
    assert reader.gets() is NOT_ENOUGH
    reader.feed(b"!3\r\nERR\r\n")
    with pytest.raises(RemoteProtocolError, match="replay"):
        reader.gets()
    with pytest.raises(RemoteProtocolError, match="cannot continue"):
        reader.gets()


# -- make_reader -----------------------------------------------------------------------------


def test_make_reader():
    assert type(make_reader("python")) is Reader
    if HAVE_HIREDIS:
        assert type(make_reader("hiredis")) is HiredisReader
        assert type(make_reader()) is HiredisReader
    r = make_reader("python", max_reply_size=10, decode_responses=True, encoding="latin-1")
    assert (r.max_reply_size, r.decode_responses, r.encoding) == (10, True, "latin-1")
    with pytest.raises(ValueError, match="parser"):
        make_reader("cython")


def test_auto_without_hiredis(monkeypatch):
    monkeypatch.setattr(resp, "_hiredis", None)
    assert type(make_reader("auto")) is Reader
    with pytest.raises(ImportError, match="pip install hiredis"):
        make_reader("hiredis")


def test_not_enough_repr():
    assert repr(NOT_ENOUGH) == "NOT_ENOUGH"
    assert "Reader" in repr(Reader())


# -- pack_command / pack_commands ----------------------------------------------------------


def test_pack_command():
    assert pack_command(["GET", "k"]) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert pack_command(("SET", b"k", 12, -3, 1.5, "é")) == (
        b"*6\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$2\r\n-3\r\n$3\r\n1.5\r\n$2\r\n\xc3\xa9\r\n"
    )
    assert pack_command([b"X", bytearray(b"ba"), memoryview(b"mv")]) == (
        b"*3\r\n$1\r\nX\r\n$2\r\nba\r\n$2\r\nmv\r\n"
    )
    big = b"v" * 5000
    head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5000\r\n"
    assert pack_command(["SET", "k", big]) == head + big + b"\r\n"
    assert pack_command(["ZADD", "z", float("inf"), "m"]).count(b"inf") == 1


def test_pack_command_roundtrips_through_the_reader(make):
    # A command is a RESP array of bulk strings: the reader can read it back.
    args = ["SET", "kéy", 10, 2.5, b"\x00\r\n"]
    reader = make()
    reader.feed(pack_command(args))
    assert reader.gets() == [b"SET", "kéy".encode(), b"10", b"2.5", b"\x00\r\n"]


@pytest.mark.parametrize(
    "bad,pos,typename",
    [
        (["SET", "k", None], 2, "NoneType"),
        (["SET", "k", True], 2, "bool"),
        (["GET", {"a": 1}], 1, "dict"),
        (["MSET", ["a", "b"]], 1, "list"),
        ([object()], 0, "object"),
    ],
)
def test_pack_command_type_errors(bad, pos, typename):
    with pytest.raises(TypeError, match=r"args\[%d\] is %s" % (pos, typename)):
        pack_command(bad)


def test_pack_command_bare_string():
    with pytest.raises(TypeError, match=r'like \["GET", "k"\]'):
        pack_command("GET k")
    with pytest.raises(TypeError, match="list or tuple"):
        pack_command(b"GET k")


def test_pack_command_empty():
    with pytest.raises(ValueError):
        pack_command([])


def test_pack_commands():
    assert pack_commands([["GET", "a"], ("INCR", "n")]) == (
        b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n"
    )
    assert pack_commands([]) == b""
    assert pack_commands(iter([["PING"]])) == b"*1\r\n$4\r\nPING\r\n"


def test_pack_commands_errors():
    with pytest.raises(TypeError, match=r"commands\[1\]: args\[1\] is NoneType"):
        pack_commands([["GET", "a"], ["GET", None]])
    with pytest.raises(TypeError, match=r"commands\[0\] is str"):
        pack_commands(["GET", "a"])  # one command passed where a list of them is expected
    with pytest.raises(TypeError, match="list of commands"):
        pack_commands("GET a")
    with pytest.raises(ValueError, match=r"commands\[1\]"):
        pack_commands([["PING"], []])
