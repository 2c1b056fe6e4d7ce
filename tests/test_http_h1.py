"""Tests for greenpool.http.h1.conn and its two backends (h11, httptools).

Every protocol test runs against both backends, feeding the response whole and
one byte at a time; the backends must yield the same events and errors.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenpool.errors import (
    ConnectionClosed,
    LimitExceeded,
    LocalProtocolError,
    RemoteProtocolError,
)
from greenpool.http.h1.conn import (
    MAX_INTERIM_RESPONSES,
    NEED_DATA,
    Data,
    EndOfMessage,
    H1Connection,
    Informational,
    ResponseHead,
    make_connection,
)

HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
BACKENDS = [
    "h11",
    pytest.param(
        "httptools",
        marks=pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools is not installed"),
    ),
]
ALL_BACKENDS = ["h11", "httptools"] if HAVE_HTTPTOOLS else ["h11"]

HOST = [(b"Host", b"example.org")]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=["whole", "bytewise"])
def feeding(request):
    return request.param


def merged(events):
    """Consecutive Data events joined (how bytes are split is not part of the contract)."""
    out = []
    for ev in events:
        if type(ev) is Data and out and type(out[-1]) is Data:
            out[-1] = Data(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def pieces(data, feeding):
    if feeding == "whole":
        return [data] if data else []
    return [data[i : i + 1] for i in range(len(data))]


def drain(conn, events):
    """Collect events until NEED_DATA or EndOfMessage; True when the message ended."""
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return False
        events.append(ev)
        if type(ev) is EndOfMessage:
            return True


def fresh_response(backend, response, **options):
    """One GET on a new connection answered by ``response`` (fed whole): (events, conn)."""
    conn = make_connection(backend, **options)
    conn.send_request(b"GET", b"/", HOST, -1)
    conn.receive_data(response)
    events = []
    drain(conn, events)
    return events, conn


def exchange(
    backend, response, feeding="whole", method=b"GET", eof=False, body_length=-1, conn=None
):
    """Send one request, feed ``response``; return (merged events, conn)."""
    conn = conn or make_connection(backend)
    conn.send_request(method, b"/", HOST, body_length)
    events = []
    done = False
    for piece in pieces(response, feeding):
        conn.receive_data(piece)
        if drain(conn, events):
            done = True
            break
    if not done and eof:
        conn.receive_data(b"")
        drain(conn, events)
    return merged(events), conn


def exchange_error(backend, response, feeding="whole", method=b"GET", eof=True):
    """Like exchange() but the exchange must fail: return (events before, exception)."""
    conn = make_connection(backend)
    conn.send_request(method, b"/", HOST, -1)
    events = []
    try:
        for piece in pieces(response, feeding):
            conn.receive_data(piece)
            if drain(conn, events):
                pytest.fail("response unexpectedly complete: %r" % (events,))
        if eof:
            conn.receive_data(b"")
            drain(conn, events)
    except RemoteProtocolError as e:
        assert conn.keep_alive is False
        with pytest.raises(type(e)):  # stays failed
            conn.next_event()
        return merged(events), e
    pytest.fail("no error raised; events: %r" % (events,))


def head(status=200, headers=(), reason=b"OK", version="HTTP/1.1", cls=ResponseHead):
    return cls(status, reason, version, list(headers))


# -- responses ---------------------------------------------------------------------


def test_content_length_body(backend, feeding):
    events, conn = exchange(
        backend,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        feeding,
    )
    assert events == [
        head(headers=[(b"content-type", b"text/plain"), (b"content-length", b"5")]),
        Data(b"hello"),
        EndOfMessage(),
    ]
    assert conn.keep_alive is True
    assert conn.keep_alive_timeout is None


def test_header_names_lowercased_order_and_duplicates_kept(backend, feeding):
    events, _ = exchange(
        backend,
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Y:  spaced \t\r\nSET-COOKIE: b=2\r\n"
        b"Empty:\r\nContent-Length: 0\r\n\r\n",
        feeding,
    )
    assert events[0].headers == [
        (b"set-cookie", b"a=1"),
        (b"x-y", b"spaced"),
        (b"set-cookie", b"b=2"),
        (b"empty", b""),
        (b"content-length", b"0"),
    ]


def test_chunked_body_with_extensions_and_trailers(backend, feeding):
    events, conn = exchange(
        backend,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1 \r\n \r\n6\r\nworld!\r\n0;last\r\nX-Trailer: yes\r\n\r\n",
        feeding,
    )
    assert events == [
        head(headers=[(b"transfer-encoding", b"chunked")]),
        Data(b"hello world!"),
        EndOfMessage(),
    ]
    assert conn.keep_alive is True


def test_transfer_encoding_value_is_reported_lowercased(backend, feeding):
    events, _ = exchange(
        backend, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n", feeding
    )
    assert events[0].headers == [(b"transfer-encoding", b"chunked")]


def test_connection_close(backend, feeding):
    events, conn = exchange(
        backend, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", feeding
    )
    assert events[-1] == EndOfMessage()
    assert conn.keep_alive is False
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_http10_without_keep_alive(backend, feeding):
    events, conn = exchange(backend, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", feeding)
    assert events == [
        head(version="HTTP/1.0", headers=[(b"content-length", b"2")]),
        Data(b"ok"),
        EndOfMessage(),
    ]
    assert conn.keep_alive is False


def test_each_head_of_a_read_has_its_own_version(backend, feeding):
    # an interim HTTP/1.1 head then a final HTTP/1.0 one in the same read, and the next
    # cycle's head after a CR/LF: each is reported with the version of its own status line
    events, conn = exchange(
        backend,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
        b"Content-Length: 2\r\n\r\nok",
        feeding,
    )
    assert [(type(ev).__name__, getattr(ev, "http_version", None)) for ev in events] == [
        ("Informational", "HTTP/1.1"), ("ResponseHead", "HTTP/1.0"), ("Data", None),
        ("EndOfMessage", None)]
    assert conn.keep_alive is True
    conn.start_next_cycle()
    events, conn = exchange(backend, b"\r\nHTTP/1.0 204 No Content\r\n\r\n", feeding,
                            conn=conn)
    assert events[0].http_version == "HTTP/1.0" and conn.keep_alive is False


def test_http10_with_keep_alive_is_reused(backend, feeding):
    response = (
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5, max=100\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    events, conn = exchange(backend, response, feeding)
    assert events[-2:] == [Data(b"ok"), EndOfMessage()]
    assert conn.keep_alive is True
    assert conn.keep_alive_timeout == 5.0
    conn.start_next_cycle()
    events, conn = exchange(backend, response, feeding, conn=conn)
    assert events[-2:] == [Data(b"ok"), EndOfMessage()]
    assert conn.keep_alive is True


@pytest.mark.parametrize(
    "value, expected",
    [(b"timeout=5", 5.0), (b"max=10, timeout=2.5", 2.5), (b"timeout=x", None), (b"max=3", None)],
)
def test_keep_alive_timeout(backend, value, expected):
    _, conn = exchange(
        backend, b"HTTP/1.1 200 OK\r\nKeep-Alive: %s\r\nContent-Length: 0\r\n\r\n" % value
    )
    assert conn.keep_alive_timeout == expected


def test_informational_responses_then_final(backend, feeding):
    events, conn = exchange(
        backend,
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nContent-Length: 7\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew",
        feeding,
    )
    assert events == [
        head(100, reason=b"Continue", cls=Informational),
        head(
            103,
            reason=b"Early Hints",
            headers=[(b"link", b"</a.css>; rel=preload"), (b"content-length", b"7")],
            cls=Informational,
        ),
        head(201, reason=b"Created", headers=[(b"content-length", b"3")]),
        Data(b"new"),
        EndOfMessage(),
    ]
    assert not isinstance(events[0], ResponseHead)
    assert conn.keep_alive is True


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 1000\r\n", b"Transfer-Encoding: chunked\r\n", b""],
    ids=["content-length", "chunked", "none"],
)
def test_head_response_has_no_body(backend, feeding, framing):
    events, conn = exchange(
        backend, b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n", feeding, method=b"HEAD"
    )
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert conn.keep_alive is True
    conn.start_next_cycle()
    # the connection is then reusable for a request with a body in its response
    events, conn = exchange(
        backend, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", feeding, conn=conn
    )
    assert events[-2:] == [Data(b"hi"), EndOfMessage()]
    assert conn.keep_alive is True


@pytest.mark.parametrize(
    "method, response, expected",
    [
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", 1234),
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
        (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", None),
        (b"GET", b"HTTP/1.1 200 OK\r\n\r\n", None),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", 0),
        (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 1234\r\n\r\n", 0),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n", 0),
        (b"GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", 7),
    ],
    ids=["length", "zero", "chunked", "close", "head", "204", "304", "after-100"],
)
def test_body_length_is_what_the_final_head_announced(backend, method, response, expected):
    conn = make_connection(backend)
    conn.send_request(method, b"/", HOST, -1)
    conn.receive_data(response)
    while type(conn.next_event()) is not ResponseHead:
        pass
    assert conn.body_length == expected


def test_head_after_informational(backend, feeding):
    events, conn = exchange(
        backend,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        feeding,
        method=b"HEAD",
    )
    assert [type(e) for e in events] == [Informational, ResponseHead, EndOfMessage]
    assert conn.keep_alive is True


def test_head_response_followed_by_body_bytes_is_not_reused(backend):
    events, conn = exchange(
        backend, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", method=b"HEAD"
    )
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert conn.keep_alive is False


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(backend, feeding, status):
    events, conn = exchange(
        backend,
        b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\n" % status,
    )
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert events[0].status == status
    assert conn.keep_alive is False  # the bytes after it are unexpected
    events, conn = exchange(
        backend, b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status, feeding
    )
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert conn.keep_alive is True


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_body_delimited_by_close(backend, feeding, version):
    events, conn = exchange(
        backend, b"HTTP/%s 200 OK\r\nServer: x\r\n\r\nsome body" % version, feeding, eof=True
    )
    assert events[1:] == [Data(b"some body"), EndOfMessage()]
    assert conn.keep_alive is False


def test_empty_body_delimited_by_close(backend, feeding):
    events, conn = exchange(backend, b"HTTP/1.1 200 OK\r\n\r\n", feeding, eof=True)
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert conn.keep_alive is False


def test_leading_empty_lines_are_skipped(backend, feeding):
    events, conn = exchange(
        backend, b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", feeding
    )
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert conn.keep_alive is True


# -- what follows a response ----------------------------------------------------------


def test_bytes_after_response_prevent_reuse(backend, feeding):
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    events, conn = exchange(backend, ok + ok)
    assert events == [head(headers=[(b"content-length", b"2")]), Data(b"hi"), EndOfMessage()]
    assert conn.keep_alive is False
    # the same bytes arriving after EndOfMessage
    _, conn = exchange(backend, ok, feeding)
    assert conn.keep_alive is True
    conn.receive_data(b"H")
    assert conn.keep_alive is False
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_stray_crlf_after_response_is_harmless(backend, feeding):
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    _, conn = exchange(backend, ok + b"\r\n")
    assert conn.keep_alive is True
    conn.receive_data(b"\r\n")
    assert conn.keep_alive is True
    conn.start_next_cycle()
    events, conn = exchange(backend, ok, feeding, conn=conn)
    assert events[-2:] == [Data(b"hi"), EndOfMessage()]
    assert conn.keep_alive is True


def test_eof_after_response_prevents_reuse(backend):
    _, conn = exchange(backend, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert conn.keep_alive is True
    conn.receive_data(b"")
    assert conn.keep_alive is False


def test_many_cycles_on_one_connection(backend, feeding):
    conn = make_connection(backend)
    for i in range(4):
        body = b"x" * i
        if i == 2:
            response = b"HTTP/1.1 200 OK\r\nContent-Length: 55\r\n\r\n"
        elif i % 2:
            response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (i, body)
        else:
            response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (
                b"%x\r\n%s\r\n" % (i, body) if i else b""
            )
        events, conn = exchange(
            backend, response, feeding, conn=conn, method=b"HEAD" if i == 2 else b"GET"
        )
        assert events[-1] == EndOfMessage()
        assert conn.keep_alive is True
        conn.start_next_cycle()


def test_next_event_after_end_of_message(backend):
    _, conn = exchange(backend, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(LocalProtocolError, match="start_next_cycle"):
        conn.next_event()


def test_start_next_cycle_before_end(backend):
    conn = make_connection(backend)
    conn.send_request(b"GET", b"/", HOST, -1)
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    assert conn.keep_alive is False
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()
    with pytest.raises(LocalProtocolError, match="in progress"):
        conn.send_request(b"GET", b"/", HOST, -1)


def test_request_connection_close_prevents_reuse(backend):
    conn = make_connection(backend)
    conn.send_request(b"GET", b"/", HOST + [(b"Connection", b"close")], -1)
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [type(e) for e in (conn.next_event(), conn.next_event())] == [ResponseHead, EndOfMessage]
    assert conn.keep_alive is False


def test_early_response_before_request_body_is_sent(backend):
    conn = make_connection(backend)
    conn.send_request(b"POST", b"/upload", HOST, 100)
    conn.send_data(b"x" * 10)
    conn.receive_data(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert conn.next_event().status == 413
    assert conn.next_event() == EndOfMessage()
    assert conn.keep_alive is False


# -- malformed responses ---------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\n"
CHUNKED = OK + b"Transfer-Encoding: chunked\r\n\r\n"

MALFORMED = {
    "garbage status line": b"garbage\r\n\r\n",
    "lowercase protocol": b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "two-digit status": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    "four-digit status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "status below 100": b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n",
    "double space": b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/2.0": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.2": b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/0.9": b"HTTP/0.9 200 OK\r\nContent-Length: 0\r\n\r\n",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "bare LF in a header": OK + b"A: b\nContent-Length: 0\r\n\r\n",
    "CR in a value": OK + b"A: b\rc\r\nContent-Length: 0\r\n\r\n",
    "NUL in a value": OK + b"A: b\x00c\r\nContent-Length: 0\r\n\r\n",
    "control char in a value": OK + b"A: b\x01c\r\nContent-Length: 0\r\n\r\n",
    "DEL in a value": OK + b"A: b\x7fc\r\nContent-Length: 0\r\n\r\n",
    "obs-fold": OK + b"A: b\r\n c\r\nContent-Length: 0\r\n\r\n",
    "space before colon": OK + b"A : b\r\nContent-Length: 0\r\n\r\n",
    "bad header name": OK + b"A(B: b\r\nContent-Length: 0\r\n\r\n",
    "empty header name": OK + b": b\r\nContent-Length: 0\r\n\r\n",
    "no colon": OK + b"AB\r\nContent-Length: 0\r\n\r\n",
    "continuation first": OK + b" A: b\r\nContent-Length: 0\r\n\r\n",
    "conflicting Content-Length": OK + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
    "conflicting Content-Length list": OK + b"Content-Length: 2, 3\r\n\r\nhi",
    "Content-Length 2 and 02": OK + b"Content-Length: 2\r\nContent-Length: 02\r\n\r\nhi",
    "Content-Length list with a blank item": OK + b"Content-Length: 2,,2\r\n\r\nhi",
    "a third differing Content-Length": (
        OK + b"Content-Length: 2\r\nA: b\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi"
    ),
    "negative Content-Length": OK + b"Content-Length: -2\r\n\r\nhi",
    "signed Content-Length": OK + b"Content-Length: +2\r\n\r\nhi",
    "empty Content-Length": OK + b"Content-Length: \r\n\r\nhi",
    "hex Content-Length": OK + b"Content-Length: 0x2\r\n\r\nhi",
    "huge Content-Length": OK + b"Content-Length: 99999999999999999999\r\n\r\nhi",
    "Content-Length over 2**63": OK + b"Content-Length: 9223372036854775808\r\n\r\n",
    "Transfer-Encoding and Content-Length": (
        OK + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding gzip, chunked": (
        OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding gzip": OK + b"Transfer-Encoding: gzip\r\n\r\nhi",
    "two Transfer-Encoding": (
        OK + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "101 Switching Protocols": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    ),
    "obs-fold in a 1xx": b"HTTP/1.1 103 Early\r\nA: b\r\n c\r\n\r\n" + OK + b"\r\n",
    "bad status after a 1xx": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 20 OK\r\n\r\n",
}

# RFC 9110 8.6: repeated identical Content-Length values (fields or a list) are that value
EQUAL_CONTENT_LENGTHS = {
    "two fields": OK + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    "a list": OK + b"Content-Length: 2, 2\r\n\r\nhi",
    "a list without blanks": OK + b"Content-Length: 2,2\r\n\r\nhi",
    "three, apart": OK + b"Content-Length: 2\r\nA: b\r\nContent-Length: 2 , 2\r\nC: d\r\n\r\nhi",
    "after a 1xx": b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"Content-Length: 2\r\ncontent-length: 2\r\n\r\nhi",
    # a head longer than one piece of a read httptools parses in pieces (FEED_HEAD)
    "in a long head": OK + b"Content-Length: 2\r\nContent-Length: 2\r\nX-Pad: " + b"a" * 6000 + b"\r\n\r\nhi",
}


@pytest.mark.parametrize("response", list(EQUAL_CONTENT_LENGTHS.values()), ids=list(EQUAL_CONTENT_LENGTHS))
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_equal_repeated_content_length_is_one(backend, feeding, response, method):
    """Both backends take identical repeated Content-Length values as one field, however
    the bytes arrive, and the connection stays reusable for the next response."""
    if method == b"HEAD":
        response = response[:-2]    # no body after a HEAD response's head
    events, conn = exchange(backend, response, feeding, method=method)
    head = [e for e in events if type(e) is ResponseHead][0]
    assert [(k, v) for k, v in head.headers if k == b"content-length"] == [(b"content-length", b"2")]
    body = [e.data for e in events if type(e) is Data]
    assert body == ([] if method == b"HEAD" else [b"hi"]), events
    assert type(events[-1]) is EndOfMessage and conn.keep_alive
    if method == b"GET":
        conn.start_next_cycle()
        again, _ = exchange(backend, OK + b"Content-Length: 1\r\n\r\nx", feeding, conn=conn)
        assert [e.data for e in again if type(e) is Data] == [b"x"]
    assert exchange(ALL_BACKENDS[0], response, "whole", method=method)[0] == events


@pytest.mark.parametrize("response", [MALFORMED["conflicting Content-Length"],
                                      MALFORMED["conflicting Content-Length list"],
                                      MALFORMED["a third differing Content-Length"]])
def test_conflicting_content_length_message(backend, feeding, response):
    """Both backends name the conflict the same way (the requests adapter maps it to
    requests' InvalidHeader)."""
    from greenpool.http.h1.conn import CONFLICTING_CONTENT_LENGTH
    _, exc = exchange_error(backend, response, feeding)
    assert str(exc).startswith(CONFLICTING_CONTENT_LENGTH), exc


MALFORMED_BODY = {
    "invalid chunk size": CHUNKED + b"zz\r\nhi\r\n0\r\n\r\n",
    "negative chunk size": CHUNKED + b"-2\r\nhi\r\n0\r\n\r\n",
    "empty chunk size": CHUNKED + b"\r\nhi\r\n0\r\n\r\n",
    "chunk size overflow": (CHUNKED + b"ffffffffffffffffffffff\r\nhi\r\n0\r\n\r\n"),
    "chunk size with bare LF": CHUNKED + b"2\nhi\r\n0\r\n\r\n",
    "missing CRLF after chunk": CHUNKED + b"2\r\nhiXX0\r\n\r\n",
    "bad trailer": CHUNKED + b"2\r\nhi\r\n0\r\nX T: 1\r\n\r\n",
    "control char in trailer": CHUNKED + b"0\r\nX-T: a\x01\r\n\r\n",
}


@pytest.mark.parametrize("response", list(MALFORMED.values()), ids=list(MALFORMED))
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_malformed_head(backend, feeding, response, method):
    events, exc = exchange_error(backend, response, feeding, method=method)
    assert all(type(e) is Informational for e in events)
    assert type(exc) is RemoteProtocolError
    assert exchange_error(ALL_BACKENDS[0], response, "whole", method=method)[0] == events


@pytest.mark.parametrize("response", list(MALFORMED_BODY.values()), ids=list(MALFORMED_BODY))
def test_malformed_body(backend, feeding, response):
    events, exc = exchange_error(backend, response, feeding)
    assert type(events[0]) is ResponseHead
    assert type(exc) is RemoteProtocolError
    # the same events before the error on both backends, however the bytes arrive
    for other in ALL_BACKENDS:
        for how in ("whole", "bytewise"):
            assert exchange_error(other, response, how)[0] == events


def test_error_message_names_the_problem(backend):
    _, exc = exchange_error(backend, MALFORMED["101 Switching Protocols"])
    assert "101" in str(exc)
    _, exc = exchange_error(backend, MALFORMED["HTTP/2.0"])
    assert "HTTP version" in str(exc)


# -- EOF --------------------------------------------------------------------------------


def test_eof_before_any_byte_is_connection_closed(backend):
    conn = make_connection(backend)
    conn.send_request(b"GET", b"/", HOST, -1)
    conn.receive_data(b"")
    with pytest.raises(ConnectionClosed, match="before sending any response byte"):
        conn.next_event()
    assert conn.keep_alive is False
    with pytest.raises(ConnectionClosed):
        conn.next_event()


def test_eof_after_empty_lines_is_not_retryable(backend):
    """Empty lines are bytes from the server: it answered, so EOF after them is not the
    stale-connection ConnectionClosed (which invites a retry)."""
    conn = make_connection(backend)
    conn.send_request(b"GET", b"/", HOST, -1)
    conn.receive_data(b"\r\n")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as e:
        conn.next_event()
    assert not isinstance(e.value, ConnectionClosed)
    assert "2 bytes of empty lines" in str(e.value) and "retried" not in str(e.value)


def test_eof_in_head(backend, feeding):
    _, exc = exchange_error(backend, b"HTTP/1.1 200 OK\r\nContent-Le", feeding)
    assert type(exc) is RemoteProtocolError
    assert "complete response head" in str(exc)


def test_eof_in_content_length_body(backend, feeding):
    events, exc = exchange_error(
        backend, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", feeding
    )
    assert events[1:] == [Data(b"abc")]
    assert type(exc) is RemoteProtocolError
    assert str(exc) == (
        "peer closed connection without sending complete message body: received 3 of 10 bytes"
    )


@pytest.mark.parametrize(
    "cut",
    [b"", b"5", b"5\r", b"5\r\nhel", b"5\r\nhello", b"5\r\nhello\r\n", b"5\r\nhello\r\n0\r\n"],
)
def test_eof_in_chunked_body(backend, feeding, cut):
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + cut
    events, exc = exchange_error(backend, response, feeding)
    assert type(exc) is RemoteProtocolError
    assert str(exc).startswith("peer closed connection without sending complete message body")
    assert merged(events[1:]) == ([Data(cut[3:8])] if len(cut) > 3 else [])


def test_receive_after_eof(backend):
    conn = make_connection(backend)
    conn.send_request(b"GET", b"/", HOST, -1)
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


# -- limits -----------------------------------------------------------------------------


def _response_with_head_size(size):
    """A canonical response whose head (status line + header lines) is ``size`` bytes."""
    base = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
    pad = size - len(base) - len(b"X-Pad: \r\n")
    assert pad >= 0
    return base + b"X-Pad: " + b"a" * pad + b"\r\n\r\n"


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_max_header_size_boundary(backend, feeding, method):
    limit = 300
    ok = _response_with_head_size(limit)
    conn = make_connection(backend, max_header_size=limit)
    events, conn = exchange(backend, ok, feeding, method=method, conn=conn)
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]

    conn = make_connection(backend, max_header_size=limit)
    conn.send_request(method, b"/", HOST, -1)
    with pytest.raises(LimitExceeded, match="max_header_size=300"):
        for piece in pieces(_response_with_head_size(limit + 1), feeding):
            conn.receive_data(piece)
            assert conn.next_event() is NEED_DATA
    assert conn.keep_alive is False


