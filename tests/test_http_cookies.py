"""greenpool.http.cookies and the Client's cookie jar: against gunicorn (two origins:
127.0.0.1 and localhost) and an in-process TLS fake (Secure)."""
from __future__ import annotations

import json
from http.cookiejar import CookieJar
from urllib.parse import quote

import pytest
from httpfakes import HTTPFake, ok

import greenpool
from greenpool.http import cookies as ck
from greenpool.http.models import URL

from fakes import assert_exact


@pytest.fixture
def pool():
    p = greenpool.GreenPool("test-cookies", max_connections=8)
    yield p
    p.close()


def _set(url, *cookies, redirect=None):
    q = "&".join("c=" + quote(c) for c in cookies)
    if redirect:
        q += "&redirect=" + quote(redirect)
    return url + "/cookies/set?" + q


def test_jar_rules_unit():
    jar = CookieJar()
    ck.extract(jar, URL("http://a.test/x/y"), [
        "a=1; Path=/", "s=2; Secure; Path=/", "gone=3; Max-Age=0", "old=4; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "sub=5; Path=/x", "evil=6; Domain=b.test"])
    assert sorted(c.name for c in jar) == ["a", "s", "sub"]
    assert ck.cookie_header(jar, URL("http://a.test/x/z")) == b"sub=5; a=1"
    assert sorted(ck.cookie_header(jar, URL("https://a.test/")).split(b"; ")) == [b"a=1", b"s=2"]
    assert ck.cookie_header(jar, URL("http://b.test/")) is None
    assert ck.has_cookies(jar) and not ck.has_cookies(CookieJar())
    assert ck.cookie_header(ck.coerce_jar([("k", "v")]), URL("http://any.test/")) == b"k=v"


def test_cookies_kept_per_origin(no_leaks, gunicorn, pool):
    other = gunicorn.url.replace("127.0.0.1", "localhost")
    with greenpool.Client(pool=pool) as c:
        r = c.get(_set(gunicorn.url, "sid=abc; Path=/", "pref=dark; Path=/"))
        assert r.status == 200 and {x.name: x.value for x in r.cookies} == {"sid": "abc", "pref": "dark"}
        assert c.get(gunicorn.url + "/cookies").json()["cookies"] == {"sid": "abc", "pref": "dark"}
        assert c.get(other + "/cookies").json()["cookies"] == {}  # another host: none
        # per-request cookies join the Client's for that request only
        assert c.get(gunicorn.url + "/cookies", cookies={"extra": "1"}).json()["cookies"] == \
            {"sid": "abc", "pref": "dark", "extra": "1"}
        assert "extra" not in c.get(gunicorn.url + "/cookies").json()["cookies"]
        # Max-Age=0 deletes
        c.get(_set(gunicorn.url, "pref=x; Path=/; Max-Age=0"))
        assert c.get(gunicorn.url + "/cookies").json()["cookies"] == {"sid": "abc"}
        assert sorted(x.name for x in c.cookies) == ["sid"]
    assert_exact(pool)


def test_client_cookies_argument_and_assignment(gunicorn, pool):
    c = greenpool.Client(pool=pool, cookies={"a": "1"})
    assert c.get(gunicorn.url + "/cookies").json()["cookies"] == {"a": "1"}
    c.cookies = [("b", "2")]
    assert c.get(gunicorn.url + "/cookies").json()["cookies"] == {"b": "2"}
    jar = CookieJar()
    c2 = greenpool.Client(pool=pool, cookies=jar)
    c2.get(_set(gunicorn.url, "z=9; Path=/"))
    assert c2.cookies is jar and [x.name for x in jar] == ["z"]


def test_redirects_across_origins_carry_matching_cookies(no_leaks, gunicorn, pool):
    other = gunicorn.url.replace("127.0.0.1", "localhost")
    with greenpool.Client(pool=pool, follow_redirects=True) as c:
        # a cookie set by the redirect response itself is sent on the next hop (same origin)
        r = c.get(_set(gunicorn.url, "hop=1; Path=/", redirect="/cookies"))
        assert r.json()["cookies"] == {"hop": "1"} and r.history[0].status == 302
        # to another origin: none of 127.0.0.1's cookies; back: they are there again
        back = gunicorn.url + "/cookies"
        via = other + "/redirect-to?url=" + quote(back)
        r = c.get(_set(gunicorn.url, "h2=2; Path=/", redirect=via))
        assert [h.url.split("/")[2].split(":")[0] for h in r.history] == ["127.0.0.1", "localhost"]
        assert r.json()["cookies"] == {"hop": "1", "h2": "2"}
        r = c.get(gunicorn.url + "/redirect-to?url=" + quote(other + "/cookies"))
        assert r.json()["cookies"] == {}
    assert_exact(pool)


def test_module_level_calls_keep_no_cookies(gunicorn):
    r = greenpool.get(_set(gunicorn.url, "m=1; Path=/"))
    assert [x.name for x in r.cookies] == ["m"]
    assert greenpool.get(gunicorn.url + "/cookies").json()["cookies"] == {}
    assert greenpool.get(gunicorn.url + "/cookies", cookies={"k": "v"}).json()["cookies"] == {"k": "v"}


def test_secure_and_expiry_over_tls(no_leaks, tls, pool):
    def respond(req, sock):
        if req.target.startswith("/set"):
            return ok(b"", "Set-Cookie: sec=1; Secure; Path=/", "Set-Cookie: plain=2; Path=/",
                      "Set-Cookie: old=3; Path=/; Expires=Wed, 21 Oct 2015 07:28:00 GMT")
        return ok(json.dumps({"cookie": req.headers.get("cookie")}).encode())

    with HTTPFake(respond, ssl_context=tls.server_context()) as srv:
        https = "https://127.0.0.1:%d" % srv.port
        c = greenpool.Client(pool=pool, verify=tls.ca_bundle)
        c.get(https + "/set")
        assert sorted(c.get(https + "/").json()["cookie"].split("; ")) == ["plain=2", "sec=1"]
        with HTTPFake(lambda r, s: ok(json.dumps({"cookie": r.headers.get("cookie")}).encode())) as plain:
            # the same host over http: the Secure cookie stays home
            assert c.get(plain.url + "/").json()["cookie"] == "plain=2"
    assert_exact(pool)
