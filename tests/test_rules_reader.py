"""Rule files: read in order, validated, every problem reported as file:line: rule: what."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest

from gateway.mail.verdict import SenderVerdict
from rules.errors import RulesError
from rules.reader import check_rules, load_rules
from tests.rules_helpers import QUEUES, decide, message


def write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(text, encoding="utf-8")
    return p


def problems(d: Path) -> list[str]:
    _rs, found = check_rules(d, QUEUES)
    return [str(p) for p in found]


GOOD = """# comment
[[rule]]
name = "first"
queue = "Billing"

[[rule]]
name = "second"
description = "text"
tags = "solo"
"""


def test_files_in_name_order_rules_in_file_order(tmp_path: Path) -> None:
    write(tmp_path, "20-b.toml", "[[rule]]\nname = 'b1'\ntags = ['b1']\n")
    write(tmp_path, "10-a.toml", GOOD)
    write(tmp_path, ".#10-a.toml", "broken [[")  # an editor's lock file is not read
    write(tmp_path, "notes.txt", "not a rule file")
    rs = load_rules(tmp_path, QUEUES)
    assert [r.name for r in rs.rules] == ["first", "second", "b1"]
    assert rs.rules[1].actions.tags == ("solo",)
    assert rs.rules[0].line == 2 and rs.rules[1].line == 6
    assert [f for f, _m, _s in rs.files] == ["10-a.toml", "20-b.toml"]


def test_missing_directory_means_no_rules(tmp_path: Path) -> None:
    rs = load_rules(tmp_path / "nope", QUEUES)
    assert rs.rules == ()
    assert decide(rs, message()).route.matched == ()


def test_each_problem_names_file_line_rule_and_what_is_wrong(tmp_path: Path) -> None:
    p = write(tmp_path, "10-x.toml", """[[rule]]
name = "ok"
queue = "Billing"

[[rule]]
name = "typo"
subject_contains = "x"
qeue = "Billing"

[[rule]]
name = "regex"
body_matches = '(unclosed'
tags = ["t"]

[[rule]]
name = "queue"
queue = "Nowhere"

[[rule]]
name = "types"
priority = "high"
ignore = "yes"
from_domain = 7
state = "done"

[[rule]]
name = "template"
subject_matches = '(?P<host>\\w+)'
thread_key = "k:{host}/{service}"
""")
    found = problems(tmp_path)
    # The regex library words its own error; the prefix is ours.
    assert found[1].startswith(f"{p}:12: rule 'regex': body_matches: bad regex '(unclosed': ")
    found[1] = "regex"
    assert found == [
        f"{p}:8: rule 'typo': unknown key 'qeue' (did you mean 'queue'?)",
        "regex",
        f"{p}:17: rule 'queue': queue: unknown queue 'Nowhere' "
        f"(configured: {', '.join(QUEUES)})",
        f"{p}:21: rule 'types': priority: must be an integer 1-5, not a string",
        f"{p}:22: rule 'types': ignore: must be true or false, not a string",
        f"{p}:23: rule 'types': from_domain: must be a string or a list of strings",
        f"{p}:24: rule 'types': state: unknown state 'done'; one of new, open, pending, closed",
        f"{p}:29: rule 'template': thread_key: placeholder {{service}} is not a named group "
        "of this rule's *_matches regexes (known: from, from_domain, host)",
    ]
    with pytest.raises(RulesError) as info:
        load_rules(tmp_path, QUEUES)
    assert len(info.value.problems) == 8
    assert f"{p}:8: rule 'typo'" in str(info.value)


def test_toml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    p = write(tmp_path, "a.toml", "[[rule]]\nname = 'x'\nqueue = Billing\n")
    found = problems(tmp_path)
    assert len(found) == 1 and found[0].startswith(f"{p}:3: not valid TOML")


def test_structure_problems(tmp_path: Path) -> None:
    p = write(tmp_path, "a.toml", """
queue = "Billing"

