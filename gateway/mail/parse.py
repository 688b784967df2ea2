"""Turn raw message bytes into a `ParsedMessage`: decoded headers, text, attachments.

The stdlib's parser builds the MIME tree (`mimetree`, which keeps big bodies in the raw
bytes); headers, addresses and parts are decoded by the modules named after them, with
the repairs real mail needs. Parsing never raises on malformed input: what cannot be
understood is left empty, and the raw bytes are always kept by the caller.
"""

from __future__ import annotations

from email.message import Message

from gateway.mail.addresses import addresses, mailboxes
from gateway.mail.charsets import decode_bytes
from gateway.mail.headers import (
    clean,
    decode_header_value,
    decoded_headers,
    first_message_id,
    message_ids,
    scrub,
)
from gateway.mail.htmltext import html_to_text
from gateway.mail.message import Attachment, ParsedMessage
from gateway.mail.mimetree import BIG_BODY, MimeTree
from gateway.mail.parts import Content, extract

__all__ = ["Attachment", "ParsedMessage", "decode_header_value", "parse_message"]


def parse_message(raw: bytes, *, big_body: int = BIG_BODY) -> ParsedMessage:
    """Parse `raw`; bodies of `big_body` bytes or more are decoded straight from it."""
    tree = MimeTree(raw, big_body)
    root = tree.root
    defects = tree.defects + _defects(root)
    try:
        content = extract(tree)
    except Exception as exc:  # a structure nothing else survives: the body as text
        defects.append(f"unwalkable structure: {type(exc).__name__}")
        body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")[2]
        content = Content(text=[decode_bytes(body, None)])
    html = _lf("\n".join(content.html))
    text = _lf("\n".join(t for t in content.text if t.strip()))
    if not text.strip() and html:
        text = html_to_text(html)
    from_name, from_address = (mailboxes(root.get_all("from", [])) or [("", "")])[0]
    try:
        content_type = root.get_content_type()
    except Exception:
        content_type = "text/plain"
    return ParsedMessage(
        raw=raw,
        message_id=first_message_id(root.get("message-id")),
        subject=scrub(clean(decode_header_value(root.get("subject")))),
        from_name=from_name,
        from_address=from_address,
        reply_to=addresses(root.get_all("reply-to", [])),
        to=addresses(root.get_all("to", [])),
        cc=addresses(root.get_all("cc", [])),
        in_reply_to=message_ids(root.get_all("in-reply-to", [])),
        references=message_ids(root.get_all("references", [])),
        text=scrub(text),
        html=scrub(html),
        attachments=tuple(content.attachments),
        headers=decoded_headers(root),
        content_type=scrub(content_type),
        defects=tuple(dict.fromkeys(defects)),
        head_cut=tree.head_cut,
    )


def _defects(root: Message) -> list[str]:
    """The stdlib's defect classes of every part, by name."""
    try:
        return [type(d).__name__ for part in root.walk() for d in part.defects]
    except RecursionError:
        return []


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
