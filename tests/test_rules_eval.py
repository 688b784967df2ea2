"""The evaluator is pure: message in, route and reasons out; no server, no database."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mail.verdict import NO_VERDICT, SenderVerdict
from rules.evaluate import MATCHED, NOT_MATCHED, SKIPPED
from rules.parse_conditions import BUILDERS
from rules.reader import parse_rule_text
from tests.rules_helpers import QUEUES, decide, message, ruleset

# condition key -> (value, a message it holds for, a message it does not hold for,
#                   what `rules test` says for each). A message spec may name the
# envelope sender (_env) and recipients (_rcpt). Every condition is listed:
# test_every_condition_is_covered_by_the_table fails when a new one is not.
PDF = (("report.pdf", "application/pdf", b"%PDF-1.4"),)
SIGNED = SenderVerdict("pass", True, "pass", False, "dkimpy")
CASES: dict[str, tuple[Any, dict[str, Any], dict[str, Any], str, str]] = {
    "from": ("*@customer.example", {}, {"sender": "x@other.example"},
             "from jane@customer.example matches '*@customer.example'",
             "from x@other.example matches none of '*@customer.example'"),
    "from_domain": ("customer.example", {}, {"sender": "x@sub.customer.example"},
                    "sender domain customer.example matches 'customer.example'",
                    "sender domain sub.customer.example matches none of 'customer.example'"),
    "envelope_from": ("bounce+*@customer.example",
                      {"_env": "bounce+123@customer.example"}, {"_env": "x@customer.example"},
                      "envelope from bounce+123@customer.example matches "
                      "'bounce+*@customer.example'",
                      "envelope from x@customer.example matches none of "
                      "'bounce+*@customer.example'"),
    "recipient": ("billing@helpdesk.example",
                  {"_rcpt": ("billing@helpdesk.example",)},
                  {"_rcpt": ("support@helpdesk.example",)},
                  "recipient billing@helpdesk.example matches 'billing@helpdesk.example'",
                  "recipient support@helpdesk.example matches none of "
                  "'billing@helpdesk.example'"),
    "to": ("sales@*", {"to": "Sales <sales@helpdesk.example>"}, {},
           "to sales@helpdesk.example matches 'sales@*'",
           "to support@helpdesk.example matches none of 'sales@*'"),
    "cc": ("boss@customer.example", {"headers": {"Cc": "boss@customer.example"}}, {},
           "cc boss@customer.example matches 'boss@customer.example'",
           "cc (none) matches none of 'boss@customer.example'"),
    "classification": ("out-of-office",
                       {"subject": "Out of office", "headers": {"Auto-Submitted": "auto-replied"}},
                       {}, "classified out-of-office (labels: ",
                       "not classified out-of-office (labels: none)"),
    "dkim": ("pass", {"_verdict": SIGNED}, {"_verdict": SenderVerdict("fail", source="dkimpy")},
             "dkim result pass (by dkimpy) is pass", "dkim result fail (by dkimpy) is not pass"),
    "aligned": (True, {"_verdict": SIGNED}, {},
                "a valid signature aligned with the From domain (dkim pass, by dkimpy)",
                "no valid signature aligned with the From domain (dkim none, not checked)"),
    "dmarc": ("pass", {"_verdict": SIGNED},
              {"_verdict": SenderVerdict("fail", False, "fail", True, "authres:mx.example")},
              "dmarc result pass (by dkimpy) is pass",
              "dmarc result fail (by authres:mx.example) is not pass"),
    "size_over": (5000, {"body": "x" * 6000}, {}, "bytes is over 5000", "bytes is not over 5000"),
    "size_under": (5000, {}, {"body": "x" * 6000}, "bytes is under 5000",
                   "bytes is not under 5000"),
    "header_exists": ("X-Mailer", {"headers": {"X-Mailer": "mutt"}}, {},
                      "header X-Mailer exists", "none of the headers 'X-Mailer' exists"),
    "header_contains": ({"X-Priority": "1"}, {"headers": {"X-Priority": "1 (Highest)"}},
                        {"headers": {"X-Priority": "3"}},
                        "header X-Priority contains '1'",
                        "header X-Priority contains none of '1'"),
    "header_matches": ({"X-Ticket": r"^T-\d+$"}, {"headers": {"X-Ticket": "T-42"}},
                       {"headers": {"X-Ticket": "T-x"}},
                       r"header X-Ticket matches /^T-\d+$/",
                       r"header X-Ticket matches none of /^T-\d+$/"),
    "attachment_name": ("*.pdf", {"attachments": PDF}, {},
                        "attachment name report.pdf matches '*.pdf'",
                        "attachment name (none) matches none of '*.pdf'"),
    "attachment_type": ("application/*", {"attachments": PDF}, {},
                        "attachment type application/pdf matches 'application/*'",
                        "attachment type (none) matches none of 'application/*'"),
    "subject_contains": ("urgent", {"subject": "URGENT: down"}, {},
                         "subject contains 'urgent'", "subject contains none of 'urgent'"),
    "subject_matches": (r"order \d{5}", {"subject": "Order 12345"}, {"subject": "Order 12"},
                        r"subject matches /order \d{5}/",
                        r"subject matches none of /order \d{5}/"),
    "body_contains": ("refund", {"body": "I want a Refund."}, {},
                      "body contains 'refund'", "body contains none of 'refund'"),
    "body_matches": (r"^case:\s*\d+", {"body": "hello\ncase: 7\n"}, {"body": "no case: 7"},
                     r"body matches /^case:\s*\d+/", r"body matches none of /^case:\s*\d+/"),
}


def _build(spec: dict[str, Any]) -> tuple[bytes, str | None, tuple[str, ...], SenderVerdict]:
    spec = dict(spec)
    env = spec.pop("_env", None)
    rcpt = spec.pop("_rcpt", ())
    verdict = spec.pop("_verdict", NO_VERDICT)
    return message(**spec), env, rcpt, verdict


def _toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + " }"
    if isinstance(v, str):
        return "'" + v + "'"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def test_every_condition_is_covered_by_the_table() -> None:
    assert set(CASES) == set(BUILDERS)


@pytest.mark.parametrize("key", sorted(CASES))
def test_every_condition_routes_and_explains_in_both_forms(key: str) -> None:
    value, yes, no, why_yes, why_no = CASES[key]
    plain = ruleset(f"[[rule]]\nname = 'r'\n{key} = {_toml_value(value)}\ntags = ['hit']\n")
    negated = ruleset(f"[[rule]]\nname = 'r'\nnot_{key} = {_toml_value(value)}\ntags = ['hit']\n")
    for spec, expected, why in ((yes, True, why_yes), (no, False, why_no)):
        raw, env, rcpt, verdict = _build(spec)
        for rs, form, holds in ((plain, key, expected), (negated, f"not_{key}", not expected)):
            d = decide(rs, raw, env, rcpt, verdict)
            assert (d.route.matched == ("r",)) is holds, (form, spec)
            assert d.trace[0].status == (MATCHED if holds else NOT_MATCHED)
            # The negated form explains what the plain test saw.
            assert d.trace[0].reason.startswith(f"{form}: "), d.trace[0].reason
            assert why in d.trace[0].reason, (form, d.trace[0].reason)


def test_sender_domain_exact_or_with_subdomains() -> None:
    rs = ruleset("""
