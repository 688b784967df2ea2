"""Auto-responses and outbound mail: templates, loop safety, outbox, DKIM.

The intake core calls a `Responder` inside the message's transaction once the ticket and
article are stored; it writes outbox rows and events there, never sends directly.
"""

from __future__ import annotations

from .responder import NullResponder, Responder, StoredMessage

__all__ = ["NullResponder", "Responder", "StoredMessage"]
