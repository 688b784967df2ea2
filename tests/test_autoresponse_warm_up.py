"""warm_up() does the first answer's one-off work ahead, and nothing that could fail it."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoresponse import rows
from autoresponse.autoresponder import AutoResponder
from autoresponse.suppress import SENT_SINCE
from autoresponse.templates import EVENTS
from gateway.intake.ports import NullResponder
from gateway.runtime import Store
from tests.support import make_config
from ticketstore.statements import STATEMENTS


def test_warm_up_compiles_templates_and_statements(tmp_path: Path, store: Store,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Empty for this test: earlier tests compiled these statements already, which
    # would let the check below pass without warm_up() doing anything.
    monkeypatch.setattr(STATEMENTS, "_compiled", {})
    broken = tmp_path / "templates" / "vip" / "en" / "reject.txt"
    broken.parent.mkdir(parents=True)
    broken.write_text("{% if %}", encoding="utf-8")  # met by an answer later, not here
    config = make_config(tmp_path, str(store.engine.url.render_as_string(False)),
                         templates={"dir": str(tmp_path / "templates"),
                                    "overrides": {"bigcorp.example": "vip"}})
    responder = AutoResponder(config)
    with store.engine.connect() as conn:
        responder.warm_up(conn)
        dialect = conn.dialect.name
    resolved = set(responder.templates._resolved)
    assert {("default", e) for e in EVENTS} <= resolved
    assert {("vip", e) for e in EVENTS if e != "reject"} <= resolved
    compiled = set(STATEMENTS._compiled)
    assert {(dialect, n) for n in (rows.OUTBOX, SENT_SINCE)} <= \
        compiled


def test_null_responder_warm_up_is_harmless(store: Store) -> None:
    with store.engine.connect() as conn:
        NullResponder().warm_up(conn)
