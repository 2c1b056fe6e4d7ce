"""greenpool.http.auth and the Client's auth=: Basic (tuple, object, URL userinfo), Digest
(MD5, SHA-256, -sess, stale nonce) against gunicorn's app (its Digest check is validated
by requests' own HTTPDigestAuth first), custom flows, and where credentials must not go."""
from __future__ import annotations

import json
import logging

import pytest
from httpfakes import HTTPFake, ok

import greenpool
from greenpool import errors
from greenpool.http.auth import Auth, BasicAuth, DigestAuth, parse_challenge

from fakes import assert_exact


@pytest.fixture
def pool():
    p = greenpool.GreenPool("test-auth", max_connections=8)
    yield p
    p.close()


def test_basic_tuple_object_and_userinfo(no_leaks, gunicorn, pool):
    url = gunicorn.url + "/basic-auth/ann/s3cret"
    c = greenpool.Client(pool=pool)
    assert c.get(url).status == 401
    assert c.get(url, auth=("ann", "s3cret")).json() == {"authenticated": True, "user": "ann"}
    assert c.get(url, auth=BasicAuth("ann", "s3cret")).status == 200
    assert c.get(url, auth=("ann", "wrong")).status == 401
    assert greenpool.Client(pool=pool, auth=("ann", "s3cret")).get(url).status == 200
    # userinfo in the URL: Basic, and not in the request target or the response URL
    r = c.get(url.replace("http://", "http://ann:s3cret@"))
    assert r.status == 200 and r.url == url and "@" not in r.url
    assert c.get(url.replace("http://", "http://ann:wrong@")).status == 401
    # percent-encoded userinfo is decoded; an explicit auth= wins over userinfo
    assert c.get(gunicorn.url.replace("http://", "http://a%40b:p%3Aw@") + "/basic-auth/a@b/p:w").status == 200
    assert c.get(url.replace("http://", "http://x:y@"), auth=("ann", "s3cret")).status == 200
    assert greenpool.get(url, auth=("ann", "s3cret"), pool=pool).status == 200
    assert_exact(pool)


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"])
def test_server_digest_check_agrees_with_requests(gunicorn, algorithm):
    requests = pytest.importorskip("requests")
    if algorithm.endswith("sess"):
        pytest.skip("requests' HTTPDigestAuth does not do -sess")
    url = "%s/digest-auth/auth/ann/s3cret/%s" % (gunicorn.url, algorithm)
    r = requests.get(url, auth=requests.auth.HTTPDigestAuth("ann", "s3cret"), timeout=10)
    assert r.status_code == 200 and r.json()["algorithm"] == algorithm.upper()


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"])
@pytest.mark.parametrize("qop", ["auth", "none"])
def test_digest(no_leaks, gunicorn, pool, algorithm, qop):
    url = "%s/digest-auth/%s/ann/s3cret/%s?x=1" % (gunicorn.url, qop, algorithm)
    auth = DigestAuth("ann", "s3cret")
    c = greenpool.Client(pool=pool, auth=auth)
    r = c.get(url)
    assert r.status == 200 and r.json()["algorithm"] == algorithm.upper()
    # the nonce is reused, counted on, on the next request (no 401 round trip)
    r2 = c.get(url)
    assert r2.status == 200 and r2.history == []
    if qop == "auth":
        assert (r.json()["nc"], r2.json()["nc"]) == ("00000001", "00000002")
    assert greenpool.Client(pool=pool, auth=DigestAuth("ann", "nope")).get(url).status == 401
    assert_exact(pool)


def test_digest_post_body_sent_again_and_stale_nonce(no_leaks, gunicorn, pool):
    auth = DigestAuth("ann", "s3cret")
    seen = []
    c = greenpool.Client(pool=pool, auth=auth,
                         event_hooks={"response": [lambda r: seen.append(r.status)]})
    url = gunicorn.url + "/digest-auth/auth/ann/s3cret/MD5?stale_after=2"
    assert c.post(url, json={"a": 1}).status == 200     # 401, then 200 (nc=1)
    assert c.post(url, data={"a": "1"}).status == 200   # nc=2: pre-emptive, 200
    assert c.get(url).status == 200                     # nc=3: stale -> fresh nonce, 200
    assert seen == [401, 200, 200, 401, 200]
    assert_exact(pool)


def test_custom_auth_flow_and_callable(no_leaks, pool):
    def respond(req, sock):
        if req.headers.get("x-token") != "t2":
            return ok(json.dumps({"token": req.headers.get("x-token")}).encode(), status="401 Unauthorized")
        return ok(b"in")

    class TokenRefresh(Auth):
        def auth_flow(self, request):
            request.headers["X-Token"] = "t1"
            response = yield request
            if response.status == 401:
                request.headers["X-Token"] = "t2"
                yield request

    with HTTPFake(respond) as srv:
        c = greenpool.Client(pool=pool)
        r = c.post(srv.url + "/", body=b"payload", auth=TokenRefresh())
        assert r.content == b"in" and [q.body for q in srv.requests] == [b"payload", b"payload"]

        def sign(request):
            request.headers["X-Token"] = "t2"
            return request
        assert c.get(srv.url + "/", auth=sign).content == b"in"
        with pytest.raises(TypeError):
            c.get(srv.url + "/", auth="user:pass")
    assert_exact(pool)


def test_credentials_never_leak(no_leaks, pool, caplog):
    def respond(req, sock):
        if req.target == "/away":
            return ok(b"", "Location: http://localhost:%d/landed" % srv.port, status="302 Found")
        return ok(json.dumps({"auth": req.headers.get("authorization")}).encode())

    with HTTPFake(respond) as srv:
        caplog.set_level(logging.DEBUG, logger="greenpool")
        c = greenpool.Client(pool=pool, auth=("ann", "s3cret"), follow_redirects=True)
        r = c.get(srv.url + "/away")
        # 127.0.0.1 -> localhost: another origin, no Authorization there
        assert r.json() == {"auth": None} and srv.requests[0].headers["authorization"].startswith("Basic ")
        r = c.get(srv.url.replace("http://", "http://ann:s3cret@") + "/away", auth=None)
        assert r.json() == {"auth": None}
        token = "YW5uOnMzY3JldA=="  # base64 of ann:s3cret
        texts = [repr(c), repr(c.auth), repr(DigestAuth("ann", "s3cret")), repr(r), repr(r.request),
                 repr(r.history[0].request), r.url, caplog.text]
        try:
            c.get("http://ann:s3cret@127.0.0.1:1/")
        except errors.GreenPoolError as e:
            texts.append(str(e))
        for text in texts:
            assert "s3cret" not in text and token not in text, text
    assert_exact(pool)


def test_parse_challenge():
    ch = parse_challenge('Digest realm="a, b", nonce="n\\"1", qop="auth,auth-int", stale=TRUE, algorithm=SHA-256')
    assert ch == {"realm": "a, b", "nonce": 'n"1', "qop": "auth,auth-int", "stale": "TRUE",
                  "algorithm": "SHA-256"}
    assert parse_challenge('Basic realm="x"') is None
    assert parse_challenge("Digest realm=x") is None  # no nonce
