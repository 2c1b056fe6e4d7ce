"""greenpool.http.h3.conn: the sans-IO adapter's own logic, without sockets.

The library's response-head check kept per distinct list of field names
(:func:`~greenpool.http.h3.conn.validate_response_headers`) must give qh3's answer for
every head, the first time and every later time: the same status, or the same error.

Resumption under loss: an :class:`~greenpool.http.h3.conn.H3Conn` and qh3's server side
exchange datagrams in memory on a virtual clock, with chosen datagrams dropped, so every
run is the same.  With a ticket allowing early data, a lost server datagram makes qh3 fail
every later send of that client; the adapter must close the connection then (not leave it
to its timeout), and without ``early_data`` the same losses must not hurt.
"""
from __future__ import annotations

import itertools
from typing import Any, List, Optional, Tuple

import pytest

pytest.importorskip("qh3")

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from qh3._hazmat import pull_quic_header  # noqa: E402
from qh3.h3 import connection as qh3_h3  # noqa: E402
from qh3.quic.configuration import QuicConfiguration  # noqa: E402
from qh3.quic.connection import QuicConnection  # noqa: E402

from greenpool.http.h3 import conn  # noqa: E402

NAMES = [b":status", b":path", b":authority", b":scheme", b":method", b":bogus", b"content-length",
         b"Content-Type", b"date", b"server", b"x-\xff", b"", b"set-cookie"]
VALUES = [b"200", b"204", b"2x0", b"", b" 200", b"099", b"localhost", b"/", b"https", b"v"]
heads = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=6)


def verdict(check, headers):
    try:
        return ("ok", check(list(headers)))
    except Exception as e:  # noqa: BLE001 - the error is the verdict
        return (type(e), str(e))


@settings(max_examples=400, deadline=None)
@given(heads)
@example([(b":status", b"200"), (b"content-length", b"4")])
@example([(b":status", b"2x0"), (b"content-length", b"4")])
@example([(b"content-length", b"4"), (b":status", b"200")])
@example([(b":status", b"200"), (b"Content-Type", b"v")])
def test_same_verdict_as_the_library_every_time(headers):
    expected = verdict(qh3_h3.validate_response_headers, headers)
    assert verdict(conn.validate_response_headers, headers) == expected
    assert verdict(conn.validate_response_headers, headers) == expected     # from what is kept


def test_kept_names_still_have_their_status_checked():
    conn._VALID_NAMES.clear()
    assert conn.validate_response_headers([(b":status", b"200"), (b"date", b"x")]) == 200
    assert (b":status", b"date") in conn._VALID_NAMES
    with pytest.raises(qh3_h3.MessageError, match="Invalid :status value b'2x0'"):
        conn.validate_response_headers([(b":status", b"2x0"), (b"date", b"y")])
    assert conn.validate_response_headers([(b":status", b"404"), (b"date", b"z")]) == 404


def test_refused_names_are_not_kept_and_the_set_is_bounded():
    conn._VALID_NAMES.clear()
    with pytest.raises(qh3_h3.MessageError):
        conn.validate_response_headers([(b":status", b"200"), (b"X-Up", b"1")])
    assert not conn._VALID_NAMES
    for i in range(300):
        conn.validate_response_headers([(b":status", b"200"), (b"x-%d" % i, b"1")])
    assert 0 < len(conn._VALID_NAMES) <= 256
    many = [(b":status", b"200")] + [(b"x-%d" % i, b"1") for i in range(70)]
    conn._VALID_NAMES.clear()
    assert conn.validate_response_headers(many) == 200
    assert not conn._VALID_NAMES            # over 64 names: checked, not kept


def test_the_library_itself_is_untouched():
    assert qh3_h3.validate_response_headers is conn._library_check
    assert qh3_h3.H3Connection._handle_request_or_push_frame.__globals__[
        "validate_response_headers"] is qh3_h3.validate_response_headers


# -- resumption under loss, sans-IO --

CLIENT_ADDR = ("127.0.0.1", 50000)
SERVER_ADDR = ("127.0.0.1", 4433)


