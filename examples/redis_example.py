"""RedisPool in an ad hoc script: many greenlets, few connections, one write per batch.

Run against a local server (or set REDIS_URL, e.g. redis://:secret@127.0.0.1:6379/0)::

    python examples/redis_example.py [greenlets] [commands_per_greenlet]

No monkey-patching is needed: greenpool uses gevent sockets itself.
"""
from __future__ import annotations

import os
import sys
import time

import gevent

from greenpool.redis import RedisPool, ResponseError, TransactionAborted


def main(argv: list) -> int:
    greenlets = int(argv[1]) if len(argv) > 1 else 50
    per_greenlet = int(argv[2]) if len(argv) > 2 else 200
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    counter = "greenpool:example:counter"

    with RedisPool(pool_size=4, url=url, client_name="greenpool-example") as rp:
        rp.command(["DEL", counter])

        def work(i: int) -> None:
            for _ in range(per_greenlet):
                rp.command(["INCR", counter])  # commands of all greenlets share 4 sockets

        started = time.perf_counter()
        gevent.joinall([gevent.spawn(work, i) for i in range(greenlets)], raise_error=True)
        elapsed = time.perf_counter() - started
        total = greenlets * per_greenlet
        print("%d INCRs from %d greenlets in %.3fs (%.0f commands/s); counter = %s"
              % (total, greenlets, elapsed, total / elapsed, rp.command(["GET", counter]).decode()))

        # a pipeline: one write, replies in order, error replies in place
        print("pipeline:", rp.pipeline([["INCR", counter], ["GET", counter], ["NOSUCHCOMMAND"]]))
        # a transaction: MULTI ... EXEC as one batch on one connection
        try:
            print("transaction:", rp.transaction([["INCR", counter], ["GET", counter]]))
        except TransactionAborted as e:
            print("transaction aborted:", e)
        try:
            rp.command(["LPUSH", counter, "x"])
        except ResponseError as e:
            print("error reply:", e)
        rp.noreply_command(["DEL", counter])  # CLIENT REPLY OFF ... ON
        print("info:", rp.info())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
