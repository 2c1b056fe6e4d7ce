"""Security properties of the HTTP client, through ``greenpool.request``/``Client`` (issue 7).

TLS verification is on by default and fails clearly (a self-signed leaf included); TLS 1.2 is
the floor; redirects never carry credentials to another origin and stop at ``max_redirects``;
CR/LF/NUL never reach the wire through headers or URLs; proxy credentials appear in no log line,
repr, pool name or error message; decompression bombs stop at ``max_decoded_size``; response
heads are bounded; bodies stop at the opt-in ``max_body_size``.
"""
from __future__ import annotations

import base64
import gzip
import logging
import os
import ssl
import time
import zlib

import gevent
import pytest
from httpfakes import CLOSE, HTTPFake, ok

import greenpool
from greenpool import errors, net
from greenpool.http.models import Timeout

from fakes import FakeServer, assert_exact, refused_port

pytestmark = pytest.mark.usefixtures("no_leaks")

SECRET = "s3cr3t-pa55"


@pytest.fixture
def pool():
    p = greenpool.GreenPool("security", max_connections=10)
    yield p
    p.close()


# -- TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which, verify, match", [
    ("https_url", None, "not trusted"),          # default: system CAs don't know the test CA
    ("untrusted_url", "ca", "not trusted"),      # signed by another CA
    ("wrong_host_url", "ca", "not trusted"),     # hostname mismatch
    ("expired_url", "ca", "expired"),
])
def test_tls_verification_by_default_through_request(nginx, tls, pool, which, verify, match):
    kw = {} if verify is None else {"verify": tls.ca_bundle}
    with pytest.raises(errors.TLSError, match=match) as info:
        greenpool.request("GET", getattr(nginx, which) + "/", pool=pool, timeout=5, **kw)
    assert "127.0.0.1" in str(info.value)
    assert pool.count() == 0
    # the same server with the right CA works: the failure was verification, not the server
    if which == "https_url":
        r = greenpool.request("GET", nginx.https_url + "/", pool=pool, verify=tls.ca_bundle)
        assert r.status == 200
    assert_exact(pool)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A self-signed leaf for localhost/127.0.0.1 (not a CA; issuer == subject), made with
    ``cryptography`` (trustme only issues leaves from a CA): (cert path, key path)."""
    pytest.importorskip("cryptography")
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("self-signed")
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    assert cert.issuer == cert.subject
    return cert_path, key_path


@pytest.mark.parametrize("verify", ["default", "test-ca"])
@pytest.mark.parametrize("http2", [False, True])
def test_self_signed_leaf_is_rejected(self_signed, tls, pool, verify, http2):
    """A server presenting a self-signed certificate fails the handshake with a TLSError,
    by default and with a private CA; no request byte reaches it.  Trusting that very
    certificate makes the same server answer: the failure was verification."""
    cert, key = self_signed
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    with HTTPFake(lambda r, s: ok(b"private"), ssl_context=ctx) as srv:
        url = "https://127.0.0.1:%d/" % srv.port
        kw = {} if verify == "default" else {"verify": tls.ca_bundle}
        with pytest.raises(errors.TLSError, match="self[- ]signed") as info:
            greenpool.request("GET", url, pool=pool, timeout=5, http2=http2, **kw)
        assert "not trusted" in str(info.value) and "127.0.0.1" in str(info.value)
        assert srv.accepted == 1 and srv.requests == []
        r = greenpool.request("GET", url, pool=pool, timeout=5, http2=http2, verify=str(cert))
        assert r.status == 200 and r.content == b"private"
        assert len(srv.requests) == 1
    # the default-verify attempt left nothing; the verify=<cert> connection is the pool's,
    # under its own tagged key, never the default key
    assert pool.count((("127.0.0.1", srv.port, "ssl"))) == 0
    assert pool.get_stats()["in_use_count"] == 0
    assert_exact(pool)


def test_tls12_is_the_minimum(tls, pool):
    for verify in (True, False, tls.ca_bundle):
        assert net.ssl_context(verify).minimum_version >= ssl.TLSVersion.TLSv1_2
    ctx = tls.server_context()
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):  # pragma: no cover - this OpenSSL cannot even offer it
        pytest.skip("cannot configure a TLS 1.1 server here")
    with FakeServer(ssl_context=ctx) as srv:
        with pytest.raises(errors.TLSError):
            greenpool.request("GET", "https://localhost:%d/" % srv.port, pool=pool,
                              verify=tls.ca_bundle, timeout=5)
    assert pool.count() == 0


# -- redirects ----------------------------------------------------------------------------


def _seen(req):
    return ok(("%s|%s|%s" % (req.headers.get("authorization", "-"), req.headers.get("cookie", "-"),
                             req.headers.get("proxy-authorization", "-"))).encode())


@pytest.mark.parametrize("change", ["port", "host"])
def test_redirects_never_forward_credentials_to_another_origin(pool, change):
    with HTTPFake(lambda r, s: _seen(r)) as target:
        other = ("http://127.0.0.1:%d/x" % target.port if change == "port"
                 else "http://localhost:%d/x" % target.port)
        with HTTPFake(lambda r, s: ok(b"", "Location: " + other, status="302 Found")) as first:
            r = greenpool.request("GET", first.url + "/", pool=pool, follow_redirects=True,
                                  headers={"Authorization": "Bearer " + SECRET,
                                           "Cookie": "sid=" + SECRET,
                                           "Proxy-Authorization": "Basic " + SECRET})
            assert r.status == 200 and len(r.history) == 1
            assert r.content == b"-|-|-"
            assert SECRET not in target.requests[0].raw.decode("latin-1")
            assert "Bearer " + SECRET in first.requests[0].headers["authorization"]


def test_same_origin_redirect_keeps_credentials(pool):
    def respond(req, sock):
        if req.target == "/":
            return ok(b"", "Location: /next", status="307 Temporary Redirect")
        return _seen(req)

    with HTTPFake(respond) as srv:
        r = greenpool.request("GET", srv.url + "/", pool=pool, follow_redirects=True,
                              headers={"Authorization": "Bearer x", "Cookie": "c=1"})
        assert r.content == b"Bearer x|c=1|-"


def test_redirect_loop_stops_at_max_redirects(pool):
    with HTTPFake(lambda r, s: ok(b"", "Location: /again", status="302 Found")) as srv:
        with pytest.raises(errors.TooManyRedirects):
            greenpool.request("GET", srv.url + "/", pool=pool, follow_redirects=True,
                              max_redirects=3)
        assert len(srv.requests) == 4   # the first request and three redirects
        with pytest.raises(errors.TooManyRedirects):
            greenpool.request("GET", srv.url + "/", pool=pool, follow_redirects=True,
                              max_redirects=0)
    assert pool.get_stats()["in_use_count"] == 0
    assert_exact(pool)


def test_redirects_are_off_by_default(pool):
    with HTTPFake(lambda r, s: ok(b"", "Location: http://127.0.0.1:1/", status="302 Found")) as srv:
        r = greenpool.request("GET", srv.url + "/", pool=pool)
        assert r.status == 302 and len(srv.requests) == 1


# -- injection ----------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"X-A": "v\r\nX-Injected: 1"}, {"X-A": "v\nX-Injected: 1"}, {"X-A": "v\rX"},
    {"X-A": "v\x00"}, {"X-A\r\nX-Injected": "1"}, {"X A": "1"}, {"": "1"},
    {"Host": "evil\r\nX-Injected: 1"},
])
def test_header_injection_is_refused_before_sending(pool, headers):
    with HTTPFake(lambda r, s: ok()) as srv:
        with pytest.raises(errors.LocalProtocolError):
            greenpool.request("GET", srv.url + "/", pool=pool, headers=headers)
        assert srv.requests == []
    assert_exact(pool)


@pytest.mark.parametrize("path", [
    "/a\r\nX-Injected: 1", "/a\nb", "/a\x00b", "/a b HTTP/1.1\r\nX: y", "/?q=\r\nX: y",
])
def test_url_injection_never_reaches_the_wire(pool, path):
    """CR, LF, NUL or a space in a URL is refused, or percent-encoded: never sent raw."""
    with HTTPFake(lambda r, s: ok(r.target.encode())) as srv:
        try:
            r = greenpool.request("GET", srv.url + path, pool=pool)
        except (errors.InvalidURL, errors.LocalProtocolError):
            assert srv.requests == []
        else:
            target = r.content
            assert not set(target) & {0, 10, 13, 32}, target
            raw = srv.requests[0].raw
            assert b"X-Injected" not in raw and b"\r\nX: y" not in raw
    assert_exact(pool)


def test_method_injection_refused(pool):
    with HTTPFake(lambda r, s: ok()) as srv:
        for method in ("GET /x HTTP/1.1\r\nX: y\r\n\r\nGET", "GE T", "GET\x00"):
            with pytest.raises((errors.LocalProtocolError, ValueError)):
                greenpool.request(method, srv.url + "/", pool=pool)
        assert srv.requests == []


# -- proxy credentials --------------------------------------------------------------------


def test_proxy_credentials_never_in_logs_reprs_or_errors(pool, caplog):
    caplog.set_level(logging.DEBUG, logger="greenpool")
    seen = []

    def proxy(req, sock):
        seen.append(req.headers.get("proxy-authorization"))
        return ok(b"via proxy")

    proxy_url = "http://user:%s@127.0.0.1:%%d" % SECRET
    with HTTPFake(proxy) as px:
        client = greenpool.Client(pool=pool, proxy=proxy_url % px.port)
        r = client.get("http://example.invalid/x")
        assert r.content == b"via proxy"
        expected = "Basic " + base64.b64encode(("user:" + SECRET).encode()).decode()
        assert seen == [expected]   # sent to the proxy, as it must be
        texts = [repr(client), repr(pool), str(pool.get_stats()), repr(r)]
        for h in pool._hosts.values():  # proxied connections: the pool's, tagged keys
            texts += [repr(h.key)] + [repr(c) for c in h.idle]
        texts += [repr(p) for p in client._proxies.values()]
        # a failing proxy: the error names the proxy without its password
        dead = greenpool.Client(pool=pool, proxy=proxy_url % refused_port())
        with pytest.raises(errors.ConnectError) as info:
            dead.get("http://example.invalid/y")
        texts += [str(info.value), repr(info.value), repr(dead)]
        pool.close()
    texts.append(caplog.text)
    assert caplog.records, "expected DEBUG records from the greenpool logger"
    encoded = base64.b64encode(("user:" + SECRET).encode()).decode()
    for text in texts:
        assert SECRET not in text and encoded not in text, text


# -- decompression bombs and limits ---------------------------------------------------------


def _bomb(encoding):
    raw = b"\0" * (20 * 1024 * 1024)
    if encoding == "gzip":
        return gzip.compress(raw, 9)
    if encoding == "deflate":
        return zlib.compress(raw, 9)
    brotli = pytest.importorskip("brotli")
    return brotli.compress(raw)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
@pytest.mark.parametrize("stream", [False, True])
def test_decompression_bomb_is_capped(pool, encoding, stream):
    body = _bomb(encoding)
    assert len(body) < 100_000
    with HTTPFake(lambda r, s: ok(body, "Content-Encoding: " + encoding)) as srv:
        with pytest.raises(errors.DecodingError, match="max_decoded_size|decoded"):
            r = greenpool.request("GET", srv.url + "/", pool=pool, max_decoded_size=1024 * 1024,
                                  stream=stream)
            for _ in r.iter_bytes():
                pass
        # the default cap (64 MiB) is there without asking; this body is under it
        r = greenpool.request("GET", srv.url + "/", pool=pool)
        assert len(r.content) == 20 * 1024 * 1024
    assert pool.get_stats()["in_use_count"] == 0
    assert_exact(pool)


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_response_head_limits(pool, parser):
    many = "".join("X-%d: v\r\n" % i for i in range(300))
    big = "X-Big: " + "v" * 70000 + "\r\n"
    with HTTPFake(lambda r, s: ("HTTP/1.1 200 OK\r\n%sContent-Length: 0\r\n\r\n"
                                % (many if r.target == "/many" else big)).encode()) as srv:
        client = greenpool.Client(pool=pool, http1_parser=parser)
        with pytest.raises(errors.LimitExceeded):
            client.get(srv.url + "/many")
        with pytest.raises(errors.LimitExceeded):
            client.get(srv.url + "/big")
        small = greenpool.Client(pool=pool, http1_parser=parser, max_headers=10,
                                 max_header_size=1024)
        with pytest.raises(errors.LimitExceeded):
            small.get(srv.url + "/many")
    assert pool.get_stats()["in_use_count"] == 0
    assert_exact(pool)



# -- response body size limit (max_body_size) ----------------------------------------------

LIMIT = 1000
PARSERS = ["h11", "httptools"]


def _framed(body, framing):
    """A 200 response carrying ``body`` with a Content-Length, chunked (300-byte chunks)
    or delimited by close."""
    if framing == "length":
        return ok(body)
    if framing == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 300]), body[i:i + 300])
                          for i in range(0, len(body), 300))
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body


def _sized(req, sock):
    """``/<framing>/<size>``: a body of that many bytes in that framing."""
    _, framing, size = req.target.split("/")
    out = _framed(b"b" * int(size), framing)
    if framing == "close":
        sock.sendall(out)
        return CLOSE
    return out


def _read(client, url, stream, got):
    """The body of ``url``, read whole or as a stream; ``got`` collects what arrived."""
    r = client.get(url, stream=stream)
    if stream:
        for chunk in r.iter_raw(256):
            got.append(chunk)
    else:
        got.append(r.content)
    return b"".join(got)


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("stream", [False, True])
def test_max_body_size_content_length_over_the_limit_fails_at_the_head(pool, parser, stream):
    """The head announces LIMIT + 1 bytes and no body byte follows: the request fails at
    once (reading the body would wait for the read timeout); the connection is closed."""
    def respond(req, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
        gevent.sleep(5)

    with HTTPFake(respond) as srv:
        client = greenpool.Client(pool=pool, http1_parser=parser, max_body_size=LIMIT,
                                  timeout=Timeout(5, read=3))
        t0 = time.monotonic()
        with pytest.raises(errors.LimitExceeded) as info:
            client.get(srv.url + "/", stream=stream)
        assert time.monotonic() - t0 < 1.0
        text = str(info.value)
        assert "max_body_size=%d" % LIMIT in text and "Content-Length: %d" % (LIMIT + 1) in text
        assert "raise max_body_size" in text and "stream=True" in text
        assert pool.count() == 0 and pool.get_stats()["in_use_count"] == 0
        assert_exact(pool)


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("framing", ["chunked", "close"])
@pytest.mark.parametrize("stream", [False, True])
def test_max_body_size_exceeded_while_reading(pool, parser, framing, stream):
    """A body of unknown length fails as soon as it grows past the limit; a streaming
    caller gets at most LIMIT bytes first.  The connection is closed, never pooled."""
    with HTTPFake(_sized) as srv:
        client = greenpool.Client(pool=pool, http1_parser=parser, max_body_size=LIMIT)
        got = []
        with pytest.raises(errors.LimitExceeded, match="max_body_size=%d" % LIMIT) as info:
            _read(client, "%s/%s/%d" % (srv.url, framing, LIMIT + 1), stream, got)
        assert "received so far" in str(info.value)
        assert sum(map(len, got)) <= LIMIT
        if stream and framing == "chunked":
            assert sum(map(len, got)) == 900   # the chunks before the one over the limit
        assert pool.count() == 0 and pool.get_stats()["in_use_count"] == 0
        assert_exact(pool)
        # the next request runs on a new connection
        accepted = srv.accepted
        assert _read(client, "%s/%s/%d" % (srv.url, framing, LIMIT), stream, []) == b"b" * LIMIT
        assert srv.accepted == accepted + 1
        assert_exact(pool)


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("stream", [False, True])
def test_max_body_size_exactly_at_the_limit_passes(pool, parser, framing, stream):
    with HTTPFake(_sized) as srv:
        client = greenpool.Client(pool=pool, http1_parser=parser, max_body_size=LIMIT)
        for _ in range(3):
            assert _read(client, "%s/%s/%d" % (srv.url, framing, LIMIT), stream, []) == b"b" * LIMIT
        # keep-alive responses read to the end (not cut by the limit) reuse their connection
        assert srv.accepted == (3 if framing == "close" else 1)
        assert pool.get_stats()["in_use_count"] == 0
        assert_exact(pool)


@pytest.mark.parametrize("parser", PARSERS)
def test_max_body_size_counts_bytes_as_received_before_decoding(pool, parser):
    """A small gzip body that decodes to 20 times the limit passes; a gzip body over the
    limit fails even though it is compressed."""
    small = gzip.compress(b"\0" * (20 * LIMIT))
    large = gzip.compress(os.urandom(2 * LIMIT))
    assert len(small) < LIMIT < len(large)

    def respond(req, sock):
        return ok(small if req.target == "/small" else large, "Content-Encoding: gzip")

    with HTTPFake(respond) as srv:
        client = greenpool.Client(pool=pool, http1_parser=parser, max_body_size=LIMIT)
        assert client.get(srv.url + "/small").content == b"\0" * (20 * LIMIT)
        with pytest.raises(errors.LimitExceeded, match="Content-Length: %d" % len(large)):
            client.get(srv.url + "/large")
        assert_exact(pool)


@pytest.mark.parametrize("parser", PARSERS)
def test_max_body_size_zero_allows_bodiless_responses_only(pool, parser):
    """HEAD, 204 and 304 announce a Content-Length without sending a body: not over 0."""
    def respond(req, sock):
        if req.target == "/204":
            return b"HTTP/1.1 204 No Content\r\nContent-Length: 5000\r\n\r\n"
        if req.target == "/304":
            return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5000\r\n\r\n"
        if req.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
        return _sized(req, sock)

    with HTTPFake(respond) as srv:
        client = greenpool.Client(pool=pool, http1_parser=parser, max_body_size=0)
        assert client.head(srv.url + "/x").headers["content-length"] == "5000"
        assert client.get(srv.url + "/204").status == 204
        assert client.get(srv.url + "/304").status == 304
        assert client.get(srv.url + "/length/0").content == b""
        assert client.get(srv.url + "/chunked/0").content == b""
        assert srv.accepted == 1
        with pytest.raises(errors.LimitExceeded, match="max_body_size=0"):
            client.get(srv.url + "/chunked/1")
        assert pool.count() == 0
        assert_exact(pool)


@pytest.mark.parametrize("bad", [-1, 1.5, "1000", True, False, [1]])
def test_max_body_size_is_validated(pool, bad):
    with pytest.raises(ValueError, match="max_body_size"):
        greenpool.Client(pool=pool, max_body_size=bad)
    with pytest.raises(ValueError, match="max_body_size"):
        greenpool.request("GET", "http://127.0.0.1:1/", pool=pool, max_body_size=bad)
    assert pool.count() == 0


def test_max_body_size_through_module_level_request(pool):
    with HTTPFake(_sized) as srv:
        assert greenpool.request("GET", srv.url + "/chunked/10", pool=pool,
                                 max_body_size=10).content == b"b" * 10
        with pytest.raises(errors.LimitExceeded):
            greenpool.request("GET", srv.url + "/chunked/11", pool=pool, max_body_size=10)
        assert greenpool.request("GET", srv.url + "/chunked/5000", pool=pool,
                                 max_body_size=None).content == b"b" * 5000
        assert greenpool.Client(pool=pool).h1_options.max_body_size is None   # the default
        assert_exact(pool)
