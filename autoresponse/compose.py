"""Build the outgoing MIME message with `email.message.EmailMessage`.

Customer-controlled values (their subject, their display name) end up in our headers.
Every one goes through `clean_header_value` (CR, LF and other control characters become
spaces) before the email package folds and encodes it, and recipients are taken only from
parsed, validated addresses, so no value can add a header or change who gets the mail.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage

# What we accept as an address to send to: one mailbox, nothing that could be a list.
_ADDR_SPEC = re.compile(r"^[^@\s<>,;:\"()\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")
MAX_REFERENCES = 20


def clean_header_value(value: str, limit: int = 500) -> str:
    """One line, no control characters, bounded length."""
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


def valid_address(address: str) -> bool:
    return bool(_ADDR_SPEC.match(address or ""))


def _address(display: str, addr_spec: str) -> Address:
    if not valid_address(addr_spec):
        raise ValueError(f"not a single mailbox: {addr_spec!r}")
    local, _, domain = addr_spec.rpartition("@")
    return Address(display_name=clean_header_value(display, 200), username=local, domain=domain)


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


def compose(out: Outgoing) -> EmailMessage:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = _address(out.from_name, out.from_address)
    msg["To"] = _address(out.to_name, out.to_address)
    msg["Subject"] = clean_header_value(out.subject, 900)
    msg["Date"] = email.utils.format_datetime(out.date or dt.datetime.now(dt.UTC))
    msg["Message-ID"] = f"<{out.message_id}>"
    refs = [r for r in out.references if _msgid_ok(r)]
    if out.in_reply_to and _msgid_ok(out.in_reply_to):
        msg["In-Reply-To"] = f"<{out.in_reply_to}>"
        if out.in_reply_to not in refs:
            refs.append(out.in_reply_to)
    if refs:
        msg["References"] = " ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:])
    msg["Auto-Submitted"] = out.auto_submitted
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Precedence"] = "bulk"
    msg[out.loop_header] = clean_header_value(out.loop_value or out.from_address, 200)
    msg.set_content(out.text, charset="utf-8")
    if out.html is not None:
        msg.add_alternative(out.html, subtype="html", charset="utf-8")
    return msg


_MSGID = re.compile(r"^[^<>\s\x00-\x1f]{1,900}$")


def _msgid_ok(value: str) -> bool:
    return bool(_MSGID.match(value))


def to_bytes(msg: EmailMessage) -> bytes:
    """CRLF line ends, as they go over SMTP and as DKIM signs them."""
    return msg.as_bytes(policy=email.policy.SMTP)
