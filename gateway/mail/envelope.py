"""The SMTP envelope a message arrived with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Envelope:
    """SMTP envelope. mail_from is "" for the null sender `<>`, None when unknown."""

    mail_from: str | None = None
    rcpt_tos: tuple[str, ...] = ()
