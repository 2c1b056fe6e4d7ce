"""HTTP/3 over QUIC: the sans-IO connection (:mod:`.conn`, the only importer of qh3), the
connection greenlet and request path (:mod:`.transport`), and which origins use it
(:mod:`.origins`: Alt-Svc, blocked origins, the race against TCP).

Needs the ``http3`` extra (``pip install greenpool[http3]``: qh3).  Nothing here is
imported until a Client is made with ``http3=True`` or ``"prior_knowledge"``.
"""
from __future__ import annotations

__all__ = ["available"]


def available() -> bool:
    """True when the QUIC library is installed."""
    try:
        import qh3  # noqa: F401
    except ImportError:
        return False
    return True