[[rule]]
name = "exact"
from_domain = "acme.example"
tags = ["exact"]

[[rule]]
name = "tree"
from_domain = "*.acme.example"
tags = ["tree"]
""")
    def tags(sender: str) -> tuple[str, ...]:
        return decide(rs, message(sender=sender)).route.tags

    assert tags("a@acme.example") == ("exact", "tree")
    assert tags("a@eu.ACME.example") == ("tree",)
    assert tags("a@notacme.example") == ()
    assert tags("a@acme.example.evil") == ()


def test_conditions_see_decoded_subject_and_body() -> None:
    raw = (b"From: a@customer.example\r\nTo: support@helpdesk.example\r\n"
           b"Subject: =?utf-8?q?Rechnung_f=C3=BCr_M=C3=A4rz?=\r\n"
           b"Content-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"Gr=FC=DFe aus K=F6ln\r\n")
    rs = ruleset("""
[[rule]]
name = "subject"
subject_contains = "rechnung für märz"
queue = "Billing"

[[rule]]
name = "body"
body_matches = 'grüße aus köln'
tags = ["koeln"]
""")
    d = decide(rs, raw)
    assert d.route.queue == "Billing"
    assert d.route.tags == ("koeln",)


def test_all_conditions_of_a_rule_must_hold_and_the_deciding_one_is_named() -> None:
    rs = ruleset("""
