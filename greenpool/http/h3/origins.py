"""Which https origins get HTTP/3, per pool: Alt-Svc memory, blocked origins, the race.

What this owns:

* the Alt-Svc cache (RFC 7838): ``h3`` alternatives only, for the same host
  only (another port allowed), kept ``ma`` seconds (default 24 h),
  forgotten on ``clear``; learned from any HTTP/1.1 or HTTP/2 response
  (:func:`learn`);
* the blocked cache: an origin where QUIC failed is served over TCP for
  the pool option ``h3_blocked_ttl`` seconds (default 300 s);
* :func:`try_h3`, the decision and the race: with a live QUIC connection to
  the origin the request goes straight to it; otherwise the QUIC connection
  is opened in the background, and when it is not ready after the pool
  option ``h3_race_delay`` (default 0.25 s) the request goes over TCP
  (``None`` returned) while QUIC finishes for the next requests.  A caller
  never sees a QUIC connect error: the origin is marked blocked and TCP
  serves it.

Promises: never more than one background handshake per pool and origin; the
background greenlet ends within the connect timeout and gives its use of the
connection back; nothing here yields except the bounded wait of the race.
"""
from __future__ import annotations

import re
import time
import weakref
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import gevent

from greenpool import events
from greenpool.errors import ConnectError, GreenPoolError
from greenpool.http.decoding import DEFAULT_MAX_DECODED_SIZE
from greenpool.http.h3 import transport
from greenpool.http.models import Request, Response, Timeout

if TYPE_CHECKING:
    from greenpool.pool import GreenPool

__all__ = ["try_h3", "learn", "alt_svc", "blocked", "block", "unblock", "blocked_count", "stats",
           "DEFAULT_MA"]

DEFAULT_MA = 86400.0
MAX_ENTRIES = 1024
_monotonic = time.monotonic
_TCP: Any = object()

# per pool: (host, port) -> (h3 port, expires at)
_alt: "weakref.WeakKeyDictionary[Any, Dict[Tuple[str, int], Tuple[int, float]]]" = weakref.WeakKeyDictionary()
# per pool: (host, port) -> blocked until; and the handshakes running in the background
_blocked: "weakref.WeakKeyDictionary[Any, Dict[Tuple[str, int], float]]" = weakref.WeakKeyDictionary()
#: set by the first :func:`block`: until then :func:`blocked` answers without a lookup (the
#: weak dictionary's ``len()`` is Python code)
_any_blocked = False
_racing: "weakref.WeakKeyDictionary[Any, Dict[Tuple[str, int, str], _Handshake]]" = weakref.WeakKeyDictionary()

_ENTRY = re.compile(r'\s*([A-Za-z0-9_.~!$&\'*+^`|%-]+)\s*=\s*"([^"]*)"\s*((?:;\s*[A-Za-z0-9_-]+\s*=\s*'
                    r'(?:"[^"]*"|[^,;\s]*)\s*)*)')
_PARAM = re.compile(r';\s*([A-Za-z0-9_-]+)\s*=\s*("[^"]*"|[^,;\s]*)')


# -- caches --


def alt_svc(pool: Any, host: str, port: int) -> Optional[int]:
    """The UDP port an https origin advertised for h3, if the advertisement is still fresh."""
    entry = _alt.get(pool, {}).get((host, port))
    if entry is None:
        return None
    if entry[1] <= _monotonic():
        _alt[pool].pop((host, port), None)
        return None
    return entry[0]


def learn(pool: Any, host: str, port: int, value: Optional[str]) -> None:
    """Apply one ``Alt-Svc`` header value of a response from ``https://host:port``."""
    if not value:
        return
    memory = _alt.get(pool)
    if value.strip().lower() == "clear":
        if memory is not None:
            memory.pop((host, port), None)
        return
    for m in _ENTRY.finditer(value):
        proto, authority, params = m.group(1), m.group(2), m.group(3) or ""
        if proto != "h3":
            continue     # drafts (h3-29) and other protocols: not spoken here
        alt_host, _, alt_port = authority.rpartition(":")
        if alt_host and alt_host.strip("[]").lower() != host.lower():
            continue     # another host: not followed (no certificate check of it here)
        if not alt_port.isdigit() or not 0 < int(alt_port) < 65536:
            continue
        ma = DEFAULT_MA
        for pm in _PARAM.finditer(params):
            if pm.group(1).lower() == "ma":
                v = pm.group(2).strip('"')
                if v.isdigit():
                    ma = float(v)
        if memory is None:
            memory = _alt[pool] = {}
        if ma <= 0:
            memory.pop((host, port), None)
            return
        if len(memory) >= MAX_ENTRIES:
            memory.pop(next(iter(memory)))
        memory[(host, port)] = (int(alt_port), _monotonic() + ma)
        return


