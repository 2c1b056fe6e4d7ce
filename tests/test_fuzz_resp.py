"""Fuzzing the RESP reply readers (greenpool/redis/resp.py) with hypothesis.

Random bytes, and valid reply streams (the generators of test_redis_resp.py) mutated by
flipping, inserting, deleting and duplicating bytes, go into the pure :class:`Reader` and
:class:`HiredisReader`, whole and split at random points.  For every input:

* only :class:`~greenpool.errors.RemoteProtocolError` (``LimitExceeded`` included) is ever
  raised: no crash, no other exception, and after it the reader stays unusable;
* the parse is bounded (a reply count and a time limit), and nothing over
  ``max_reply_size`` is buffered before the limit is hit;
* the two readers agree on every reply both returned before either stopped (the pure
  reader is stricter in two documented places, so it may stop earlier; hiredis returns
  RESP3 attributes as replies, so inputs with ``|`` are only checked for crashes);
* with ``resp3=True`` (HiredisReader then walks headers to tell pushes and attributes
  apart) hiredis returns what it returns without it, and on valid streams with top-level
  attributes and pushes both readers return the same replies, pushes as :class:`Push`.
"""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_redis_resp import encode, nodes, norm

from greenpool.errors import LimitExceeded, RemoteProtocolError
from greenpool.redis.resp import NOT_ENOUGH, Push, make_reader

hiredis = pytest.importorskip("hiredis")

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: a parse that never ends is caught by the reply count; this only catches one that is
#: stuck, so it is far above what a busy machine needs (a few ms per example when idle)
TIME_LIMIT = 30.0


def run(backend, data, cuts=(), **kw):
    """(replies, error-or-None) for ``data`` fed in pieces."""
    reader = make_reader(backend, **kw)
    bounds = sorted(set(c for c in cuts if 0 < c < len(data)))
    pieces = [data[a:b] for a, b in zip([0] + bounds, bounds + [len(data)]) if b > a]
    out = []
    t0 = time.monotonic()
    try:
        for piece in pieces:
            reader.feed(piece)
            while True:
                assert len(out) < 100_000, "runaway parse"
                r = reader.gets()
                if r is NOT_ENOUGH:
                    break
                out.append(norm(r))
    except RemoteProtocolError as e:
        # unusable from now on
        with pytest.raises(RemoteProtocolError):
            reader.feed(b"+OK\r\n")
            reader.gets()
        return out, e
    finally:
        assert time.monotonic() - t0 < TIME_LIMIT, "parse took too long"
    return out, None


def check(data, cuts=(), **kw):
    py, py_err = run("python", data, cuts, **kw)
    hi, hi_err = run("hiredis", data, cuts, **kw)
    # a split never changes the pure reader's answer
    assert run("python", data, (), **kw)[0] == py
    if b"|" in data:
        return
    hi3, _ = run("hiredis", data, cuts, resp3=True, **kw)
    n = min(len(hi3), len(hi))
    assert hi3[:n] == hi[:n], (data, hi3, hi)
    n = min(len(py), len(hi))
    assert py[:n] == hi[:n], (data, py, py_err, hi, hi_err)
    if py_err is None and hi_err is None:
        assert py == hi, (data, py, hi)
    if hi_err is not None and py_err is None:
        # hiredis may only be "stricter" on a reply the pure reader has not finished (it
        # judges a map key when the key is read, the pure reader when the map is)
        assert len(py) <= len(hi), (data, hi_err, py)


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
@example(b"*-1\r\n$-1\r\n_\r\n", [])
@example(b"$3\r\nabcXY+OK\r\n", [])
@example(b"*99999999999999999999\r\n", [])
@example(b":" + b"9" * 400, [])
def test_random_bytes(data, cuts):
    check(data, cuts)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([b"*3\r\n", b"%2\r\n", b"$10\r\n", b">2\r\n",
                                                  b"~1\r\n", b"=5\r\ntxt:", b",", b"#", b"("]))
def test_random_bytes_after_a_valid_type(tail, start):
    check(start + tail)


