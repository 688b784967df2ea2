"""What one client may cost the daemon: connections, buffered bytes, event rows, replies.

A real in-process server, spoken to with raw sockets: `[lmtp] max_connections` answers
421 4.3.2 past the limit while the admitted sessions go on, DATA is buffered only up to
the size limit, a client repeating an oversize MAIL adds to one counted event row per
sender and hour, `SIZE=` takes ASCII digits only, and replies never carry a client's
control bytes.
"""

from __future__ import annotations

import datetime as dt
import socket
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.config import ConfigError, config_from_dict
from gateway.intake.size_events import SizeRejection, record_size_rejections
from gateway.server.protocol import printable
from gateway.status.queries import event_counts
from tests.server_helpers import MESSAGE, Raw, RunningDaemon, daemon_config, prepare_database
from tests.support import wait_until
from ticketstore.models import Event, Ticket

SUPPORT = "support@helpdesk.example"
LIMIT = 64 * 1024


@pytest.fixture
def running(tmp_path: Path, db_url: str) -> Iterator[RunningDaemon]:
    prepare_database(db_url)
    d = RunningDaemon(daemon_config(tmp_path, db_url, lmtp={"max_connections": 3},
                                    intake={"max_message_size": LIMIT})).start()
    try:
        yield d
    finally:
        d.stop()


def _size_events(d: RunningDaemon) -> list[Event]:
    with d.ctx.store.factory() as session:
        return list(session.scalars(select(Event).where(Event.kind == "size-rejected")
                                    .order_by(Event.id)))


# -- connections -----------------------------------------------------------------------------


def test_past_max_connections_a_connection_gets_421_and_the_others_are_served(
    running: RunningDaemon,
) -> None:
    admitted = [Raw(running.port) for _ in range(3)]
    try:
        refused = [Raw(running.port, greeting="421 4.3.2") for _ in range(5)]
        for client in refused:
            assert client.closed()
            client.close()
        # The admitted sessions go on as if nothing happened.
        client = admitted[0]
        client.send(f"LHLO c\r\nMAIL FROM:<a@customer.example>\r\nRCPT TO:<{SUPPORT}>\r\n"
                    "DATA\r\n".encode())
        assert [r[:3] for r in client.replies(4)] == ["250", "250", "250", "354"]
        client.send(MESSAGE + b".\r\n")
        assert client.replies(1)[0].startswith("250 2.0.0")
        assert running.count(Ticket) == 1
        assert running.ctx.counters["server.connections_refused"] == 5
        admitted.pop().close()

        def admitted_again() -> bool:
            probe = socket.create_connection(("127.0.0.1", running.port), timeout=10)
            with probe, probe.makefile("rb") as replies:
                return replies.readline().startswith(b"220 ")

        wait_until("a freed slot to be given to a new connection", admitted_again, timeout=10)
    finally:
        for client in admitted:
            client.close()


def test_data_is_buffered_only_up_to_the_size_limit(running: RunningDaemon) -> None:
    """8 MB against a 64 KiB limit: the session drops what is past it as it arrives."""
    client = Raw(running.port)
    line = b"x" * 1000 + b"\r\n"
    tracemalloc.start()
    try:
        client.send(f"LHLO c\r\nMAIL FROM:<a@customer.example>\r\nRCPT TO:<{SUPPORT}>\r\n"
                    "DATA\r\n".encode())
        assert [r[:3] for r in client.replies(4)] == ["250", "250", "250", "354"]
        client.send(MESSAGE)
        for _ in range(8):
            client.send(line * 1000)
        client.send(b".\r\n")
        reply = client.replies(1)[0]
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        client.close()
    assert reply.startswith("552 5.3.4")
    assert peak < 2 * 1024 * 1024, f"{peak} bytes allocated at the peak"
    (event,) = wait_until("the refusal's event", lambda: _size_events(running), timeout=10)
    assert event.detail["size"] >= 8 * 1000 * len(line)


# -- size-rejected events --------------------------------------------------------------------


def test_a_repeated_oversize_mail_from_is_one_counted_event_per_sender(
    running: RunningDaemon,
) -> None:
    client = Raw(running.port)
    try:
        client.send(b"LHLO c\r\n" + b"MAIL FROM:<> SIZE=999999999999\r\n" * 300
                    + b"MAIL FROM:<x@spam.example> SIZE=999999999999\r\n" * 5 + b"NOOP\r\n")
        got = client.replies(1 + 305 + 1)
    finally:
        client.close()
    assert all(r.startswith("552 5.3.4") for r in got[1:306]), set(got[1:306])
    assert got[-1].startswith("250 ")

    def both_counted() -> list[Event] | None:
        found = _size_events(running)
        return found if sum(e.occurrences for e in found) == 305 else None

    events = wait_until("the refusals to be counted", both_counted, timeout=20)
    assert [(e.detail["mail_from"], e.occurrences) for e in events] == [
        ("", 300), ("x@spam.example", 5)]
    assert events[0].detail["size"] == 999999999999
    with running.ctx.store.engine.connect() as conn:
        counts = event_counts(conn, ["size-rejected"], dt.datetime.now(dt.UTC))
    assert counts["size-rejected"]["hour"] == 305, "the status page counts occurrences"


