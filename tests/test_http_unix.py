"""HTTP over Unix domain sockets: Client(uds=...) and http+unix:// URLs against nginx
(``listen unix:``) and gunicorn (``--bind unix:``), pooled per socket path."""
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
    with pytest.raises(errors.InvalidURL):
        c.get("https://h/")
    with pytest.raises(TypeError):
        greenpool.Client(uds=3)
    assert_exact(pool)