def test_endless_head_is_cut_off(backend):
    conn = make_connection(backend, max_header_size=1000)
    conn.send_request(b"GET", b"/", HOST, -1)
    conn.receive_data(b"HTTP/1.1 200 OK\r\nX-Long: ")
    with pytest.raises(LimitExceeded, match="max_header_size"):
        for _ in range(100):
            conn.receive_data(b"a" * 100)
            assert conn.next_event() is NEED_DATA


def test_max_headers(backend, feeding):
    def response(n):
        return (
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(n - 1))
            + (b"Content-Length: 0\r\n\r\n")
        )

    events, _ = exchange(
        backend, response(10), feeding, conn=make_connection(backend, max_headers=10)
    )
    assert len(events[0].headers) == 10
    conn = make_connection(backend, max_headers=10)
    conn.send_request(b"GET", b"/", HOST, -1)
    with pytest.raises(LimitExceeded, match="max_headers=10"):
        for piece in pieces(response(11), feeding):
            conn.receive_data(piece)
            conn.next_event()


def test_limit_is_a_remote_protocol_error():
    assert issubclass(LimitExceeded, RemoteProtocolError)


def test_too_many_trailers(backend, feeding):
    trailers = b"".join(b"T-%d: v\r\n" % i for i in range(20))
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n"
        + trailers
        + b"\r\n"
    )
    conn = make_connection(backend, max_headers=10)
    conn.send_request(b"GET", b"/", HOST, -1)
    events = []
    with pytest.raises(LimitExceeded):
        for piece in pieces(response, feeding):
            conn.receive_data(piece)
            drain(conn, events)
    assert merged(events)[1:] == [Data(b"hi")]


