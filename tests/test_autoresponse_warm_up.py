"""warm_up() does the first answer's one-off work ahead, and nothing that could fail it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoresponse.autoresponder import AutoResponder
from autoresponse.templates import EVENTS, sample_context
from gateway.intake.ports import NullResponder
from gateway.runtime import Store
from tests.support import make_config


def test_warm_up_loads_the_templates_and_survives_a_broken_one(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = tmp_path / "templates" / "vip" / "en" / "reject.txt"
    broken.parent.mkdir(parents=True)
    broken.write_text("{% if %}", encoding="utf-8")  # met by an answer later, not here
    config = make_config(tmp_path, str(store.engine.url.render_as_string(False)),
                         templates={"dir": str(tmp_path / "templates"),
                                    "overrides": {"bigcorp.example": "vip"}})
    responder = AutoResponder(config)
    loader = responder.templates.env.loader
    assert loader is not None
    loaded: list[str] = []
    real = loader.get_source

    def counting(env: Any, name: str) -> Any:
        source = real(env, name)  # TemplateNotFound for a name no folder has
        loaded.append(name)
        return source

    monkeypatch.setattr(loader, "get_source", counting)
    with store.engine.connect() as conn:
        responder.warm_up(conn)
    assert {f"default/en/{e}.txt" for e in EVENTS} <= set(loaded)
    assert "vip/en/reject.txt" in loaded
    loaded.clear()
    for tset in ("default", "vip"):
        for event in EVENTS:
            if (tset, event) != ("vip", "reject"):
                responder.templates.render(tset, event, sample_context())
    assert loaded == []  # all compiled already


def test_null_responder_warm_up_is_harmless(store: Store) -> None:
    with store.engine.connect() as conn:
        NullResponder().warm_up(conn)
