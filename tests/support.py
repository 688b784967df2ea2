"""Helpers shared by the tests (importable, unlike conftest fixtures)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, config_from_dict

FIXTURES = Path(__file__).parent / "fixtures"
MAIL = FIXTURES / "mail"

# CI sets this so a missing PostgreSQL/Postfix/Chromium fails the run instead of skipping.
REQUIRE_ENV = "TICKETGATE_REQUIRE_INTEGRATION"


def integration_missing(what: str) -> None:
    """Skip locally, fail in CI: an integration test must not silently not run there."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{what} is required ({REQUIRE_ENV}=1) but not available")
    pytest.skip(f"{what} not available")


def mail(name: str) -> bytes:
    return (MAIL / name).read_bytes()


DEFAULT_QUEUES: list[dict[str, Any]] = [
    {"name": "Support", "addresses": ["support@helpdesk.example"]},
    {"name": "Billing", "addresses": ["billing@helpdesk.example"],
     "follow_up_closed": "new-ticket"},
    {"name": "Sales", "addresses": ["sales@helpdesk.example"], "follow_up_closed": "reject"},
]


def make_config(base_dir: Path, db_url: str, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "database": {"url": db_url},
        "queues": DEFAULT_QUEUES,
        "intake": {"spool_dir": str(base_dir / "spool")},
        "rules": {"dir": str(base_dir / "rules")},
        "templates": {"dir": str(base_dir / "templates")},
        "pipe": {"handoff_socket": ""},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config_from_dict(data, source=str(base_dir / "test.toml"), base_dir=str(base_dir))


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0,
               diagnostics: Callable[[], str] = lambda: "") -> Any:
    """Poll `check` until it returns something true (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{diagnostics()}")


def toml_value(value: Any) -> str:
    """A TOML value for a test config: bool, number, string, list, inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))
