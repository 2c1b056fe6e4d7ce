"""Tests for greenpool/backoff.py: DBConnection's exp, rand, rand_exp and stop."""
from __future__ import annotations

import random

import pytest

from greenpool import Backoff


def test_exp_doubles_to_the_cap_and_resets():
    b = Backoff(0.1, 1.0, "exp")
    assert [b.next() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    b.reset()
    assert b.next() == pytest.approx(0.1)


def test_rand_stays_in_range():
    b = Backoff(0.5, 2.0, "rand", rand=random.Random(1))
    values = [b.next() for _ in range(200)]
    assert all(0.5 <= v <= 2.0 for v in values)
    assert max(values) - min(values) > 1.0   # it really varies


def test_rand_exp_grows_with_jitter_capped():
    b = Backoff(0.1, 5.0, "rand_exp", rand=random.Random(7))
    values = [b.next() for _ in range(50)]
    assert all(0.1 <= v <= 5.0 for v in values)
    assert values[0] == pytest.approx(0.1)
    assert max(values) > 1.0    # grew
    assert len(set(values)) > 10   # decorrelated, not a fixed ladder


def test_stop_never_retries():
    assert Backoff(1, 2, "stop").next() is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="backoff_type"):
        Backoff(1, 2, "linear")
    with pytest.raises(ValueError, match="backoff_min"):
        Backoff(3, 2)
