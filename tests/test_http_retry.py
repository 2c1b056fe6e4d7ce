"""greenpool.http.retry: the Retry value object and its decisions."""
from __future__ import annotations

import email.utils
import time

import pytest

import greenpool
from greenpool import errors
from greenpool.http.retry import Retry, RetryState, parse_retry_after


def test_immutable_and_replace():
    r = Retry(total=3, status_forcelist=[503])
    with pytest.raises(AttributeError):
        r.total = 4
    r2 = r.replace(total=5)
    assert r2.total == 5 and r.total == 3 and r2.status_forcelist == frozenset([503])
    assert r == Retry(total=3, status_forcelist=[503]) and hash(r) == hash(Retry(3, status_forcelist=[503]))
    assert "Retry(total=3" in repr(r)
    assert greenpool.Retry is Retry


def test_coerce():
    assert Retry.coerce(None) is None and Retry.coerce(0) is None and Retry.coerce(False) is None
    assert Retry.coerce(2) == Retry(total=2)
    r = Retry(1)
    assert Retry.coerce(r) is r
    with pytest.raises(TypeError):
        Retry.coerce("3")


@pytest.mark.parametrize("kw", [{"total": -1}, {"connect": 1.5}, {"backoff_factor": -1},
                                {"retry_after_max": "x"}])
def test_validation(kw):
    with pytest.raises((ValueError, TypeError)):
        Retry(**kw)


def test_error_kinds():
    r = Retry()
    assert r.is_retryable_error(errors.ConnectError("x"), "POST", False) == "connect"
    assert r.is_retryable_error(errors.TLSError("x"), "GET", False) is None
    assert r.is_retryable_error(errors.ReadTimeout("x"), "GET", True) == "read"
    assert r.is_retryable_error(errors.ReadTimeout("x"), "POST", True) is None
    assert r.is_retryable_error(errors.RemoteProtocolError("x"), "GET", True) is None


def test_counts_and_backoff():
    s = RetryState(Retry(total=3, connect=1, backoff_factor=0.5, backoff_max=1.5))
    assert s.take("connect") and s.delay() == 0.5
    assert not s.take("connect")  # connect=1 used up
    assert s.take("read") and s.delay() == 1.0
    assert s.take("status") and s.delay() == 1.5  # capped
    assert not s.take("read")  # total=3 used up


def test_backoff_object():
    s = RetryState(Retry(total=5, backoff=greenpool.Backoff(0.1, 1.0, "exp")))
    delays = []
    for _ in range(4):
        assert s.take("connect")
        delays.append(s.delay())
    assert delays == [0.1, 0.2, 0.4, 0.8]


def test_status_and_retry_after():
    r = Retry(status_forcelist=[502, 503], retry_after_max=10)
    assert r.is_retryable_status("GET", 503) and not r.is_retryable_status("POST", 503)
    assert not r.is_retryable_status("GET", 500)
    assert r.retry_after(503, "3") == 3.0
    assert r.retry_after(429, "100") == 10.0  # capped
    assert r.retry_after(200, "3") is None
    assert r.retry_after(503, "soon") is None
    future = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= r.retry_after(503, future) <= 5.0
    assert Retry(respect_retry_after=False).retry_after(503, "3") is None
    assert parse_retry_after(email.utils.formatdate(time.time() - 50, usegmt=True), 9) == 0.0
