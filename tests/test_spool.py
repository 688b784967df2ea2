"""The quarantine spool: atomic writes, listing, reading back, removal, CLI on an empty spool."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.mail.envelope import Envelope
from gateway.spool import entries, failed_dir, quarantine
from tests.pipe_helpers import write_config
from tests.support import mail


def _boom() -> Exception:
    try:
        raise RuntimeError("bug in the parser")
    except RuntimeError as exc:
        return exc


def test_quarantine_writes_raw_and_error_beside_it(tmp_path: Path) -> None:
    raw = mail("duplicate_delivery_2.eml")  # CRLF, 8-bit: must come back unchanged
    path = quarantine(tmp_path, raw, Envelope("", ("support@helpdesk.example",)), _boom())
    assert path.parent == failed_dir(tmp_path) == tmp_path / "failed"
    assert path.suffix == ".eml"
    assert path.read_bytes() == raw
    meta = json.loads(path.with_suffix(".json").read_text("utf-8"))
    assert meta["mail_from"] == ""
    assert meta["rcpt_tos"] == ["support@helpdesk.example"]
    assert meta["error"] == "RuntimeError: bug in the parser"
    assert "Traceback (most recent call last)" in meta["traceback"]
    assert "_boom" in meta["traceback"]
    assert meta["quarantined_at"]
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, path.with_suffix(".json").name])  # no temp files left


def test_entries_read_back_and_remove(tmp_path: Path) -> None:
    first = quarantine(tmp_path, b"one", Envelope(None, ()), _boom())
    second = quarantine(tmp_path, b"two", Envelope("a@b.example", ("x@y.example",)), _boom())
    os.utime(first, (1_000_000, 1_000_000))  # oldest first, whatever the names
    items = entries(tmp_path)
    assert [e.path for e in items] == [first, second]
    by_raw = {e.read()[0]: e for e in items}
    _raw, env, meta = by_raw[b"two"].read()
    assert env == Envelope("a@b.example", ("x@y.example",))
    assert meta["error"].startswith("RuntimeError")
    _raw, env, _meta = by_raw[b"one"].read()
    assert env == Envelope(None, ())  # unknown sender stays unknown
    by_raw[b"one"].remove()
    assert [e.read()[0] for e in entries(tmp_path)] == [b"two"]
    assert not first.exists() and not first.with_suffix(".json").exists()


def test_entry_without_its_json_still_reads(tmp_path: Path) -> None:
    path = quarantine(tmp_path, b"raw", Envelope("a@b.example", ()), _boom())
    path.with_suffix(".json").unlink()
    raw, env, meta = entries(tmp_path)[0].read()
    assert (raw, env, meta) == (b"raw", Envelope(None, ()), {})


def test_same_message_failing_again_updates_its_entry(tmp_path: Path) -> None:
    a = quarantine(tmp_path, b"same", Envelope(None, ()), _boom())
    first = json.loads(a.with_suffix(".json").read_text())
    assert first["attempts"] == 1
    b = quarantine(tmp_path, b"same", Envelope("x@y.example", ()), KeyError("other bug"))
    assert a == b
    assert len(entries(tmp_path)) == 1
    meta = json.loads(b.with_suffix(".json").read_text())
    assert meta["attempts"] == 2
    assert meta["error"] == "KeyError: 'other bug'"
    assert meta["first_quarantined_at"] == first["quarantined_at"]
    assert quarantine(tmp_path, b"different", Envelope(None, ()), _boom()) != a
    assert len(entries(tmp_path)) == 2


def test_no_spool_folder_is_an_empty_spool(tmp_path: Path) -> None:
    assert entries(tmp_path / "missing") == []


def test_spool_commands_on_an_empty_spool(tmp_path: Path, sqlite_url: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config(tmp_path, sqlite_url))
    assert main(["-c", config, "spool", "list"]) == 0
    assert capsys.readouterr().out == "spool is empty\n"
    assert main(["-c", config, "spool", "replay"]) == 0
    assert "replayed 0 of 0" in capsys.readouterr().out


def test_replay_in_process_stores_and_empties_the_spool(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sqlite_url)
    spool = tmp_path / "spool"
    quarantine(spool, mail("new_ticket_de.eml"), Envelope("a@b.example",
               ("support@helpdesk.example",)), _boom())
    quarantine(spool, mail("missing_message_id.eml"), Envelope(None, ()), _boom())
    assert main(["-c", str(config), "spool", "replay"]) == 0
    out = capsys.readouterr().out
    assert out.count(": created ") == 2 and "replayed 2 of 2" in out
    assert entries(spool) == []
