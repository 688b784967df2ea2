"""Hand a piped message to a running daemon over LMTP (placeholder until the server lands)."""

from __future__ import annotations

from .config import Config
from .envelope import Envelope


def try_handoff(config: Config, raw: bytes, envelope: Envelope) -> int | None:
    """The pipe's exit code if a daemon took the message, None to process in-process."""
    return None
