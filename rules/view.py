"""The parts of one message that conditions look at, decoded and computed once per message.

Conditions see decoded text (encoded-word subjects, charset-decoded bodies), folded to
lower case for `contains`, and cut to `[rules] max_match_chars` characters so that no
condition, and no regex in particular, ever works on more text than that.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from .authresults import dkim_result

if TYPE_CHECKING:
    from gateway.mail.classify import Classification
    from gateway.mail.envelope import Envelope
    from gateway.mail.parse import ParsedMessage


class MessageView:
    def __init__(
        self,
        msg: ParsedMessage,
        envelope: Envelope,
        classification: Classification,
        max_match_chars: int,
    ) -> None:
        self.msg = msg
        self.envelope = envelope
        self.classification = classification
        self.limit = max_match_chars
        self._headers: dict[str, tuple[str, ...]] = {}
        self._folded: dict[str, tuple[str, ...]] = {}

    def bounded(self, text: str) -> str:
        return text[: self.limit]

    @cached_property
    def subject(self) -> str:
        return self.bounded(self.msg.subject)

    @cached_property
    def subject_folded(self) -> str:
        return self.subject.casefold()

    @cached_property
    def body(self) -> str:
        return self.bounded(self.msg.text)

    @cached_property
    def body_folded(self) -> str:
        return self.body.casefold()

    def header_values(self, name: str) -> tuple[str, ...]:
        """Decoded values of header `name` (lower case), each cut to the limit."""
        found = self._headers.get(name)
        if found is None:
            found = self._headers[name] = tuple(
                self.bounded(v) for v in self.msg.headers.get(name, ()))
        return found

    def header_values_folded(self, name: str) -> tuple[str, ...]:
        found = self._folded.get(name)
        if found is None:
            found = self._folded[name] = tuple(v.casefold() for v in self.header_values(name))
        return found

    @cached_property
    def from_address(self) -> str:
        return self.msg.from_address.lower()

    @cached_property
    def from_domain(self) -> str:
        return self.msg.from_domain.lower().rstrip(".")

    @cached_property
    def envelope_from(self) -> str:
        return (self.envelope.mail_from or "").lower()

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

    def addresses(self, field: str) -> tuple[str, ...]:
        if field == "from":
            return (self.from_address,) if self.from_address else ()
        if field == "envelope_from":
            return (self.envelope_from,) if self.envelope_from else ()
        if field == "to":
            return self.msg.to
        if field == "cc":
            return self.msg.cc
        if field == "recipient":
            return self.recipients
        raise KeyError(field)  # pragma: no cover - fields are fixed at load

    @cached_property
    def size(self) -> int:
        return len(self.msg.raw)

    @cached_property
    def labels(self) -> frozenset[str]:
        return self.classification.labels

    @cached_property
    def dkim(self) -> str:
        return dkim_result(self.msg.headers.get("authentication-results", ()))
