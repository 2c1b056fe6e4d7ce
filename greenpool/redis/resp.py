"""The RESP codec: Redis commands to bytes, bytes to Redis replies. Sans-IO.

What this owns: encoding commands (:func:`pack_command`, :func:`pack_commands`)
and decoding the server's byte stream into Python values, with two reader
backends of one interface (:class:`Reader`, pure Python; :class:`HiredisReader`,
over ``hiredis.Reader``) and :func:`make_reader` to choose one.  No sockets:
the connection greenlet calls ``feed(data)`` with what it received, then
``gets()`` until it returns :data:`NOT_ENOUGH`.

What it promises (identical for both backends; the test suite runs over both):

* Reply mapping.  Simple string -> ``bytes`` (``str`` with
  ``decode_responses``), so ``+OK`` is ``b"OK"`` / ``"OK"``; error ->
  a :class:`~greenpool.errors.ResponseError` *instance, returned, not raised*
  (the command layer decides), whose ``str()`` is the server's message; integer
  -> ``int``; bulk string -> ``bytes``/``str``; null bulk and null array ->
  ``None``; array -> ``list`` (nested).  RESP3: null ``_`` -> ``None``,
  boolean ``#`` -> ``bool``, double ``,`` -> ``float``, big number ``(`` -> its
  decimal digits as ``bytes``/``str`` (what hiredis returns; ``int()`` it where
  a number is expected), bulk error ``!`` -> ``ResponseError``, verbatim ``=``
  -> ``bytes``/``str`` without its ``txt:`` format prefix, map ``%`` ->
  ``dict``, set ``~`` -> ``list``, push ``>`` -> :class:`Push` (a ``list``
  subclass, returned in stream order: the connection tells it from a command's
  reply by its type and never hands it to a caller).  Attributes ``|`` are read
  and dropped: never returned as a reply.  HiredisReader needs ``resp3=True``
  for both (hiredis returns a push as a plain list and an attribute as a reply
  of its own): it then walks the headers of any chunk holding a ``>`` or ``|``
  byte to learn each reply's type (see below).
* A value not valid in ``encoding`` (``decode_responses``) does not break the
  stream: the whole reply is read, and a
  :class:`~greenpool.errors.ReplyDecodeError` *instance* is returned in its
  place (a push keeps its frame, with the error in place of its elements).
* Garbage (unknown type byte, non-numeric length, missing CRLF after a bulk
  payload, bad boolean/null/double) raises
  :class:`~greenpool.errors.RemoteProtocolError`.  A declared bulk length or
  aggregate count over ``max_reply_size`` (or a line that long without CRLF)
  raises :class:`~greenpool.errors.LimitExceeded` before any byte after that
  header is asked for (see HiredisReader's limit check).  After any of these
  the reader is unusable: every later call raises again; close the
  connection.
* Cost.  The pure reader keeps one ``bytearray`` and a read offset, compacted
  at each ``feed`` (CPython deletes a bytearray's head in O(1)), and resumes a
  half-read aggregate from an explicit stack, so a large reply fed in small
  pieces is O(n) and many small replies in one buffer cost one ``find`` and
  one slice each.
* HiredisReader's limit check.  hiredis has no size limit, so HiredisReader
  keeps the bytes fed since the last *clean boundary* (a reply was returned
  and hiredis holds nothing more): a list of references, no copy.  While they
  total less than ``min(max_reply_size, 1 MiB)``, every element that completed
  is smaller than the limit, so only a reply still incomplete can declare too
  much: whenever ``gets()`` finds hiredis wanting more, the chunks
  not yet checked are searched (one C regex) for a type byte followed by as
  many digits as the limit has, and only such a hit is walked header by
  header.  So an oversized header is refused in the ``gets()`` that follows
  the ``feed()`` that brought it, before anything more is received.  Past it,
  a header-only scanner (it skips bulk payloads by length) walks the stream
  from that boundary and checks every declared length *before* hiredis sees
  the chunk, until a chunk ends less than that threshold after a reply
  boundary (then it restarts from there).  So replies that arrive whole and
  pipelines under 1 MiB never pay for it; a long stream of small replies
  pays for one chunk now and then; only a single reply over 1 MiB is walked
  whole (in Python, skipping bulk payloads).
* HiredisReader's fallback.  hiredis 3.x cannot read RESP3 bulk errors
  (``!``).  When hiredis reports a protocol error, HiredisReader replays the
  logged bytes (up to 1 MiB since the last boundary) into a pure
  :class:`Reader`, skips the replies already returned, and hands over to it
  for good: ``!`` is read, and real garbage gets the pure reader's message.
  hiredis is more lenient than the pure reader in two places it does not
  report: the CRLF after a bulk payload is not checked, and a simple string
  may contain a bare CR.  And one it gets wrong: an attribute *inside* an
  aggregate counts as one of its elements (Redis sends attributes only before
  a top-level reply; the pure reader drops them wherever they are).
"""
from __future__ import annotations

