"""Lua scripts: ``rp.register_script(src)`` -> :class:`Script`, run by its SHA1.

What this owns: the EVALSHA-first, EVAL-on-NOSCRIPT rule, wherever a script
runs.

* ``script(keys=[...], args=[...])`` sends ``EVALSHA sha numkeys keys... args...``;
  when Redis answers ``NOSCRIPT`` (it never saw the script, or ``SCRIPT FLUSH``
  / a restart / a failover forgot it) it sends ``EVAL`` with the source once,
  which also loads it: the next call is an EVALSHA again.  NOSCRIPT means the
  script did not run, so nothing runs twice.
* ``script.command(keys, args)`` is that EVALSHA as a :class:`ScriptCommand`
  (a ``list``), for ``pipeline()``: the pool sends the batch as usual and then
  re-sends every entry that came back NOSCRIPT as EVAL, in one more batch, in
  their order, so those scripts run *after* the rest of that pipeline (a
  pipeline is not atomic either way).  ``transaction()`` and
  ``watch_transaction()`` cannot re-send one command of a MULTI, so they send
  a ScriptCommand as EVAL (the source travels each time; atomic).
* ``script(..., client=conn)`` runs on any object with ``command(args)``,
  e.g. the dedicated connection inside ``watch_transaction``'s ``fn``.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Union

from greenpool.errors import ResponseError

if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    class _Commands(Protocol):
        def command(self, args: Sequence[Any], timeout: Optional[float] = ...) -> Any: ...


def is_noscript(reply: Any) -> bool:
    """Is ``reply`` (or an error's text) Redis's NOSCRIPT error?"""
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")


class ScriptCommand(List[Any]):
    """``["EVALSHA", sha, numkeys, *keys, *args]`` that knows its :class:`Script`."""

    __slots__ = ("script",)

    def __init__(self, script: "Script", items: List[Any]) -> None:
        super().__init__(items)
        self.script = script

    def eval_command(self) -> List[Any]:
        """The same call as ``EVAL source numkeys keys... args...``."""
        return ["EVAL", self.script.source] + self[2:]


class Script:
    """A Lua script registered with :meth:`RedisPool.register_script` (see the module
    docstring).  ``sha`` is the hex SHA1 Redis knows it by."""

    __slots__ = ("pool", "source", "sha")

    def __init__(self, pool: "_Commands", source: Union[str, bytes]) -> None:
        if not isinstance(source, (str, bytes)):
            raise TypeError("a script's source must be str or bytes, not %s" % type(source).__name__)
        self.pool = pool
        self.source = source
        raw = source.encode() if isinstance(source, str) else source
        self.sha = hashlib.sha1(raw).hexdigest()

    def command(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> ScriptCommand:
        """The EVALSHA command, e.g. for ``pipeline([script.command(["k"], [1]), ...])``."""
        return ScriptCommand(self, ["EVALSHA", self.sha, len(keys), *keys, *args])

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (),
                 client: Optional["_Commands"] = None, timeout: Optional[float] = None) -> Any:
        """Run it (EVALSHA, EVAL on NOSCRIPT) on the pool, or on ``client``."""
        target = self.pool if client is None else client
        cmd = self.command(keys, args)
        try:
            return target.command(cmd, timeout=timeout)
        except ResponseError as e:
            if not is_noscript(e):
                raise
        return target.command(cmd.eval_command(), timeout=timeout)

    def __repr__(self) -> str:
        return "<Script sha=%s>" % (self.sha,)


__all__ = ["Script", "ScriptCommand", "is_noscript"]