# -- bounds before the final head ---------------------------------------------------------


def test_interim_responses_are_capped(backend, feeding):
    """MAX_INTERIM_RESPONSES 1xx heads pass; one more is LimitExceeded, counted as parsed
    (the same however the bytes arrive)."""
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    events, conn = exchange(backend, interim * MAX_INTERIM_RESPONSES + final, feeding)
    assert [type(e) for e in events] == [Informational] * MAX_INTERIM_RESPONSES + [
        ResponseHead, Data, EndOfMessage]
    assert conn.keep_alive
    events, exc = exchange_error(backend, interim * (MAX_INTERIM_RESPONSES + 1) + final, feeding)
    assert type(exc) is LimitExceeded and "interim (1xx)" in str(exc)
    assert events == [head(103, [(b"link", b"</a.css>")], b"Early Hints", cls=Informational)
                      ] * MAX_INTERIM_RESPONSES


@pytest.mark.parametrize("flood", [b"HTTP/1.1 100 Continue\r\n\r\n", b"\r\n", b"\n"])
def test_endless_flood_before_the_head_is_cut_off(backend, flood):
    """100 Continue heads or empty lines forever: LimitExceeded after a bounded number of
    bytes (2 x max_header_size), not a read that goes on as long as the server sends."""
    conn = make_connection(backend, max_header_size=4096)
    conn.send_request(b"POST", b"/", HOST, 0)
    fed = 0
    with pytest.raises(LimitExceeded) as e:
        while fed < 10 * 1024 * 1024:
            conn.receive_data(flood * 256)
            fed += len(flood) * 256
            while conn.next_event() is not NEED_DATA:
                pass
    assert fed <= 2 * 4096 + 256 * len(flood)
    assert "retried" not in str(e.value)
    assert conn.keep_alive is False


