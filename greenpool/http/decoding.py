"""Content decoding (``Content-Encoding``) with a cap on the decoded size.

What this owns: turning a response body as it came off the wire into the
bytes the caller asked for: ``gzip`` (also ``x-gzip``, multi-member),
``deflate`` (zlib-wrapped, or raw deflate as some servers send it), ``br``
when the ``brotli`` (or ``brotlicffi``) package is installed, and chains such
as ``gzip, br`` (undone right to left).  ``identity`` and unknown codings are
passed through untouched (the caller gets the raw bytes and the header).

Promises:

* A decoder is fed pieces (``decode(data)``) and finished (``flush()``); both
  return decoded bytes.  Bad data raises :class:`~greenpool.errors.DecodingError`.
* **The cap.**  No more than ``max_decoded_size`` bytes are ever produced for
  one response (default :data:`DEFAULT_MAX_DECODED_SIZE`, 64 MiB; None: no
  cap); zlib output is requested in bounded steps, so a decompression bomb is
  stopped before it is inflated in memory.  Over the cap ->
  :class:`~greenpool.errors.DecodingError` naming the option.
"""
from __future__ import annotations

import zlib
from typing import List, Optional

from greenpool.errors import DecodingError

#: default cap on a response's decoded size (a 1000:1 gzip bomb of 64 KiB stops here)
DEFAULT_MAX_DECODED_SIZE = 64 * 1024 * 1024

try:  # pragma: no cover - depends on what is installed
    import brotli as _brotli
except ImportError:  # pragma: no cover
    try:
        import brotlicffi as _brotli  # type: ignore[import-not-found]  # optional fallback
    except ImportError:
        _brotli = None

#: what we send in ``Accept-Encoding`` by default
ACCEPT_ENCODING = "gzip, deflate, br" if _brotli is not None else "gzip, deflate"

_STEP = 256 * 1024  # zlib output is produced at most this much at a time


class Decoder:
    """Base: counts what it produced against the cap."""

    __slots__ = ("limit", "produced")

    def __init__(self, limit: Optional[int]) -> None:
        self.limit = limit
        self.produced = 0

    def _count(self, out: bytes) -> bytes:
        self.produced += len(out)
        if self.limit is not None and self.produced > self.limit:
            raise DecodingError(
                "decoded response body exceeds max_decoded_size=%d bytes; raise the limit "
                "(max_decoded_size=None for none) or read it with decode_content=False"
                % (self.limit,))
        return out

    def decode(self, data: bytes) -> bytes:
        raise NotImplementedError

    def flush(self) -> bytes:
        return b""


