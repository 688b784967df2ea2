"""Header values as text: undeclared 8-bit bytes and encoded words decoded, ids found.

Real mail needs repairs that the stdlib's strict decoders refuse, so values are decoded
here with `charsets.decode_bytes`:

- undeclared 8-bit header bytes (raw UTF-8 or Latin-1 in Subject, From or a filename)
  are decoded as UTF-8, else Windows-1252, instead of becoming U+FFFD;
- RFC 2047 encoded words (Q and B) labelled Shift_JIS or ISO-2022-JP that use
  Microsoft's extensions (①, 髙) still decode, and a word labelled ISO-8859-1 that is
  really Windows-1252 keeps its € and “”.
"""

from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.header import Header, decode_header
from email.message import Message

from gateway.mail.charsets import decode_bytes

MSGID_RE = re.compile(r"<([^<>\s]+)>")
# Encoded words are decoded in the first DECODE_LIMIT characters of a value and the rest
# is kept as written: the stdlib's decoder takes time quadratic in the number of words,
# and a hostile Subject of 40,000 words would cost seconds on every retry.
DECODE_LIMIT = 16 * 1024
# Per message: header values past this many characters in all are kept as written.
MESSAGE_DECODE_LIMIT = 256 * 1024
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_RAW_BYTE = re.compile("[\udc80-\udcff]")  # an undecoded 8-bit byte (surrogateescape)

# What `email.message.Message.get` returns: 8-bit values come as a `Header`.
HeaderValue = str | Header


def header_text(value: HeaderValue | None) -> str:
    """A header value as the sender wrote it, with its undeclared 8-bit bytes decoded.

    The stdlib hands out a value with 8-bit bytes as a `Header` in the unknown-8bit
    charset: its str() has U+FFFD for every byte, `decode_header` gives the bytes back.
    """
    if value is None:
        return ""
    if isinstance(value, Header):
        return "".join(chunk if isinstance(chunk, str) else decode_bytes(chunk, charset)
                       for chunk, charset in decode_header(value))
    return scrub(value)


def unfold(value: str) -> str:
    return _FOLD.sub("", value)


def decode_header_value(value: HeaderValue | None, limit: int = DECODE_LIMIT) -> str:
    """A header value as text: 8-bit bytes repaired, encoded words decoded, unfolded.

    Never raises. Adjacent encoded words are joined without the whitespace between
    them (RFC 2047 6.2), so a word split in the middle of a ticket number still reads
    as one number. Only the first `limit` characters are decoded (cut at whitespace).
    """
    return _decode_prefix(unfold(header_text(value)), limit)


def _decode_prefix(text: str, limit: int) -> str:
    """`text` with the encoded words of its first `limit` characters decoded."""
    if len(text) <= limit:
        return _decode_words(text)
    cut = max(text.rfind(" ", 0, limit), text.rfind("\t", 0, limit))
    cut = cut if cut > 0 else limit
    return _decode_words(text[:cut]) + text[cut:]


def _decode_words(text: str) -> str:
    try:
        chunks = decode_header(text)
    except (HeaderParseError, ValueError, LookupError, UnicodeError):
        return text
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None:  # the text between encoded words
            out.append(chunk.decode("raw-unicode-escape", "replace"))
        else:
            out.append(decode_bytes(chunk, charset.partition("*")[0]))  # RFC 2231 language
    return "".join(out)


def clean(value: str) -> str:
    """Fold whitespace (folded headers, stray CR/LF/tabs) into single spaces."""
    return " ".join(value.split())


def scrub(value: str) -> str:
    """Text any database takes: no surrogate escapes (raw 8-bit), no NUL characters."""
    if not value.isascii() and _RAW_BYTE.search(value):
        value = decode_bytes(value.encode("utf-8", "surrogateescape"), None)
    return value.replace("\x00", "")


def decoded_headers(msg: Message) -> dict[str, tuple[str, ...]]:
    """Every header, by lower-case name, its values decoded in message order."""
    out: dict[str, list[str]] = {}
    budget = MESSAGE_DECODE_LIMIT
    for name, value in msg.items():
        text = unfold(header_text(value))
        if budget > 0:  # past the budget, values stay as written
            text, budget = _decode_prefix(text, min(budget, DECODE_LIMIT)), budget - len(text)
        out.setdefault(name.lower(), []).append(scrub(clean(text)))
    return {name: tuple(values) for name, values in out.items()}


def message_ids(values: list[HeaderValue]) -> tuple[str, ...]:
    """The `<id>`s of In-Reply-To or References headers, without brackets, once each."""
    ids = (scrub(i) for value in values for i in MSGID_RE.findall(header_text(value)))
    return tuple(dict.fromkeys(i for i in ids if i))


def first_message_id(value: HeaderValue | None) -> str:
    """A Message-ID without brackets; one written without them, as written."""
    found = MSGID_RE.findall(header_text(value))
    return scrub(found[0] if found else clean(decode_header_value(value))[:900])
