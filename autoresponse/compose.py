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
import functools
import os
import random
import re
import time
from dataclasses import dataclass
from email.header import Header

# What we accept as an address to send to: one mailbox, nothing that could be a list.
# Used with fullmatch: `$` would also match before a final "\n", letting a bare line
# feed end the headers early.
_ADDR_SPEC = re.compile(r"[^@\s<>,;:\"()\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")
MAX_REFERENCES = 20


def clean_header_value(value: str, limit: int = 500) -> str:
    """One line, no control characters, bounded length."""
    # Already clean (the usual name or subject): printable means no control character
    # and no whitespace but " ", so only runs of " " and " " at the ends would change.
    if value.isprintable() and "  " not in value and value[:1] != " " and value[-1:] != " ":
        return value[:limit]
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


def valid_address(address: str) -> bool:
    return bool(_ADDR_SPEC.fullmatch(address or ""))


def _address(display: str, addr_spec: str) -> str:
    """`Name <addr>` with the name RFC 2047-encoded when it is not ASCII."""
    if not valid_address(addr_spec):
        raise ValueError(f"not a single mailbox: {addr_spec!r}")
    name = clean_header_value(display, 200)
    if not name:
        return addr_spec
    if name.isascii():
        if email.utils.specialsre.search(name):  # quoted and escaped
            return email.utils.formataddr((name, addr_spec))
        addr_spec.encode("ascii")  # what formataddr does first: non-ASCII raises here
        return f"{name} <{addr_spec}>"  # formataddr's result for a name without specials
    return f"{_text_header(name)} <{addr_spec}>"


# The From line is the same for every answer of a queue. A pure function of its arguments;
# a refused address raises again each time (exceptions are not cached).
_from_address = functools.lru_cache(maxsize=64)(_address)


def _text_header(value: str) -> str:
    """An unstructured header value, encoded (and folded) only when it needs to be."""
    if value.isascii():
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


_last_date: tuple[tuple[int, ...], str] = ((), "")


def format_date(when: dt.datetime) -> str:
    """`email.utils.format_datetime(when)`, written out directly for UTC (the intake's
    clock), where it costs a fifth; any other zone goes through the email package.

    The last result is kept: answers made within the same second share their Date, and
    formatting it costs several times the lookup.
    """
    global _last_date
    if when.tzinfo is not dt.UTC:
        return email.utils.format_datetime(when)
    key = (when.second, when.minute, when.hour, when.day, when.month, when.year)
    last = _last_date  # one read: another thread may replace it meanwhile
    if last[0] == key:
        return last[1]
    text = (f"{_DAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} "
            f"{when.year:04d} {when.hour:02d}:{when.minute:02d}:{when.second:02d} +0000")
    _last_date = (key, text)
    return text


_pid = os.getpid()  # getpid() is a system call on every call; a forked child resets it


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def new_message_id(domain: str) -> str:
    """A fresh Message-ID without angle brackets (stored that way, like incoming ones).

    `email.utils.make_msgid(domain=...).strip("<>")` written out: the same three parts
    (time in 1/100 s, pid, 64 random bits), without the call and %-formatting.
    """
    stamp = f"{int(time.time() * 100)}.{_pid}.{random.getrandbits(64)}"
    return f"{stamp}@{domain or 'ticketgate.invalid'}".rstrip("<>")


@dataclass  # not frozen: a frozen __init__ costs a call per field, per answer
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
    return compose_unchanged(out)[0]


