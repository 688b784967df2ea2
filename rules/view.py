"""The parts of one message that conditions look at, decoded and computed once per message.

Conditions see decoded text (encoded-word subjects, charset-decoded bodies), folded to
lower case for `contains`, and cut to `[rules] max_match_chars` characters so that no
condition, and no regex in particular, ever works on more text than that.
"""

from __future__ import annotations

from functools import cached_property

from gateway.mail.classify import Classification
from gateway.mail.envelope import Envelope
from gateway.mail.parse import ParsedMessage
from gateway.mail.verdict import NO_VERDICT, SenderVerdict


class MessageView:
    def __init__(
        self,
        msg: ParsedMessage,
        envelope: Envelope,
        classification: Classification,
        max_match_chars: int,
        verdict: SenderVerdict = NO_VERDICT,
    ) -> None:
        self.msg = msg
        self.verdict = verdict
        self.envelope = envelope
        self.labels = classification.labels
        self.limit = max_match_chars
        self._texts: dict[tuple[str, bool], tuple[str, ...]] = {}

    def texts(self, field: str, folded: bool = False) -> tuple[str, ...]:
        """The subject, the body or the values of a header ("header X-Name"), each cut to
        the limit and case-folded if asked; worked out once per message."""
        key = (field, folded)
        if key not in self._texts:
            if folded:
                found = tuple(t.casefold() for t in self.texts(field))
            elif field in ("subject", "body"):
                found = ((self.msg.subject if field == "subject" else self.msg.text)[: self.limit],)
            else:
                name = field.removeprefix("header ").lower()
                found = tuple(v[: self.limit] for v in self.msg.headers.get(name, ()))
            self._texts[key] = found
        return self._texts[key]

    @cached_property
    def from_address(self) -> str:
        return self.msg.from_address.lower()

    @cached_property
    def from_domain(self) -> str:
        return self.msg.from_domain.lower().rstrip(".")

    @cached_property
    def recipients(self) -> tuple[str, ...]:
        """Envelope recipients; without an envelope, the delivery headers and To/Cc."""
        if self.envelope.rcpt_tos:
            return tuple(a.lower() for a in self.envelope.rcpt_tos)
        h = self.msg.headers
        found = [v.strip().strip("<>").lower() for v in
                 h.get("delivered-to", ()) + h.get("x-original-to", ())]
        return tuple(dict.fromkeys([a for a in found if "@" in a] + list(self.msg.to)
                                   + list(self.msg.cc)))

    def values(self, field: str) -> tuple[str, ...]:
        """What an address or attachment glob is matched against (lower case)."""
        if field == "from":
            return (self.from_address,) if self.from_address else ()
        if field == "envelope_from":
            return (self.envelope.mail_from.lower(),) if self.envelope.mail_from else ()
        if field == "recipient":
            return self.recipients
        if field == "to":
            return self.msg.to
        if field == "cc":
            return self.msg.cc
        attribute = {"attachment_name": "filename", "attachment_type": "content_type"}[field]
        return tuple(getattr(a, attribute).lower() for a in self.msg.attachments)

    @property
    def size(self) -> int:
        return len(self.msg.raw)
