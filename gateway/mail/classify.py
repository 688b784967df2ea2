"""Classify a message before routing: is it from a robot, a list, a bounce, a vacation?

The result is a set of labels the rules can test (`classification = ["bounce"]`) and the
auto-responder uses to stay quiet. Each label is decided by one small function, listed
in CHECKS, so the order and the reasons are visible in one table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser

from gateway.mail.envelope import Envelope
from gateway.mail.headers import message_ids
from gateway.mail.loopmark import mark_is_valid
from gateway.mail.message import ParsedMessage
from gateway.mail.mimetree import MimeTree

AUTO_SUBMITTED = "auto-submitted"
BULK = "bulk"
LIST = "list"
BOUNCE = "bounce"
OUT_OF_OFFICE = "out-of-office"
LOOP = "loop"
# Our loop header with a mark that is not ours: ignored (it silences nothing) and flagged.
LOOP_FORGED = "loop-forged"
NULL_SENDER = "null-sender"
SUPPRESS_REQUESTED = "suppress-requested"

# flufl.bounce logs every detector it runs at INFO: too chatty for a daemon's log.
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)

_OOO_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?\s*(?:reply|response|antwort)|out of (?:the )?office|"
    r"abwesenheitsnotiz|abwesend|automatische antwort|respuesta autom[aá]tica|"
    r"fuera de la oficina|r[ée]ponse automatique|absence|vacation|on vacation|"
    r"ferie|afwezig|autosvar|不在|自動応答|自动回复)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Classification:
    labels: frozenset[str]
    reasons: tuple[str, ...]
    # Our loop header with a valid mark: our own mail came back (not just any X-Loop).
    own_loop: bool = False

    def __contains__(self, label: object) -> bool:
        return label in self.labels


def _auto_submitted(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    value = msg.header("auto-submitted").strip().lower()
    if value and value.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {value}"
    # Older auto-responders (Exim's autoreply, many CRM receipts) mark themselves only so.
    for name in ("precedence", "x-precedence"):
        if msg.header(name).strip().lower() in ("auto_reply", "auto-reply"):
            return f"{name.title()}: auto_reply"
    # A forwarder re-sends under its own envelope sender, but the Return-Path that the
    # first delivery wrote still says the mail came from a mail system.
    path = _daemon_return_path(msg)
    return f"Return-Path: {path}" if path is not None else None


def _daemon_return_path(msg: ParsedMessage) -> str | None:
    """The first Return-Path that is `<>` or a mailer-daemon/postmaster address."""
    for value in msg.headers.get("return-path", ()):
        addr = value.strip().strip("<>").strip()
        if not addr or _DAEMON_LOCAL.match(addr.rpartition("@")[0] or addr):
            return f"<{addr}>"
    return None


def _bulk(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    value = msg.header("precedence").strip().lower()
    if value in ("bulk", "junk", "list"):
        return f"Precedence: {value}"
    return None


def _list(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    for name in ("list-id", "list-unsubscribe", "list-post"):
        if msg.has_header(name):
            return f"{name} header"
    return None


_DAEMON_LOCAL = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon|mdaemon)$",
                           re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|failure|has failed|problem|notification)|failure notice|"
    r"returned mail|mail delivery (?:failed|failure|system|problem)|nondeliverable|"
    r"non-delivery|could not be delivered|returning message to sender|failed mail|"
    r"failure delivery|mail system error|"
    r"unzustellbar|nicht zustellbar|no se pudo entregar|non remis",
    re.IGNORECASE,
)
# A reply or forward of a bounce (a customer asking about one) is not a bounce itself.
_REPLY_PREFIX = re.compile(r"^\s*(?:re|fwd?|aw|wg|tr|sv|vs|rv)\s*:", re.IGNORECASE)
# Parts that carry the returned message (RFC 3462, RFC 6532) or a delivery report.
_RETURNED_PARTS = ("message/rfc822", "text/rfc822-headers", "message/delivery-status",
                   "message/global", "message/global-headers",
                   "message/global-delivery-status")


def _bounce(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    if msg.content_type == "multipart/report":
        return "multipart/report"
    local = msg.from_address.partition("@")[0]
    if _DAEMON_LOCAL.match(local) and env.mail_from == "":
        return f"from {local.lower()} with null sender"
    # Non-standard bounces (qmail, Exim, InterScan, old Exchange...), also when a
    # forwarder re-sent them under its own envelope sender: flufl.bounce looks at every
    # message that looks like a notification (only those: its detectors are slow).
    subject = _BOUNCE_SUBJECT.search(msg.subject) is not None \
        and not _REPLY_PREFIX.match(msg.subject)
    if not (env.mail_from == "" or _DAEMON_LOCAL.match(local) or subject
            or _daemon_return_path(msg) is not None):
        return None
    failed = bounced_recipients(msg.raw)
    if failed:
        return f"bounce for {len(failed)} recipient(s) (flufl.bounce)"
    # flufl.bounce finds no address in some (InterScan's, Exim's multipart/mixed ones):
    # a bounce subject with the returned message attached is a bounce all the same.
    if subject and _has_returned_part(msg.raw):
        return "bounce subject with the returned message attached"
    return None


def _has_returned_part(raw: bytes) -> bool:
    try:
        parts = list(MimeTree(raw).root.walk())
    except RecursionError:
        return False
    return any(part.get_content_type() in _RETURNED_PARTS for part in parts[:200])


def bounced_recipients(raw: bytes) -> frozenset[str]:
    """Recipients a bounce reports as failed (permanent or temporary), via flufl.bounce.

    It reads the tree without big bodies (a returned attachment): they hold no report.
    """
    from flufl.bounce import all_failures  # slow to import, and needed for suspects only

    try:
        temporary, permanent = all_failures(MimeTree(raw).root)
    except Exception:  # a detector choking on a malformed message is no reason to fail
        return frozenset()
    return frozenset(
        a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)
        for a in temporary | permanent
    )


def bounced_message_ids(raw: bytes) -> tuple[str, ...]:
    """Message-IDs of the message a bounce returns (its message/rfc822 or
    text/rfc822-headers part): Message-ID first, then In-Reply-To and References."""
    ids: list[str] = []
    tree = MimeTree(raw)
    try:
        parts = list(tree.root.walk())
    except RecursionError:
        return ()
    for part in parts[:200]:
        ctype = part.get_content_type()
        headers: Message | None = None
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                headers = payload[0]
        elif ctype in ("text/rfc822-headers", "message/global-headers"):
            headers = BytesHeaderParser().parsebytes(tree.payload(part))
        if headers is not None:
            for name in ("Message-ID", "In-Reply-To", "References"):
                ids += message_ids(headers.get_all(name, []))
    return tuple(dict.fromkeys(ids))[:50]


def _out_of_office(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    if msg.has_header("x-autoreply") or msg.has_header("x-autorespond"):
        return "X-Autoreply/X-Autorespond header"
    if msg.has_header("x-vacation") or "vacation" in msg.header("x-mailer").lower():
        return "vacation program"
    auto = msg.header("auto-submitted").strip().lower()
    if auto.startswith("auto-replied") and "vacation" in auto:
        return f"Auto-Submitted: {auto}"  # Zimbra: auto-replied (zimbra; vacation)
    suppress = msg.header("x-auto-response-suppress").lower()
    if suppress and _OOO_SUBJECT.search(msg.subject):
        return "Exchange OOF reply"
    if auto.startswith("auto-replied") and msg.in_reply_to:
        # RFC 3834: a reply made by a program to the message it names (Gmail vacation
        # responder, other helpdesks' receipts). Threads, but never reopens.
        return "Auto-Submitted: auto-replied to a message"
    if msg.header("auto-submitted").lower().startswith("auto-replied") and (
        _OOO_SUBJECT.search(msg.subject) or msg.has_header("x-ms-exchange-inbox-rules-loop")
    ):
        return "auto-replied vacation notice"
    if _OOO_SUBJECT.search(msg.subject) and (
        msg.has_header("auto-submitted") or env.mail_from == "" or (msg.has_header("x-mailer")
        and "vacation" in msg.header("x-mailer").lower())
    ):
        return "vacation subject"
    return None


def _loop(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    if msg.has_header("x-loop"):
        return "X-Loop header"
    return None


def _own_loop(msg: ParsedMessage, loop_header: str, secret: bytes | None) -> tuple[str, str] | None:
    """(label, reason) for our loop header: `loop` when its mark is the HMAC of the
    Message-ID under the site secret, `loop-forged` when it is not. Without a secret the
    header cannot be checked and is ignored (docs/identity.md)."""
    values = msg.headers.get(loop_header.lower(), ())
    if not values or secret is None:
        return None
    if any(mark_is_valid(secret, msg.message_id, v) for v in values):
        return LOOP, f"{loop_header} header with our mark"
    return LOOP_FORGED, f"{loop_header} header with a mark that is not ours (ignored)"


def _null_sender(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    return "empty envelope sender <>" if env.mail_from == "" else None


def _suppress(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    value = msg.header("x-auto-response-suppress")
    return f"X-Auto-Response-Suppress: {value}" if value else None


Check = Callable[[ParsedMessage, Envelope, str], "str | None"]

# label -> check; evaluated in this order, every one (a message can be several things).
CHECKS: tuple[tuple[str, Check], ...] = (
    (AUTO_SUBMITTED, _auto_submitted),
    (BULK, _bulk),
    (LIST, _list),
    (BOUNCE, _bounce),
    (OUT_OF_OFFICE, _out_of_office),
    (LOOP, _loop),
    (NULL_SENDER, _null_sender),
    (SUPPRESS_REQUESTED, _suppress),
)


def classify(
    msg: ParsedMessage, env: Envelope, loop_header: str = "X-Ticketgate-Loop",
    loop_secret: bytes | None = None,
) -> Classification:
    labels: set[str] = set()
    reasons: list[str] = []
    for label, check in CHECKS:
        reason = check(msg, env, loop_header)
        if reason:
            labels.add(label)
            reasons.append(f"{label}: {reason}")
    own = _own_loop(msg, loop_header, loop_secret)
    if own is not None:
        labels.add(own[0])
        reasons.append(f"{own[0]}: {own[1]}")
    return Classification(frozenset(labels), tuple(reasons), own_loop=own is not None
                          and own[0] == LOOP)
