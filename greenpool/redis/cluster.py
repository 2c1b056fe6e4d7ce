"""Redis Cluster key slots: CRC16 with hash tags.

What this owns: which of the 16384 slots a key lives in (:func:`key_slot`), as Redis
Cluster computes it: CRC16-CCITT (XModem) of the key's hash tag (the part between the first
``{`` and the next ``}``, when not empty) or of the whole key.
"""
from __future__ import annotations

from typing import Any, List

#: slots in a Redis Cluster
SLOTS = 16384

# -- key slots --

def _crc16_table() -> List[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XModem), the checksum Redis Cluster hashes keys with."""
    crc = 0
    table = _TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ b) & 0xFF]
    return crc


def _b(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    return str(x).encode("ascii")


def key_slot(key: Any) -> int:
    """The slot of ``key`` (str, bytes or number): CRC16 of its hash tag (the part between
    the first ``{`` and the next ``}``, when not empty) or of the whole key, mod 16384."""
    k = _b(key)
    start = k.find(b"{")
    if start >= 0:
        end = k.find(b"}", start + 1)
        if end > start + 1:
            k = k[start + 1:end]
    return crc16(k) % SLOTS



__all__ = ["key_slot", "crc16", "SLOTS"]
