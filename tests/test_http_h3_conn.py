"""greenpool.http.h3.conn: the sans-IO adapter's own logic, without a server.

The library's response-head check kept per distinct list of field names
(:func:`~greenpool.http.h3.conn.validate_response_headers`) must give qh3's answer for
every head, the first time and every later time: the same status, or the same error.
"""
from __future__ import annotations

import pytest

pytest.importorskip("qh3")

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from qh3.h3 import connection as qh3_h3  # noqa: E402

from greenpool.http.h3 import conn  # noqa: E402

NAMES = [b":status", b":path", b":authority", b":scheme", b":method", b":bogus", b"content-length",
         b"Content-Type", b"date", b"server", b"x-\xff", b"", b"set-cookie"]
VALUES = [b"200", b"204", b"2x0", b"", b" 200", b"099", b"localhost", b"/", b"https", b"v"]
heads = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=6)


def verdict(check, headers):
    try:
        return ("ok", check(list(headers)))
    except Exception as e:  # noqa: BLE001 - the error is the verdict
        return (type(e), str(e))


@settings(max_examples=400, deadline=None)
@given(heads)
@example([(b":status", b"200"), (b"content-length", b"4")])
@example([(b":status", b"2x0"), (b"content-length", b"4")])
@example([(b"content-length", b"4"), (b":status", b"200")])
@example([(b":status", b"200"), (b"Content-Type", b"v")])
def test_same_verdict_as_the_library_every_time(headers):
    expected = verdict(qh3_h3.validate_response_headers, headers)
    assert verdict(conn.validate_response_headers, headers) == expected
    assert verdict(conn.validate_response_headers, headers) == expected     # from what is kept


def test_kept_names_still_have_their_status_checked():
    conn._VALID_NAMES.clear()
    assert conn.validate_response_headers([(b":status", b"200"), (b"date", b"x")]) == 200
    assert (b":status", b"date") in conn._VALID_NAMES
    with pytest.raises(qh3_h3.MessageError, match="Invalid :status value b'2x0'"):
        conn.validate_response_headers([(b":status", b"2x0"), (b"date", b"y")])
    assert conn.validate_response_headers([(b":status", b"404"), (b"date", b"z")]) == 404


def test_refused_names_are_not_kept_and_the_set_is_bounded():
    conn._VALID_NAMES.clear()
    with pytest.raises(qh3_h3.MessageError):
        conn.validate_response_headers([(b":status", b"200"), (b"X-Up", b"1")])
    assert not conn._VALID_NAMES
    for i in range(300):
        conn.validate_response_headers([(b":status", b"200"), (b"x-%d" % i, b"1")])
    assert 0 < len(conn._VALID_NAMES) <= 256
    many = [(b":status", b"200")] + [(b"x-%d" % i, b"1") for i in range(70)]
    conn._VALID_NAMES.clear()
    assert conn.validate_response_headers(many) == 200
    assert not conn._VALID_NAMES            # over 64 names: checked, not kept


def test_the_library_itself_is_untouched():
    assert qh3_h3.validate_response_headers is conn._library_check
    assert qh3_h3.H3Connection._handle_request_or_push_frame.__globals__[
        "validate_response_headers"] is qh3_h3.validate_response_headers