def compose_unchanged(out: Outgoing) -> tuple[bytes, bool]:
    """`compose`, and whether the subject and every text part went in unchanged (an
    ASCII subject that needed no cleaning, 7bit parts): then each of their lines is in
    the bytes as it is, and so is whatever they contain (draft.py need not count)."""
    subject = clean_header_value(out.subject, 900)
    unchanged = subject == out.subject and subject.isascii()
    head = (f"From: {_from_address(out.from_name, out.from_address)}\r\n"
            f"To: {_address(out.to_name, out.to_address)}\r\n"
            f"Subject: {_text_header(subject)}\r\n"
            f"Date: {format_date(out.date or dt.datetime.now(dt.UTC))}\r\n"
            f"Message-ID: <{out.message_id}>\r\n")
    refs = [r for r in out.references if _msgid_ok(r)]
    if out.in_reply_to and _msgid_ok(out.in_reply_to):
        head += f"In-Reply-To: <{out.in_reply_to}>\r\n"
        if out.in_reply_to not in refs:
            refs.append(out.in_reply_to)
    if refs:
        head += "References: " + "\r\n ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:]) \
            + "\r\n"
    head += (f"Auto-Submitted: {out.auto_submitted}\r\n"
             "X-Auto-Response-Suppress: All\r\nPrecedence: bulk\r\n"
             f"{out.loop_header}: {_loop_value(out.loop_value or out.from_address)}\r\n"
             "MIME-Version: 1.0\r\n")
    text_head, text = _part(out.text, _PLAIN_7BIT, _PLAIN_QP)
    unchanged = unchanged and text_head is _PLAIN_7BIT
    if out.html is None:
        return head.encode("ascii") + text_head + b"\r\n" + text, unchanged
    html_head, html = _part(out.html, _HTML_7BIT, _HTML_QP)
    # "=_" never occurs in quoted-printable ("=" starts only "=XX" and soft breaks), so
    # the boundary cannot collide with either part whatever its digits: they need not be
    # secret (`secrets` reads /dev/urandom on every call).
    boundary = f"=_tg_{boundary_token()}".encode("ascii")
    head += f'Content-Type: multipart/alternative; boundary="{boundary.decode()}"\r\n'
    return b"".join((
        head.encode("ascii"), b"\r\nThis is a multi-part message in MIME format.\r\n",
        b"--", boundary, b"\r\n", text_head, b"\r\n", text,
        b"--", boundary, b"\r\n", html_head, b"\r\n", html,
        b"--", boundary, b"--\r\n")), unchanged and html_head is _HTML_7BIT


def boundary_token() -> str:
    """The random part of a multipart boundary (a function of its own for the tests)."""
    return f"{random.getrandbits(96):024x}"


_PART_HEAD = 'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: {}\r\n'
_PLAIN_7BIT = _PART_HEAD.format("plain", "7bit").encode("ascii")
_PLAIN_QP = _PART_HEAD.format("plain", "quoted-printable").encode("ascii")
_HTML_7BIT = _PART_HEAD.format("html", "7bit").encode("ascii")
_HTML_QP = _PART_HEAD.format("html", "quoted-printable").encode("ascii")


def _part(text: str, head_7bit: bytes, head_qp: bytes) -> tuple[bytes, bytes]:
    """A text part's head and body: 7bit when it can go as it is, else quoted-printable.

    7bit (what the email package and most mail programs pick for such text) when the
    part is printable ASCII, tabs and line breaks, in lines of at most 76 characters:
    readable as it is, and no encoding pass. Anything else (non-ASCII, long lines,
    control characters) is quoted-printable, as before.
    """
    data = _simple_text(text)
    if data is None:
        return head_qp, _qp_other(text)
    if _short_lines(data):
        return head_7bit, data.replace(b"\n", b"\r\n") + b"\r\n"
    return head_qp, _qp_simple(data)


@functools.lru_cache(maxsize=64)
def _loop_value(value: str) -> str:
    """The loop header's value: our own address, so the same for every answer."""
    return _text_header(clean_header_value(value, 200))


# What the fast path of qp_body takes: printable ASCII ("=" included), tab and "\n".
_QP_SIMPLE = bytes(range(0x20, 0x7f)) + b"\t\n"
_QP_MAX_LINE = 76  # binascii's MAXLINESIZE: a line this long is not broken
# A line break and more than 76 characters after it before the next.
_LONG_LINE = re.compile(b"\n[^\n]{%d}" % (_QP_MAX_LINE + 1))


