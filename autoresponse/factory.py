"""Build the configured responder: the auto-responder (it also queues agent notifications
and records bounces, so it is used even when `[autoresponse] enabled = false`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.intake.ports import Responder

if TYPE_CHECKING:
    from gateway.config import Config


def load_responder(config: Config) -> Responder:
    from .autoresponder import AutoResponder

    return AutoResponder(config)