class Pair:
    """One client H3Conn and the qh3 server connection it opens, in memory."""

    def __init__(self, tls: Any, tickets: dict) -> None:
        self.tls = tls
        self.tickets = tickets          # the server's: ticket label -> ticket (reusable)

    def _server(self, first: bytes) -> QuicConnection:
        cfg = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
        cfg.load_cert_chain(str(self.tls.cert_path), str(self.tls.key_path))
        return QuicConnection(configuration=cfg,
                              original_destination_connection_id=pull_quic_header(first, 0, 8)[3],
                              session_ticket_fetcher=self.tickets.get,
                              session_ticket_handler=lambda t: self.tickets.__setitem__(t.ticket, t))

    def handshake(self, ticket: Any = None, early_data: bool = False, drop_up=(), drop_down=(),
                  limit: float = 30.0) -> Tuple[str, conn.H3Conn, List[Any], float]:
        """Run until the client is ready (and holds a ticket), closed, or ``limit`` virtual
        seconds passed.  ``drop_up``/``drop_down``: indexes of the client's / server's
        datagrams lost.  Returns (outcome, client, tickets received, virtual time)."""
        got: List[Any] = []
        exchanges = 0
        c = conn.H3Conn("localhost", SERVER_ADDR, 0.0, verify=str(self.tls.ca_path),
                        ticket=ticket, on_ticket=got.append, early_data=early_data)
        server: Optional[QuicConnection] = None
        now, sent_up, sent_down = 0.0, 0, 0
        while True:
            moved = False
            for d in c.datagrams(now):
                if server is None:
                    server = self._server(d)
                if sent_up not in drop_up:
                    server.receive_datagram(d, CLIENT_ADDR, now)
                    moved = True
                sent_up += 1
            if server is not None:
                for d, _ in server.datagrams_to_send(now):
                    if sent_down not in drop_down:
                        c.receive([d], now)
                        moved = True
                    sent_down += 1
            if c.closed is not None:
                return "closed", c, got, now
            if c.ready and got:
                return "ready", c, got, now
            if moved:
                exchanges += 1
                if exchanges > 1000:     # a ping-pong that never ends
                    return "stuck", c, got, now
                continue
            due = [t for t in (c.timer(), server.get_timer() if server else None) if t is not None]
            if not due or min(due) > limit:
                return "stuck", c, got, now
            now = max(now, min(due))
            if c.timer() is not None and c.timer() <= now:
                c.on_timer(now)
            if server is not None and server.get_timer() is not None and server.get_timer() <= now:
                server.handle_timer(now)


@pytest.fixture(scope="module")
def ticket_pair(tls):
    """A pair and a ticket allowing early data from a first, lossless handshake."""
    pair = Pair(tls, {})
    outcome, c, got, _ = pair.handshake()
    assert outcome == "ready" and not c.resumed
    assert got[-1].max_early_data_size is not None
    return pair, got[-1]


# the first datagrams of each side lost, in every combination
LOSSES = [(up, down) for n_up in range(3) for up in itertools.combinations(range(2), n_up)
          for n_down in range(4) for down in itertools.combinations(range(3), n_down)]


@pytest.mark.parametrize("drop_up,drop_down", LOSSES)
def test_a_ticket_without_early_data_resumes_through_lost_datagrams(ticket_pair, drop_up, drop_down):
    pair, ticket = ticket_pair
    outcome, c, _, _ = pair.handshake(ticket, False, drop_up, drop_down)
    assert outcome == "ready", c.closed
    assert c.resumed and not c.early_data() and not c.zero_rtt


@pytest.mark.parametrize("drop_up,drop_down", LOSSES)
def test_with_early_data_a_library_send_failure_closes_at_once(ticket_pair, drop_up, drop_down):
    """qh3 2.1 fails every send of a 0-RTT client after some losses ("packet protection
    failed: missing OneRtt packet key").  The adapter closes the connection at that
    moment; it used to return no datagrams and say nothing, so the handshake sat until
    its timeout (the transport's ConnectTimeout)."""
    pair, ticket = ticket_pair
    outcome, c, _, _ = pair.handshake(ticket, True, drop_up, drop_down)
    assert outcome in ("ready", "closed")
    if outcome == "ready":
        assert c.resumed and c.early_data()
    else:
        assert "QUIC library error while sending" in c.closed


def test_some_early_data_loss_hits_the_library_failure(ticket_pair):
    """The case above is real: losing the server's first datagram is one that hits it in
    qh3 2.1.  A later qh3 is only reported (skipped): whether it still fails this way
    decides whether the guard may go, not whether greenpool works."""
    import qh3
    if not qh3.__version__.startswith("2.1."):
        pytest.skip("the send failure is known in qh3 2.1; check whether qh3 %s still has it"
                    % qh3.__version__)
    pair, ticket = ticket_pair
    outcome, c, _, _ = pair.handshake(ticket, True, (), (0,))
    assert outcome == "closed" and "missing OneRtt packet key" in c.closed
