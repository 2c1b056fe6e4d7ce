"""Backoff between reconnect attempts, with DBConnection's four types.

What this owns: the sequence of delays a pool waits between failed attempts to
open a connection (prewarm, shared connections that replace dead ones).

* ``"exp"``: backoff_min, 2x, 4x, ... capped at backoff_max.
* ``"rand"``: uniformly random in [backoff_min, backoff_max] every time.
* ``"rand_exp"``: decorrelated jitter: random in [backoff_min, 3 x previous],
  capped at backoff_max (the default: spreads reconnect storms).
* ``"stop"``: no retry: :meth:`Backoff.next` returns ``None``.

A ``Backoff`` is a small mutable iterator; :meth:`reset` after a success.
"""
from __future__ import annotations

import random
from typing import Optional

BACKOFF_TYPES = ("exp", "rand", "rand_exp", "stop")


class Backoff:
    __slots__ = ("min", "max", "type", "_prev", "_rand")

    def __init__(self, min: float, max: float, type: str = "rand_exp",
                 rand: Optional[random.Random] = None) -> None:
        if type not in BACKOFF_TYPES:
            raise ValueError("backoff_type must be one of %s, not %r" % (BACKOFF_TYPES, type))
        if min < 0 or max < min:
            raise ValueError("backoff needs 0 <= backoff_min <= backoff_max, got %r, %r" % (min, max))
        self.min = float(min)
        self.max = float(max)
        self.type = type
        self._prev = 0.0
        self._rand = rand or random.Random()

    def next(self) -> Optional[float]:
        """The next delay in seconds, or None when the type is ``"stop"``."""
        if self.type == "stop":
            return None
        if self.type == "rand":
            delay = self._rand.uniform(self.min, self.max)
        elif self.type == "exp":
            delay = self.min if not self._prev else min(self.max, self._prev * 2)
        else:  # rand_exp
            upper = max(self.min, self._prev * 3) if self._prev else self.min
            delay = min(self.max, self._rand.uniform(self.min, upper))
        self._prev = delay or self.min or 0.001
        return delay

    def reset(self) -> None:
        self._prev = 0.0

    def __repr__(self) -> str:
        return "<Backoff %s %.3g..%.3gs>" % (self.type, self.min, self.max)
