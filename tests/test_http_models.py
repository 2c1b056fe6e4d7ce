"""greenpool.http.models: Timeout, Headers, URL, Request, Response."""
from __future__ import annotations

import pytest

from greenpool import errors
from greenpool.http.models import URL, Headers, Request, Response, Timeout


class FakeStream:
    def __init__(self, parts):
        self.parts = list(parts)
        self.closed = 0
        self.trailers = None

    def read_chunk(self, n):
        return self.parts.pop(0) if self.parts else b""

    def close(self):
        self.closed += 1


def test_timeout():
    t = Timeout(5)
    assert (t.connect, t.read, t.write, t.pool, t.total) == (5, 5, 5, 5, 5)
    t2 = Timeout(t, read=1)
    assert t2.read == 1 and t2.connect == 5
    assert Timeout(read=2).connect is None
    assert Timeout.coerce(3) == Timeout(3) and Timeout.coerce(t) is t
    assert hash(Timeout(1)) == hash(Timeout(1))
    with pytest.raises(AttributeError):
        t.read = 3
    with pytest.raises(ValueError):
        Timeout(-1)
    with pytest.raises(TypeError):
        Timeout("5")
    assert "read=5" in repr(t)


def test_headers():
    h = Headers([("Content-Type", "a"), ("X-A", "1"), ("x-a", "2")])
    assert h["content-type"] == "a" and h["X-A"] == "1, 2" and h.get_list("x-a") == ["1", "2"]
    assert "X-a" in h and 3 not in h and len(h) == 3
    assert h.keys() == ["Content-Type", "X-A"]
    h["x-a"] = "3"
    assert h.get_list("X-A") == ["3"]
    h.add("Set-Cookie", "a")
    assert h.setdefault("set-cookie", "b") == "a"
    del h["set-cookie"]
    with pytest.raises(KeyError):
        del h["nope"]
    with pytest.raises(KeyError):
        h["nope"]
    assert h.pop("x-a") == "3" and h.get("x-a") is None
    assert h == {"content-type": "a"} and h != 5
    h.update({"B": 2})
    assert h["b"] == "2" and h.copy() == h
    assert Headers({"a": b"b"}).raw() == [(b"a", b"b")]
    with pytest.raises(TypeError):
        Headers({"a": object()})
    with pytest.raises(errors.LocalProtocolError):
        Headers({"a": "\u2603"}).raw()


def test_headers_from_raw_is_lazy():
    raw = [(b"content-type", b"text/plain"), (b"x", b"\xe9")]
    h = Headers.from_raw(raw)
    assert h._l is None
    assert h.raw() == raw
    assert h["x"] == "\xe9" and h._l is not None
    assert h.items() == [("content-type", "text/plain"), ("x", "\xe9")]
    assert "content-type" in repr(h)


def test_url():
    u = URL("HTTPS://Example.org:8443/a/b?x=1#frag", params={"y": "2 3"})
    assert (u.scheme, u.host, u.port, u.target) == ("https", "example.org", 8443, b"/a/b?x=1&y=2+3")
    assert u.authority == "example.org:8443" and u.transport == "ssl"
    assert u.path == "/a/b" and u.query == "x=1&y=2+3" and u.fragment == "frag"
    assert str(URL("http://h")) == "http://h/" and URL("http://h").port == 80
    assert URL("http://[::1]:81/").authority == "[::1]:81"
    assert URL("http://h/a/b").join("../c") == "http://h/c"
    assert URL("http://u:p@h/").userinfo == "u:p" and "u:p" not in str(URL("http://u:p@h/"))
    assert URL("http://bücher.example/").host == "xn--bcher-kva.example"
    assert URL("http://h/sp\u00e4ce").target == b"/sp%C3%A4ce"
    for bad in ("ftp://h/", "http:///x", "http://h/\r\nX: y", "http://h:99999/", 5):
        with pytest.raises(errors.InvalidURL):
            URL(bad)


def test_request_raw_and_headers_views():
    r = Request("get", "http://h/", raw_headers=[(b"Host", b"h"), (b"X", b"1")])
    assert r.method == "GET" and r.raw_headers == [(b"Host", b"h"), (b"X", b"1")]
    assert r.headers["x"] == "1"
    r.headers["x"] = "2"
    assert (b"X", b"2") in r.raw_headers or (b"x", b"2") in r.raw_headers
    r.headers = {"A": "b"}
    assert r.raw_headers == [(b"A", b"b")]
    assert "GET http://h/" in repr(r)
    with pytest.raises(ValueError):
        Request("", "http://h/")


def test_response_body_and_close():
    s = FakeStream([b"ab", b"cd"])
    r = Response(200, Headers({"content-type": "text/plain; charset=latin-1"}), reason="OK",
                 url="http://h/", stream=s)
    assert r.text == "abcd" and r.content == b"abcd" and r.encoding == "latin-1"
    assert s.closed == 1 and r.closed
    r.close()
    assert s.closed == 1
    assert list(r.iter_bytes(3)) == [b"abc", b"d"]


def test_response_iter_and_consumed():
    r = Response(200, Headers(), stream=FakeStream([b"abc", b"defg"]))
    assert list(r.iter_bytes(2)) == [b"ab", b"cd", b"ef", b"g"]
    with pytest.raises(errors.StreamConsumed):
        r.read()