def test_refusals_are_counted_per_sender_and_hour(tmp_path: Path, db_url: str) -> None:
    from gateway.runtime import open_store
    from tests.support import make_config

    store = open_store(make_config(tmp_path, db_url))
    at = dt.datetime(2026, 12, 7, 10, 5, tzinfo=dt.UTC)
    try:
        with store.engine.begin() as conn:
            record_size_rejections(conn, [SizeRejection("a@x.example", 10, 5, ["s@h.example"])],
                                   at)
            record_size_rejections(conn, [SizeRejection("a@x.example", 30, 5, ["t@h.example"],
                                                        count=2)], at.replace(minute=59))
            record_size_rejections(conn, [SizeRejection("a@x.example", 20, 5)],
                                   at.replace(hour=11))
        with store.factory() as session:
            rows = session.scalars(select(Event).order_by(Event.id)).all()
    finally:
        store.dispose()
    assert [(r.occurrences, r.detail["size"], r.detail["rcpt_to"]) for r in rows] == [
        (3, 30, ["s@h.example", "t@h.example"]), (1, 20, [])]
    assert "last_at" in rows[0].detail and "last_at" not in rows[1].detail


def test_past_the_senders_of_an_hour_the_others_share_one_row(tmp_path: Path,
                                                               db_url: str) -> None:
    from gateway.intake.size_events import OTHER_SENDERS, SENDERS_PER_HOUR
    from gateway.runtime import open_store
    from tests.support import make_config

    store = open_store(make_config(tmp_path, db_url))
    at = dt.datetime(2026, 12, 7, 10, 5, tzinfo=dt.UTC)
    senders = [f"s{i}@rotating.example" for i in range(SENDERS_PER_HOUR + 7)]
    try:
        with store.engine.begin() as conn:
            record_size_rejections(conn, [SizeRejection(s, 10, 5) for s in senders], at)
            record_size_rejections(conn, [SizeRejection(senders[0], 10, 5)], at)  # has a row
        with store.factory() as session:
            rows = session.scalars(select(Event).order_by(Event.id)).all()
    finally:
        store.dispose()
    assert len(rows) == SENDERS_PER_HOUR + 1
    assert [r.detail["mail_from"] for r in rows] == [*senders[:SENDERS_PER_HOUR], OTHER_SENDERS]
    assert rows[0].occurrences == 2 and rows[-1].occurrences == 7
    assert sum(r.occurrences for r in rows) == len(senders) + 1


# -- protocol mends --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["²", "٣", "１２", "12x", ""])
def test_a_size_that_is_not_ascii_digits_is_501_not_451(running: RunningDaemon,
                                                        value: str) -> None:
    client = Raw(running.port)
    try:
        client.send(f"LHLO c\r\nMAIL FROM:<a@customer.example> SIZE={value}\r\n"
                    "NOOP\r\n".encode())
        got = client.replies(3)
    finally:
        client.close()
    assert got[1].startswith("501 5.5.4"), got
    assert got[2].startswith("250 ")


def test_replies_do_not_echo_control_bytes(running: RunningDaemon) -> None:
    client = Raw(running.port)
    try:
        client.send(b"\x1b]0;owned\x07X\x00Y\x1b[2J\r\nNOOP\r\n")
        unknown = client.file.readline()
        noop = client.file.readline()
    finally:
        client.close()
    assert unknown.startswith(b"500 5.5.2") and unknown.endswith(b"\r\n")
    assert not any(b < 0x20 or b == 0x7F for b in unknown[:-2]), unknown
    assert b"X?Y" in unknown
    assert noop.startswith(b"250 ")


def test_printable_keeps_the_lines_of_a_multiline_reply() -> None:
    assert printable("250-a\x1bb\r\n250 c\x00") == "250-a?b\r\n250 c?"


@pytest.mark.parametrize(("lmtp", "key"), [
    ({"max_connections": 0}, "lmtp.max_connections"),
    ({"heartbeat_interval": 0}, "lmtp.heartbeat_interval"),
    ({"heartbeat_interval": 1.0, "heartbeat_timeout": 2.0}, "lmtp.heartbeat_timeout"),
])
def test_bad_limits_are_config_errors_naming_the_key(lmtp: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"lmtp": lmtp}, source="tg.toml")
    assert caught.value.key == key


def test_a_line_past_the_stream_limit_is_answered_once_per_recipient(
    running: RunningDaemon,
) -> None:
    """aiosmtpd answers that by itself, once: an LMTP client would wait for the rest."""
    client = Raw(running.port)
    try:
        client.send(f"LHLO c\r\nMAIL FROM:<a@customer.example>\r\nRCPT TO:<{SUPPORT}>\r\n"
                    f"RCPT TO:<billing@helpdesk.example>\r\nDATA\r\n".encode())
        assert [r[:3] for r in client.replies(5)] == ["250", "250", "250", "250", "354"]
        client.send(MESSAGE + b"y" * (200 * 1024) + b"\r\n.\r\nNOOP\r\n")
        got = client.replies(3)
    finally:
        client.close()
    assert [r[:9] for r in got] == ["500 5.5.2", "500 5.5.2", "250 2.0.0"], got
