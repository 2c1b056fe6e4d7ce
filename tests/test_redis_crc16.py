"""Key slots (greenpool/redis/cluster.py: crc16, key_slot) and the typed cluster error
replies (greenpool/errors.py: error_reply), as both RESP parsers return them."""
from __future__ import annotations

import pytest

from greenpool.errors import (
    AskError,
    ClusterDownError,
    MovedError,
    ResponseError,
    TryAgainError,
    error_reply,
)
from greenpool.redis.cluster import SLOTS, crc16, key_slot
from greenpool.redis.resp import make_reader

try:
    import hiredis  # noqa: F401

    PARSERS = ["python", "hiredis"]
except ImportError:  # pragma: no cover
    PARSERS = ["python"]


def test_crc16_check_value():
    # the CRC-16/XMODEM check value, as in Redis's crc16.c
    assert crc16(b"123456789") == 0x31C3
    assert crc16(b"") == 0


@pytest.mark.parametrize("key, slot", [
    ("foo", 12182), (b"bar", 5061), ("", 0), ("123456789", 0x31C3 % SLOTS),
    (1000, key_slot("1000")),
])
def test_key_slot_known_values(key, slot):
    assert key_slot(key) == slot


def test_hash_tags():
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == crc16(b"foo{}{bar}") % SLOTS    # empty tag: whole key
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")               # up to the first }
    assert key_slot("foo{bar}{zap}") == key_slot("bar")                # the first tag only
    assert key_slot("{a") == crc16(b"{a") % SLOTS                      # no closing brace
    assert key_slot("é{é}") == key_slot("é".encode())


@pytest.mark.parametrize("text, cls, where", [
    ("MOVED 3999 127.0.0.1:6381", MovedError, (3999, "127.0.0.1", 6381)),
    ("ASK 3999 127.0.0.1:6381", AskError, (3999, "127.0.0.1", 6381)),
    ("MOVED 12 :6380", MovedError, (12, "", 6380)),           # unknown endpoint: same host
    ("MOVED 12 ::1:6380", MovedError, (12, "::1", 6380)),     # IPv6: the last colon splits
    ("TRYAGAIN Multiple keys request during rehashing of slot", TryAgainError, None),
    ("CLUSTERDOWN The cluster is down", ClusterDownError, None),
    ("ERR unknown command", ResponseError, None),
    ("MOVEDX 1 a:1", ResponseError, None),
])
def test_error_reply_classes(text, cls, where):
    e = error_reply(text)
    assert type(e) is cls and isinstance(e, ResponseError) and str(e) == text
    if where is not None:
        assert (e.slot, e.host, e.port) == where


@pytest.mark.parametrize("parser", PARSERS)
def test_readers_return_the_subclass(parser):
    reader = make_reader(parser)
    reader.feed(b"-MOVED 7 127.0.0.1:7000\r\n-ASK 8 127.0.0.1:7001\r\n-TRYAGAIN x\r\n"
                b"-CLUSTERDOWN y\r\n-ERR z\r\n")
    got = [reader.gets() for _ in range(5)]
    assert [type(g) for g in got] == [MovedError, AskError, TryAgainError, ClusterDownError,
                                      ResponseError]
    assert (got[0].slot, got[0].host, got[0].port) == (7, "127.0.0.1", 7000)