[[rule]]
name = "billing from acme"
from_domain = "acme.example"
subject_contains = ["invoice", "factura"]
queue = "Billing"
""")
    hit = decide(rs, message(subject="Factura 7", sender="x@acme.example"))
    assert hit.route.queue == "Billing"
    assert hit.trace[0].status == MATCHED
    assert "from_domain" in hit.trace[0].reason and "'factura'" in hit.trace[0].reason
    miss = decide(rs, message(subject="Hello", sender="x@acme.example"))
    assert miss.route.queue is None and miss.route.matched == ()
    assert miss.trace[0].status == NOT_MATCHED
    assert miss.trace[0].reason.startswith("subject_contains:")
    other = decide(rs, message(subject="invoice", sender="x@else.example"))
    assert other.trace[0].reason.startswith("from_domain:")
    assert "else.example" in other.trace[0].reason


def test_first_rule_wins_unless_override_and_tags_add_up() -> None:
    rs = ruleset("""
[[rule]]
name = "one"
queue = "Billing"
priority = 2
tags = ["a"]

[[rule]]
name = "two"
queue = "Sales"
priority = 4
tags = ["b", "a"]

[[rule]]
name = "three"
override = true
priority = 1
""")
    d = decide(rs, message())
    assert d.route.queue == "Billing"
    assert d.route.priority == 1
    assert d.route.tags == ("a", "b")
    assert d.route.matched == ("one", "two", "three")
    two = d.trace[1]
    assert set(two.overruled) == {"queue", "priority"} and two.applied == ("tags",)


def test_stop_ends_evaluation_and_later_rules_are_reported_skipped() -> None:
    rs = ruleset("""
[[rule]]
name = "spam"
header_contains = { "X-Spam-Flag" = "YES" }
ignore = true
stop = true

[[rule]]
name = "everything"
queue = "Support"
""")
    spam = decide(rs, message(headers={"X-Spam-Flag": "YES"}))
    assert spam.route.ignore and spam.route.queue is None
    assert spam.route.matched == ("spam",)
    assert [t.status for t in spam.trace] == [MATCHED, SKIPPED]
    assert "'spam' has stop = true" in spam.trace[1].reason
    ham = decide(rs, message(headers={"X-Spam-Flag": "NO"}))
    assert not ham.route.ignore and ham.route.queue == "Support"


ALERT_RE = (r"^\*\* (?P<kind>PROBLEM|RECOVERY) (?:Service|Host) Alert: "
            r"(?P<host>[^/\s]+)(?:/(?P<service>.+?))? is (?P<status>\w+) \*\*")
NAGIOS = f"""
[[rule]]
name = "alert"
subject_matches = '{ALERT_RE}'
thread_key = "nagios:{{host}}/{{service}}"
customer = "{{from_domain}}"
no_auto_response = true
"""


def test_thread_key_from_regex_captures() -> None:
    rs = ruleset(NAGIOS)
    a = decide(rs, message(subject="** PROBLEM Service Alert: web01/HTTP is CRITICAL **",
                           sender="nagios@mon.example"))
    b = decide(rs, message(subject="** RECOVERY Service Alert: web01/HTTP is OK **",
                           sender="nagios@mon.example"))
    host = decide(rs, message(subject="** PROBLEM Host Alert: db02 is DOWN **"))
    assert a.route.thread_key == b.route.thread_key == "nagios:web01/HTTP"
    assert a.route.customer == "mon.example" and a.route.no_auto_response
    assert host.route.thread_key == "nagios:db02/"
    other = decide(rs, message(subject="** PROBLEM Service Alert: web02/HTTP is CRITICAL **"))
    assert other.route.thread_key == "nagios:web02/HTTP"


def test_recipient_falls_back_to_delivery_headers_without_an_envelope() -> None:
    rs = ruleset("[[rule]]\nname = 'r'\nrecipient = 'billing@*'\nqueue = 'Billing'\n")
    raw = message(to="someone@helpdesk.example",
                  headers={"Delivered-To": "billing@helpdesk.example"})
    assert decide(rs, raw).route.queue == "Billing"
    assert decide(rs, raw, rcpt=("support@helpdesk.example",)).route.queue is None


def test_dkim_reads_the_verdict_not_the_headers() -> None:
    """A sender's own `Authentication-Results: ...; dkim=pass` is not the verdict; which
    headers the intake believes is tested in test_verify.py."""
    rs = ruleset("[[rule]]\nname = 'r'\ndkim = 'pass'\ntags = ['signed']\n")
    forged = b"Authentication-Results: mx.helpdesk.example; dkim=pass header.d=x\r\n"
    assert decide(rs, forged + message()).route.tags == ()
    assert decide(rs, message(), verdict=SIGNED).route.tags == ("signed",)


def test_aligned_takes_only_true_or_false() -> None:
    _rules, problems = parse_rule_text("[[rule]]\nname = 'r'\naligned = 'yes'\ntags = ['x']\n",
                                       "t.toml", QUEUES)
    assert "must be true or false" in str(problems[0])
    _rules, problems = parse_rule_text("[[rule]]\nname = 'r'\ndmarc = 'quarantine'\n"
                                       "tags = ['x']\n", "t.toml", QUEUES)
    assert "unknown value 'quarantine'" in str(problems[0])


def test_classification_condition_uses_the_core_labels() -> None:
    rs = ruleset("[[rule]]\nname = 'r'\nclassification = ['bounce', 'bulk']\nstate = 'closed'\n")
    assert decide(rs, message(headers={"Precedence": "bulk"})).route.state == "closed"
    assert decide(rs, message()).route.state is None


class _Alarm(Exception):
    pass


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail instead of hanging forever if a regex runs away (generous: 30 s)."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Alarm("evaluation did not finish")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_hostile_regex_against_a_1mb_body_finishes_and_routes_right(alarm: None) -> None:
    # (a|aa)+$ backtracks exponentially on a run of a's that is not followed by the end.
    rs = ruleset("""
