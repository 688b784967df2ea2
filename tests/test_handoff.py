"""`ticketgate pipe` handing messages to a running daemon over LMTP (gateway/handoff.py)."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.config import Config, load_config
from gateway.handoff import lmtp_payload, try_handoff
from gateway.intake.core import Intake
from gateway.mail.envelope import Envelope
from gateway.pipe import read_message
from gateway.sysexits import EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from tests.pipe_helpers import ticketgate, write_config
from tests.server_helpers import MESSAGE, RunningDaemon, daemon_config, short_socket_dir
from tests.support import wait_until
from ticketstore.models import Article, Event, Ticket

ENV = Envelope("alice@customer.example", ("support@helpdesk.example",))


def test_lmtp_payload_normalises_line_ends_and_stuffs_dots() -> None:
    assert lmtp_payload(b"a\n.b\r\n..c\nend") == b"a\r\n..b\r\n...c\r\nend\r\n.\r\n"
    assert lmtp_payload(b".\n") == b"..\r\n.\r\n"


@pytest.fixture
def handoff(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[RunningDaemon, Config]]:
    sock = short_socket_dir() / "lmtp.sock"
    config = daemon_config(tmp_path, sqlite_url, pipe={"handoff_socket": str(sock)},
                           intake={"strict_recipients": True, "max_message_size": 4096})
    d = RunningDaemon(config).start()
    try:
        yield d, config
    finally:
        d.stop()


def test_a_handed_off_message_is_stored_by_the_daemon(
    handoff: tuple[RunningDaemon, Config],
) -> None:
    d, config = handoff
    lf_message = MESSAGE.replace(b"\r\n", b"\n") + b".starts with a dot\n"
    assert try_handoff(config, lf_message, ENV) == EX_OK
    assert d.count(Ticket) == 1
    with d.ctx.store.factory() as session:
        raw = session.scalars(select(Article.raw).where(Article.direction == "in")).one()
    assert raw == lf_message.replace(b"\n", b"\r\n")
    # The same message piped again is a duplicate: exit 0, no second ticket.
    assert try_handoff(config, lf_message, ENV) == EX_OK
    assert d.count(Ticket) == 1


def test_handoff_maps_refusals_and_failures(handoff: tuple[RunningDaemon, Config]) -> None:
    d, config = handoff
    unknown = Envelope("a@customer.example", ("nobody@helpdesk.example",))
    assert try_handoff(config, MESSAGE, unknown) == EX_NOUSER
    mixed = Envelope("a@customer.example", ("nobody@helpdesk.example",
                                            "support@helpdesk.example"))
    assert try_handoff(config, MESSAGE, mixed) == EX_OK
    # Too big for the daemon (the pipe's own limit is larger): the daemon refuses and
    # records it, but the pipe decided it fits, so it never exits 0 on that refusal: it
    # stores the message itself (None), or defers with require_daemon.
    roomy = dataclasses.replace(config, intake=dataclasses.replace(config.intake,
                                                                   max_message_size=10**6))
    assert try_handoff(roomy, MESSAGE + b"x" * 8000 + b"\r\n", ENV) is None

    def refusals() -> list[Event]:
        with d.ctx.store.factory() as session:
            return list(session.scalars(select(Event).where(Event.kind == "size-rejected")))

    # The 552 does not wait for the refusal's record (gateway/server/size_refusals.py).
    assert len(wait_until("the refusal to be recorded", refusals, timeout=10)) == 1
    roomy_required = dataclasses.replace(roomy, pipe=dataclasses.replace(
        roomy.pipe, require_daemon=True))
    assert try_handoff(roomy_required, MESSAGE + b"x" * 8000 + b"\r\n", ENV) == EX_TEMPFAIL

    class Buggy(Intake):
        def prepare(self, raw: bytes, envelope: Any) -> Any:
            raise RuntimeError("bug")

    d.ctx.intake = Buggy(d.ctx.config, d.ctx.store.factory)
    other = MESSAGE.replace(b"app-1@", b"app-2@")
    assert try_handoff(config, other, ENV) == EX_TEMPFAIL


def test_no_daemon_means_in_process_unless_required(tmp_path: Path, sqlite_url: str) -> None:
    config = daemon_config(tmp_path, sqlite_url,
                           pipe={"handoff_socket": str(short_socket_dir() / "none.sock")})
    assert try_handoff(config, MESSAGE, ENV) is None
    required = dataclasses.replace(config, pipe=dataclasses.replace(config.pipe,
                                                                    require_daemon=True))
    assert try_handoff(required, MESSAGE, ENV) == EX_TEMPFAIL
    # Without a recipient LMTP cannot carry it: in-process (or 75 when required).
    assert try_handoff(config, MESSAGE, Envelope("a@b.example", ())) is None
    assert try_handoff(required, MESSAGE, Envelope("a@b.example", ())) == EX_TEMPFAIL


PIPE_WITHOUT_THE_STORE = """
import sys
from gateway.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("sqlalchemy", "mailparser", "gateway.intake.core") if m in sys.modules)
print("heavy:", ",".join(heavy))
sys.exit(rc)
"""


def test_ticketgate_pipe_uses_the_daemon_without_importing_the_store(
    handoff: tuple[RunningDaemon, Config], tmp_path: Path,
) -> None:
    d, config = handoff
    cfg = tmp_path / "pipe.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/unused.db"\n'
                   f'[pipe]\nhandoff_socket = "{config.pipe.handoff_socket}"\n')
    out = subprocess.run(
        [sys.executable, "-c", PIPE_WITHOUT_THE_STORE, "-c", str(cfg), "pipe",
         "-f", "alice@customer.example", "-r", "support@helpdesk.example"],
        input=MESSAGE.replace(b"\r\n", b"\n"), capture_output=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == b"heavy:"
    assert d.count(Ticket) == 1
    assert not (tmp_path / "unused.db").exists()


# -- sizes and recipient counts the daemon takes differently from the pipe (issue 15) ----


@pytest.fixture
def piped(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[RunningDaemon, Path]]:
    """A running daemon, and a config file for `ticketgate pipe` that hands off to it."""
    sock = short_socket_dir() / "lmtp.sock"
    path = write_config(tmp_path, sqlite_url, pipe={"handoff_socket": str(sock)},
                        lmtp={"listen": ["127.0.0.1:0"]},
                        intake={"max_message_size": 100_000})
    d = RunningDaemon(load_config(str(path))).start()
    try:
        yield d, path
    finally:
        d.stop()


def inbound_articles(d: RunningDaemon) -> list[Article]:
    with d.ctx.store.factory() as session:
        return list(session.scalars(select(Article).where(Article.direction == "in")))


def test_a_message_under_the_limit_is_stored_although_crlf_makes_it_larger(
    piped: tuple[RunningDaemon, Path],
) -> None:
    """88,130 bytes with LF line ends, 100,000 allowed: the hand-off's CRLF makes it
    100,130 bytes on the wire; the daemon must store it (it was dropped with exit 0)."""
    d, path = piped
    head = MESSAGE.replace(b"\r\n\r\n", b"\n\n").replace(b"\r\n", b"\n")
    raw = head + b"x\n" * ((88_130 - len(head)) // 2)
    assert len(raw) == 88_130 and len(lmtp_payload(raw)) > 100_000
    r = ticketgate(path, "pipe", "-f", "alice@customer.example", "-r", "support@helpdesk.example",
                   stdin=raw)
    assert r.returncode == EX_OK, r.stderr
    (article,) = inbound_articles(d)
    assert article.raw == raw.replace(b"\n", b"\r\n")  # stored by the daemon, not in-process
    assert d.count(Ticket) == 1
    with d.ctx.store.factory() as session:
        kinds = session.scalars(select(Event.kind)).all()
    assert "size-rejected" not in kinds and "created" in kinds
    # One byte over the limit as the user has it: the pipe bounces it (issue 17).
    big = head + b"x" * (100_001 - len(head))
    r = ticketgate(path, "pipe", "-f", "alice@customer.example", "-r", "support@helpdesk.example",
                   stdin=big)
    assert r.returncode == EX_UNAVAILABLE and r.stderr.startswith(b"5.3.4 "), r.stderr
    assert len(inbound_articles(d)) == 1


RECIPIENTS = tuple(f"user{i}@helpdesk.example" for i in range(1500))


def test_more_recipients_than_one_lmtp_transaction_takes_are_all_recorded(
    piped: tuple[RunningDaemon, Path],
) -> None:
    """The daemon answers 452 beyond 1,000 recipients; the pipe used to drop the rest."""
    d, path = piped
    args = [a for r in RECIPIENTS for a in ("-r", r)]
    r = ticketgate(path, "pipe", "-f", "alice@customer.example", *args, stdin=MESSAGE)
    assert r.returncode == EX_OK, r.stderr
    (article,) = inbound_articles(d)
    assert article.envelope_recipients == list(RECIPIENTS)
    assert article.raw == MESSAGE


def test_require_daemon_hands_off_many_recipients_in_batches(
    handoff: tuple[RunningDaemon, Config],
) -> None:
    d, config = handoff
    required = dataclasses.replace(config, pipe=dataclasses.replace(config.pipe,
                                                                    require_daemon=True),
                                   intake=dataclasses.replace(config.intake,
                                                              strict_recipients=False))
    d.ctx.intake = Intake(required, d.ctx.store.factory)
    assert try_handoff(required, MESSAGE, Envelope("alice@customer.example", RECIPIENTS)) == EX_OK
    # Two transactions: the message is stored once, the second batch is its duplicate.
    assert d.count(Ticket) == 1
    (article,) = inbound_articles(d)
    assert article.envelope_recipients == list(RECIPIENTS[:1000])


def test_a_sender_that_is_not_utf8_is_stored_in_process(
    piped: tuple[RunningDaemon, Path],
) -> None:
    """The daemon refuses such a MAIL FROM (553 5.1.7) for good; the pipe stores it."""
    d, path = piped
    sender = b"caf\xe9@customer.example".decode("utf-8", "surrogateescape")  # as argv has it
    r = ticketgate(path, "pipe", "-f", sender, "-r", "support@helpdesk.example", stdin=MESSAGE)
    assert r.returncode == EX_OK, r.stderr
    (article,) = inbound_articles(d)
    assert article.raw == MESSAGE
    assert article.envelope_sender == "caf\\xe9@customer.example"


def test_require_daemon_has_the_daemon_record_an_oversize_message(
    piped: tuple[RunningDaemon, Path], tmp_path: Path,
) -> None:
    """The pipe refuses it itself (69, 5.3.4) and the daemon records it: the pipe does not
    open the database it may not write."""
    d, _path = piped
    cfg = tmp_path / "required.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/unused.db"\n'
                   f'[pipe]\nhandoff_socket = "{d.config.pipe.handoff_socket}"\n'
                   'require_daemon = true\n[intake]\nmax_message_size = 100000\n')
    r = ticketgate(cfg, "pipe", "-f", "alice@customer.example", "-r", "support@helpdesk.example",
                   stdin=MESSAGE + b"x" * 150_000 + b"\r\n")
    assert r.returncode == EX_UNAVAILABLE and r.stderr.startswith(b"5.3.4 "), r.stderr
    with d.ctx.store.factory() as session:
        (event,) = session.scalars(select(Event).where(Event.kind == "size-rejected"))
    assert event.detail["size"] > 150_000 and event.detail["mail_from"] == "alice@customer.example"
    assert not (tmp_path / "unused.db").exists()


def test_read_message_counts_line_ends_as_one_byte() -> None:
    crlf = b"ab\r\n" * 1000  # 4,000 bytes, 3,000 as the limit counts them
    assert read_message(io.BytesIO(crlf), 3000) == crlf
    assert len(read_message(io.BytesIO(crlf + b"x"), 3000)) > 3000
    # A CRLF split between two reads is still one line end.
    halves = io.BufferedReader(io.BytesIO(b"a\r\nb"), buffer_size=2)
    assert read_message(halves, 3) == b"a\r\nb"
