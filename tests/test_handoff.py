"""`ticketgate pipe` handing messages to a running daemon over LMTP (gateway/handoff.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.config import Config
from gateway.handoff import lmtp_payload, try_handoff
from gateway.intake.core import Intake
from gateway.mail.envelope import Envelope
from gateway.sysexits import EX_NOUSER, EX_OK, EX_TEMPFAIL
from tests.server_helpers import MESSAGE, RunningDaemon, daemon_config, short_socket_dir
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
    # Too big for the daemon (the pipe's own limit is larger): refused and recorded.
    roomy = dataclasses.replace(config, intake=dataclasses.replace(config.intake,
                                                                   max_message_size=10**6))
    assert try_handoff(roomy, MESSAGE + b"x" * 8000 + b"\r\n", ENV) == EX_OK
    with d.ctx.store.factory() as session:
        assert session.scalars(select(Event).where(Event.kind == "size-rejected")).one()

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