def test_empty_lines_count_against_the_bytes_before_the_head(backend):
    limit = 1000
    final = b"HTTP/1.1 204 No Content\r\n\r\n"
    events, _ = exchange(backend, b"\r\n" * 900 + final, "whole",
                         conn=make_connection(backend, max_header_size=limit))
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    conn = make_connection(backend, max_header_size=limit)
    conn.send_request(b"GET", b"/", HOST, -1)
    conn.receive_data(b"\r\n" * 1001)
    with pytest.raises(LimitExceeded, match="2 x max_header_size"):
        conn.next_event()


# -- chunk framing bounds (the same counter for both backends) ------------------------------


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("how", ["whole", "head apart", "64 KiB pieces"])
def test_two_mib_chunk_extension_is_limit_exceeded(backend, how):
    """h11 refused it only when the bytes came apart; llhttp took it: now both refuse it
    however it arrives, after the data before it."""
    wire = CHUNKED_HEAD + b"2\r\nhi\r\n5;ext=" + b"x" * (2 << 20) + b"\r\nhello\r\n0\r\n\r\n"
    if how == "whole":
        parts = [wire]
    elif how == "head apart":
        parts = [CHUNKED_HEAD, wire[len(CHUNKED_HEAD):]]
    else:
        parts = [wire[i:i + 65536] for i in range(0, len(wire), 65536)]
    conn = make_connection(backend)
    conn.send_request(b"GET", b"/", HOST, -1)
    events = []
    with pytest.raises(LimitExceeded, match="max_header_size=65536"):
        for piece in parts:
            conn.receive_data(piece)
            drain(conn, events)
    assert merged(events) == [head(headers=[(b"transfer-encoding", b"chunked")]), Data(b"hi")]
    assert conn.keep_alive is False