def blocked(pool: Any, host: str, port: int) -> bool:
    if not _any_blocked:     # no pool has blocked an origin (no weak reference made per call)
        return False
    until = _blocked.get(pool, {}).get((host, port))
    if until is None:
        return False
    if until <= _monotonic():
        _blocked[pool].pop((host, port), None)
        return False
    return True


def block(pool: Any, host: str, port: int, ttl: Optional[float] = None,
          reason: Optional[str] = None) -> None:
    """Serve ``https://host:port`` over TCP for ``ttl`` seconds (default: the pool's
    ``h3_blocked_ttl``); subscribers get a ``"blocked"`` event (key ``(host, port,
    "quic")``, ``seconds`` = ``ttl``, ``reason`` = why)."""
    global _any_blocked
    if ttl is None:
        ttl = pool.options.h3_blocked_ttl
    _any_blocked = True
    if events._subscribers:
        events.emit("blocked", pool, (host, port, "quic"), ttl, reason)
    memory = _blocked.get(pool)
    if memory is None:
        memory = _blocked[pool] = {}
    if len(memory) >= MAX_ENTRIES:
        memory.pop(next(iter(memory)))
    memory[(host, port)] = _monotonic() + ttl


def unblock(pool: Any, host: str, port: int) -> None:
    _blocked.get(pool, {}).pop((host, port), None)


def blocked_count(pool: Any) -> int:
    now = _monotonic()
    return sum(1 for until in _blocked.get(pool, {}).values() if until > now)


def stats(pool: Any) -> Dict[str, int]:
    """HTTP/3 numbers of one pool: its QUIC connections (``quic_connections``, users in
    ``quic_streams``), ``blocked_origins``, ``alt_svc_origins``, ``session_tickets``, and the
    counters of :func:`greenpool.http.h3.transport.counters`."""
    out = transport.counters(pool)
    if pool is None:    # the pool is gone (a stats source outliving it)
        return out
    conns = streams = 0
    for key, h in getattr(pool, "_hosts", {}).items():
        if key[2].partition("|")[0] == "quic":
            conns += h.open
            streams += sum(c.users for c in h.shared)
    now = _monotonic()
    out.update(quic_connections=conns, quic_streams=streams, blocked_origins=blocked_count(pool),
               alt_svc_origins=sum(1 for _, exp in _alt.get(pool, {}).values() if exp > now),
               session_tickets=len(transport.session_tickets.get(pool, {})))
    return out


# -- the decision --


