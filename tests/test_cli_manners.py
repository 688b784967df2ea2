"""The CLI behaves like a Unix tool an admin can trust (issue 17, "CLI manners";
issue 15.7, control characters): no database made by a read in the wrong folder, quiet
end on a closed pipe, -c anywhere, errors that name files and valid values, pasted
ticket numbers, who changed what, and no terminal escapes from mail in human output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from gateway.cli import main
from gateway.config import load_config
from gateway.intake.core import Intake
from gateway.mail.envelope import Envelope
from gateway.runtime import open_store
from tests.pipe_helpers import ROOT, write_config
from tests.support import mail
from ticketstore.models import Event, OutboxMessage, Ticket


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse and load_or_exit
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def site(tmp_path: Path, sqlite_url: str) -> tuple[Path, str]:
    """A config with one ticket; returns (config path, ticket number)."""
    config = write_config(tmp_path, sqlite_url)
    loaded = load_config(str(config), env={})
    store = open_store(loaded)
    intake = Intake(loaded, store.factory)
    intake.sync_queues()
    number = intake.process(mail("new_ticket_de.eml"),
                            Envelope("x@customer.example", ("support@helpdesk.example",))
                            ).ticket_number
    store.dispose()
    assert number
    return config, number


def _cli(cwd: Path, *argv: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "gateway", *argv], cwd=cwd, env=env,
                            stdout=stdout, stderr=subprocess.PIPE)


@pytest.mark.parametrize("argv", [("tickets", "list"), ("tickets", "show", "1"),
                                  ("outbox", "list")])
def test_a_read_without_config_says_so_and_creates_no_database(
        tmp_path: Path, argv: tuple[str, ...]) -> None:
    proc = _cli(tmp_path, *argv)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    text = err.decode()
    assert "using the built-in defaults" in text
    assert f"no database at {tmp_path / 'var' / 'ticketgate.db'}" in text
    assert "Traceback" not in text
    assert not (tmp_path / "var").exists()


def test_output_into_a_closed_pipe_ends_quietly(site: tuple[Path, str]) -> None:
    config, _number = site
    with _cli(config.parent, "-c", str(config), "tickets", "list") as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader has gone, as after `| head -0`
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141
    assert err == ""


def test_config_after_the_command(site: tuple[Path, str],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    config, number = site
    code, out, err = _run(capsys, "tickets", "list", "-c", str(config))
    assert code == 0, err
    assert number in out


def test_a_missing_config_file_is_named(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "etc" / "x.toml"
    code, _out, err = _run(capsys, "-c", str(missing), "tickets", "list")
    assert code == 78
    assert err.strip() == f"ticketgate: config error: {missing}: no such file"


def test_unknown_queue_names_the_valid_ones(site: tuple[Path, str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config, _number = site
    code, _out, err = _run(capsys, "-c", str(config), "tickets", "list", "--queue", "Nope")
    assert code == 1
    assert "unknown queue 'Nope'" in err and "Support" in err
    code, _out, err = _run(capsys, "-c", str(config), "tickets", "list", "--state", "gone")
    assert code == 2 and "'closed'" in err and "'open'" in err


@pytest.mark.parametrize("limit", ["0", "-5", "ten"])
def test_limit_must_be_positive(site: tuple[Path, str], capsys: pytest.CaptureFixture[str],
                                limit: str) -> None:
    config, _number = site
    code, _out, err = _run(capsys, "-c", str(config), "tickets", "list", "--limit", limit)
    assert code == 2 and "--limit" in err


@pytest.mark.parametrize("pasted", ["[Ticket#{n}]", "Ticket#{n}", "Ticket#: {n}", " {n} "])
def test_a_pasted_ticket_number_is_accepted(site: tuple[Path, str],
                                            capsys: pytest.CaptureFixture[str],
                                            pasted: str) -> None:
    config, number = site
    code, out, err = _run(capsys, "-c", str(config), "tickets", "show",
                          pasted.format(n=number), "--json")
    assert code == 0, err
    assert json.loads(out)["number"] == number


def test_a_cli_change_names_the_unix_user(site: tuple[Path, str],
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config, number = site
    monkeypatch.setenv("SUDO_USER", "carol")
    code, _out, err = _run(capsys, "-c", str(config), "tickets", "set", number, "--state",
                           "open")
    assert code == 0, err
    _run(capsys, "-c", str(config), "tickets", "show", number, "--json")
    store = open_store(load_config(str(config), env={}))
    with store.factory() as session:
        detail = session.execute(select(Event.detail).where(
            Event.kind == "state-changed")).scalar_one()
    store.dispose()
    assert detail == {"from": "new", "to": "open", "by": "carol", "via": "cli"}


def test_outbox_list_shows_ticket_numbers(site: tuple[Path, str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config, number = site
    store = open_store(load_config(str(config), env={}))
    with store.factory() as session, session.begin():
        tid = session.execute(select(Ticket.id).where(Ticket.number == number)).scalar_one()
        session.execute(insert(OutboxMessage).values(
            ticket_id=tid, kind="auto-reply", rcpt_to="x@customer.example",
            message_id="m@helpdesk.example", message=b"x"))
    store.dispose()
    code, out, err = _run(capsys, "-c", str(config), "outbox", "list")
    assert code == 0, err
    assert "TICKET" in out.splitlines()[0] and number in out.splitlines()[1]
    code, out, _err = _run(capsys, "-c", str(config), "outbox", "list", "--json")
    assert json.loads(out)[0]["ticket"] == number


def test_terminal_escapes_from_mail_are_shown_not_obeyed(
        site: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    config, number = site
    title = "\x1b]0;owned\x07\x1b[31mred\u202egnp.exe"
    store = open_store(load_config(str(config), env={}))
    with store.factory() as session, session.begin():
        session.execute(update(Ticket).values(title=title, customer_name="Eve\x1b[2J"))
    store.dispose()
    for argv in (("tickets", "list"), ("tickets", "show", number)):
        code, out, err = _run(capsys, "-c", str(config), *argv)
        assert code == 0, err
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
        assert "\\x1b]0;owned\\x07" in out
    assert "\\u202e" in _run(capsys, "-c", str(config), "tickets", "show", number)[1]
    code, out, _err = _run(capsys, "-c", str(config), "tickets", "show", number, "--json")
    assert json.loads(out)["title"] == title  # JSON stays exact