@pytest.mark.parametrize("what", ["extension", "trailer value", "trailer name"])
def test_endless_chunk_framing_is_cut_off_with_bounded_memory(backend, what):
    """An extension or a trailer that never ends: LimitExceeded once max_header_size bytes
    of it arrived (not a read until the server stops), and what the parser kept stays
    about that size."""
    import tracemalloc

    start = {"extension": b"5;e=", "trailer value": b"0\r\nX-T: ",
             "trailer name": b"0\r\nX-"}[what]
    conn = make_connection(backend, max_header_size=16384)
    conn.send_request(b"GET", b"/", HOST, -1)
    conn.receive_data(CHUNKED_HEAD + b"2\r\nhi\r\n" + start)
    events = []
    drain(conn, events)
    tracemalloc.start()
    try:
        fed = 0
        with pytest.raises(LimitExceeded):
            while fed < 64 * 1024 * 1024:
                conn.receive_data(b"a" * 4096)
                fed += 4096
                drain(conn, events)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fed <= 16384 + 4096
    assert peak < 1024 * 1024, peak
    assert merged(events)[1:] == [Data(b"hi")]


def test_invalid_limits():
    with pytest.raises(ValueError):
        make_connection("h11", max_header_size=0)
    with pytest.raises(ValueError):
        make_connection("h11", max_headers=-1)