[[rule]]
name = "hostile"
body_matches = '(a|aa)+$'
queue = "Sales"

[[rule]]
name = "hostile negated"
not_body_matches = '(a|aa)+$'
tags = ["must-not-match"]

[[rule]]
name = "fallback"
body_contains = "aaaa"
queue = "Billing"
""")
    body = ("a" * 60 + "!\n") * (1024 * 1024 // 62)
    assert len(body) >= 1_000_000
    d = decide(rs, message(body=body))
    assert d.route.queue == "Billing"
    assert d.route.tags == ()  # a timed-out regex is undecided: neither form matches
    assert "timed out" in d.trace[0].reason


def test_conditions_see_at_most_max_match_chars() -> None:
    text = "[[rule]]\nname = 'r'\nbody_contains = 'needle'\ntags = ['found']\n"
    body = "x" * 70_000 + " needle"
    assert decide(ruleset(text, max_match_chars=65536), message(body=body)).route.tags == ()
    assert decide(ruleset(text, max_match_chars=100_000),
                  message(body=body)).route.tags == ("found",)


def test_a_rule_without_conditions_matches_everything() -> None:
    d = decide(ruleset("[[rule]]\nname = 'all'\ntags = ['x']\n"), message())
    assert d.route.matched == ("all",)
    assert d.trace[0].reason == "no conditions: matches every message"


def test_domain_index_leaves_only_rules_that_can_match_in_rule_order() -> None:
    rs = ruleset("""
[[rule]]
name = "acme tree"
from_domain = "*.acme.example"
tags = ["a"]

[[rule]]
name = "other"
from_domain = "other.example"
tags = ["o"]

[[rule]]
name = "not other"
not_from_domain = "other.example"
tags = ["n"]

[[rule]]
name = "all"
tags = ["x"]
""")
    index = rs.domain_index
    assert index.candidates("mail.eu.acme.example") == [0, 2, 3]
    assert index.candidates("other.example") == [1, 2, 3]
    assert index.candidates("") == [2, 3]
    d = decide(rs, message(sender="a@mail.eu.acme.example"))
    assert d.route.tags == ("a", "n", "x")


DOMAINS = ["acme.example", "eu.acme.example", "globex.example", "a.b.globex.example", ""]


@settings(max_examples=60, deadline=None)
@given(
    rules=st.lists(st.tuples(st.sampled_from(["", "*."]), st.sampled_from(DOMAINS[:4]),
                             st.booleans(), st.booleans(), st.booleans()),
                   min_size=1, max_size=6),
    sender=st.sampled_from(DOMAINS),
)
def test_routing_path_and_explained_path_agree(
    rules: list[tuple[str, str, bool, bool, bool]], sender: str
) -> None:
    text = []
    for i, (tree, domain, negate, stop, override) in enumerate(rules):
        key = "not_from_domain" if negate else "from_domain"
        text.append(f'[[rule]]\nname = "r{i}"\n{key} = "{tree}{domain}"\nqueue = '
                    f'"{QUEUES[i % len(QUEUES)]}"\ntags = ["t{i}"]\nstop = {str(stop).lower()}\n'
                    f"override = {str(override).lower()}\n")
    rs = ruleset("\n".join(text))
    decide(rs, message(sender=f"x@{sender}" if sender else "nobody"))  # asserts agreement
