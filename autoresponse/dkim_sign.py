"""DKIM-sign outgoing mail with dkimpy when `[outbound.dkim]` names a domain.

Signing happens at delivery, not when the message is queued, so a key rotation applies
to everything still in the outbox and intake never reads the key file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dkim

# Headers we sign: the ones a receiver shows or threads on, plus our loop markers.
SIGNED_HEADERS = (
    b"from", b"to", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
    b"mime-version", b"content-type", b"auto-submitted",
)


class DkimError(Exception):
    """The key cannot be read or the message cannot be signed."""


@dataclass(frozen=True)
class DkimSigner:
    domain: str
    selector: str
    key: bytes

    @classmethod
    def from_file(cls, domain: str, selector: str, key_file: Path) -> DkimSigner:
        try:
            key = key_file.read_bytes()
        except OSError as exc:
            raise DkimError(f"cannot read DKIM key {key_file}: {exc.strerror}") from None
        return cls(domain, selector, key)

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header prepended."""
        try:
            header = dkim.sign(
                message, self.selector.encode(), self.domain.encode(), self.key,
                canonicalize=(b"relaxed", b"relaxed"), include_headers=list(SIGNED_HEADERS),
            )
        except dkim.DKIMException as exc:
            raise DkimError(f"DKIM signing failed: {exc}") from None
        return header + message