@FUZZ
@given(st.lists(nodes, min_size=1, max_size=5), st.data())
def test_mutated_valid_streams(values, data):
    wire = bytearray(b"".join(encode(v) for v in values))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(("flip", "insert", "delete", "dup", "special")))
        i = data.draw(st.integers(0, max(0, len(wire) - 1)))
        if kind == "flip" and wire:
            wire[i] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            wire[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and wire:
            del wire[i:i + data.draw(st.integers(1, 4))]
        elif kind == "dup" and wire:
            wire[i:i] = wire[i:i + data.draw(st.integers(1, 16))]
        else:
            wire[i:i] = data.draw(st.sampled_from([b"\r\n", b"\r", b"\n", b"-", b"-1", b"0",
                                                   b"*", b"$", b"%", b"99999999999", b"\x00"]))
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=6))
    check(bytes(wire), cuts)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4096), st.sampled_from([b"$", b"*", b"%", b"~", b">", b"=", b"!"]))
def test_declared_lengths_over_the_limit(limit, kind):
    # HiredisReader checks lengths once about min(limit, 1 MiB) bytes are pending: send them
    data = kind + b"%d\r\n" % (limit + 1) + b"x" * (limit + 2)
    for backend in ("python", "hiredis"):
        _, err = run(backend, data, max_reply_size=limit)
        assert isinstance(err, LimitExceeded), (backend, err)


@settings(max_examples=100, deadline=None)
@given(st.integers(16, 1 << 45), st.sampled_from([b"$", b"*", b"%", b"~", b">", b"=", b"!", b"|"]),
       st.binary(max_size=3))
def test_declared_lengths_over_the_limit_refused_at_the_header(limit, kind, after):
    # nothing after the header needed: both readers refuse it at once (HiredisReader may
    # refuse an aggregate's header in the feed() that brought it, before the replies
    # before it were taken: hiredis would allocate the list at the header)
    data = b"+OK\r\n" + kind + b"%d\r\n" % (limit + 1) + after
    for backend in ("python", "hiredis"):
        out, err = run(backend, data, max_reply_size=limit)
        assert isinstance(err, LimitExceeded), (backend, err)
        assert out == [b"OK"] or (backend == "hiredis" and out == []), (backend, out)


@FUZZ
@given(st.lists(st.tuples(nodes, st.sampled_from(["plain", "attr", "push"])), min_size=1,
                max_size=6), st.lists(st.integers(0, 2000), max_size=8))
def test_pushes_and_top_level_attributes_agree(items, cuts):
    wire = []
    expected = []
    for value, how in items:
        if how == "push":
            wire.append(b">2\r\n$6\r\nnotice" + b"\r\n" + encode(value))
            expected.append((True, [b"notice", norm(value_of(value))]))
            continue
        if how == "attr":
            wire.append(b"|1\r\n+key\r\n" + encode(value))
        wire.append(encode(value))
        expected.append((value[0] == "push", norm(value_of(value))))
    data = b"".join(wire)
    for backend in ("python", "hiredis"):
        reader = make_reader(backend, resp3=True)
        bounds = sorted(set(c for c in cuts if 0 < c < len(data)))
        got = []
        for a, b in zip([0] + bounds, bounds + [len(data)]):
            reader.feed(data[a:b])
            while True:
                r = reader.gets()
                if r is NOT_ENOUGH:
                    break
                got.append((type(r) is Push, norm(r)))
        assert got == expected, backend


def value_of(node):
    from test_redis_resp import expect
    return expect(node)


@pytest.mark.parametrize("backend", ["python", "hiredis"])
def test_endless_line_and_endless_bulk_are_bounded(backend):
    """A peer streaming a line without CRLF, or a bulk bigger than announced-but-allowed,
    hits the limit after about max_reply_size bytes, not after what the peer sends."""
    limit = 2 * 1024 * 1024
    reader = make_reader(backend, max_reply_size=limit)
    reader.feed(b"+")
    sent = 0
    with pytest.raises(LimitExceeded):
        while sent < 50 * limit:
            reader.feed(b"a" * 65536)
            sent += 65536
            assert reader.gets() is NOT_ENOUGH
    assert sent <= 2 * limit, sent
