"""multipart/form-data request bodies (RFC 7578), streamed.

What this owns: turning requests' ``files=`` shapes, with ``data=`` fields
alongside, into a body the transports send like a file:
:class:`MultipartStream` has ``read(n)``, so a 200 MiB file goes out in
pieces of at most ``n`` bytes and is never held whole in memory.

``files`` is a mapping or a list of ``(name, value)``; a value is a file
object, bytes/str, or a tuple ``(filename, fileobj_or_bytes[, content_type[,
headers]])`` (``filename`` None: a plain field).  A file's name defaults to
the basename of its ``.name``; its type to ``application/octet-stream``.

Promises: ``length`` is the exact body size when every part's size is known
(bytes, sized or seekable files), else None (chunked on HTTP/1.1).  The
stream is replayable (``seekable()``, ``seek(0)``) when every file part is
seekable: the files are put back where they were when the body was made, so
redirects (307/308), retries and auth rounds can send it again.
Names and filenames are quoted as RFC 7578 says (``"`` -> ``%22``, CR/LF ->
``%0D``/``%0A``).  Nothing here does I/O beyond reading the given files.
"""
from __future__ import annotations

import io
import os
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["MultipartStream", "encode"]

_FileValue = Any
FilesInput = Union[Mapping[str, _FileValue], Sequence[Tuple[str, _FileValue]]]
DataInput = Union[None, Mapping[str, Any], Sequence[Tuple[str, Any]]]

CHUNK = 65536


def _quote(value: str) -> str:
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value).encode("ascii")
    raise TypeError("a multipart field value must be str, bytes or a number, not %s"
                    % type(value).__name__)


def _size(f: Any) -> Optional[int]:
    """Bytes left in a binary file object, when it can say."""
    if isinstance(f, io.TextIOBase):
        return None
    try:
        if f.seekable():
            pos: int = f.tell()
            end: int = f.seek(0, io.SEEK_END)
            f.seek(pos)
            return max(0, end - pos)
    except (AttributeError, OSError, ValueError):
        pass
    try:
        left: int = os.fstat(f.fileno()).st_size - f.tell()
        return max(0, left)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable())
    except AttributeError:
        return hasattr(f, "seek") and hasattr(f, "tell")
    except (OSError, ValueError):
        return False


class _Part:
    __slots__ = ("head", "data", "file", "start", "size")

    def __init__(self, head: bytes, data: Optional[bytes], file: Any) -> None:
        self.head = head
        self.data = data
        self.file = file
        self.start: Optional[int] = None
        self.size: Optional[int] = len(data) if data is not None else _size(file)
        if file is not None and _seekable(file):
            try:
                self.start = file.tell()
            except (OSError, ValueError):
                self.start = None


class MultipartStream:
    """A multipart/form-data body: ``read(n)``; ``content_type``; ``length``."""

    def __init__(self, data: DataInput, files: FilesInput, boundary: Optional[bytes] = None) -> None:
        self.boundary = boundary or os.urandom(16).hex().encode("ascii")
        self.content_type = b"multipart/form-data; boundary=" + self.boundary
        self._parts: List[_Part] = []
        fields: Iterable[Tuple[str, Any]] = () if not data else (
            data.items() if isinstance(data, Mapping) else data)
        for name, value in fields:
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                self._parts.append(_Part(self._head(name, None, None, None), _bytes(v), None))
        items = files.items() if isinstance(files, Mapping) else files
        for name, value in items:
            self._parts.append(self._file_part(name, value))
        self._tail = b"--" + self.boundary + b"--\r\n"
        sizes = [p.size for p in self._parts]
        self.length: Optional[int] = None
        if all(s is not None for s in sizes):
            self.length = sum(len(p.head) + (p.size or 0) + 2 for p in self._parts) + len(self._tail)
        self._iter: Optional[Iterator[bytes]] = None
        self._buf = b""
        self._sent = 0

    def _head(self, name: str, filename: Optional[str], ctype: Optional[str],
              headers: Optional[Mapping[str, str]]) -> bytes:
        disp = 'form-data; name="%s"' % _quote(name)
        if filename is not None:
            disp += '; filename="%s"' % _quote(filename)
        lines = ["--%s" % self.boundary.decode("ascii"), "Content-Disposition: " + disp]
        extra = dict(headers or {})
        if ctype is None and filename is not None and not any(
                k.lower() == "content-type" for k in extra):
            ctype = "application/octet-stream"
        if ctype is not None:
            lines.append("Content-Type: " + ctype)
        for k, v in extra.items():
            if "\r" in k + v or "\n" in k + v:
                from greenpool.errors import LocalProtocolError
                raise LocalProtocolError("a multipart header holds CR or LF: %r" % (k,))
            lines.append("%s: %s" % (k, v))
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def _file_part(self, name: str, value: Any) -> _Part:
        filename: Optional[str] = None
        ctype: Optional[str] = None
        headers: Optional[Mapping[str, str]] = None
        named = isinstance(value, tuple)
        if named:
            if not 2 <= len(value) <= 4:
                raise ValueError("a files= tuple is (filename, file_or_bytes[, content_type"
                                 "[, headers]]), not %d items" % len(value))
            filename = value[0]
            ctype = value[2] if len(value) > 2 else None
            headers = value[3] if len(value) > 3 else None
            value = value[1]
        file = None
        data: Optional[bytes] = None
        if isinstance(value, (bytes, bytearray, memoryview, str)):
            data = _bytes(value)
            if not named:
                filename = name  # requests names a bare bytes value after its field
        elif hasattr(value, "read"):
            file = value
            if not named:
                fname = getattr(value, "name", None)
                filename = os.path.basename(fname) if isinstance(fname, str) \
                    and not fname.startswith("<") else name
        else:
            raise TypeError("a files= value must be a file object, bytes, str or a tuple, "
                            "not %s" % type(value).__name__)
        return _Part(self._head(name, filename, ctype, headers), data, file)

    # -- the file-like surface the transports use --

    def _pieces(self) -> Iterator[bytes]:
        for p in self._parts:
            yield p.head
            if p.data is not None:
                yield p.data
            else:
                read = p.file.read
                while True:
                    chunk = read(CHUNK)
                    if not chunk:
                        break
                    yield chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)
            yield b"\r\n"
        yield self._tail

    def read(self, n: int = -1) -> bytes:
        if self._iter is None:
            self._iter = self._pieces()
        buf = self._buf
        while n < 0 or len(buf) < n:
            piece = next(self._iter, None)
            if piece is None:
                break
            buf = buf + piece if buf else piece
        if n < 0 or len(buf) <= n:
            out, self._buf = buf, b""
        else:
            out, self._buf = buf[:n], buf[n:]
        self._sent += len(out)
        return out

    def seekable(self) -> bool:
        return all(p.file is None or p.start is not None for p in self._parts)

    def tell(self) -> int:
        return self._sent

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != 0 or whence != 0:
            raise io.UnsupportedOperation("a multipart body can only be rewound to its start")
        if not self.seekable():
            raise io.UnsupportedOperation("a file of this multipart body cannot seek")
        for p in self._parts:
            if p.file is not None:
                p.file.seek(p.start)
        self._iter, self._buf, self._sent = None, b"", 0
        return 0

    def __repr__(self) -> str:
        return "<MultipartStream %d parts, %s bytes>" % (
            len(self._parts), self.length if self.length is not None else "unknown")


def encode(data: DataInput, files: FilesInput,
           boundary: Optional[bytes] = None) -> MultipartStream:
    return MultipartStream(data, files, boundary)
