"""Load the configured rule set (placeholder until rule files land: no rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .route import NullRouter, Router

if TYPE_CHECKING:
    from gateway.config import Config


def load_router(config: Config) -> Router:
    return NullRouter()