# -- requests -----------------------------------------------------------------------------


def test_get_request_bytes(backend):
    conn = make_connection(backend)
    out = conn.send_request(b"GET", b"/a?b=c", [(b"Host", b"example.org"), (b"Accept", b"*/*")], -1)
    assert out == b"GET /a?b=c HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n"
    assert conn.send_data(b"") == b""
    assert conn.send_end() == b""
    assert conn.send_end() == b""


@pytest.mark.parametrize(
    "method, body_length, framing",
    [
        (b"GET", -1, b""),
        (b"GET", 0, b""),
        (b"DELETE", 0, b""),
        (b"POST", 0, b"Content-Length: 0\r\n"),
        (b"PUT", 0, b"Content-Length: 0\r\n"),
        (b"PATCH", 0, b"Content-Length: 0\r\n"),
        (b"POST", -1, b""),
        (b"POST", 12, b"Content-Length: 12\r\n"),
        (b"GET", 3, b"Content-Length: 3\r\n"),
        (b"POST", None, b"Transfer-Encoding: chunked\r\n"),
    ],
)
def test_request_framing(backend, method, body_length, framing):
    conn = make_connection(backend)
    out = conn.send_request(method, b"/", HOST, body_length)
    assert out == method + b" / HTTP/1.1\r\nHost: example.org\r\n" + framing + b"\r\n"


def test_repeated_requests_are_checked_once_and_stay_exact(backend):
    # the check and the head bytes are kept per distinct request (h1._checked): the same
    # request again gives the same bytes, a changed list is a new request, a refused one
    # is refused every time, and an unhashable header pair is checked without being kept
    from greenpool.http.h1 import conn as h1

    headers = HOST + [(b"Accept", b"*/*")]
    first = []
    for _ in range(3):
        conn = make_connection(backend)
        first.append(conn.send_request(b"POST", b"/x", headers, 2))
        assert conn.send_data(b"ok") == b"ok"
        assert conn.send_end() == b""
    assert first[0] == first[1] == first[2] == (
        b"POST /x HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\nContent-Length: 2\r\n\r\n")
    headers.append((b"X-More", b"1"))  # the caller's list changed: a different request
    out = make_connection(backend).send_request(b"POST", b"/x", headers, 2)
    assert b"X-More: 1\r\n" in out
    bad = HOST + [(b"X", b"a\rb")]
    for _ in range(2):
        with pytest.raises(LocalProtocolError):
            make_connection(backend).send_request(b"GET", b"/", bad, -1)
    before = len(h1._checked)
    listed = [[b"Host", b"example.org"], (b"Y", b"2")]
    out = make_connection(backend).send_request(b"GET", b"/y", listed, -1)
    assert out == b"GET /y HTTP/1.1\r\nHost: example.org\r\nY: 2\r\n\r\n"
    assert len(h1._checked) <= before  # not kept (it may have been cleared when full)
    for _ in range(2):  # the second time "close requested" comes from the kept entry
        conn = make_connection(backend)
        conn.send_request(b"GET", b"/", HOST + [(b"Connection", b"close")], -1)
        conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert type(conn.next_event()) is ResponseHead
        assert type(conn.next_event()) is EndOfMessage
        assert conn.keep_alive is False


def test_content_length_body_sending(backend):
    conn = make_connection(backend)
    conn.send_request(b"PUT", b"/", HOST, 5)
    assert conn.send_data(b"he") == b"he"
    with pytest.raises(LocalProtocolError, match="too little"):
        conn.send_end()
    with pytest.raises(LocalProtocolError, match="too much"):
        conn.send_data(b"llo!")
    assert conn.send_data(b"llo") == b"llo"
    assert conn.send_end() == b""


def test_chunked_body_sending(backend):
    conn = make_connection(backend)
    conn.send_request(b"POST", b"/", HOST, None)
    assert conn.send_data(b"hello") == b"5\r\nhello\r\n"
    assert conn.send_data(b"") == b""
    assert conn.send_data(b"x" * 300) == b"12c\r\n" + b"x" * 300 + b"\r\n"
    assert conn.send_end() == b"0\r\n\r\n"
    assert conn.send_end() == b""


def test_no_body_request_refuses_data(backend):
    conn = make_connection(backend)
    conn.send_request(b"GET", b"/", HOST, -1)
    with pytest.raises(LocalProtocolError):
        conn.send_data(b"x")


def test_send_before_request(backend):
    conn = make_connection(backend)
    with pytest.raises(LocalProtocolError):
        conn.send_data(b"x")
    with pytest.raises(LocalProtocolError):
        conn.send_end()