class ZlibDecoder(Decoder):
    """gzip (``wbits=16+15``, several members) or deflate (zlib, else raw)."""

    __slots__ = ("_obj", "_gzip", "_first", "_ended")

    def __init__(self, limit: Optional[int], gzip: bool) -> None:
        super().__init__(limit)
        self._gzip = gzip
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
        self._first = True
        self._ended = False

    def _inflate(self, data: bytes) -> bytes:
        out: List[bytes] = []
        obj = self._obj
        while data:
            if self._ended:
                if not self._gzip:
                    return b"".join(out)  # bytes after a deflate stream: ignored, as browsers do
                # another gzip member follows
                self._obj = obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._ended = False
            room = _STEP
            if self.limit is not None:
                room = max(1, min(_STEP, self.limit - self.produced + 1))
            chunk = obj.decompress(data, room)
            out.append(self._count(chunk))
            if obj.eof:
                self._ended = True
                data = obj.unused_data
                if self._gzip and data and not data.lstrip(b"\x00"):
                    return b"".join(out)  # trailing zero padding after the last member
            else:
                data = obj.unconsumed_tail
        return b"".join(out)

    def decode(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._first:
            self._first = False
            if not self._gzip:
                try:
                    return self._inflate(data)
                except zlib.error:
                    if self.produced:
                        raise DecodingError("invalid deflate data") from None
                    # raw deflate (no zlib header), as some servers send
                    self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            return self._inflate(data)
        except zlib.error as e:
            raise DecodingError("invalid %s data: %s" % ("gzip" if self._gzip else "deflate", e)) from None

    def flush(self) -> bytes:
        try:
            out = self._count(self._obj.flush())
        except zlib.error as e:  # pragma: no cover - flush rarely fails
            raise DecodingError("invalid compressed data: %s" % (e,)) from None
        if not self._first and not self._ended and self._gzip:
            raise DecodingError("gzip body ended early (truncated stream)")
        return out


class BrotliDecoder(Decoder):
    __slots__ = ("_obj",)

    def __init__(self, limit: Optional[int]) -> None:
        super().__init__(limit)
        self._obj = _brotli.Decompressor()

    def decode(self, data: bytes) -> bytes:
        if not data:
            return b""
        obj = self._obj
        try:
            if hasattr(obj, "can_accept_more_data"):  # brotli >= 1.2: bounded output steps
                out = [self._count(obj.process(data, output_buffer_limit=_STEP))]
                # drain until a step yields nothing: brotli 1.2.1 reports
                # can_accept_more_data() while output is still pending
                while True:
                    chunk = obj.process(b"", output_buffer_limit=_STEP)
                    if not chunk:
                        break
                    out.append(self._count(chunk))
                return b"".join(out)
            fn = getattr(obj, "process", None) or obj.decompress
            return self._count(fn(data))
        except DecodingError:
            raise
        except Exception as e:  # brotli.error differs between the two packages
            raise DecodingError("invalid brotli data: %s" % (e,)) from None

    def flush(self) -> bytes:
        fin = getattr(self._obj, "is_finished", None)
        if fin is not None and not fin():
            raise DecodingError("brotli body ended early (truncated stream)")
        return b""


class ChainDecoder(Decoder):
    """Several codings: the last one applied is undone first."""

    __slots__ = ("_parts",)

    def __init__(self, limit: Optional[int], parts: List[Decoder]) -> None:
        super().__init__(limit)
        self._parts = parts

    def decode(self, data: bytes) -> bytes:
        for d in self._parts:
            data = d.decode(data)
        return data

    def flush(self) -> bytes:
        data = b""
        for d in self._parts:
            data = (d.decode(data) if data else b"") + d.flush()
        return data


def _one(coding: str, limit: Optional[int]) -> Optional[Decoder]:
    if coding in ("gzip", "x-gzip"):
        return ZlibDecoder(limit, gzip=True)
    if coding == "deflate":
        return ZlibDecoder(limit, gzip=False)
    if coding == "br" and _brotli is not None:
        return BrotliDecoder(limit)
    return None


def make_decoder(content_encoding: Optional[str],
                 max_decoded_size: Optional[int] = DEFAULT_MAX_DECODED_SIZE) -> Optional[Decoder]:
    """A decoder for a ``Content-Encoding`` value, or None (identity / unknown)."""
    if not content_encoding:
        return None
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    parts = []
    for c in reversed(codings):
        d = _one(c, max_decoded_size)
        if d is None:
            return None  # a coding we cannot undo: hand back the raw body
        parts.append(d)
    if len(parts) == 1:
        return parts[0]
    # every stage counts against the cap (the innermost stage is the last in the list)
    return ChainDecoder(max_decoded_size, parts)


def decode_all(decoder: Decoder, data: bytes) -> bytes:
    """Decode a whole body at once."""
    return decoder.decode(data) + decoder.flush()


def supported() -> List[str]:
    """The codings this process can decode."""
    return ["gzip", "x-gzip", "deflate"] + (["br"] if _brotli is not None else [])


__all__ = ["ACCEPT_ENCODING", "DEFAULT_MAX_DECODED_SIZE", "Decoder", "make_decoder", "decode_all",
           "supported"]
