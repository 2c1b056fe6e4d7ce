"""Tests for greenpool/contrib/requests.py: requests sessions over greenpool, against real servers.

requests does redirects, cookies and auth itself; these tests check that they still work
through the adapter, and that everything the adapter maps (bodies, stream, timeout, verify,
cert, proxies, errors, content decoding) behaves as it does with requests' own adapter.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import socket

import gevent
import pytest

requests = pytest.importorskip("requests")

import greenpool  # noqa: E402
from greenpool import Timeout  # noqa: E402
from greenpool.contrib.requests import BodyReadTimeout, GreenPoolAdapter, GreenPoolRaw, map_error  # noqa: E402

from fakes import refused_port  # noqa: E402
from servers import pattern  # noqa: E402

_names = itertools.count()


@pytest.fixture
def pool():
    name = "rq-%d" % next(_names)
    p = greenpool.start_pool(name, max_connections=4, checkout_timeout=2.0)
    yield p
    stats = p.get_stats()
    greenpool.stop_pool(name)
    assert stats["in_use_count"] == 0, stats  # every response gave its connection back


@pytest.fixture
def session(pool):
    s = requests.Session()
    adapter = GreenPoolAdapter(pool=pool.name)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    yield s
    s.close()


# -- requests and responses --


def test_get_json_and_headers_go_through_the_pool(session, pool, gunicorn):
    r = session.get(gunicorn.url + "/echo?x=1", headers={"X-Test": "yes"})
    assert r.status_code == 200 and r.reason == "OK" and r.ok
    body = r.json()
    assert body["method"] == "GET" and body["args"] == {"x": "1"}
    assert body["headers"]["x-test"] == "yes"
    assert body["headers"]["user-agent"].startswith("python-requests/")
    assert r.headers["content-type"] == "application/json"
    assert isinstance(r.raw, GreenPoolRaw) and r.raw.version == 11
    assert r.url == gunicorn.url + "/echo?x=1" and r.elapsed.total_seconds() >= 0
    assert isinstance(r.connection, GreenPoolAdapter)
    session.get(gunicorn.url + "/echo")
    stats = pool.get_stats()
    assert stats["created"] == 1 and stats["reused"] >= 1  # keep-alive through greenpool


@pytest.mark.parametrize("kind", ["data-dict", "json", "str", "files", "generator", "file"])
def test_request_bodies(session, gunicorn, kind, tmp_path):
    payload = pattern(100_000)
    if kind == "data-dict":
        r = session.post(gunicorn.url + "/echo", data={"a": "1", "b": ["x", "y"]})
        assert r.json()["body"] == "a=1&b=x&b=y"
        assert r.json()["headers"]["content-type"] == "application/x-www-form-urlencoded"
        return
    if kind == "json":
        r = session.post(gunicorn.url + "/echo", json={"k": [1, 2]})
        assert r.json()["body"] == '{"k": [1, 2]}'
        return
    if kind == "str":
        r = session.put(gunicorn.url + "/echo", data="héllo")
        assert r.json()["method"] == "PUT" and r.json()["body"] == "héllo"
        return
    if kind == "files":
        r = session.post(gunicorn.url + "/echo", files={"f": ("a.bin", b"filedata")})
        echo = r.json()
        assert echo["headers"]["content-type"].startswith("multipart/form-data; boundary=")
        assert "filedata" in echo["body"]
        return
    if kind == "generator":
        def gen():
            for i in range(0, len(payload), 7000):
                yield payload[i:i + 7000]
        r = session.post(gunicorn.url + "/upload", data=gen())
    else:
        path = tmp_path / "payload"
        path.write_bytes(payload)
        with open(path, "rb") as f:
            r = session.post(gunicorn.url + "/upload", data=f)
    assert r.json() == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_head_and_no_body_statuses(session, gunicorn):
    r = session.head(gunicorn.url + "/bytes/1000")
    assert r.status_code == 200 and r.headers["content-length"] == "1000" and r.content == b""
    r = session.get(gunicorn.url + "/status/204")
    assert r.status_code == 204 and r.content == b""


# -- what requests does itself --


def test_redirects_are_followed_by_requests(session, gunicorn):
    r = session.get(gunicorn.url + "/redirect/3")
    assert r.status_code == 200 and r.json()["path"] == "/echo"
    assert [h.status_code for h in r.history] == [302, 302, 302]
    r = session.get(gunicorn.url + "/redirect/2", allow_redirects=False)
    assert r.status_code == 302 and r.is_redirect and r.headers["location"] == "/redirect/1"
    r.close()
    # 303/302 after a POST becomes a GET without a body (requests' rule)
    r = session.post(gunicorn.url + "/redirect-to?url=/echo&status=303", data=b"abc")
    assert r.json()["method"] == "GET" and r.json()["body"] == ""
    session.max_redirects = 2
    with pytest.raises(requests.TooManyRedirects):
        session.get(gunicorn.url + "/redirect/5")


def test_auth_and_auth_stripped_on_origin_change(session, gunicorn, nginx):
    r = session.get(gunicorn.url + "/echo", auth=("user", "pa:ss"))
    assert r.json()["headers"]["authorization"] == "Basic dXNlcjpwYTpzcw=="
    # credentials in the URL: requests turns them into the header; the adapter drops the userinfo
    host = gunicorn.url.split("://")[1]
    r = session.get("http://u:p@%s/echo" % host)
    assert r.json()["headers"]["authorization"] == "Basic dTpw"
    # a redirect to another origin loses Authorization (requests' rebuild_auth)
    r = session.get(gunicorn.url + "/redirect-to", params={"url": gunicorn.url.replace(
        "127.0.0.1", "localhost") + "/echo"}, auth=("user", "secret"))
    assert r.status_code == 200 and "authorization" not in r.json()["headers"]


@pytest.fixture
def cookie_server():
    """An in-process WSGI server that sets and echoes cookies (gunicorn's app sets none)."""
    import json

    from gevent.pywsgi import WSGIServer

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/set":
            start_response("302 Found", [("Location", "/show"), ("Content-Length", "0"),
                                         ("Set-Cookie", "a=1; Path=/"),
                                         ("Set-Cookie", "b=2; Path=/; HttpOnly")])
            return [b""]
        data = json.dumps({"cookie": environ.get("HTTP_COOKIE", "")}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]

    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    yield "http://127.0.0.1:%d" % server.server_port
    server.stop(timeout=1)


def test_cookies_are_kept_by_the_session_across_a_redirect(session, cookie_server):
    r = session.get(cookie_server + "/set")
    cookies = sorted(c.strip() for c in r.json()["cookie"].split(";"))
    assert cookies == ["a=1", "b=2"]
    assert session.cookies.get("a") == "1" and session.cookies.get("b") == "2"
    assert r.history[0].cookies.get("b") == "2"
    r = session.get(cookie_server + "/show", cookies={"c": "3"})
    assert "c=3" in r.json()["cookie"] and "a=1" in r.json()["cookie"]


# -- content decoding: once, by greenpool --


def test_gzip_is_decoded_once(session, gunicorn):
    r = session.get(gunicorn.url + "/gzip")
    assert r.json()["gzip"] is True
    assert r.headers["content-encoding"] == "gzip"  # kept, as urllib3 keeps it
    assert "gzip" in r.json()["headers"]["accept-encoding"]
    r = session.get(gunicorn.url + "/deflate", stream=True)
    assert b"".join(r.iter_content(7)).startswith(b"{")
    # wire bytes on request, before anything was read
    r = session.get(gunicorn.url + "/gzip", stream=True)
    wire = r.raw.read(decode_content=False)
    assert wire[:2] == b"\x1f\x8b" and b'"gzip": true' in gzip.decompress(wire)
    r.close()


def test_iter_lines_and_text(session, nginx):
    r = session.get(nginx.http_url + "/data.json", stream=True)
    assert r.headers.get("content-encoding") == "gzip"
    lines = list(r.iter_lines())
    assert lines and lines[0].startswith(b'{"items"')
    assert session.get(nginx.http_url + "/").text == nginx.small_body.decode()


# -- streaming --


def test_stream_holds_the_connection_until_read_or_closed(session, pool, gunicorn):
    r = session.get(gunicorn.url + "/chunked/200000?chunk=4096", stream=True)
    assert pool.get_stats()["in_use_count"] == 1
    total = b"".join(r.iter_content(chunk_size=10_000))
    assert total == pattern(200_000)
    assert pool.get_stats()["in_use_count"] == 0 and pool.get_stats()["free_count"] == 1
    r = session.get(gunicorn.url + "/bytes/100000", stream=True)
    assert r.raw.read(10) == pattern(10) and r.raw.tell() == 10
    r.close()  # mid-body: the connection is closed, not reused
    stats = pool.get_stats()
    assert stats["in_use_count"] == 0 and stats["closed"] >= 1
    with session.get(gunicorn.url + "/bytes/1000", stream=True) as r:
        assert list(r.raw.stream(400)) == [pattern(1000)[:400], pattern(1000)[400:800], pattern(1000)[800:]]


def test_stream_false_reads_the_body_before_returning(session, pool, gunicorn):
    r = session.get(gunicorn.url + "/bytes/50000")
    assert pool.get_stats()["in_use_count"] == 0
    assert r.content == pattern(50000)
    assert r.content is r.raw.greenpool_response.content  # one copy of the body, not two


# -- timeouts --


def test_read_timeout(session, gunicorn):
    with pytest.raises(requests.exceptions.ReadTimeout) as info:
        session.get(gunicorn.url + "/slow/2", timeout=0.3)
    assert isinstance(info.value.__cause__, greenpool.ReadTimeout)
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(gunicorn.url + "/slow/2", timeout=(1.0, 0.3))
    with pytest.raises(requests.exceptions.Timeout):
        session.get(gunicorn.url + "/slow/2", timeout=Timeout(total=0.3))
    assert session.get(gunicorn.url + "/slow/0.1", timeout=(1.0, 2.0)).json() == {"slept": 0.1}


def test_read_timeout_in_a_streamed_body_is_also_a_connection_error(session, gunicorn):
    r = session.get(gunicorn.url + "/stall-body?seconds=3&size=1000", stream=True, timeout=0.3)
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        _ = r.content
    assert isinstance(info.value, requests.exceptions.ReadTimeout)
    assert isinstance(info.value, BodyReadTimeout)
    r.close()


def test_pool_wait_is_bounded_by_the_connect_timeout(gunicorn):
    greenpool.start_pool("rq-one", max_connections=1, checkout_timeout=30)
    s = requests.Session()
    s.mount("http://", GreenPoolAdapter(pool="rq-one"))
    try:
        held = s.get(gunicorn.url + "/bytes/100000", stream=True)
        with pytest.raises(requests.exceptions.ConnectTimeout) as info:
            s.get(gunicorn.url + "/echo", timeout=(0.2, 5))
        assert isinstance(info.value.__cause__, greenpool.PoolTimeout)
        assert isinstance(info.value, requests.exceptions.ConnectionError)
        held.close()
        assert s.get(gunicorn.url + "/echo", timeout=(0.2, 5)).ok
    finally:
        s.close()
        greenpool.stop_pool("rq-one")


def test_timeout_conversion():
    t = GreenPoolAdapter._timeout
    assert t(None) is None
    assert t(3) == Timeout(3)
    assert t((1, 2)) == Timeout(connect=1, read=2, write=2, pool=1)
    assert t((None, 2)) == Timeout(read=2, write=2)
    own = Timeout(total=9)
    assert t(own) is own
    with pytest.raises(ValueError, match="connect, read"):
        t((1, 2, 3))
    from urllib3 import Timeout as U3Timeout
    assert t(U3Timeout(connect=1, read=4)) == Timeout(connect=1, read=4, write=4, pool=1)


# -- TLS --


def test_verify_with_the_test_ca(pool, tls, nginx):
    s = requests.Session()
    s.mount("https://", GreenPoolAdapter(pool=pool.name))
    try:
        with pytest.raises(requests.exceptions.SSLError):
            s.get(nginx.https_url + "/")          # the test CA is not in the default store
        r = s.get(nginx.https_url + "/", verify=tls.ca_bundle)
        assert r.content == nginx.small_body and r.raw.version == 11
        assert s.get(nginx.untrusted_url + "/", verify=False).ok
        with pytest.raises(requests.exceptions.SSLError) as info:
            s.get(nginx.untrusted_url + "/", verify=tls.ca_bundle)
        assert isinstance(info.value.__cause__, greenpool.TLSError)
        with pytest.raises(requests.exceptions.SSLError):
            s.get(nginx.wrong_host_url + "/", verify=tls.ca_bundle)
        with pytest.raises(OSError, match="invalid path"):
            s.get(nginx.https_url + "/", verify="/nonexistent/ca.pem")
        with pytest.raises(OSError, match="invalid path"):
            s.get(nginx.https_url + "/", verify=tls.ca_bundle, cert=("/nonexistent.pem", "/x.key"))
    finally:
        s.close()


def test_http2_over_tls_and_prior_knowledge(pool, tls, nginx):
    s = requests.Session()
    s.trust_env = False  # else REQUESTS_CA_BUNDLE would win over session.verify (requests #3829)
    s.verify = tls.ca_bundle
    s.mount("https://", GreenPoolAdapter(pool=pool.name, http2=True))
    s.mount("http://", GreenPoolAdapter(pool=pool.name, http2="prior_knowledge"))
    try:
        r = s.get(nginx.https_url + "/bytes/64k")
        assert r.raw.version == 20 and r.raw.version_string == "HTTP/2"
        assert r.content == nginx.file_bytes("/bytes/64k")
        r = s.get(nginx.h2c_url + "/data.json")   # gzip over h2c, decoded once
        assert r.raw.version == 20 and len(r.json()["items"]) == 64
        results = []
        gevent.joinall([gevent.spawn(lambda: results.append(s.get(nginx.https_url + "/").status_code))
                        for _ in range(20)], raise_error=True)
        assert results == [200] * 20
    finally:
        s.close()


# -- proxies --


def test_http_proxy_absolute_form(session, gunicorn):
    # gunicorn answers absolute-form requests, so it can stand in for an HTTP proxy
    r = session.get("http://proxied.invalid/echo?via=proxy", proxies={"http": gunicorn.url})
    assert r.json()["args"] == {"via": "proxy"}
    assert r.json()["headers"]["host"] == "proxied.invalid"


def test_proxy_errors(session):
    with pytest.raises(requests.exceptions.ProxyError) as info:
        session.get("https://example.invalid/", proxies={"https": "http://127.0.0.1:%d" % refused_port()})
    assert isinstance(info.value.__cause__, greenpool.ConnectError)
    with pytest.raises(requests.exceptions.InvalidProxyURL, match="http:// and SOCKS"):
        session.get("http://example.invalid/", proxies={"http": "https://127.0.0.1:1080"})
    # a SOCKS proxy that is down: a ProxyError naming it
    with pytest.raises(requests.exceptions.ProxyError, match="SOCKS proxy"):
        session.get("http://example.invalid/", proxies={"http": "socks5://127.0.0.1:%d" % refused_port()})


# -- errors --


def test_connection_refused(session):
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        session.get("http://127.0.0.1:%d/" % refused_port())
    assert not isinstance(info.value, requests.exceptions.Timeout)
    assert isinstance(info.value.__cause__, greenpool.ConnectError)
    assert info.value.request is not None


def test_peer_closing_mid_body_is_a_chunked_encoding_error(session):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve():
        from gevent import socket as gsocket
        sock = gsocket.socket(fileno=listener.detach())
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
        conn.close()
        sock.close()

    g = gevent.spawn(serve)
    try:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            session.get("http://127.0.0.1:%d/" % port)
    finally:
        g.join(2)


def test_map_error_table():
    cases = [
        (greenpool.PoolTimeout("p", "x"), requests.exceptions.ConnectTimeout),
        (greenpool.ConnectTimeout("x"), requests.exceptions.ConnectTimeout),
        (greenpool.TLSError("x"), requests.exceptions.SSLError),
        (greenpool.DNSError("x"), requests.exceptions.ConnectionError),
        (greenpool.ReadTimeout("x"), requests.exceptions.ReadTimeout),
        (greenpool.WriteTimeout("x"), requests.exceptions.ReadTimeout),
        (greenpool.RemoteProtocolError("x"), requests.exceptions.ConnectionError),
        (greenpool.RemoteProtocolError("conflicting Content-Length values: 3, 4"),
         requests.exceptions.InvalidHeader),
        (greenpool.RemoteProtocolError("invalid Content-Length b'x'"), requests.exceptions.ConnectionError),
        (greenpool.DecodingError("x"), requests.exceptions.ContentDecodingError),
        (greenpool.InvalidURL("x"), requests.exceptions.InvalidURL),
        (greenpool.PoolClosed("p", "x"), requests.exceptions.ConnectionError),
    ]
    for error, expected in cases:
        mapped = map_error(error)
        assert isinstance(mapped, expected), (error, mapped)
        assert mapped.__cause__ is error
    assert isinstance(map_error(greenpool.ConnectError("x"), proxy="http://p:1"), requests.exceptions.ProxyError)
    assert isinstance(map_error(greenpool.ConnectionClosed("x"), body=True),
                      requests.exceptions.ChunkedEncodingError)


def test_adapter_options_are_checked():
    with pytest.raises(TypeError, match="verify"):
        GreenPoolAdapter(verify=False)
    with pytest.raises(ValueError, match="decode_content"):
        GreenPoolAdapter(decode_content=False)
    with pytest.raises(ValueError):
        GreenPoolAdapter(http2="sometimes")
    assert repr(GreenPoolAdapter(pool="api", http2=True)) == "<GreenPoolAdapter pool='api' http2=True>"


def test_raw_is_a_readable_file(session, gunicorn):
    r = session.get(gunicorn.url + "/bytes/3000", stream=True)
    buffered = io.BufferedReader(r.raw, 1024)
    assert buffered.read(5) == pattern(5)
    assert buffered.read() == pattern(3000)[5:]
    r.close()
    assert r.raw.closed and r.raw.isclosed()


# -- side by side with requests' own HTTPAdapter --------------------------------------------


def _both(pool):
    """A session on requests' HTTPAdapter and one on ours (same pool each test)."""
    theirs = requests.Session()
    ours = requests.Session()
    adapter = GreenPoolAdapter(pool=pool.name)
    ours.mount("http://", adapter)
    ours.mount("https://", adapter)
    return theirs, ours


def _outcome(fn):
    try:
        r = fn()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e)
    return r.status_code


