"""Keys an older ticketgate read: a config that still sets one starts, with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config import load_config


@pytest.mark.parametrize("engine", ["native", "aiosmtpd"])
def test_lmtp_engine_is_ignored_with_a_deprecation_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, engine: str,
) -> None:
    path = tmp_path / "ticketgate.toml"
    path.write_text(f'[lmtp]\nengine = "{engine}"\nworkers = 2\n')
    with caplog.at_level(logging.WARNING, logger="ticketgate.config"):
        config = load_config(str(path), env={})
    assert config.lmtp.workers == 2, "the rest of the section still applies"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "lmtp.engine is deprecated and ignored" in record.getMessage()
    assert str(path) in record.getMessage()
