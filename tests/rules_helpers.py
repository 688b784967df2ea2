"""Helpers for the rule tests: build messages and rule sets in a line or two.

`decide` runs both evaluator paths (explained and routing-only) and checks they agree.
"""

from __future__ import annotations

from email.message import EmailMessage

from gateway.mail.classify import classify
from gateway.mail.envelope import Envelope
from gateway.mail.parse import parse_message
from gateway.mail.verdict import NO_VERDICT, SenderVerdict
from rules.evaluate import Decision, evaluate, route_only
from rules.model import RuleSet
from rules.reader import parse_rule_text

QUEUES = ("Support", "Billing", "Sales", "Postmaster", "Monitoring")


def message(
    subject: str = "Hello",
    body: str = "Hi there",
    sender: str = "Jane Doe <jane@customer.example>",
    to: str = "support@helpdesk.example",
    headers: dict[str, str] | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
    charset: str = "utf-8",
) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = f"<{abs(hash((subject, body, sender)))}@test.example>"
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body, charset=charset)
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return m.as_bytes()


def ruleset(text: str, queues: tuple[str, ...] = QUEUES, max_match_chars: int = 65536) -> RuleSet:
    rules, problems = parse_rule_text(text, "test.toml", queues)
    assert not problems, [str(p) for p in problems]
    return RuleSet(tuple(rules), max_match_chars=max_match_chars)


def decide(
    rs: RuleSet, raw: bytes, mail_from: str | None = None, rcpt: tuple[str, ...] = (),
    verdict: SenderVerdict = NO_VERDICT,
) -> Decision:
    msg = parse_message(raw)
    env = Envelope(mail_from=mail_from, rcpt_tos=rcpt)
    cls = classify(msg, env)
    decision = evaluate(rs, msg, env, cls, verdict)
    # The routing path (domain index, no explanations) must decide exactly the same.
    assert route_only(rs, msg, env, cls, verdict) == decision.route
    return decision