def test_response_status_helpers_and_json():
    r = Response(404, Headers(), reason="Not Found", url="http://h/x", stream=FakeStream([b'{"a": 1}']))
    assert not r.ok and r.status_code == 404 and r.json() == {"a": 1}
    with pytest.raises(errors.HTTPStatusError) as info:
        r.raise_for_status()
    assert info.value.response is r and "404" in str(info.value)
    assert Response(200, Headers()).raise_for_status().ok
    assert Response(302, Headers({"location": "/"})).is_redirect
    assert not Response(302, Headers()).is_redirect
    assert "404" in repr(r)


def test_response_del_closes_stream():
    s = FakeStream([b"x"])
    r = Response(200, Headers(), stream=s)
    del r
    import gc
    gc.collect()
    assert s.closed == 1


def test_response_with_decoder():
    import gzip

    from greenpool.http.decoding import make_decoder
    z = gzip.compress(b"hello world")
    r = Response(200, Headers(), stream=FakeStream([z[:5], z[5:]]), decoder=make_decoder("gzip"))
    assert r.read() == b"hello world"
    r = Response(200, Headers(), stream=FakeStream([z]), decoder=make_decoder("gzip"))
    assert b"".join(r.iter_raw()) == z


# -- requests/httpx conveniences ---------------------------------------------------------------


def test_timeout_tuple_message_and_pickle():
    import pickle
    t = Timeout((2, 7))
    assert (t.connect, t.read, t.write, t.pool, t.total) == (2, 7, 7, None, None)
    assert Timeout((None, 3)).connect is None
    with pytest.raises(ValueError):
        Timeout((1, 2, 3))
    with pytest.raises(TypeError) as info:
        Timeout("foo")
    msg = str(info.value)
    assert "timeout timeout" not in msg and msg.startswith("timeout must be a number of seconds")
    assert "(connect, read) tuple" in msg
    with pytest.raises(TypeError, match="the read timeout must be"):
        Timeout(read="x")
    for value in (Timeout(1), Timeout((1, 2)), Timeout(connect=3, total=9), Timeout()):
        assert pickle.loads(pickle.dumps(value)) == value


def _text_response(body, ctype=None, parts=None):
    headers = Headers({"content-type": ctype} if ctype else {})
    return Response(200, headers, url="http://h/", stream=FakeStream(parts or [body]))


def test_text_charset_rules():
    # a charset wins; without one the default (utf-8) when the body decodes with it...
    assert _text_response("café".encode("latin-1"), "text/plain; charset=ISO-8859-1").text == "café"
    r = _text_response("café".encode("utf-8"), "text/plain")
    assert r.text == "café" and r.encoding == "utf-8"
    # ...else latin-1, never U+FFFD
    r = _text_response("café".encode("latin-1"), "text/plain")
    assert r.text == "café" and r.encoding == "latin-1" and r.charset is None
    # settable, checked at once
    r = _text_response("café".encode("utf-8"))
    r.encoding = "latin-1"
    assert r.text == "cafÃ©" and r.encoding == "latin-1"
    with pytest.raises(LookupError):
        r.encoding = "no-such-codec"
    # a callable default guesses from the bytes
    r = _text_response(b"\xff\xfeh\x00i\x00")
    r.default_encoding = lambda data: "utf-16" if data[:2] == b"\xff\xfe" else None
    assert r.text == "hi" and r.encoding == "utf-16"


def test_iter_text_and_lines():
    data = "été\nline two\r\nthree\rfour".encode("utf-8")
    # split inside a multi-byte character and between \r and \n
    pieces = [data[:1], data[1:2], data[2:10], data[10:18], data[18:19], data[19:]]
    r = _text_response(None, "text/plain; charset=utf-8", pieces)
    assert list(r.iter_lines()) == ["été", "line two", "three", "four"]
    r = _text_response(None, "text/plain; charset=utf-8", pieces)
    assert "".join(r.iter_text()) == data.decode("utf-8")
    # without a charset, latin-1 takes over at the first undecodable byte
    r = _text_response(None, None, [b"ok ", "café\n".encode("latin-1")])
    assert list(r.iter_lines()) == ["ok café"]
    r = _text_response(None, None, [b"a\n\nb\n"])
    assert list(r.iter_lines()) == ["a", "", "b"]


def test_is_success_links_elapsed():
    import datetime
    assert Response(204, Headers()).is_success and not Response(302, Headers()).is_success
    assert not Response(404, Headers()).is_success
    link = '<https://api.test/p?page=2>; rel="next", <https://api.test/p?page=9>; rel="last"'
    links = Response(200, Headers({"link": link})).links
    assert links["next"]["url"] == "https://api.test/p?page=2"
    assert links["last"] == {"url": "https://api.test/p?page=9", "rel": "last"}
    assert Response(200, Headers()).links == {}
    r = Response(200, Headers())
    r._sent = r._started - 0.25
    assert isinstance(r.elapsed, datetime.timedelta) and r.elapsed.total_seconds() == pytest.approx(0.25)


def test_http_unix_url():
    u = URL("http+unix://%2Ftmp%2FApp.sock/x?y=1")
    assert (u.host, u.port, u.transport, u.authority, u.target) == ("/tmp/App.sock", 80, "unix",
                                                                    "localhost", b"/x?y=1")
    assert str(u) == "http+unix://%2Ftmp%2FApp.sock/x?y=1"
    assert str(u.join("/z")) == "http+unix://%2Ftmp%2FApp.sock/z"
    assert str(u.join("http://other/")) == "http://other/"
    with pytest.raises(errors.InvalidURL):
        URL("http+unix:///x")
    with pytest.raises(errors.InvalidURL, match="http, https or http\\+unix"):
        URL("ftp://h/")
