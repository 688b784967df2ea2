"""Classify a message before routing: is it from a robot, a list, a bounce, a vacation?

The result is a set of labels the rules can test (`classification = ["bounce"]`) and the
auto-responder uses to stay quiet. Each label is decided by one small function, listed
in CHECKS, so the order and the reasons are visible in one table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .envelope import Envelope
from .parse import ParsedMessage

AUTO_SUBMITTED = "auto-submitted"
BULK = "bulk"
LIST = "list"
BOUNCE = "bounce"
OUT_OF_OFFICE = "out-of-office"
LOOP = "loop"
NULL_SENDER = "null-sender"
SUPPRESS_REQUESTED = "suppress-requested"

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

    def __contains__(self, label: object) -> bool:
        return label in self.labels

    @property
    def is_automatic(self) -> bool:
        return bool(self.labels)


def _auto_submitted(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    value = msg.header("auto-submitted").strip().lower()
    if value and value.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {value}"
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


def _bounce(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    if msg.content_type == "multipart/report":
        return "multipart/report"
    local = msg.from_address.partition("@")[0]
    if local in ("mailer-daemon", "postmaster") and env.mail_from == "":
        return f"from {local} with null sender"
    return None


def _out_of_office(msg: ParsedMessage, env: Envelope, loop_header: str) -> str | None:
    if msg.has_header("x-autoreply") or msg.has_header("x-autorespond"):
        return "X-Autoreply/X-Autorespond header"
    suppress = msg.header("x-auto-response-suppress").lower()
    if "oof" in suppress and _OOO_SUBJECT.search(msg.subject):
        return "Exchange OOF reply"
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
    if msg.has_header(loop_header):
        return f"{loop_header} header"
    return None


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
    msg: ParsedMessage, env: Envelope, loop_header: str = "X-Ticketgate-Loop"
) -> Classification:
    labels: set[str] = set()
    reasons: list[str] = []
    for label, check in CHECKS:
        reason = check(msg, env, loop_header)
        if reason:
            labels.add(label)
            reasons.append(f"{label}: {reason}")
    return Classification(frozenset(labels), tuple(reasons))
