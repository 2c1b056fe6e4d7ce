"""HTTP over Unix domain sockets: Client(uds=...) and http+unix:// URLs against nginx
(``listen unix:``, also ``ssl http2`` and h2c) and gunicorn (``--bind unix:``), pooled per
socket path."""
from __future__ import annotations

from urllib.parse import quote

import gevent
import pytest

import greenpool
from greenpool import errors

from fakes import assert_exact


@pytest.fixture
def pool():
    p = greenpool.GreenPool("test-unix", max_connections=6)
    yield p
    p.close()


@pytest.fixture
def nginx_uds(nginx_factory, tmp_path):
    path = str(tmp_path / "nginx.sock")
    nginx_factory(extra_http="server { listen unix:%s; location / { default_type text/plain; "
                             "return 200 \"nginx over uds $request_uri $http_host\\n\"; } }" % path)
    return path


@pytest.fixture
def gunicorn_uds(gunicorn_factory, tmp_path):
    path = str(tmp_path / "gunicorn.sock")
    gunicorn_factory(extra_args=["-b", "unix:" + path])
    return path


def test_nginx_uds_concurrent_and_pooled_per_path(no_leaks, nginx_uds, pool):
    c = greenpool.Client(pool=pool, uds=nginx_uds)
    r = c.get("http://backend.internal/x?y=1")
    assert r.text == "nginx over uds /x?y=1 backend.internal\n"
    jobs = [gevent.spawn(c.get, "http://backend.internal/%d" % i) for i in range(20)]
    gevent.joinall(jobs, raise_error=True)
    assert sorted(j.value.text.split()[3] for j in jobs) == sorted("/%d" % i for i in range(20))
    stats = pool.host_stats(nginx_uds, 80, "unix")
    assert 1 <= stats["active"] <= 6 and stats["in_use"] == 0
    assert pool.get_stats()["open"] == stats["active"]  # the user's pool holds them
    assert pool.get_stats()["reused"] >= 14
    assert_exact(pool)
    pool.close()


def test_gunicorn_uds_and_http_unix_urls(no_leaks, gunicorn_uds, nginx_uds, pool):
    c = greenpool.Client(pool=pool)
    url = "http+unix://%s/echo?a=1" % quote(gunicorn_uds, safe="")
    r = c.post(url, json={"k": "v"})
    body = r.json()
    assert (body["path"], body["args"], body["headers"]["host"]) == ("/echo", {"a": "1"}, "localhost")
    assert body["body"] == '{"k":"v"}' and r.url == url
    # redirects stay on the socket
    r = c.get("http+unix://%s/redirect/2" % quote(gunicorn_uds, safe=""), follow_redirects=True)
    assert r.json()["path"] == "/echo" and len(r.history) == 2
    # a second socket path is a second key in the same pool
    assert c.get("http+unix://%s/" % quote(nginx_uds, safe="")).status == 200
    keys = sorted(k for k in pool._hosts if k[2] == "unix")
    assert keys == sorted([(gunicorn_uds, 80, "unix"), (nginx_uds, 80, "unix")])
    assert greenpool.get(url, pool=pool).status == 200
    assert_exact(pool)
    pool.close()


def test_uds_errors(no_leaks, tmp_path, pool):
    missing = str(tmp_path / "nobody.sock")
    c = greenpool.Client(pool=pool, uds=missing)
    with pytest.raises(errors.ConnectError) as info:
        c.get("http://h/")
    assert missing in str(info.value)
    with pytest.raises(errors.ConnectError) as info:   # TLS over it: the same clear error
        c.get("https://h/")
    assert missing in str(info.value)
    with pytest.raises(TypeError):
        greenpool.Client(uds=3)
    assert_exact(pool)


