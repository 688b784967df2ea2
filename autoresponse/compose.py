"""Build the outgoing MIME message (stdlib `email`, utf-8, CRLF).

Customer-controlled values (their subject, their display name) end up in our headers.
Every one goes through `clean_header_value` (CR, LF and other control characters become
spaces) before the email package folds and encodes it, and recipients are taken only from
parsed, validated addresses, so no value can add a header or change who gets the mail.
"""

from __future__ import annotations

import binascii
import datetime as dt
import email.utils
import re
import secrets
from dataclasses import dataclass
from email.header import Header

# What we accept as an address to send to: one mailbox, nothing that could be a list.
_ADDR_SPEC = re.compile(r"^[^@\s<>,;:\"()\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")
MAX_REFERENCES = 20


def clean_header_value(value: str, limit: int = 500) -> str:
    """One line, no control characters, bounded length."""
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


def valid_address(address: str) -> bool:
    return bool(_ADDR_SPEC.match(address or ""))


def _address(display: str, addr_spec: str) -> str:
    """`Name <addr>` with the name RFC 2047-encoded when it is not ASCII."""
    if not valid_address(addr_spec):
        raise ValueError(f"not a single mailbox: {addr_spec!r}")
    name = clean_header_value(display, 200)
    if not name:
        return addr_spec
    if name.isascii():
        return email.utils.formataddr((name, addr_spec))
    return f"{_text_header(name)} <{addr_spec}>"


def _text_header(value: str) -> str:
    """An unstructured header value, encoded (and folded) only when it needs to be."""
    if value.isascii():
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


def new_message_id(domain: str) -> str:
    """A fresh Message-ID without angle brackets (stored that way, like incoming ones)."""
    return email.utils.make_msgid(domain=domain or "ticketgate.invalid").strip("<>")


@dataclass(frozen=True)
class Outgoing:
    from_name: str
    from_address: str
    to_name: str
    to_address: str
    subject: str
    text: str
    html: str | None
    message_id: str
    in_reply_to: str = ""  # the customer's Message-ID, without brackets; "" for none
    references: tuple[str, ...] = ()
    auto_submitted: str = "auto-replied"
    loop_header: str = "X-Ticketgate-Loop"
    loop_value: str = ""
    date: dt.datetime | None = None


def compose(out: Outgoing) -> bytes:
    """The message as CRLF bytes, ready for SMTP and for DKIM.

    Written out directly rather than through `email.generator`, which re-parses and
    re-folds every header and costs several milliseconds inside the intake's transaction.
    Every header value here is either ours, a validated address or message id, or passed
    through `clean_header_value` and RFC 2047 encoding.
    """
    head: list[tuple[str, str]] = [
        ("From", _address(out.from_name, out.from_address)),
        ("To", _address(out.to_name, out.to_address)),
        ("Subject", _text_header(clean_header_value(out.subject, 900))),
        ("Date", email.utils.format_datetime(out.date or dt.datetime.now(dt.UTC))),
        ("Message-ID", f"<{out.message_id}>"),
    ]
    refs = [r for r in out.references if _msgid_ok(r)]
    if out.in_reply_to and _msgid_ok(out.in_reply_to):
        head.append(("In-Reply-To", f"<{out.in_reply_to}>"))
        if out.in_reply_to not in refs:
            refs.append(out.in_reply_to)
    if refs:
        head.append(("References", "\r\n ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:])))
    head += [
        ("Auto-Submitted", out.auto_submitted),
        ("X-Auto-Response-Suppress", "All"),
        ("Precedence", "bulk"),
        (out.loop_header, _text_header(clean_header_value(out.loop_value or out.from_address,
                                                          200))),
        ("MIME-Version", "1.0"),
    ]
    text_part = _part("plain", out.text)
    if out.html is None:
        head += text_part[0]
        body = text_part[1]
    else:
        boundary = f"=_tg_{secrets.token_hex(12)}"
        head.append(("Content-Type", f'multipart/alternative; boundary="{boundary}"'))
        chunks = [b"This is a multi-part message in MIME format.\r\n"]
        for part_head, part_body in (text_part, _part("html", out.html)):
            chunks.append(f"--{boundary}\r\n".encode())
            chunks.append("".join(f"{n}: {v}\r\n" for n, v in part_head).encode() + b"\r\n")
            chunks.append(part_body)
        chunks.append(f"--{boundary}--\r\n".encode())
        body = b"".join(chunks)
    header_bytes = "".join(f"{n}: {v}\r\n" for n, v in head).encode("ascii")
    return header_bytes + b"\r\n" + body


def _part(subtype: str, text: str) -> tuple[list[tuple[str, str]], bytes]:
    """A utf-8 text part, quoted-printable (readable for the mostly-ASCII texts we send)."""
    data = "\n".join(text.splitlines()).encode("utf-8") + b"\n"
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    body = encoded.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return [("Content-Type", f'text/{subtype}; charset="utf-8"'),
            ("Content-Transfer-Encoding", "quoted-printable")], body


_MSGID = re.compile(r"^[^<>\s\x00-\x1f]{1,900}$")


def _msgid_ok(value: str) -> bool:
    return bool(_MSGID.match(value))
