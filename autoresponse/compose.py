"""Build the outgoing MIME message with the stdlib `email` package (utf-8, CRLF).

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
import secrets
from dataclasses import dataclass
from email.contentmanager import raw_data_manager
from email.header import Header
from email.message import EmailMessage, MIMEPart

# What we accept as an address to send to: one mailbox, nothing that could be a list.
# Used with fullmatch: `$` would also match before a final "\n", letting a bare line
# feed end the headers early.
_ADDR_SPEC = re.compile(r"[^@\s<>,;:\"()\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")
# A message id we repeat in In-Reply-To / References (without its angle brackets).
_MSGID = re.compile(r"[!-;=?-~]{1,900}")
MAX_REFERENCES = 20
MAX_LINE = 76  # RFC 2045's limit for quoted-printable lines; 7bit parts keep to it too
# Printable ASCII and tab: what a 7bit part may hold besides its line breaks.
_PRINTABLE = re.compile(r"[\t\n -~]*")
# The email package's compat32 policy: header values are kept as the strings (or
# `Header`s) we give, folded at spaces and RFC 2047-encoded only when not ASCII, so a
# long message id is repeated as it is. (`email.policy.default` parses every header
# into an object, costing several times as much inside the intake's transaction, and
# encodes a word too long for a line.) Every value is cleaned or validated here first.
POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=MAX_LINE)


def clean_header_value(value: str, limit: int = 500) -> str:
    """One line, no control characters, bounded length."""
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


def valid_address(address: str) -> bool:
    return bool(_ADDR_SPEC.fullmatch(address or ""))


def _address(display: str, addr_spec: str) -> str | Header:
    """`Name <addr>`, the name quoted or RFC 2047-encoded as it needs; ValueError for
    anything but one plain ASCII `local@domain`."""
    if not valid_address(addr_spec) or not addr_spec.isascii():
        raise ValueError(f"not a single mailbox: {addr_spec!r}")
    name = clean_header_value(display, 200)
    if name.isascii():
        return email.utils.formataddr((name, addr_spec))
    mailbox = Header(name, "utf-8")
    mailbox.append(f"<{addr_spec}>", "us-ascii")
    return mailbox


def new_message_id(domain: str) -> str:
    """A fresh Message-ID without angle brackets (stored that way, like incoming ones)."""
    return email.utils.make_msgid(domain=domain or "ticketgate.invalid")[1:-1]


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
    """The message as CRLF bytes, ready for SMTP and for DKIM (ValueError if an address
    is not one plain mailbox)."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = _address(out.from_name, out.from_address)
    msg["To"] = _address(out.to_name, out.to_address)
    msg["Subject"] = clean_header_value(out.subject, 900)
    msg["Date"] = email.utils.format_datetime(out.date or dt.datetime.now(dt.UTC))
    msg["Message-ID"] = f"<{out.message_id}>"
    refs = [r for r in out.references if _MSGID.fullmatch(r)]
    if _MSGID.fullmatch(out.in_reply_to):
        msg["In-Reply-To"] = f"<{out.in_reply_to}>"
        if out.in_reply_to not in refs:
            refs.append(out.in_reply_to)
    if refs:
        msg["References"] = " ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:])
    msg["Auto-Submitted"] = out.auto_submitted
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Precedence"] = "bulk"
    msg[out.loop_header] = clean_header_value(out.loop_value or out.from_address, 200)
    msg["MIME-Version"] = "1.0"
    if out.html is None:
        _set_text(msg, out.text, "plain")
    else:
        # Our own boundary: the email package would compile a new regular expression
        # for every message to check its random one. 96 random bits never occur in
        # the parts by chance.
        msg.make_alternative(boundary=f"=_tg_{secrets.token_hex(12)}")
        for text, subtype in ((out.text, "plain"), (out.html, "html")):
            part = MIMEPart(policy=POLICY)
            _set_text(part, text, subtype)
            msg.attach(part)
    return msg.as_bytes()


def _set_text(part: MIMEPart, text: str, subtype: str) -> None:
    """7bit when the text is printable ASCII in lines of at most 76 characters (readable
    as it is, as mail programs send such text), else quoted-printable."""
    plain = _PRINTABLE.fullmatch(text) is not None and \
        all(len(line) <= MAX_LINE for line in text.splitlines())
    part.set_content(text, subtype=subtype, charset="utf-8",
                     cte="7bit" if plain else "quoted-printable",
                     content_manager=raw_data_manager)