class SeekTellNoSeekable:
    """A body with seek/tell but no seekable() (some wrappers in the wild)."""

    def __init__(self, data):
        self._f = io.BytesIO(data)
        self.len = len(data)

    def read(self, n=-1):
        return self._f.read(n)

    def seek(self, *a):
        return self._f.seek(*a)

    def tell(self):
        return self._f.tell()


class StrSub(str):
    pass


class BytesSub(bytes):
    pass


def test_adapter_matches_requests_on_inputs(pool, gunicorn):
    theirs, ours = _both(pool)
    url = gunicorn.url + "/echo"
    for s in (theirs, ours):
        r = s.post(url, data=SeekTellNoSeekable(b"body!"))
        assert r.status_code == 200 and r.json()["body"] == "body!"
        r = s.get(url, headers={StrSub("X-Sub"): StrSub("v"), "X-B": BytesSub(b"b")})
        assert r.json()["headers"]["x-sub"] == "v" and r.json()["headers"]["x-b"] == "b"
    # timeout of the wrong type: ValueError from both
    assert _outcome(lambda: theirs.get(url, timeout="foo")) is ValueError
    assert _outcome(lambda: ours.get(url, timeout="foo")) is ValueError
    # bad proxy URLs: InvalidProxyURL from both
    for bad in ("http:/badproxyurl:3128", "http://:8080"):
        proxies = {"http": bad}
        for s in (theirs, ours):
            assert _outcome(lambda s=s, p=proxies: s.get(url, proxies=p)) is requests.exceptions.InvalidProxyURL
    # a missing key file is named as the key
    with pytest.raises(OSError, match="TLS key file"):
        ours.get(gunicorn.url.replace("http:", "https:") + "/", cert=(__file__, "/nonexistent.key"))
    with pytest.raises(OSError, match="TLS key file"):
        theirs.get(gunicorn.url.replace("http:", "https:") + "/", cert=(__file__, "/nonexistent.key"))
    # raw.read() after the body was preloaded: b"" as urllib3's
    for s in (theirs, ours):
        r = s.get(url)
        assert r.content and r.raw.read() == b""
    theirs.close()
    ours.close()


