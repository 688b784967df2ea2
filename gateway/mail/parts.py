"""The text, HTML and attachments of a message tree.

- A text part that is not an attachment is text or HTML, decoded with its declared
  charset's superset (`charsets.decode_bytes`).
- Attachment names come from RFC 2231 parameters (with continuations and charsets),
  encoded words in `filename=`/`name=` (Outlook, Gmail) or raw 8-bit bytes; a nameless
  inline part is named after its Content-ID.
- A multipart whose declared boundary never occurs (or that declares none) is re-split
  on the boundary its body actually uses, so its text is not lost.
- A nested `message/rfc822` (a forward as attachment) is kept whole as an `.eml`
  attachment named after its subject.
- A part that cannot be read at all becomes an attachment of its bytes.
"""

from __future__ import annotations

import copy
import email
import re
from dataclasses import dataclass, field
from email.message import Message
from email.utils import unquote

from gateway.mail.charsets import decode_bytes
from gateway.mail.headers import clean, decode_header_value, header_text, scrub
from gateway.mail.message import Attachment
from gateway.mail.mimetree import MimeTree

_BOUNDARY_LINE = re.compile(rb"^--([ -~]{1,200}?)[ \t]*\r?$", re.MULTILINE)


@dataclass
class Content:
    text: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)


def extract(tree: MimeTree) -> Content:
    """Every part in message order; a list, not recursion, because nesting can be deep."""
    content = Content()
    pending = [tree.root]
    while pending:
        part = pending.pop()
        try:
            children = _read(part, tree, content)
        except Exception:
            if part is tree.root:
                raise
            content.attachments.append(
                Attachment("", "application/octet-stream", tree.flatten(part)))
            continue
        pending += reversed(children)
    return content


def _read(part: Message, tree: MimeTree, content: Content) -> list[Message]:
    """Take what `part` holds into `content`; return its sub-parts, still to read."""
    ctype = part.get_content_type()
    if ctype == "message/rfc822" or (ctype.startswith("message/") and _is_attachment(part)):
        content.attachments.append(_forwarded(part, tree))
    elif part.is_multipart():  # multipart/*, or message/* parsed into parts
        return [sub for sub in part.get_payload() if isinstance(sub, Message)]
    elif ctype.startswith("multipart/"):  # its declared boundary never split it
        undecoded = copy.deepcopy(part)  # a multipart has no transfer encoding (RFC 2045)
        del undecoded["Content-Transfer-Encoding"]
        body = tree.payload(undecoded)
        repaired = _resplit(part, body)
        if repaired is not None:
            return [repaired]
        content.text.append(decode_bytes(body, None))
    elif part.get_content_maintype() != "text" or _is_attachment(part):
        content.attachments.append(_attachment(part, tree))
    else:
        body = decode_bytes(tree.payload(part), part.get_content_charset())
        (content.html if ctype == "text/html" else content.text).append(body)
    return []


def _resplit(part: Message, body: bytes) -> Message | None:
    """The multipart re-parsed on the first `--token` line of its body, if that is not
    the boundary it declares: senders (and broken gateways) declare one boundary and use
    another, or declare none."""
    found = _BOUNDARY_LINE.search(body)
    if found is None:
        return None
    boundary = found.group(1).decode().removesuffix("--")
    if not boundary.strip() or boundary == part.get_boundary():
        return None
    head = f'Content-Type: {part.get_content_type()}; boundary="{boundary}"\n\n'.encode()
    repaired = email.message_from_bytes(head + body)
    return repaired if repaired.is_multipart() else None


def _is_attachment(part: Message) -> bool:
    return part.get_content_disposition() == "attachment" or bool(_filename(part))


def _filename(part: Message) -> str:
    """The attachment name: RFC 2231, encoded words, or raw 8-bit, decoded; '' if none."""
    params = Message()  # the two headers with their 8-bit bytes decoded to text
    for name in ("Content-Disposition", "Content-Type"):
        if (value := part.get(name)) is not None:
            params[name] = header_text(value)
    try:
        found = params.get_param("filename", None, "content-disposition")
        if found is None:
            found = params.get_param("name", None, "content-type")
    except Exception:
        return ""
    if found is None:
        return ""
    if isinstance(found, tuple):  # RFC 2231: (charset, language, %-decoded latin-1 text)
        charset, _language, text = found
        try:
            return clean(decode_bytes(text.encode("latin-1"), charset or "utf-8"))
        except UnicodeEncodeError:
            return clean(text)
    return clean(decode_header_value(unquote(found)))


def _attachment(part: Message, tree: MimeTree) -> Attachment:
    name = _filename(part) or _safe_filename(
        header_text(part.get("Content-ID")).strip().strip("<>"))
    return Attachment(scrub(name), scrub(part.get_content_type()), tree.payload(part))


def _forwarded(part: Message, tree: MimeTree) -> Attachment:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if isinstance(inner, Message):
        content = tree.flatten(inner)
        subject = clean(decode_header_value(inner.get("subject")))
    else:
        content, subject = tree.payload(part), ""
    name = _filename(part) or f"{_safe_filename(subject or 'forwarded message')}.eml"
    return Attachment(scrub(name), "message/rfc822", content)


def _safe_filename(value: str) -> str:
    return re.sub(r"[\\/:*?\"<>|\x00-\x1f]+", "_", value).strip()[:120]