BAD_REQUESTS = {
    "CR in value": (b"GET", b"/", HOST + [(b"X", b"a\rb")]),
    "LF in value": (b"GET", b"/", HOST + [(b"X", b"a\nInjected: 1")]),
    "CRLF in value": (b"GET", b"/", HOST + [(b"X", b"a\r\nInjected: 1")]),
    "NUL in value": (b"GET", b"/", HOST + [(b"X", b"a\x00b")]),
    "trailing space in value": (b"GET", b"/", HOST + [(b"X", b"a ")]),
    "leading space in value": (b"GET", b"/", HOST + [(b"X", b" a")]),
    "CR in name": (b"GET", b"/", HOST + [(b"X\r", b"a")]),
    "LF in name": (b"GET", b"/", HOST + [(b"X\nY", b"a")]),
    "NUL in name": (b"GET", b"/", HOST + [(b"X\x00", b"a")]),
    "colon in name": (b"GET", b"/", HOST + [(b"X:Y", b"a")]),
    "space in name": (b"GET", b"/", HOST + [(b"X Y", b"a")]),
    "empty name": (b"GET", b"/", HOST + [(b"", b"a")]),
    "space in method": (b"GE T", b"/", HOST),
    "CRLF in method": (b"GET\r\n", b"/", HOST),
    "empty method": (b"", b"/", HOST),
    "space in target": (b"GET", b"/a b", HOST),
    "CRLF in target": (b"GET", b"/a\r\nX: y", HOST),
    "LF in target": (b"GET", b"/a\n", HOST),
    "NUL in target": (b"GET", b"/a\x00", HOST),
    "empty target": (b"GET", b"", HOST),
    "no Host": (b"GET", b"/", [(b"Accept", b"*/*")]),
    "two Host": (b"GET", b"/", HOST + [(b"host", b"other")]),
    "caller Content-Length": (b"GET", b"/", HOST + [(b"Content-Length", b"5")]),
    "caller Transfer-Encoding": (b"GET", b"/", HOST + [(b"transfer-encoding", b"chunked")]),
}


@pytest.mark.parametrize("request_", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_request_validation(backend, request_):
    method, target, headers = request_
    conn = make_connection(backend)
    with pytest.raises(LocalProtocolError):
        conn.send_request(method, target, headers, -1)
    # nothing was produced and nothing changed: a valid request can follow
    assert conn.send_request(b"GET", b"/", HOST, -1).startswith(b"GET / HTTP/1.1\r\n")


def test_request_allows_inner_whitespace_and_obs_text(backend):
    conn = make_connection(backend)
    out = conn.send_request(
        b"GET", b"/%C3%A9", HOST + [(b"X-A", b"a b\tc"), (b"X-B", b"\xc3\xa9"), (b"X-C", b"")], -1
    )
    assert b"X-A: a b\tc\r\nX-B: \xc3\xa9\r\nX-C: \r\n\r\n" in out


def test_invalid_header_is_rejected_every_time(backend):
    bad = HOST + [(b"X", b"a\r\nInjected: 1")]
    for _ in range(2):
        with pytest.raises(LocalProtocolError):
            make_connection(backend).send_request(b"GET", b"/", bad, -1)
    with pytest.raises(TypeError):
        make_connection(backend).send_request(b"GET", b"/", HOST + [("X", "str")], -1)


@pytest.mark.parametrize("body_length", [-2, 1.5, "5", True])
def test_invalid_body_length(backend, body_length):
    conn = make_connection(backend)
    with pytest.raises((ValueError, TypeError)):
        conn.send_request(b"POST", b"/", HOST, body_length)


def test_backends_serialize_identically():
    if not HAVE_HTTPTOOLS:
        pytest.skip("httptools is not installed")
    headers = HOST + [(b"User-Agent", b"greenpool"), (b"accept-encoding", b"gzip, br")]
    for method, body_length in [(b"GET", -1), (b"POST", 0), (b"POST", 4), (b"PUT", None)]:
        outs = []
        for backend in ALL_BACKENDS:
            conn = make_connection(backend)
            out = conn.send_request(method, b"/x", headers, body_length)
            if body_length == 4:
                out += conn.send_data(b"abcd")
            elif body_length is None:
                out += conn.send_data(b"abcd") + conn.send_data(b"ef")
            out += conn.send_end()
            outs.append(out)
        assert outs[0] == outs[1]


# -- factory ----------------------------------------------------------------------------


def test_make_connection_choices():
    conn = make_connection("h11")
    assert conn.backend == "h11"
    assert isinstance(conn, H1Connection)
    auto = make_connection()
    assert auto.backend == ("httptools" if HAVE_HTTPTOOLS else "h11")
    with pytest.raises(ValueError, match="http1_parser"):
        make_connection("picohttpparser")


def test_make_connection_httptools_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "greenpool.http.h1.parser_httptools", None)
    with pytest.raises(ValueError, match="http1_parser"):
        make_connection("httptools")
    assert make_connection("auto").backend == "h11"


def test_repr(backend):
    conn = make_connection(backend)
    assert "awaiting head" in repr(conn) and backend in repr(conn)
    _, conn = exchange(backend, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert "done" in repr(conn) and "keep_alive=True" in repr(conn)


def test_event_reprs():
    assert repr(NEED_DATA) == "NEED_DATA"
    assert repr(Data(b"x")) == "Data(b'x')"
    assert repr(EndOfMessage()) == "EndOfMessage()"
    assert "status=200" in repr(head())
    assert head() != head(cls=Informational)


# -- property: split points do not matter, backends agree ---------------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
_value = st.binary(min_size=0, max_size=20).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80)
)


