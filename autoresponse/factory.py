"""Build the configured responder (placeholder until auto-responses land: none)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .responder import NullResponder, Responder

if TYPE_CHECKING:
    from gateway.config import Config


def load_responder(config: Config) -> Responder:
    return NullResponder()