import re
from collections import deque
from typing import Any, Deque, Dict, Iterable, List, NoReturn, Optional, Sequence, Union

from ..errors import LimitExceeded, RemoteProtocolError, ReplyDecodeError, error_reply

try:  # optional speedup
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - exercised only without hiredis
    _hiredis = None  # type: ignore[assignment]  # optional: None when not installed


class _NotEnough:
    """The type of :data:`NOT_ENOUGH`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_ENOUGH"

    def __reduce__(self) -> str:
        return "NOT_ENOUGH"


#: ``gets()`` returns this when the buffer holds no complete reply yet.
NOT_ENOUGH: Any = _NotEnough()

DEFAULT_MAX_REPLY_SIZE = 512 * 1024 * 1024


class Push(list):  # type: ignore[type-arg]  # elements are any RESP value
    """A RESP3 push frame (``>``): out-of-band data such as a tracking invalidation
    (``[b"invalidate", [keys]]``) or a pub/sub message; never a command's reply."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Push(%s)" % list.__repr__(self)


def short_repr(value: Any, limit: int = 80) -> str:
    """At most about ``limit`` characters describing ``value``, whatever its size: a
    reply logged or put in an error message is never formatted whole."""
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        head = value[:limit]
        text = repr(bytes(head) if not isinstance(head, (bytes, str)) else head)
        more = len(value) - len(head)
    elif isinstance(value, (list, tuple, dict)):
        items = list(value.items())[:4] if isinstance(value, dict) else list(value[:4])
        text = "%s of %d [%s]" % (type(value).__name__, len(value),
                                  ", ".join(short_repr(x, limit // 4) for x in items))
        more = 0
    else:
        text = repr(value)[:limit]
        more = 0
    if len(text) > limit:
        text, more = text[:limit], max(more, 1)
    return text + ("... (%d more)" % more if more else "")

ArgType = Union[bytes, str, int, float, bytearray, memoryview]

# -- encoding commands ----------------------------------------------------------

# Values longer than this are appended as their own piece instead of being
# formatted into the header (which would copy them once more).
_INLINE_MAX = 1024


def _bad_arg(where: str, i: int, arg: Any) -> TypeError:
    return TypeError(
        "%sargs[%d] is %s (%.40r): a Redis command argument must be bytes, str, int or "
        "float; convert it first (e.g. str(x), json.dumps(x), b'1' / b'0' for a bool)"
        % (where, i, type(arg).__name__, arg)
    )


def _pack_into(out: List[Any], args: Any, where: str) -> None:
    if not isinstance(args, (list, tuple)):
        raise TypeError(
            '%sa command must be a list or tuple of arguments, like ["GET", "k"], not %s (%.40r)'
            % (where, type(args).__name__, args)
        )
    if not args:
        raise ValueError("%sa command needs at least one argument (its name)" % (where,))
    out.append(b"*%d\r\n" % len(args))
    for i, arg in enumerate(args):
        t = type(arg)
        if t is bytes:
            b = arg
        elif t is str:
            b = arg.encode()
        elif t is int:
            b = b"%d" % arg
        elif t is float:
            b = repr(arg).encode()
        elif t is bytearray or t is memoryview:
            b = bytes(arg)
        elif isinstance(arg, bool):
            raise _bad_arg(where, i, arg)
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            b = bytes(arg)
        elif isinstance(arg, str):
            b = str(arg).encode()
        elif isinstance(arg, int):
            b = b"%d" % int(arg)
        elif isinstance(arg, float):
            b = repr(float(arg)).encode()
        else:
            raise _bad_arg(where, i, arg)
        if len(b) <= _INLINE_MAX:
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        else:
            out.append(b"$%d\r\n" % len(b))
            out.append(b)
            out.append(b"\r\n")


# The packed name of a command (``b"$3\r\nGET\r\n"``) by its str name: most programs
# send a handful of names, so one dict lookup replaces an encode and a format.
_NAMES: Dict[str, bytes] = {}
_NAMES_MAX = 512


def _name_piece(name: str) -> bytes:
    b = name.encode()
    piece = b"$%d\r\n%s\r\n" % (len(b), b)
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[name] = piece
    return piece


def pack_command(args: Sequence[ArgType]) -> bytes:
    """Encode one command, e.g. ``pack_command(["SET", "k", 1])``.

    ``str`` is encoded as UTF-8, ``int`` as its decimal digits, ``float`` as
    ``repr()``.  Anything else (``None``, ``bool``, containers) is a
    ``TypeError`` naming its position; an empty command is a ``ValueError``.
    """
    # The common shape first: a list whose name is a str and whose other arguments are
    # short str or bytes (the same bytes as _pack_into; anything else goes there).
    if type(args) is list and args:
        name = args[0]
        if type(name) is str:
            head = _NAMES.get(name)
            if head is None:
                head = _name_piece(name)
            n = len(args)
            if n == 2:
                b = args[1]
                t = type(b)
                if t is str:
                    b = b.encode()
                    t = bytes
                if t is bytes and len(b) <= _INLINE_MAX:
                    return b"*2\r\n%s$%d\r\n%s\r\n" % (head, len(b), b)
            elif n == 3:
                b = args[1]
                c = args[2]
                t = type(b)
                if t is str:
                    b = b.encode()
                    t = bytes
                u = type(c)
                if u is str:
                    c = c.encode()
                    u = bytes
                if t is bytes and u is bytes and len(b) <= _INLINE_MAX and len(c) <= _INLINE_MAX:
                    return b"*3\r\n%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                        head, len(b), b, len(c), c)
            elif n == 1:
                return b"*1\r\n" + head
    out: List[Any] = []
    _pack_into(out, args, "")
    return b"".join(out)


def pack_commands(commands: Iterable[Sequence[ArgType]]) -> bytes:
    """Encode many commands into one buffer (a pipeline); ``b""`` for none."""
    if isinstance(commands, (str, bytes, bytearray, memoryview)) or not hasattr(
        commands, "__iter__"
    ):
        raise TypeError(
            'pack_commands() takes a list of commands, like [["GET", "k"], ["INCR", "n"]], not %s'
            % (type(commands).__name__,)
        )
    out: List[Any] = []
    for i, command in enumerate(commands):
        if not isinstance(command, (list, tuple)):
            raise TypeError(
                "commands[%d] is %s (%.40r): pack_commands() takes a list of commands, each a list "
                'like ["GET", "k"]; for a single command use pack_command()'
                % (i, type(command).__name__, command)
            )
        _pack_into(out, command, "commands[%d]: " % i)
    return b"".join(out)


_BAD_MAX = "max_reply_size must be a positive number of bytes, not %r"
_GARBAGE = "RESP protocol error: %s at %r; the stream cannot be trusted"
_LONG_LINE = "Redis reply line of %d bytes without CRLF exceeds max_reply_size=%d"
_TOO_BIG = (
    "Redis reply %s of %d exceeds max_reply_size=%d; raise max_reply_size if this is expected"
)
_UNUSABLE = (
    "this RESP reader hit a protocol error earlier (%s) and cannot continue; close the connection"
)
_UNDECODABLE = (
    "a Redis reply is not valid %s (%s); "
    "use decode_responses=False for binary values or encoding_errors='replace'"
)
_UNHASHABLE = (
    "RESP3 map with a key Python cannot hash (an array or map); "
    "this reply cannot be represented as a dict"
)

# -- decoding replies: the pure reader ----------------------------------------------

_SKIP: Any = object()  # a finished attribute: not a value


def _finish(top: List[Any]) -> Any:
    """Turn a completed aggregate frame ``[items, count, type]`` into its value."""
    items, _, t = top
    if t == 37:  # %
        it = iter(items)
        try:
            return dict(zip(it, it))
        except TypeError:
            raise RemoteProtocolError(_UNHASHABLE) from None
    if t == 124:  # |
        return _SKIP
    if t == 62:  # >
        return Push(items)
    return items


class Reader:
    """Pure-Python RESP2/RESP3 reply parser (see the module docstring)."""

    def __init__(
        self,
        *,
        max_reply_size: int = DEFAULT_MAX_REPLY_SIZE,
        decode_responses: bool = False,
        encoding: str = "utf-8",
        encoding_errors: str = "strict",
        resp3: bool = False,
    ) -> None:
        # resp3: accepted for HiredisReader's interface; this reader always knows a
        # push and an attribute by their type byte.
        if max_reply_size < 1:
            raise ValueError(_BAD_MAX % (max_reply_size,))
        "x".encode(encoding)  # fail now on an unknown encoding, not at the first reply
        self.max_reply_size = max_reply_size
        self.decode_responses = decode_responses
        self.encoding = encoding
        self.encoding_errors = encoding_errors
        self._buf = bytearray()
        self._pos = 0  # start of the first element not yet consumed
        self._hint = 0  # where to resume looking for CRLF after a short line
        self._stack: List[List[Any]] = []  # open aggregates: [items, expected, type byte]
        self._bad: Optional[str] = None  # why a value of the reply being read was undecodable

    def __repr__(self) -> str:
        return "<%s buffered=%d depth=%d%s>" % (
            type(self).__name__,
            len(self._buf) - self._pos,
            len(self._stack),
            " decode=%s" % self.encoding if self.decode_responses else "",
        )

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Append received bytes."""
        pos = self._pos
        if pos:
            del self._buf[:pos]  # O(1) in CPython: moves the bytearray's start
            self._pos = 0
            if self._hint:
                self._hint -= pos
        self._buf += data

    def unparsed(self) -> bytes:
        """The bytes fed and not yet returned as a reply (call it between replies)."""
        if self._stack:
            raise ValueError("unparsed() in the middle of a reply")
        return bytes(self._buf[self._pos :])

    def _unusable(self, *args: Any) -> None:
        raise RemoteProtocolError(_UNUSABLE % (self._error,))

    def _fail(self, exc: Exception) -> None:
        self._error = str(exc)
        # poison the reader: every later call raises
        self.feed = self.gets = self._unusable  # type: ignore[method-assign,assignment]
        self._buf = bytearray()
        self._pos = self._hint = 0
        self._stack = []
        raise exc

    def _garbage(self, pos: int, what: str) -> None:
        line = bytes(self._buf[pos : pos + 40])
        self._fail(RemoteProtocolError(_GARBAGE % (what, line)))

    def _too_big(self, what: str, n: int) -> None:
        self._fail(LimitExceeded(_TOO_BIG % (what, n, self.max_reply_size)))

    def _decode(self, data: Any) -> Any:
        try:
            return data.decode(self.encoding, self.encoding_errors)
        except UnicodeDecodeError as e:
            # keep reading the reply, so the stream stays in step; it becomes an error
            if self._bad is None:
                self._bad = _UNDECODABLE % (self.encoding, e)
            return None

    def gets(self) -> Any:
        """The next complete reply, or :data:`NOT_ENOUGH`."""
        buf = self._buf
        pos = self._pos
        stack = self._stack
        decode = self.decode_responses
        start = self._hint or pos
        self._hint = 0
        while True:
            end = buf.find(b"\r\n", start)
            if end < 0:
                self._pos = pos
                if len(buf) - pos > self.max_reply_size:
                    self._fail(LimitExceeded(_LONG_LINE % (len(buf) - pos, self.max_reply_size)))
                self._hint = max(len(buf) - 1, pos)
                return NOT_ENOUGH
            t = buf[pos]
            if t == 36 or t == 61 or t == 33:  # $ bulk, = verbatim, ! bulk error
                s = buf[pos + 1 : end]
                if s.isdigit():
                    n = int(s)
                    if n > self.max_reply_size:
                        self._too_big("bulk length", n)
                    begin = end + 2
                    stop = begin + n
                    if stop + 2 > len(buf):
                        self._pos = pos
                        return NOT_ENOUGH
                    if buf[stop] != 13 or buf[stop + 1] != 10:
                        self._garbage(stop, "no CRLF after a %d-byte bulk payload" % n)
                    if t == 36:
                        if decode:
                            value = self._decode(buf[begin:stop])
                        elif n > 4096:
                            with memoryview(buf) as mv:
                                value = mv[begin:stop].tobytes()
                        else:
                            value = bytes(buf[begin:stop])
                    elif t == 61:
                        if n < 4 or buf[begin + 3] != 58:
                            self._garbage(pos, "verbatim string without its 3-byte format and ':'")
                        body = buf[begin + 4 : stop]
                        value = self._decode(body) if decode else bytes(body)
                    else:
                        value = error_reply(buf[begin:stop].decode("utf-8", "replace"))
                    pos = stop + 2
                elif s == b"-1" and t != 33:
                    value = None
                    pos = end + 2
                else:
                    self._garbage(pos, "bad bulk length")
            elif t == 43:  # + simple string
                value = self._decode(buf[pos + 1 : end]) if decode else bytes(buf[pos + 1 : end])
                pos = end + 2
            elif t == 58:  # : integer
                s = buf[pos + 1 : end]
                if not (s.isdigit() or (s[:1] == b"-" and s[1:].isdigit())):
                    self._garbage(pos, "bad integer")
                value = int(s)
                pos = end + 2
            elif t == 42 or t == 37 or t == 126 or t == 62 or t == 124:  # * % ~ > |
                s = buf[pos + 1 : end]
                if s.isdigit():
                    n = int(s)
                    if n > self.max_reply_size:
                        self._too_big("element count", n)
                    pos = end + 2
                    if n:
                        stack.append([[], n * 2 if t == 37 or t == 124 else n, t])
                        start = pos
                        continue
                    if t == 124:  # an empty attribute: nothing to attach
                        start = pos
                        continue
                    value = {} if t == 37 else Push() if t == 62 else []
                elif s == b"-1":
                    value = None
                    pos = end + 2
                else:
                    self._garbage(pos, "bad aggregate length")
            elif t == 45:  # - error
                value = error_reply(buf[pos + 1 : end].decode("utf-8", "replace"))
                pos = end + 2
            elif t == 95:  # _ null
                if end != pos + 1:
                    self._garbage(pos, "bad null")
                value = None
                pos = end + 2
            elif t == 35:  # # boolean
                s = buf[pos + 1 : end]
                if s == b"t":
                    value = True
                elif s == b"f":
                    value = False
                else:
                    self._garbage(pos, "bad boolean")
                pos = end + 2
            elif t == 44:  # , double
                s = buf[pos + 1 : end]
                try:
                    if not s or s[0] in b" \t" or s[-1] in b" \t" or b"_" in s:
                        raise ValueError
                    value = float(s)
                except ValueError:
                    self._garbage(pos, "bad double")
                pos = end + 2
            elif t == 40:  # ( big number
                s = buf[pos + 1 : end]
                # s is a bytearray, which compares equal to bytes by content
                if not (s.isdigit() or (s[:1] in (b"-", b"+") and s[1:].isdigit())):  # type: ignore[comparison-overlap]
                    self._garbage(pos, "bad big number")
                value = self._decode(s) if decode else bytes(s)
                pos = end + 2
            else:
                self._garbage(pos, "unknown reply type byte %r" % (bytes((t,)),))
            # One element is complete: hand it to its aggregate, or return it.
            while stack:
                top = stack[-1]
                items = top[0]
                items.append(value)
                if len(items) < top[1]:
                    break
                stack.pop()
                try:
                    value = _finish(top)
                except RemoteProtocolError as e:
                    self._fail(e)  # unusable from here on, as for garbage: never resume mid-reply
                if value is _SKIP:
                    break  # an attribute: the element it describes follows
            else:
                self._pos = pos
                if self._bad is not None:
                    value = _undecodable(value, self._bad)
                    self._bad = None
                return value
            start = pos


def _undecodable(value: Any, why: str) -> Any:
    """What a reply with an undecodable value becomes: an error in its place (a push
    stays a push, so it never reaches a caller)."""
    if type(value) is Push:
        return Push([ReplyDecodeError(why)])
    return ReplyDecodeError(why)


# -- decoding replies: hiredis ---------------------------------------------------------

# HiredisReader logs fed bytes for replay/scanning; past this many bytes since the
# last reply boundary it stops logging for replay, and starts scanning lengths.
_LOG_CAP = 1024 * 1024

_AGGREGATES = frozenset(b"*%~>|")
_PAIRS = frozenset(b"%|")
_BULKS = frozenset(b"$!=")


class _LengthScanner:
    """Walks RESP headers only, skipping payloads, to check declared lengths.

    Starts at a reply boundary.  ``scan(chunk)`` raises ``LimitExceeded`` for
    an oversized length (the caller has not passed the chunk on yet).  After
    it, ``done`` counts the replies completed since the start, and ``tail`` is
    the bytes of this chunk after the last reply boundary (``None`` when the
    chunk holds no boundary): the caller can restart from there.  With
    ``kinds`` (a deque), the type byte of every reply completed is appended to
    it (an attribute counts as a reply of its own, as hiredis returns it).
    """

    __slots__ = ("limit", "buf", "skip", "stack", "done", "tail", "kinds", "top")

    def __init__(self, limit: int, kinds: Optional[Deque[int]] = None) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.skip = 0  # payload bytes (with their CRLF) still to pass over
        self.stack: List[int] = []  # elements still expected per open aggregate
        self.done = 0
        self.tail: Optional[bytes] = None
        self.kinds = kinds
        self.top = 0  # type byte of the reply being walked

    def scan(self, chunk: bytes) -> None:
        stack = self.stack
        self.tail = None
        boundary = -1 if stack or self.skip else 0  # last reply boundary in buf
        if self.skip:
            if len(chunk) < self.skip:
                self.skip -= len(chunk)
                return
            chunk = chunk[self.skip :]
            self.skip = 0
            while stack:  # the skipped bulk was an element
                stack[-1] -= 1
                if stack[-1]:
                    break
                stack.pop()
            else:
                self.done += 1
                boundary = 0
                if self.kinds is not None:
                    self.kinds.append(self.top)
        buf = self.buf
        buf += chunk
        pos = 0
        limit = self.limit
        size = len(buf)
        while pos < size:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if size - pos > limit:
                    raise LimitExceeded(_LONG_LINE % (size - pos, limit))
                break
            t = buf[pos]
            if not stack:
                self.top = t
            if t in _BULKS or t in _AGGREGATES:
                s = buf[pos + 1 : end]
                if s.isdigit():
                    n = int(s)
                elif s == b"-1":
                    n = -1
                else:
                    raise RemoteProtocolError(_GARBAGE % ("bad length", bytes(buf[pos : pos + 40])))
                if n > limit:
                    what = "bulk length" if t in _BULKS else "element count"
                    raise LimitExceeded(_TOO_BIG % (what, n, limit))
                pos = end + 2
                if t in _AGGREGATES:
                    if n > 0:
                        stack.append(n * 2 if t in _PAIRS else n)
                        continue
                elif n >= 0:
                    if pos + n + 2 > size:
                        self.skip = pos + n + 2 - size
                        pos = size
                        break
                    pos += n + 2
            else:
                pos = end + 2
            while stack:
                stack[-1] -= 1
                if stack[-1]:
                    break
                stack.pop()
            else:
                self.done += 1
                boundary = pos
                if self.kinds is not None:
                    self.kinds.append(self.top)
        if boundary >= 0:
            self.tail = bytes(buf[boundary:])
        del buf[:pos]


class HiredisReader:
    """:class:`Reader`'s interface and reply mapping over ``hiredis.Reader``.

    See the module docstring for how it checks ``max_reply_size``, how it tells
    pushes and attributes apart (``resp3=True``) and how it falls back to the
    pure reader for what hiredis cannot read.
    """

    def __init__(
        self,
        *,
        max_reply_size: int = DEFAULT_MAX_REPLY_SIZE,
        decode_responses: bool = False,
        encoding: str = "utf-8",
        encoding_errors: str = "strict",
        resp3: bool = False,
    ) -> None:
        if _hiredis is None:
            raise ImportError("HiredisReader needs the hiredis package: pip install hiredis")
        if max_reply_size < 1:
            raise ValueError(_BAD_MAX % (max_reply_size,))
        "x".encode(encoding)
        self.max_reply_size = max_reply_size
        self.decode_responses = decode_responses
        self.encoding = encoding
        self.encoding_errors = encoding_errors
        self.resp3 = resp3
        kw: Dict[str, Any] = {
            "protocolError": RemoteProtocolError,
            "replyError": error_reply,
            "notEnoughData": NOT_ENOUGH,
        }
        if decode_responses:
            kw["encoding"] = encoding
            kw["errors"] = encoding_errors
        try:
            self._reader = _hiredis.Reader(**kw)
        except TypeError:  # too old for notEnoughData; False would be ambiguous with RESP3 #f
            raise ImportError(
                "HiredisReader needs a hiredis with notEnoughData (>= 2.1): pip install -U hiredis"
            ) from None
        self._has_data = self._reader.has_data
        self._scan_at = min(max_reply_size, _LOG_CAP)
        # Bytes fed since the base (a reply boundary), for replay; None past _LOG_CAP.
        self._chunks: Optional[List[bytes]] = []
        self._logged = 0  # bytes fed since the base
        self._returned = 0  # frames hiredis returned since the base (< 0: base is ahead)
        self._dropped = 0  # of those, attributes (which the pure reader never returns)
        self._checked = 0  # chunks of _chunks already searched for long lengths
        self._scanner: Optional[_LengthScanner] = None
        # A type byte followed by as many digits as the limit has: maybe a length over it.
        digits = len(str(max_reply_size))
        self._long = re.compile(rb"[$*%%~>|=!]\d{%d}" % digits).search
        self._long_aggregate = re.compile(rb"[*%%~>|]\d{%d}" % digits).search
        self._overlap = digits + 1  # a header may straddle two chunks
        self._edge = b""  # the last _overlap bytes fed
        self._error = ""

    def __repr__(self) -> str:
        return "<%s logged=%d scanning=%s%s>" % (
            type(self).__name__,
            self._logged,
            self._scanner is not None,
            " decode=%s" % self.encoding if self.decode_responses else "",
        )

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Append received bytes."""
        chunk = data if type(data) is bytes else bytes(data)
        logged = self._logged = self._logged + len(chunk)
        chunks = self._chunks
        if chunks is not None:
            if logged <= _LOG_CAP:
                chunks.append(chunk)
            else:
                self._chunks = None
        if (
            logged > self._scan_at
            or self._scanner is not None
            or (self.resp3 and (b">" in chunk or b"|" in chunk))
            # hiredis allocates an aggregate's list when it reads its header: a count
            # over the limit must be caught before hiredis sees it (memchr-speed tests;
            # the regex runs only when an aggregate type byte is there)
            or ((self._edge or b"*" in chunk or b"%" in chunk or b"~" in chunk
                 or b">" in chunk or b"|" in chunk) and self._long_aggregate_in(chunk))
        ):
            self._scan(chunk, chunks, logged <= _LOG_CAP)
        # a line cut at the chunk's end may be a header: kept to search with the next chunk
        self._edge = b"" if chunk[-1:] == b"\n" else chunk[-self._overlap :]
        self._reader.feed(chunk)

    def _long_aggregate_in(self, chunk: bytes) -> bool:
        """May ``chunk`` (with the end of the previous one) declare a count over the limit?"""
        if self._edge and self._long_aggregate(self._edge + chunk[: self._overlap]) is not None:
            return True
        return self._long_aggregate(chunk) is not None

    def _scan(self, chunk: bytes, chunks: Optional[List[bytes]], logged: bool) -> None:
        scanner = self._scanner
        try:
            if scanner is None:
                # Start at the base: that needs everything fed since, which is
                # logged (_scan_at <= _LOG_CAP), this chunk included.
                assert chunks is not None
                scanner = self._start(b"".join(chunks) if logged else b"".join(chunks + [chunk]))
            else:
                scanner.scan(chunk)
        except RemoteProtocolError as e:  # LimitExceeded too
            self._fail(e)
        tail = scanner.tail
        if tail is not None and len(tail) <= self._scan_at and scanner.kinds is None:
            # The stream is at a reply boundary again: rebase there, stop scanning.
            # (Not while telling pushes apart: the kinds must cover every reply.)
            self._chunks = [tail] if tail else []
            self._logged = len(tail)
            self._returned -= scanner.done
            self._dropped = self._checked = 0
            self._scanner = None

    def _start(self, data: bytes) -> _LengthScanner:
        """Walk everything since the base; from now on every chunk fed is walked too."""
        kinds: Optional[Deque[int]] = deque() if self.resp3 else None
        scanner = self._scanner = _LengthScanner(self.max_reply_size, kinds)
        scanner.scan(data)
        if kinds is not None:
            for _ in range(self._returned):  # already returned, before scanning began
                kinds.popleft()
        return scanner

    def _check_lengths(self) -> None:
        """hiredis wants more and nothing is walking headers: search the chunks of the
        partial reply not yet searched for a length that may be over the limit."""
        chunks = self._chunks
        if chunks is None:  # pragma: no cover - past _LOG_CAP the scanner runs
            return
        i = self._checked
        if i >= len(chunks):
            return
        self._checked = len(chunks)
        pieces = chunks[i:]
        if i:
            pieces.insert(0, chunks[i - 1][-self._overlap :])
        if self._long(b"".join(pieces) if len(pieces) > 1 else pieces[0]) is None:
            return
        try:  # maybe, or a payload that looks like it: walk the headers to know
            scanner = self._start(b"".join(chunks))
        except RemoteProtocolError as e:
            self._fail(e)
        tail = scanner.tail
        if tail is not None and len(tail) <= self._scan_at and scanner.kinds is None:
            self._chunks = [tail] if tail else []
            self._logged = len(tail)
            self._returned -= scanner.done
            self._dropped = 0
            self._checked = 1  # the tail was just walked
            self._scanner = None

    def _unusable(self, *args: Any) -> None:
        raise RemoteProtocolError(_UNUSABLE % (self._error,))

    def _fail(self, exc: Exception) -> NoReturn:
        self._error = str(exc)
        # poison the reader: every later call raises
        self.feed = self.gets = self._unusable  # type: ignore[method-assign,assignment]
        self._chunks = None
        self._reader = None  # type: ignore[assignment]  # never read again: feed/gets are swapped
        raise exc

    def gets(self) -> Any:
        """The next complete reply, or :data:`NOT_ENOUGH`."""
        while True:
            try:
                reply = self._reader.gets()
            except RemoteProtocolError as e:
                return self._fall_back(e)
            except UnicodeDecodeError as e:  # hiredis read the whole reply: still in step
                reply = ReplyDecodeError(_UNDECODABLE % (self.encoding, e))
            except TypeError:
                return self._fail(RemoteProtocolError(_UNHASHABLE))
            if reply is NOT_ENOUGH:
                # (has_data() cannot tell: hiredis consumes an aggregate's header at once)
                if self._chunks and self._scanner is None:
                    self._check_lengths()
                return reply
            scanner = self._scanner
            if self._has_data():
                self._returned += 1
            else:  # a clean boundary: nothing before it is needed any more
                self._chunks = []
                self._logged = 0
                self._returned = self._dropped = self._checked = 0
                self._scanner = None
            if scanner is not None and scanner.kinds is not None:
                kind = scanner.kinds.popleft()
                if kind == 62:  # >
                    return Push([reply] if type(reply) is ReplyDecodeError else reply)
                if kind == 124:  # | : an attribute, returned by hiredis as a reply of its own
                    if self._returned > 0:
                        self._dropped += 1
                    continue
            return reply

    def _fall_back(self, error: RemoteProtocolError) -> Any:
        """hiredis refused the stream: let the pure reader judge it, and keep it."""
        chunks = self._chunks
        if chunks is None or self._returned < 0:
            return self._fail(
                RemoteProtocolError(
                    "%s (hiredis cannot read this; more than %d bytes arrived since the last reply "
                    "boundary, too many to replay into the pure-Python reader)" % (error, _LOG_CAP)
                )
            )
        pure = Reader(
            max_reply_size=self.max_reply_size,
            decode_responses=self.decode_responses,
            encoding=self.encoding,
            encoding_errors=self.encoding_errors,
        )
        self._reader = None  # type: ignore[assignment]  # never read again: feed/gets are swapped
        self._chunks = None
        # Through lambdas: the pure reader swaps its own methods when it fails.
        self.feed = lambda data: pure.feed(data)  # type: ignore[method-assign]
        self.gets = lambda: pure.gets()  # type: ignore[method-assign]
        pure.feed(b"".join(chunks))
        for _ in range(self._returned - self._dropped):
            if pure.gets() is NOT_ENOUGH:  # pragma: no cover - the two readers disagree on framing
                self._error = "replay failed"
                self.feed = self.gets = self._unusable  # type: ignore[method-assign,assignment]  # poisoned
                raise error
        return pure.gets()


# -- choosing a backend ------------------------------------------------------------------

PARSERS = ("auto", "hiredis", "python")


def make_reader(parser: str = "auto", **kw: Any) -> Union[Reader, HiredisReader]:
    """A reader: ``"hiredis"``, ``"python"``, or ``"auto"`` (hiredis when installed)."""
    if parser == "auto":
        if _hiredis is not None:
            try:
                return HiredisReader(**kw)
            except ImportError:  # pragma: no cover - hiredis too old
                pass
        return Reader(**kw)
    if parser == "hiredis":
        return HiredisReader(**kw)
    if parser == "python":
        return Reader(**kw)
    choices = ", ".join(repr(p) for p in PARSERS)
    raise ValueError("parser must be one of %s, not %r" % (choices, parser))


__all__ = [
    "NOT_ENOUGH",
    "Push",
    "short_repr",
    "DEFAULT_MAX_REPLY_SIZE",
    "pack_command",
    "pack_commands",
    "Reader",
    "HiredisReader",
    "make_reader",
    "PARSERS",
]
