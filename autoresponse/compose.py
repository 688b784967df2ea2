"""Build the outgoing message: utf-8 text (and HTML) parts, CRLF line ends.

The header values are made by the stdlib `email` package (`email.utils` for addresses,
dates and message ids, `email.header.Header` to fold and RFC 2047-encode), the parts'
quoted-printable by `binascii`; this module only lays out the lines. Building an
`EmailMessage` and running its generator cost the intake more than half of an answer's
time inside the writers' lock, for a message of one fixed shape (see docs/autoresponse.md).

Customer-controlled values (their subject, their display name) end up in our headers.
Every one goes through `clean_header_value` (CR, LF and other control characters become
spaces) before it is encoded, and recipients are taken only from validated addresses, so
no value can add a header or change who gets the mail.
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


def clean_header_value(value: str, limit: int = 500) -> str:
    """One line, no control characters, bounded length."""
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


def valid_address(address: str) -> bool:
    return bool(_ADDR_SPEC.fullmatch(address or ""))


def _folded(name: str, value: str | Header) -> str:
    """The header's value folded at spaces, non-ASCII text as RFC 2047 encoded words."""
    if isinstance(value, str):
        value = Header(value, header_name=name)
    return value.encode(linesep="\r\n", maxlinelen=MAX_LINE)


def _mailbox(name: str, display: str, addr_spec: str) -> str:
    """`Name <addr>`, the name quoted or encoded as it needs; ValueError for anything but
    one plain ASCII `local@domain`."""
    if not valid_address(addr_spec) or not addr_spec.isascii():
        raise ValueError(f"not a single mailbox: {addr_spec!r}")
    display = clean_header_value(display, 200)
    if display.isascii():
        return _folded(name, email.utils.formataddr((display, addr_spec)))
    mailbox = Header(display, "utf-8", header_name=name)
    mailbox.append(f"<{addr_spec}>", "us-ascii")
    return _folded(name, mailbox)


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
    head = [
        ("From", _mailbox("From", out.from_name, out.from_address)),
        ("To", _mailbox("To", out.to_name, out.to_address)),
        ("Subject", _folded("Subject", clean_header_value(out.subject, 900))),
        ("Date", email.utils.format_datetime(out.date or dt.datetime.now(dt.UTC))),
        ("Message-ID", f"<{out.message_id}>"),
    ]
    refs = [r for r in out.references if _MSGID.fullmatch(r)]
    if _MSGID.fullmatch(out.in_reply_to):
        head.append(("In-Reply-To", f"<{out.in_reply_to}>"))
        if out.in_reply_to not in refs:
            refs.append(out.in_reply_to)
    if refs:  # one id a line: an id is never split or encoded
        head.append(("References", "\r\n ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:])))
    loop = clean_header_value(out.loop_value or out.from_address, 200)
    head += [
        ("Auto-Submitted", out.auto_submitted),
        ("X-Auto-Response-Suppress", "All"),
        ("Precedence", "bulk"),
        (out.loop_header, _folded(out.loop_header, loop)),
        ("MIME-Version", "1.0"),
    ]
    if out.html is None:
        part_head, body = _part(out.text, "plain")
        head += part_head
    else:
        # 96 random bits: the boundary never occurs in the parts by chance.
        boundary = f"=_tg_{secrets.token_hex(12)}"
        head.append(("Content-Type", f'multipart/alternative;\r\n boundary="{boundary}"'))
        # The line break before a delimiter belongs to it (RFC 2046), not to the part.
        body = b"".join(
            b"--%s\r\n%s\r\n%s\r\n" % (boundary.encode(), _lines(part_head), part_body)
            for part_head, part_body in (_part(out.text, "plain"), _part(out.html, "html"))
        ) + b"--%s--\r\n" % boundary.encode()
    return _lines(head) + b"\r\n" + body


def _lines(head: list[tuple[str, str]]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in head).encode("ascii")


def _part(text: str, subtype: str) -> tuple[list[tuple[str, str]], bytes]:
    """A text part's headers and body: 7bit when the text is printable ASCII in lines of
    at most 76 characters (readable as it is, as mail programs send such text), else
    quoted-printable."""
    lines = text.splitlines() or [""]
    if _PRINTABLE.fullmatch(text) and all(len(line) <= MAX_LINE for line in lines):
        cte, body = "7bit", "".join(f"{line}\r\n" for line in lines).encode("ascii")
    else:
        cte = "quoted-printable"
        data = "".join(f"{line}\n" for line in lines).encode("utf-8")
        body = binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
    return [("Content-Type", f'text/{subtype}; charset="utf-8"'),
            ("Content-Transfer-Encoding", cte)], body