def test_adapter_session_pickles(pool, gunicorn):
    """A used Session pickles with either adapter mounted, and its copy sends again."""
    import pickle
    theirs, ours = _both(pool)
    for s in (theirs, ours):
        assert s.get(gunicorn.url + "/echo").status_code == 200
        copy = pickle.loads(pickle.dumps(s))
        assert copy.get(gunicorn.url + "/echo").status_code == 200
        copy.close()
    theirs.close()
    copy = pickle.loads(pickle.dumps(ours))
    adapter = copy.get_adapter(gunicorn.url)
    assert isinstance(adapter, GreenPoolAdapter) and adapter.pool == pool.name
    assert copy.get(gunicorn.url + "/echo").status_code == 200
    t = Timeout((1, 2))
    assert pickle.loads(pickle.dumps(GreenPoolAdapter(pool=pool.name, timeout=t))).client_kw["timeout"] == t
    copy.close()
    ours.close()


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_adapter_repeated_content_length_as_requests(pool, parser):
    """Side by side with requests' own adapter (urllib3 2) on the same responses: equal
    repeated Content-Length values (two fields, or "3, 3") are one, and the body is read;
    differing ones are requests' InvalidHeader from both."""
    pytest.importorskip(parser)
    theirs = requests.Session()
    ours = requests.Session()
    ours.mount("http://", GreenPoolAdapter(pool=pool.name, http1_parser=parser))
    # requests' adapter blocks the process: the server runs in another one
    with _RawServer() as srv:
        for path in ("/fields", "/list"):
            for s in (theirs, ours):
                r = s.get(srv.url + path, timeout=10)
                assert r.status_code == 200 and r.content == b"abc", (s, path)
                assert r.headers["content-length"] in ("3", "3, 3"), r.headers
        for path in ("/differ", "/differ-list"):
            for s in (theirs, ours):
                got = _outcome(lambda s=s, path=path: s.get(srv.url + path, timeout=10))
                assert got is requests.exceptions.InvalidHeader, (s, path, got)
    ours.close()
    theirs.close()