@st.composite
def responses(draw):
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD"]))
    parts = []
    for _ in range(draw(st.integers(0, 2))):
        parts.append(
            b"HTTP/1.1 %d Info\r\nX-Info: 1\r\n\r\n" % draw(st.sampled_from([100, 102, 103]))
        )
    status = draw(st.sampled_from([200, 201, 204, 301, 304, 404, 500]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    headers = [
        (n, v)
        for n, v in draw(st.lists(st.tuples(_token, _value), max_size=5))
        if n not in (b"content-length", b"transfer-encoding", b"connection", b"keep-alive")
    ]
    if version == b"1.0":
        headers.append((b"Connection", b"keep-alive"))
    body = draw(st.binary(max_size=200))
    framing = draw(st.sampled_from(["length", "chunked"]))
    has_body = method != b"HEAD" and status not in (204, 304)
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
        wire_body = body
    else:
        headers.append((b"Transfer-Encoding", b"chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)]) if b > a]
        wire_body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    parts.append(
        b"HTTP/%s %d Reason\r\n" % (version, status)
        + b"".join(b"%s: %s\r\n" % h for h in headers)
        + b"\r\n"
        + (wire_body if has_body else b"")
    )
    return method, b"".join(parts)


def _feed_split(backend, method, data, cuts):
    conn = make_connection(backend)
    conn.send_request(method, b"/", HOST, -1)
    events = []
    bounds = sorted(set(cuts))
    for a, b in zip([0] + bounds, bounds + [len(data)]):
        if a == b:
            continue  # b"" would mean EOF
        conn.receive_data(data[a:b])
        if drain(conn, events):
            break
    return merged(events), conn.keep_alive


@settings(max_examples=200, deadline=None)
@given(responses(), st.data())
def test_split_points_do_not_matter(resp, data):
    method, wire = resp
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
    reference = _feed_split("h11", method, wire, [])
    assert reference[0][-1] == EndOfMessage()
    assert reference[1] is True
    for backend in ALL_BACKENDS:
        assert _feed_split(backend, method, wire, []) == reference
        assert _feed_split(backend, method, wire, cuts) == reference


@pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools is not installed")
def test_httptools_field_cache_gives_the_same_heads():
    # fields are normalised once per distinct (name, value) and kept if short and not
    # Set-Cookie; a second response with the same fields must give the same event
    from greenpool.http.h1 import parser_httptools as h1_httptools

    long_value = b"v" * 300
    resp = (b"HTTP/1.1 200 OK\r\nServer: X  \r\nTransfer-Encoding: Chunked\r\n"
            b"Set-Cookie: sid=secret\r\nX-Long: " + long_value + b"\r\n\r\n0\r\n\r\n")
    heads = [fresh_response("httptools", resp)[0][0] for _ in range(2)]
    assert heads[0] == heads[1]
    assert heads[0].headers == [(b"server", b"X"), (b"transfer-encoding", b"chunked"),
                                (b"set-cookie", b"sid=secret"), (b"x-long", long_value)]
    kept = h1_httptools._fields
    assert (b"Server", b"X  ") in kept and (b"Transfer-Encoding", b"Chunked") in kept
    assert (b"Set-Cookie", b"sid=secret") not in kept
    assert (b"X-Long", long_value) not in kept
    # a head with a field that is not kept is not kept whole either
    assert not any(raw for raw in h1_httptools._heads if (b"Set-Cookie", b"sid=secret") in raw)


def test_h11_head_cache_checks_each_distinct_head_once():
    # h11 backend: a head's raw bytes are checked once and kept (not with Set-Cookie);
    # a refused head is refused every time and never kept; each event gets its own list
    from greenpool.http.h1 import parser_h11 as h1_h11

    head = b"HTTP/1.1 200 OK\r\nServer: X\r\nContent-Length: 2\r\n\r\n"
    heads = []
    for _ in range(3):
        events, conn = fresh_response("h11", head + b"ok")
        assert type(events[-1]) is EndOfMessage and conn.body_length == 2
        heads.append(events[0])
    assert head in h1_h11._heads
    assert heads[0] == heads[1] == heads[2]
    assert heads[1].headers is not heads[2].headers
    heads[0].headers.append((b"x", b"y"))
    assert heads[2].headers == [(b"server", b"X"), (b"content-length", b"2")]
    cookie = b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=secret\r\nContent-Length: 0\r\n\r\n"
    bad = b"HTTP/1.1 200 OK\r\nServer: X\r\nContent-Length: 2\r\nContent-Length: 02\r\n\r\n"
    for _ in range(2):
        assert type(fresh_response("h11", cookie)[0][-1]) is EndOfMessage
        with pytest.raises(RemoteProtocolError, match="Content-Length"):
            fresh_response("h11", bad + b"ok")
    assert cookie not in h1_h11._heads and bad not in h1_h11._heads
    with pytest.raises(LimitExceeded):
        fresh_response("h11", head + b"ok", max_headers=1)


@pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools is not installed")
def test_httptools_head_cache_gives_fresh_equal_heads():
    # a head seen before is normalised once; each event still gets its own list, and a
    # cached head is checked by the rules again (the limits of this connection apply)
    from greenpool.http.h1 import parser_httptools as h1_httptools

    resp = (b"HTTP/1.1 200 OK\r\nServer: X  \r\nContent-Length: 2\r\n"
            b"Content-Encoding: gzip\r\n\r\nok")
    heads = []
    for _ in range(3):
        events, conn = fresh_response("httptools", resp)
        assert type(events[-1]) is EndOfMessage
        assert conn.content_encodings == (b"gzip",) and conn.body_length == 2
        heads.append(events[0])
    assert ((b"Server", b"X  "), (b"Content-Length", b"2"),
            (b"Content-Encoding", b"gzip")) in h1_httptools._heads
    assert heads[0] == heads[1] == heads[2]
    assert heads[0].headers == [(b"server", b"X"), (b"content-length", b"2"),
                                (b"content-encoding", b"gzip")]
    heads[0].headers.append((b"x", b"y"))
    assert heads[1].headers is not heads[2].headers and len(heads[1].headers) == 3
    with pytest.raises(LimitExceeded):
        fresh_response("httptools", resp, max_headers=2)
