"""Which commands may travel on RedisPool's shared connections, and what to use instead.

What this owns: :data:`REFUSED_ON_SHARED`, the table of commands that change the state of
the connection they run on, or turn it into a stream of replies nobody asked for, each
with the text naming what to use instead; and :func:`check_shared`, the check
``RedisPool.command`` / ``pipeline`` / ``transaction`` / ``noreply_*`` run before anything
is sent.

What it promises: a shared connection only carries request/reply traffic whose replies it
can match to their callers.  The check is one ``str.upper()`` and one dict lookup for every
command whose name is not CLIENT; CLIENT looks at its subcommand too.  Dedicated
connections (``rp.connection()``, ``rp.pubsub()``, ...) do not use this table.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

_PUBSUB = "use rp.pubsub(), which subscribes on a connection of its own"
_TX = ("use rp.transaction() for MULTI ... EXEC as one batch, or rp.watch_transaction() / "
       "rp.connection() for check-and-set")
_WATCH = "use rp.watch_transaction(keys, fn) or a dedicated connection: with rp.connection() as conn"
_REPLICATION = "replication streams need a connection of their own: use rp.connection()"

#: Command name (upper case) -> what to use instead.  Matched case-insensitively, as str
#: or bytes.  CLIENT is refused only with the subcommands in :data:`CLIENT_REFUSED`.
REFUSED_ON_SHARED: Dict[str, str] = {
    "SUBSCRIBE": _PUBSUB, "PSUBSCRIBE": _PUBSUB, "SSUBSCRIBE": _PUBSUB,
    "UNSUBSCRIBE": _PUBSUB, "PUNSUBSCRIBE": _PUBSUB, "SUNSUBSCRIBE": _PUBSUB,
    "MONITOR": "use rp.monitor(), which streams MONITOR lines on a connection of its own",
    "MULTI": _TX, "EXEC": _TX, "DISCARD": _TX,
    "WATCH": _WATCH, "UNWATCH": _WATCH,
    "SYNC": _REPLICATION, "PSYNC": _REPLICATION, "REPLCONF": _REPLICATION,
    "SELECT": "use RedisPool(db=N), or rp.connection() and SELECT on it",
    "RESET": "use rp.connection(), which is reset before anyone else gets it",
    "QUIT": "use rp.stop() (or let rp.connection() close its connection)",
    "HELLO": "use RedisPool(protocol=2|3, username=.., password=.., client_name=..)",
    "AUTH": "use RedisPool(password=.., username=..) or the URL's user:password",
}

#: CLIENT subcommand (upper case) -> what to use instead.  ``TRACKING`` is allowed when
#: the pool has a ``push_handler`` (the invalidations are pushes, given to it).
CLIENT_REFUSED: Dict[str, str] = {
    "TRACKING": ("invalidation messages are RESP3 pushes: use RedisPool(protocol=3, "
                 "push_handler=callable), or rp.connection()"),
    "REPLY": "use rp.noreply_command() / rp.noreply_pipeline()",
    "SETNAME": "use RedisPool(client_name=..), or rp.connection() and CLIENT SETNAME on it",
}

_REFUSED: Dict[Any, str] = {}
for _name, _why in REFUSED_ON_SHARED.items():
    _REFUSED[_name] = _REFUSED[_name.encode()] = _why
_REFUSED["CLIENT"] = _REFUSED[b"CLIENT"] = ""  # depends on the subcommand
_CLIENT: Dict[Any, str] = {}
for _name, _why in CLIENT_REFUSED.items():
    _CLIENT[_name] = _CLIENT[_name.encode()] = _why
_TRACKING = ("TRACKING", b"TRACKING")


def _s(x: Any) -> str:
    return x.decode("ascii", "replace") if isinstance(x, bytes) else str(x)


def check_shared(args: Sequence[Any], where: str = "", push_handler: bool = False) -> Any:
    """Raise ``ValueError`` naming what to use instead when ``args`` must not run on a
    shared connection.  ``push_handler``: the pool has one (CLIENT TRACKING allowed).

    Returns the command's name in upper case (None when it is not str/bytes), so the
    caller can tell a blocking command with one more lookup."""
    name = args[0]
    key = None
    if type(name) is str or type(name) is bytes:
        key = name.upper()
        if key in _REFUSED:
            why = _REFUSED[key]
            if why:
                raise ValueError("%s%s cannot be sent on RedisPool's shared connections: %s"
                                 % (where, _s(key), why))
            sub = args[1] if len(args) > 1 else None
            if type(sub) is str or type(sub) is bytes:
                sub = sub.upper()
                if sub in _CLIENT and not (push_handler and sub in _TRACKING):
                    raise ValueError("%sCLIENT %s cannot be sent on RedisPool's shared "
                                     "connections: %s" % (where, _s(sub), _CLIENT[sub]))
    return key


__all__ = ["REFUSED_ON_SHARED", "CLIENT_REFUSED", "check_shared"]