class _RawServer:
    """Fixed raw responses by path, from a child process (one response per connection)."""

    CODE = (
        "import socketserver\n"
        "HEADS = {b'/fields': b'Content-Length: 3\\r\\nContent-Length: 3\\r\\n',\n"
        "         b'/list': b'Content-Length: 3, 3\\r\\n',\n"
        "         b'/differ': b'Content-Length: 3\\r\\nContent-Length: 4\\r\\n',\n"
        "         b'/differ-list': b'Content-Length: 3, 4\\r\\n'}\n"
        "class H(socketserver.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        line = self.rfile.readline()\n"
        "        while self.rfile.readline() not in (b'\\r\\n', b''):\n"
        "            pass\n"
        "        head = HEADS[line.split()[1]]\n"
        "        body = b'abc' if head.count(b'3') == 2 else b'abcd'\n"
        "        self.wfile.write(b'HTTP/1.1 200 OK\\r\\n' + head + b'Connection: close\\r\\n\\r\\n' + body)\n"
        "socketserver.ThreadingTCPServer.daemon_threads = True\n"
        "s = socketserver.ThreadingTCPServer(('127.0.0.1', 0), H)\n"
        "print(s.server_address[1], flush=True)\n"
        "s.serve_forever()\n"
    )

    def __enter__(self):
        import subprocess
        import sys
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE], stdout=subprocess.PIPE)
        self.url = "http://127.0.0.1:%d" % int(self.proc.stdout.readline())
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


def test_adapter_socks_proxy_from_env(pool, gunicorn, monkeypatch):
    pytest.importorskip("socksio")
    import importlib.util

    from test_http_socks import fake_socks5
    with fake_socks5() as fake:
        monkeypatch.setenv("ALL_PROXY", "socks5h://127.0.0.1:%d" % fake.port)
        theirs, ours = _both(pool)
        r = ours.get(gunicorn.url + "/echo?via=socks")
        assert r.status_code == 200 and r.json()["args"] == {"via": "socks"} and fake.accepted == 1
        if importlib.util.find_spec("socks") is None:
            # requests' own adapter needs PySocks for this; greenpool speaks SOCKS itself
            with pytest.raises(requests.exceptions.InvalidSchema, match="SOCKS"):
                theirs.get(gunicorn.url + "/echo?via=socks")
        ours.close()
        theirs.close()
        fake.close_clients()