def _short_lines(data: bytes) -> bool:
    """Is no line of `data` ("\n"-separated) longer than 76 characters?

    The same as `max(map(len, data.split(b"\n"))) <= 76`, without an object per line:
    the search only stops at line breaks (the pattern starts with one).
    """
    first = data.find(b"\n")
    if (first if first >= 0 else len(data)) > _QP_MAX_LINE:
        return False
    return _LONG_LINE.search(data) is None


def qp_body(text: str) -> bytes:
    """`text`'s lines as utf-8 quoted-printable with CRLF line ends: the bytes of
    `binascii.b2a_qp("\n".join(text.splitlines()).encode() + b"\n", istext=True)` with
    "\n" made "\r\n", sooner for plain text.

    b2a_qp looks at every byte twice in C, and is line-local: each line's encoding
    depends on that line alone. Text of printable ASCII, tabs and "\n" (most answers)
    needs only "=" escaped, =20 / =09 for whitespace at the end of a line, and work on
    the few lines that are long or just "." (`_qp_line`); a few whole-buffer operations
    do the rest. Anything else (non-ASCII, "\r" or other line breaks, control
    characters) goes to b2a_qp whole.
    """
    data = _simple_text(text)
    return _qp_other(text) if data is None else _qp_simple(data)


def _simple_text(text: str) -> bytes | None:
    """`text` as bytes without its final line break if it is printable ASCII, tabs and
    "\n" only (what the 7bit and quoted-printable fast paths take), else None."""
    data = text.encode("utf-8")
    if data.translate(None, _QP_SIMPLE):
        return None
    return data[:-1] if data.endswith(b"\n") else data  # as splitlines() drops it


def _qp_simple(data: bytes) -> bytes:
    """qp_body of `_simple_text`'s bytes."""
    equals = b"=" in data
    escaped = data.replace(b"=", b"=3D") if equals else data
    lines = escaped.split(b"\n")
    # An escape that would end past column 75 gets a soft break before it.
    fits = _QP_MAX_LINE - equals
    if max(map(len, lines)) > fits or b"." in lines:
        escaped = b"\n".join([ln if len(ln) <= fits and ln != b"." else _qp_line(ln)
                               for ln in lines])
    return (escaped.replace(b"\n", b"\r\n") + b"\r\n").replace(
        b" \r\n", b"=20\r\n").replace(b"\t\r\n", b"=09\r\n")


def _qp_other(text: str) -> bytes:
    """qp_body of anything else: b2a_qp whole."""
    data = "\n".join(text.splitlines()).encode("utf-8") + b"\n"
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).replace(
        b"\n", b"\r\n")


def _qp_line(line: bytes) -> bytes:
    """One line of qp_body's fast path ("=" already escaped), as b2a_qp would write it
    but for the whitespace at its end, which qp_body escapes afterwards."""
    if b"=" not in line:
        if line == b".":
            return b"=2E"
        return line if len(line) <= _QP_MAX_LINE else _soft_breaks(line)
    if len(line) < _QP_MAX_LINE or (len(line) == _QP_MAX_LINE and not line.endswith(b"=3D")):
        return line
    # Long, with escapes: where the breaks fall depends on them; b2a_qp knows.
    return binascii.b2a_qp(line.replace(b"=3D", b"=") + b"\n", quotetabs=False,
                           istext=True, header=False)[:-1]


def _soft_breaks(line: bytes) -> bytes:
    """b2a_qp's breaks in a long line without escapes: "=" after every 75 bytes while
    more than 76 remain (the last piece may be 76 long)."""
    pieces = []
    while len(line) > _QP_MAX_LINE:
        pieces.append(line[:_QP_MAX_LINE - 1])
        line = line[_QP_MAX_LINE - 1:]
    pieces.append(line)
    return b"=\n".join(pieces)


_MSGID = re.compile(r"^[^<>\s\x00-\x1f]{1,900}$")


def _msgid_ok(value: str) -> bool:
    return bool(_MSGID.match(value))
