"""The SMTP envelope a message arrived with."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})")


def address_text(address: str) -> str:
    """An envelope address as text every database stores, losslessly.

    Python keeps bytes that are not UTF-8 (in argv, in aiosmtpd's commands) as lone
    surrogates, which no database driver can encode: a message with such a sender failed
    on every retry. Each such byte is written `\\xNN` (lower-case hex) and, so that the
    form can be reversed (`address_bytes`), a backslash as `\\x5c`. Any other address,
    the ordinary case, is returned as it is.
    """
    if "\\" not in address and address.isascii():
        return address
    try:
        data = address.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte made
        data = address.encode("utf-8", "surrogatepass")
    return data.replace(b"\\", b"\\x5c").decode("utf-8", "backslashreplace")


def address_bytes(text: str) -> bytes:
    """The address bytes `address_text` made `text` from."""
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), text.encode("utf-8"))


@dataclass(frozen=True)
class Envelope:
    """SMTP envelope. mail_from is "" for the null sender `<>`, None when unknown."""

    mail_from: str | None = None
    rcpt_tos: tuple[str, ...] = ()

    def as_text(self) -> Envelope:
        """This envelope with its addresses in `address_text` form (itself if unchanged)."""
        mail_from = None if self.mail_from is None else address_text(self.mail_from)
        rcpt_tos = tuple(address_text(r) for r in self.rcpt_tos)
        if mail_from == self.mail_from and rcpt_tos == self.rcpt_tos:
            return self
        return Envelope(mail_from, rcpt_tos)
