"""Our loop marker: an HMAC of the message's Message-ID under the site secret.

Anyone can add an `X-Ticketgate-Loop` header to a mail; only we can compute its value,
so a message carrying a valid mark is our own mail coming back, and one carrying an
invalid mark is a forgery (ignored, and flagged). Pure: the secret is passed in.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "v1:"
# 128 bits of the SHA-256 HMAC, hex: plenty against guessing, short in a header.
_HEX_CHARS = 32


def _normal(message_id: str) -> bytes:
    return message_id.strip().strip("<>").encode("utf-8", "surrogateescape")


def loop_mark(secret: bytes, message_id: str) -> str:
    """The header value for our outgoing message with this Message-ID."""
    mac = hmac.new(secret, _normal(message_id), hashlib.sha256).hexdigest()
    return PREFIX + mac[:_HEX_CHARS]


def mark_is_valid(secret: bytes, message_id: str, value: str) -> bool:
    """True when `value` is the mark we would have written for this Message-ID."""
    if not message_id.strip():
        return False
    return hmac.compare_digest(loop_mark(secret, message_id).encode(),
                               value.strip().lower().encode("utf-8", "replace"))
