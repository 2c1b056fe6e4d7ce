"""The node pools of a Redis topology (Cluster, Sentinel): one RedisPool per node address.

What this owns: opening a node's pool once (two greenlets asking at the same time get the
same pool; one made while the topology was being stopped is stopped, never kept), retiring
the nodes that left the topology, the per-node ``info()``/``get_stats()``, and stopping them
all.  Which nodes exist and what each is for is the owner's business (:mod:`.cluster`,
:mod:`.sentinel`).
"""
from __future__ import annotations

from typing import Any, Callable, Container, Dict, Iterator, List, Tuple

from greenpool.errors import PoolClosed
from greenpool.redis.pool import RedisPool

Addr = Tuple[str, int]

__all__ = ["NodePools"]


class NodePools:
    """``{(host, port): RedisPool}`` of one topology pool named ``owner``."""

    __slots__ = ("owner", "what", "closed", "_pools")

    def __init__(self, owner: str, what: str) -> None:
        self.owner = owner
        self.what = what                # "the cluster pool": for PoolClosed's message
        self.closed = False
        self._pools: Dict[Addr, RedisPool] = {}

    def open(self, addr: Addr, make: Callable[[], RedisPool]) -> RedisPool:
        """The pool of ``addr``; ``make()`` builds it the first time (it may yield while it
        connects: whoever finished first wins, the other is stopped)."""
        p = self._pools.get(addr)
        if p is not None:
            return p
        if self.closed:
            raise PoolClosed(self.owner, "%s was stopped" % self.what)
        p = make()
        other = self._pools.get(addr)
        if other is not None or self.closed:   # made meanwhile, or stopped meanwhile
            p.stop()
            if other is None:
                raise PoolClosed(self.owner, "%s was stopped" % self.what)
            return other
        self._pools[addr] = p
        return p

    def retire(self, keep: Container[Addr]) -> List[Addr]:
        """Stop the pools of the nodes not in ``keep``; return their addresses."""
        gone = [a for a in self._pools if a not in keep]
        for a in gone:
            self._pools.pop(a).stop()
        return gone

    def stop(self) -> None:
        """Stop every node pool (their in-flight commands fail with PoolClosed); no new
        one opens after this."""
        self.closed = True
        pools, self._pools = list(self._pools.values()), {}
        for p in pools:
            p.stop()

    def copy(self) -> Dict[Addr, RedisPool]:
        return dict(self._pools)

    def info(self) -> Dict[str, Any]:
        return {"%s:%d" % a: p.info() for a, p in self._pools.items()}

    def stats(self) -> Dict[str, Dict[str, Any]]:
        return {"%s:%d" % a: p.get_stats() for a, p in self._pools.items()}

    def __len__(self) -> int:
        return len(self._pools)

    def __iter__(self) -> Iterator[Addr]:
        return iter(list(self._pools))