def try_h3(pool: "GreenPool", request: Request, timeout: Timeout, deadline: Optional[float],
           connect_opts: Dict[str, Any], mode: Any, *, race_delay: Optional[float] = None,
           blocked_ttl: Optional[float] = None, rescue: bool = False, quic: str = "quic",
           stream: bool = True, decode_content: bool = True,
           max_decoded_size: Optional[int] = DEFAULT_MAX_DECODED_SIZE,
           max_header_size: Optional[int] = None, max_body_size: Optional[int] = None
           ) -> Optional[Response]:
    """The response over HTTP/3, or None: send it over TCP (see the module docstring).

    ``mode``: True (only origins that advertised h3 by Alt-Svc) or
    ``"prior_knowledge"`` (every https origin, on its own port).  ``rescue=True``:
    TCP failed after this origin's race went to TCP: wait for the QUIC handshake
    still running (None when there is none, or it fails too).  ``race_delay`` and
    ``blocked_ttl`` default to the pool options ``h3_race_delay`` and ``h3_blocked_ttl``.
    ``quic``: the key's transport, ``"quic"`` or tagged for non-default TLS settings
    (``"quic|tls1"``).
    """
    url = request.url
    host, port = url.host, url.port
    if "http3" not in pool._stat_sources:
        _add_stats(pool)
    if blocked(pool, host, port):
        return None
    if mode == "prior_knowledge":
        qport: Optional[int] = port
    else:
        qport = alt_svc(pool, host, port)
        if qport is None:
            return None
    assert qport is not None
    if rescue:
        hs = _racing.get(pool, {}).get((host, qport, quic))
        if hs is not None and hs.greenlet is not None:
            hs.greenlet.join(_remaining_connect(pool, timeout, deadline))
            if not hs.greenlet.dead:
                return None
        conn = hs.take() if hs is not None else None
        if conn is None and (blocked(pool, host, port)
                             or not pool.host_stats(host, qport, quic)["active"]):
            return None
    else:
        conn = pool.checkout_h2(host, qport, quic)
        if conn is None and not pool.host_stats(host, qport, quic)["active"]:
            options = pool.options
            conn = _race(pool, host, port, qport, timeout, deadline, connect_opts,
                         options.h3_race_delay if race_delay is None else race_delay,
                         options.h3_blocked_ttl if blocked_ttl is None else blocked_ttl, quic)
            if conn is _TCP or blocked(pool, host, port):
                return None
    return transport.handle(pool, request, timeout, deadline, connect_opts, port=qport, conn=conn,
                            transport=quic, stream=stream, decode_content=decode_content,
                            max_decoded_size=max_decoded_size, max_header_size=max_header_size,
                            max_body_size=max_body_size)


def _add_stats(pool: "GreenPool") -> None:
    """``pool.get_stats()["http3"]``: :func:`stats` (the pool held weakly)."""
    ref = weakref.ref(pool)
    pool.add_stats("http3", lambda: stats(ref()), transport.COUNTERS)


def _remaining_connect(pool: Any, timeout: Timeout, deadline: Optional[float]) -> Optional[float]:
    wait = timeout.connect if timeout.connect is not None else pool.options.connect_timeout
    if deadline is not None:
        left = max(deadline - _monotonic(), 0.0)
        wait = left if wait is None or left < wait else wait
    return wait


class _Handshake:
    """One background QUIC connect; ``conn`` is its use of the connection until someone
    takes it (a caller) or gives it back (when every caller went over TCP)."""

    __slots__ = ("greenlet", "conn")

    def __init__(self) -> None:
        self.conn: Any = None
        self.greenlet: Optional[gevent.Greenlet] = None

    def take(self) -> Any:
        conn, self.conn = self.conn, None
        return conn


def _race(pool: "GreenPool", host: str, port: int, qport: int, timeout: Timeout,
          deadline: Optional[float], connect_opts: Dict[str, Any], race_delay: float,
          blocked_ttl: float, quic: str = "quic") -> Any:
    """A use of a QUIC connection ready within ``race_delay``, ``_TCP`` (TCP serves this
    request), or None (the handshake ended: take a use from the pool)."""
    racing = _racing.get(pool)
    if racing is None:
        racing = _racing[pool] = {}
    key = (host, qport, quic)
    hs = racing.get(key)
    if hs is None:
        hs = racing[key] = _Handshake()

        def connect() -> None:
            try:
                hs.conn = transport.acquire(pool, host, qport, timeout, deadline, connect_opts,
                                            transport=quic)
            except ConnectError as e:
                block(pool, host, port, blocked_ttl, "%s: %s" % (type(e).__name__, e))
            except GreenPoolError:
                pass
            finally:
                if racing.get(key) is hs:
                    del racing[key]
        hs.greenlet = gevent.spawn(connect)
    g = hs.greenlet
    assert g is not None
    g.join(race_delay)
    if g.dead:
        return hs.take()      # None: another caller took it; the pool hands out the rest
    # not ready: TCP serves this request; the handshake's use goes back when it finishes
    g.link(lambda _: _give_back(pool, hs))
    return _TCP


def _give_back(pool: "GreenPool", hs: _Handshake) -> None:
    conn = hs.take()
    if conn is not None:
        pool.release_shared(conn)