[rule]
name = "single brackets"
""")
    assert problems(tmp_path) == [
        f"{p}:2: unknown top-level key 'queue' (rules are [[rule]] tables)",
        f"{p}:4: write each rule as [[rule]] (double brackets)",
    ]


def test_names_are_required_and_unique_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "[[rule]]\nname = 'dup'\ntags = ['a']\n")
    b = write(tmp_path, "b.toml", "[[rule]]\ntags = ['x']\n\n[[rule]]\nname = 'dup'\n"
              "tags = ['b']\n\n[[rule]]\nname = 'idle'\nsubject_contains = 'x'\n")
    assert problems(tmp_path) == [
        f"{b}:1: rule '#1': needs a name (a non-empty string)",
        f"{b}:8: rule 'idle': has no actions (queue, priority, state, tags, customer, ignore, "
        "no_auto_response, thread_key, stop)",
        f"{b}:4: rule 'dup': name already used at {tmp_path / 'a.toml'}:1",
    ]


def test_header_and_domain_values_are_checked(tmp_path: Path) -> None:
    p = write(tmp_path, "a.toml", """[[rule]]
name = "h"
header_contains = "X-Spam-Flag: YES"
tags = ["t"]

[[rule]]
name = "d"
from_domain = "*@acme.example"
not_classification = "robot"
tags = ["t"]
""")
    assert problems(tmp_path) == [
        f"{p}:3: rule 'h': header_contains: must be a table of header name = value(s), "
        "e.g. { \"X-Spam-Flag\" = \"YES\" }",
        f"{p}:8: rule 'd': from_domain: '*@acme.example': use a domain (example.com) or "
        "*.example.com (the domain and its subdomains)",
        f"{p}:9: rule 'd': not_classification: unknown value 'robot'; one of auto-submitted, "
        "bulk, list, bounce, out-of-office, loop, loop-forged, null-sender, suppress-requested",
    ]


def test_starter_rules_are_valid_with_the_starter_config(tmp_path: Path) -> None:
    starter = resources.files("gateway").joinpath("starter")
    config = tomllib.loads(starter.joinpath("ticketgate.toml").read_text())
    queues = (*[q["name"] for q in config["queues"]], config["tickets"]["default_queue"])
    for item in starter.joinpath("rules").iterdir():
        if item.name.endswith(".toml"):
            write(tmp_path, item.name, item.read_text())
    rs, found = check_rules(tmp_path, queues)
    assert [str(p) for p in found] == []
    names = [r.name for r in rs.rules]
    assert {"spam flagged by the MTA", "monitoring problem", "monitoring recovery",
            "billing keywords", "customer by domain"} <= set(names)
    spam = decide(rs, message(headers={"X-Spam-Flag": "YES"}))
    assert spam.route.ignore
    for word in ("Invoice 1", "Factura 2", "Ihre Rechnung"):
        assert decide(rs, message(subject=word)).route.queue == "Billing"
    signed = SenderVerdict("pass", True, "pass", False, "dkimpy")
    alert = decide(rs, message(subject="** PROBLEM Service Alert: web01/HTTP is CRITICAL **",
                               sender="nagios@monitoring.example"), verdict=signed)
    assert alert.route.thread_key == "nagios:web01/HTTP" and alert.route.no_auto_response
    recovery = message(subject="** RECOVERY Service Alert: web01/HTTP is OK **",
                       sender="nagios@monitoring.example")
    rec = decide(rs, recovery, verdict=signed)
    assert rec.route.thread_key == "nagios:web01/HTTP" and rec.route.state == "closed"
    # Not verified: not a monitoring alert, so it closes nothing (docs/identity.md).
    assert decide(rs, recovery).route.state is None
    acme = decide(rs, message(sender="a@eu.acme.example"))
    assert acme.route.customer == "acme"
    other = decide(rs, message(sender="bob@widgets.example"))
    assert other.route.customer == "widgets.example"
    webmail = decide(rs, message(sender="bob@gmail.com"))
    assert webmail.route.customer == "bob@gmail.com"