@pytest.fixture
def nginx_uds_tls(nginx_factory, tmp_path, tls):
    """nginx on three Unix sockets: TLS with h2 and http/1.1 by ALPN, TLS with http/1.1
    only, and h2c (prior knowledge)."""
    paths = {k: str(tmp_path / ("%s.sock" % k)) for k in ("h2", "h1", "h2c")}
    loc = ("location / { default_type text/plain; "
           "return 200 \"$server_protocol $scheme $ssl_server_name $http_host $request_uri\\n\"; }")
    certs = "ssl_certificate %s; ssl_certificate_key %s;" % (tls.cert_path, tls.key_path)
    nginx_factory(extra_http=(
        "server { listen unix:%s ssl http2; %s %s }\n"
        "server { listen unix:%s ssl; %s %s }\n"
        "server { listen unix:%s http2; %s }\n") % (
            paths["h2"], certs, loc, paths["h1"], certs, loc, paths["h2c"], loc))
    return paths


def test_tls_and_http2_over_a_unix_socket(no_leaks, nginx_uds_tls, pool, tls):
    """https:// with uds=: TLS over the socket, the URL's host checked against the
    certificate and sent as SNI; HTTP/2 chosen by ALPN with http2=True, HTTP/1.1 without
    it or when the server offers only that; h2c with http2="prior_knowledge"; each under
    its own key in the user's pool."""
    h2 = greenpool.Client(pool=pool, uds=nginx_uds_tls["h2"], verify=tls.ca_bundle, http2=True)
    r = h2.get("https://localhost/a")
    assert (r.http_version, r.text) == ("HTTP/2", "HTTP/2.0 https localhost localhost /a\n")
    jobs = [gevent.spawn(h2.get, "https://localhost/%d" % i) for i in range(10)]
    gevent.joinall(jobs, raise_error=True)
    assert all(j.value.http_version == "HTTP/2" for j in jobs)
    assert pool.get_stats()["shared_count"] == 1     # one connection, its streams shared
    h1 = greenpool.Client(pool=pool, uds=nginx_uds_tls["h2"], verify=tls.ca_bundle)
    r = h1.get("https://localhost/b")
    assert (r.http_version, r.text) == ("HTTP/1.1", "HTTP/1.1 https localhost localhost /b\n")
    only_h1 = greenpool.Client(pool=pool, uds=nginx_uds_tls["h1"], verify=tls.ca_bundle, http2=True)
    r = only_h1.get("https://127.0.0.1/c")
    # an IP address is checked against the certificate but never sent as SNI (RFC 6066)
    assert (r.http_version, r.text) == ("HTTP/1.1", "HTTP/1.1 https  127.0.0.1 /c\n")
    h2c = greenpool.Client(pool=pool, uds=nginx_uds_tls["h2c"], http2="prior_knowledge")
    r = h2c.get("http://backend.internal/d")
    assert (r.http_version, r.text) == ("HTTP/2", "HTTP/2.0 http  backend.internal /d\n")
    # keyed per socket path (h2 and http/1.1 to one socket and name, like one TCP origin,
    # share a key), TLS ones tagged with the server name and their TLS setting
    kinds = sorted((k[0], k[2].split("|")[0]) for k in pool._hosts)
    assert kinds == sorted([(nginx_uds_tls["h2"], "unix-ssl"), (nginx_uds_tls["h1"], "unix-ssl"),
                            (nginx_uds_tls["h2c"], "unix")]), list(pool._hosts)
    assert sum(pool.host_stats(*k)["active"] for k in pool._hosts) == pool.get_stats()["open"]
    assert_exact(pool)
    # the name is checked, on a connection of its own: a host the certificate does not
    # name fails the handshake (never served by the connection verified for localhost)
    with pytest.raises(errors.TLSError):
        h2.get("https://wrong.host.invalid/")
    # and the default trust store does not know the test CA
    with pytest.raises(errors.TLSError):
        greenpool.Client(pool=pool, uds=nginx_uds_tls["h1"]).get("https://localhost/")
    assert pool.get_stats()["in_use_count"] == 0
    assert_exact(pool)
    pool.close()
