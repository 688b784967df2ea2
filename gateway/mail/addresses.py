"""The mailboxes of address headers (From, To, Cc, Reply-To): (display name, address).

`email.utils.getaddresses` reads an address list as written, which is right: an encoded
comma or quote in a display name must not split an address. But it reads the inside of
an encoded word as syntax, so `=?utf-8?q?x@evil.example?= <ana@customer.example>` would
give x@evil.example. Each encoded word is therefore decoded first (with our charset
repairs) and written again in base64, whose alphabet has no character that means
anything in an address; the display names are decoded after the list is read.
"""

from __future__ import annotations

import base64
import re
from email.utils import getaddresses

from gateway.mail.headers import (
    HeaderValue,
    clean,
    decode_header_value,
    header_text,
    scrub,
    unfold,
)

_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def _inert(word: re.Match[str]) -> str:
    text = decode_header_value(word.group(0))
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


def mailboxes(values: list[HeaderValue]) -> list[tuple[str, str]]:
    """(display name, lower-case address) of every mailbox in the values, in order."""
    out: list[tuple[str, str]] = []
    for value in values:
        text = _ENCODED_WORD.sub(_inert, unfold(header_text(value)))
        try:
            pairs = getaddresses([text])
        except Exception:  # the stdlib's parser choking on garbage is no reason to fail
            continue
        out += [(scrub(clean(decode_header_value(name))), scrub(address.strip().lower()))
                for name, address in pairs if "@" in address]
    return out


def addresses(values: list[HeaderValue]) -> tuple[str, ...]:
    """The addresses of the values, once each, in order."""
    return tuple(dict.fromkeys(address for _name, address in mailboxes(values)))
