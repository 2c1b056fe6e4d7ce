"""Retry: what the HTTP client retries, how often, and how long it waits between tries.

What this owns: an immutable value object, like urllib3's ``Retry``, that the
client consults after each failed attempt.  Retries are opt-in
(``retries=`` an int or a :class:`Retry`); the stale keep-alive retry of
``h1.transport`` is separate and always on.

Rules:

* **Connect errors** (:class:`~greenpool.errors.ConnectError` other than
  ``TLSError``, which another try cannot fix) are retried for any method:
  nothing was sent.
* **Read errors and timeouts** after the request was sent are retried only
  for methods in ``allowed_methods`` (idempotent ones by default).
* **Statuses** in ``status_forcelist`` are retried for methods in
  ``allowed_methods``; when tries run out the last response is returned (not
  raised).  ``Retry-After`` (seconds or an HTTP-date) is honoured for 413,
  429, 503 and any forcelisted status when ``respect_retry_after``, capped
  at ``retry_after_max`` seconds.
* **Backoff** before try n (n >= 2): ``backoff_factor * 2 ** (n - 2)``
  capped at ``backoff_max`` (0 for the first retry when ``backoff_factor`` is
  0), or the sequence of a :class:`greenpool.Backoff` given as ``backoff=``
  (a fresh copy per request: ``exp``, ``rand``, ``rand_exp``).
* ``total`` bounds all retries; ``connect``/``read``/``status`` bound each
  kind (None: only ``total`` counts).
"""
from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING, Any, FrozenSet, Iterable, Optional

from greenpool.backoff import Backoff
from greenpool.errors import ConnectError, TLSError

if TYPE_CHECKING:
    import datetime

IDEMPOTENT_METHODS = frozenset(("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"))
RETRY_AFTER_STATUSES = frozenset((413, 429, 503))


def _count(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("Retry %s must be an int >= 0 or None, not %r" % (name, value))


class Retry:
    """Immutable retry policy; see the module docstring.  ``replace(**changes)`` copies."""

    __slots__ = ("total", "connect", "read", "status", "backoff_factor", "backoff_max",
                 "backoff", "status_forcelist", "allowed_methods", "respect_retry_after",
                 "retry_after_max")

    total: int
    connect: Optional[int]
    read: Optional[int]
    status: Optional[int]
    backoff_factor: float
    backoff_max: float
    backoff: Optional[Backoff]
    status_forcelist: FrozenSet[int]
    allowed_methods: FrozenSet[str]
    respect_retry_after: bool
    retry_after_max: float

    def __init__(self, total: int = 3, *, connect: Optional[int] = None, read: Optional[int] = None,
                 status: Optional[int] = None, backoff_factor: float = 0.0,
                 backoff_max: float = 30.0, backoff: Optional[Backoff] = None,
                 status_forcelist: Iterable[int] = (),
                 allowed_methods: Iterable[str] = IDEMPOTENT_METHODS,
                 respect_retry_after: bool = True, retry_after_max: float = 60.0) -> None:
        for name, value in (("total", total), ("connect", connect), ("read", read),
                            ("status", status)):
            _count(name, value)
        if total is None:
            raise ValueError("Retry total must be an int >= 0")
        for name, number in (("backoff_factor", backoff_factor), ("backoff_max", backoff_max),
                             ("retry_after_max", retry_after_max)):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0:
                raise ValueError("Retry %s must be a number >= 0, not %r" % (name, number))
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError("Retry backoff must be a greenpool.Backoff, not %r" % (backoff,))
        forcelist: FrozenSet[int] = frozenset(int(s) for s in status_forcelist)
        methods = frozenset(m.upper() for m in allowed_methods)
        values = dict(total=total, connect=connect, read=read, status=status,
                      backoff_factor=float(backoff_factor), backoff_max=float(backoff_max),
                      backoff=backoff, status_forcelist=forcelist, allowed_methods=methods,
                      respect_retry_after=bool(respect_retry_after),
                      retry_after_max=float(retry_after_max))
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Retry is immutable; use retry.replace(%s=...)" % name)

    @classmethod
    def coerce(cls, value: Any) -> Optional["Retry"]:
        """None/0/False: no retries; an int n: ``Retry(total=n)``; a Retry as is."""
        if value is None or value is False:
            return None
        if isinstance(value, Retry):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(total=value) if value > 0 else None
        raise TypeError("retries must be an int, a greenpool.Retry or None, not %r" % (value,))

    def replace(self, **changes: Any) -> "Retry":
        kw = {k: getattr(self, k) for k in self.__slots__}
        kw.update(changes)
        total = kw.pop("total")
        return Retry(total, **kw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Retry) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, k) for k in self.__slots__ if k != "backoff"))

    def __repr__(self) -> str:
        return "Retry(total=%r, connect=%r, read=%r, status=%r, backoff_factor=%r, " \
               "status_forcelist=%r)" % (self.total, self.connect, self.read, self.status,
                                         self.backoff_factor, sorted(self.status_forcelist))

    # -- decisions (used by the client) --

    def is_retryable_error(self, exc: BaseException, method: str, sent: bool) -> Optional[str]:
        """The kind of retry (``"connect"`` / ``"read"``) ``exc`` allows, or None."""
        if isinstance(exc, ConnectError) and not isinstance(exc, TLSError):
            return "connect"
        from greenpool.errors import ConnectionClosed, ReadError, ReadTimeout, WriteError
        if isinstance(exc, (ReadError, ReadTimeout, WriteError, ConnectionClosed)):
            if method.upper() in self.allowed_methods:
                return "read"
        return None

    def is_retryable_status(self, method: str, status: int) -> bool:
        return status in self.status_forcelist and method.upper() in self.allowed_methods

    def retry_after(self, status: int, value: Optional[str]) -> Optional[float]:
        """Seconds to wait from a Retry-After header, capped; None when absent or invalid."""
        if not value or not self.respect_retry_after:
            return None
        if status not in RETRY_AFTER_STATUSES and status not in self.status_forcelist:
            return None
        return parse_retry_after(value, self.retry_after_max)


class RetryState:
    """The mutable count of one request's retries (not shared)."""

    __slots__ = ("policy", "counts", "backoff")

    def __init__(self, policy: Retry) -> None:
        self.policy = policy
        self.counts = {"total": 0, "connect": 0, "read": 0, "status": 0}
        b = policy.backoff
        self.backoff = Backoff(b.min, b.max, b.type) if b is not None else None

    def take(self, kind: str) -> bool:
        """Use one retry of ``kind``; False when none is left."""
        p = self.policy
        if self.counts["total"] >= p.total:
            return False
        limit = getattr(p, kind)
        if limit is not None and self.counts[kind] >= limit:
            return False
        self.counts["total"] += 1
        self.counts[kind] += 1
        return True

    def delay(self) -> float:
        """Backoff before the retry just taken."""
        if self.backoff is not None:
            d = self.backoff.next()
            return 0.0 if d is None else d
        p = self.policy
        n = self.counts["total"]
        if not p.backoff_factor or n <= 0:
            return 0.0
        scale: int = 2 ** (n - 1)  # n >= 1: an int (typeshed types int ** int as Any)
        return min(p.backoff_max, p.backoff_factor * scale)


def parse_retry_after(value: str, cap: float) -> Optional[float]:
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            # typeshed says never None; older Pythons could return None for junk.
            when: Optional[datetime.datetime] = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(seconds, cap))


__all__ = ["Retry", "RetryState", "IDEMPOTENT_METHODS", "parse_retry_after"]
