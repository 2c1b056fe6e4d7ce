"""A UDP relay on 127.0.0.1 that drops a fraction of the datagrams each way, in its own process.

    python -m benchmarks.udprelay UPSTREAM_PORT LOSS [SEED]

Prints the port it listens on (one line), then relays: each client address gets its own
socket connected to ``127.0.0.1:UPSTREAM_PORT``; every datagram, either way, is dropped with
probability ``LOSS`` (a seeded ``random.Random``: the same drops every run).  It exits when its
standard input closes (the suite that started it stopped or died).

A process apart, not a greenlet in the client under test: the relay's work then does not
count against the client's CPU.  The suite runs one that drops nothing, so the loss cell is
compared with the same path without loss (:mod:`benchmarks.catalog`, ``greenpool-h3-relay``).
"""
from __future__ import annotations

import random
import selectors
import socket
import sys
from typing import Dict, List, Tuple

BATCH = 256           # datagrams read from one socket before looking at the others
BUFFER = 4 << 20      # socket buffers: bursts of a C=50 run fit


def _socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
        except OSError:
            pass
    s.setblocking(False)
    return s


def relay(upstream_port: int, loss: float, seed: int = 7) -> None:
    rand = random.Random(seed)
    upstream = ("127.0.0.1", upstream_port)
    front = _socket()
    front.bind(("127.0.0.1", 0))
    sel = selectors.DefaultSelector()
    sel.register(front, selectors.EVENT_READ, None)
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    routes: Dict[Tuple[str, int], socket.socket] = {}
    print(front.getsockname()[1], flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":
                if not sys.stdin.buffer.read1(4096):  # type: ignore[union-attr]
                    return
                continue
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            client = key.data
            for _ in range(BATCH):
                try:
                    data, addr = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:       # an ICMP error from the upstream: nothing to relay
                    break
                if client is None:    # from a client: towards the server
                    up = routes.get(addr)
                    if up is None:
                        up = routes[addr] = _socket()
                        up.connect(upstream)
                        sel.register(up, selectors.EVENT_READ, addr)
                    if rand.random() >= loss:
                        try:
                            up.send(data)
                        except OSError:
                            pass
                elif rand.random() >= loss:   # from the server: back to its client
                    try:
                        front.sendto(data, client)
                    except OSError:
                        pass


def main(argv: List[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    relay(int(argv[0]), float(argv[1]), int(argv[2]) if len(argv) == 3 else 7)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
