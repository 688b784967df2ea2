"""The parsed message the intake, the rules and the auto-responder read."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class ParsedMessage:
    """What the rest of the intake needs to know about a message, already decoded."""

    raw: bytes
    message_id: str  # without angle brackets; "" when the message has none
    subject: str
    from_name: str
    from_address: str
    reply_to: tuple[str, ...]
    to: tuple[str, ...]
    cc: tuple[str, ...]
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str
    html: str
    attachments: tuple[Attachment, ...]
    # Header names lower-cased -> list of decoded values, in message order.
    headers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    content_type: str = "text/plain"
    defects: tuple[str, ...] = ()
    # Its own header block was longer than mimetree.MAX_HEADER_BYTES: fields were not read.
    head_cut: bool = False

    def header(self, name: str) -> str:
        """First value of a header, decoded, or ''."""
        values = self.headers.get(name.lower(), ())
        return values[0] if values else ""

    def has_header(self, name: str) -> bool:
        return name.lower() in self.headers

    @property
    def from_domain(self) -> str:
        return self.from_address.rpartition("@")[2].lower()
