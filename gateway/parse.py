"""Turn raw message bytes into a `ParsedMessage`: decoded headers, text, attachments.

mail-parser reads the bytes and decodes headers and addresses (RFC 2047 Q/B words) and
attachment names (RFC 2231). Bodies are decoded by `charsets`, which repairs the wrong
and missing charset declarations that mail-parser would take at face value. Parsing
never raises on malformed input: what cannot be understood is left empty, and the raw
bytes are always kept by the caller.
"""

from __future__ import annotations

import email.message
import email.utils
import hashlib
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from typing import Any

import mailparser

from .charsets import decode_bytes
from .htmltext import html_to_text

MSGID_RE = re.compile(r"<([^<>\s]+)>")


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

    def header(self, name: str) -> str:
        """First value of a header, decoded, or ''."""
        values = self.headers.get(name.lower(), ())
        return values[0] if values else ""

    def has_header(self, name: str) -> bool:
        return name.lower() in self.headers

    @property
    def from_domain(self) -> str:
        return self.from_address.rpartition("@")[2].lower()


def parse_message(raw: bytes) -> ParsedMessage:
    try:
        mp = mailparser.parse_from_bytes(raw)
        msg: email.message.Message = mp.message
    except Exception:  # mail-parser gave up: fall back to the stdlib alone
        mp = None
        msg = email.message_from_bytes(raw)
    headers = _headers(msg)
    from_name, from_address = _first_address(msg, "from")
    text_parts: list[str] = []
    html_parts: list[str] = []
    attachments: list[Attachment] = []
    _walk(msg, text_parts, html_parts, attachments)
    if mp is not None:
        attachments = _merge_mailparser_attachments(mp, attachments)
    html = "\n".join(html_parts)
    text = "\n".join(t for t in text_parts if t.strip())
    if not text and html:
        text = html_to_text(html)
    return ParsedMessage(
        raw=raw,
        message_id=_first_msgid(msg.get("Message-ID", "")),
        subject=_clean(_decoded_header(msg, "Subject")),
        from_name=from_name,
        from_address=from_address,
        reply_to=_addresses(msg, "reply-to"),
        to=_addresses(msg, "to"),
        cc=_addresses(msg, "cc"),
        in_reply_to=tuple(MSGID_RE.findall(str(msg.get("In-Reply-To", "") or ""))),
        references=tuple(MSGID_RE.findall(str(msg.get("References", "") or ""))),
        text=text,
        html=html,
        attachments=tuple(attachments),
        headers=headers,
        content_type=msg.get_content_type(),
        defects=tuple(type(d).__name__ for d in msg.defects),
    )


def _first_msgid(value: Any) -> str:
    found = MSGID_RE.findall(str(value or ""))
    if found:
        return found[0]
    return str(value or "").strip()[:900]


def _clean(value: str) -> str:
    """Fold whitespace (folded headers, stray CR/LF/tabs) into single spaces."""
    return " ".join(value.split())


def _decode_raw_header(value: Any) -> str:
    """Decode RFC 2047 words; undeclared 8-bit header bytes via the charset repair."""
    if isinstance(value, email.header.Header):
        value = str(value)
    value = str(value)
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in value):
        # compat32 keeps undeclared 8-bit header bytes as surrogate escapes.
        value = decode_bytes(value.encode("utf-8", "surrogateescape"), None)
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def _decoded_header(msg: email.message.Message, name: str) -> str:
    value = msg.get(name)
    return "" if value is None else _decode_raw_header(value)


def _headers(msg: email.message.Message) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for key, value in msg.items():
        out.setdefault(key.lower(), []).append(_clean(_decode_raw_header(value)))
    return {k: tuple(v) for k, v in out.items()}


def _addresses(msg: email.message.Message, name: str) -> tuple[str, ...]:
    values = [_decode_raw_header(v) for v in msg.get_all(name, [])]
    return tuple(
        addr.strip().lower()
        for _n, addr in email.utils.getaddresses(values)
        if "@" in addr
    )


def _first_address(msg: email.message.Message, name: str) -> tuple[str, str]:
    values = [_decode_raw_header(v) for v in msg.get_all(name, [])]
    for display, addr in email.utils.getaddresses(values):
        if "@" in addr:
            return _clean(display), addr.strip().lower()
    return "", ""


def _is_attachment(part: email.message.Message) -> bool:
    disposition = str(part.get("Content-Disposition", "")).split(";")[0].strip().lower()
    return disposition == "attachment" or bool(part.get_filename())


def _walk(
    part: email.message.Message,
    text: list[str],
    html: list[str],
    attachments: list[Attachment],
) -> None:
    ctype = part.get_content_type()
    if part.is_multipart():
        if ctype == "multipart/alternative":
            _walk_alternative(part, text, html, attachments)
            return
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                _walk(sub, text, html, attachments)
        return
    if ctype == "message/rfc822" or (ctype.startswith("message/") and _is_attachment(part)):
        attachments.append(_message_attachment(part))
        return
    if _is_attachment(part) or ctype.split("/")[0] not in ("text",):
        attachments.append(_attachment(part))
        return
    body = _decode_text_part(part)
    if ctype == "text/html":
        html.append(body)
    elif ctype in ("text/plain", "text/enriched") or ctype.startswith("text/"):
        text.append(body)


def _walk_alternative(
    part: email.message.Message,
    text: list[str],
    html: list[str],
    attachments: list[Attachment],
) -> None:
    """Keep the text alternative as text and the HTML one as html; nothing twice."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return
    sub_text: list[str] = []
    sub_html: list[str] = []
    for sub in payload:
        _walk(sub, sub_text, sub_html, attachments)
    text.extend(sub_text)
    html.extend(sub_html)


def _decode_text_part(part: email.message.Message) -> str:
    data = _payload_bytes(part)
    return decode_bytes(data, part.get_content_charset())


def _payload_bytes(part: email.message.Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return b""


def _attachment(part: email.message.Message) -> Attachment:
    filename = part.get_filename() or ""
    return Attachment(
        filename=_clean(_decode_raw_header(filename)) if filename else "",
        content_type=part.get_content_type(),
        content=_payload_bytes(part),
    )


def _message_attachment(part: email.message.Message) -> Attachment:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if isinstance(inner, email.message.Message):
        content = inner.as_bytes()
        subject = _clean(_decoded_header(inner, "Subject")) or "forwarded message"
    else:
        content = _payload_bytes(part)
        subject = "forwarded message"
    name = part.get_filename() or f"{_safe_filename(subject)}.eml"
    return Attachment(filename=name, content_type="message/rfc822", content=content)


def _safe_filename(value: str) -> str:
    return re.sub(r"[\\/:*?\"<>|\x00-\x1f]+", "_", value)[:120]


def _merge_mailparser_attachments(mp: Any, ours: list[Attachment]) -> list[Attachment]:
    """Prefer mail-parser's decoded filenames (RFC 2231 continuations) where ours are empty."""
    theirs = getattr(mp, "attachments", None) or []
    if len(theirs) != len(ours):
        return ours
    merged = []
    for mine, other in zip(ours, theirs, strict=True):
        name = mine.filename or str(other.get("filename") or "")
        merged.append(Attachment(name, mine.content_type, mine.content))
    return merged

