"""The flood limits: a mailbox per day (exact, with concurrent writers), a domain and the
whole site per hour. Real intake and auto-responder on real SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from autoresponse.limits import flood_suppressions, mailbox_key
from gateway.config import ConfigError
from gateway.intake.core import Intake
from gateway.intake.outcome import Outcome
from gateway.mail.envelope import Envelope
from gateway.runtime import Store
from tests.autoresponse_helpers import (
    answer_flood,
    answering_intake,
    build_mail,
    outbox_rows,
    suppressed_events,
)
from tests.support import make_config
from ticketstore.models import AnswerCount

QUEUE = "support@helpdesk.example"


def _mail(sender: str, i: int) -> tuple[bytes, Envelope]:
    return (build_mail(subject=f"question {i}", sender=sender, message_id=f"q{i}@x"),
            Envelope(sender.rpartition("<")[2].rstrip(">"), (QUEUE,)))


def _clocked(config: Any, store: Store, now: list[dt.datetime]) -> Intake:
    from autoresponse.autoresponder import AutoResponder

    intake = Intake(config, store.factory, responder=AutoResponder(config),
                    clock=lambda: now[0])
    intake.sync_queues()
    return intake


def test_mailbox_key() -> None:
    assert mailbox_key("Victim+0@TARGET.example.") == "victim@target.example"
    assert mailbox_key("<victim+a+b@target.example>") == "victim@target.example"
    assert mailbox_key("victim-x@t.example", "+-") == "victim@t.example"
    assert mailbox_key("victim+x@t.example", "") == "victim+x@t.example"
    assert mailbox_key("+only@t.example") == "+only@t.example"


def test_the_daily_limit_counts_a_mailbox_not_a_spelling(tmp_path: Path, db_url: str,
                                                         store: Store) -> None:
    config = make_config(tmp_path, db_url, autoresponse={"max_per_day": 10})
    intake = answering_intake(config, store)
    spellings = [f"victim+{i}@target.example" for i in range(12)] + [
        "Victim@TARGET.example", "victim@target.example.", "VICTIM+x@Target.Example."]
    for i, addr in enumerate(spellings):
        assert intake.process(*_mail(addr, i)).outcome is Outcome.CREATED
    rows = outbox_rows(store)
    assert len(rows) == 10  # was 10 + 12 + 2
    assert all(not r.rcpt_to.endswith(".") for r in rows)
    events = suppressed_events(store)
    assert [e["check"] for e in events] == ["daily-limit"] * 5
    assert "to victim@target.example today" in str(events[0]["reason"])
    with store.factory() as s:
        assert s.execute(select(AnswerCount.mailbox, AnswerCount.answers)).all() == [
            ("victim@target.example", 10)]


def test_recipient_delimiter_is_configurable(tmp_path: Path, db_url: str,
                                             store: Store) -> None:
    config = make_config(tmp_path, db_url, autoresponse={
        "max_per_day": 1, "recipient_delimiter": "-"})
    intake = answering_intake(config, store)
    for i, addr in enumerate(["ana-a@c.example", "ana-b@c.example", "ana+c@c.example"]):
        intake.process(*_mail(addr, i))
    assert [r.rcpt_to for r in outbox_rows(store)] == ["ana-a@c.example", "ana+c@c.example"]


def test_the_day_is_the_utc_day(tmp_path: Path, db_url: str, store: Store) -> None:
    now = [dt.datetime(2026, 11, 22, 23, 30, tzinfo=dt.UTC)]
    intake = _clocked(make_config(tmp_path, db_url, autoresponse={"max_per_day": 1}),
                      store, now)
    intake.process(*_mail("ana@c.example", 1))
    now[0] += dt.timedelta(minutes=20)
    intake.process(*_mail("ana@c.example", 2))  # 23:50: limited
    now[0] += dt.timedelta(minutes=20)
    intake.process(*_mail("ana@c.example", 3))  # 00:10 the next day: answered
    subjects = [r.message.split(b"Subject: ")[1].split(b"\r\n")[0] for r in outbox_rows(store)]
    assert [s.rpartition(b" ")[2] for s in subjects] == [b"1", b"3"]
    assert [e["check"] for e in suppressed_events(store)] == ["daily-limit"]


def test_a_failed_answer_gives_its_place_back(tmp_path: Path, db_url: str,
                                              store: Store) -> None:
    site = tmp_path / "templates" / "default" / "en"
    site.mkdir(parents=True)
    (site / "new-ticket.txt").write_text("{{ no_such_variable }}", encoding="utf-8")
    config = make_config(tmp_path, db_url, autoresponse={"max_per_day": 1})
    intake = answering_intake(config, store)
    intake.process(*_mail("ana@c.example", 1))
    (site / "new-ticket.txt").unlink()
    intake.process(*_mail("ana@c.example", 2))
    assert len(outbox_rows(store)) == 1
    assert [e["check"] for e in suppressed_events(store)] == ["template-error"]


def test_global_limit_per_hour(tmp_path: Path, db_url: str, store: Store) -> None:
    now = [dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)]
    config = make_config(tmp_path, db_url, autoresponse={
        "max_per_hour": 3, "max_per_domain_per_hour": 0})
    intake = _clocked(config, store, now)
    for i in range(5):  # a flood of forged senders, each at its own domain
        intake.process(*_mail(f"user@d{i}.example", i))
        now[0] += dt.timedelta(minutes=1)
    assert len(outbox_rows(store)) == 3
    events = suppressed_events(store)
    assert [e["check"] for e in events] == ["global-limit"] * 2
    assert events[0]["reason"] == (
        "3 auto-responses from this site in the last hour (max_per_hour = 3)")
    with store.engine.connect() as conn:
        assert flood_suppressions(conn, now[0]) == {"global-limit": 2, "domain-limit": 0}
        assert flood_suppressions(conn, now[0] + dt.timedelta(hours=1)) == {
            "global-limit": 0, "domain-limit": 0}
    now[0] += dt.timedelta(hours=1)  # the first answers have left the hour
    intake.process(*_mail("user@d9.example", 9))
    assert len(outbox_rows(store)) == 4


def test_domain_limit_per_hour(tmp_path: Path, db_url: str, store: Store) -> None:
    config = make_config(tmp_path, db_url, autoresponse={"max_per_domain_per_hour": 2})
    intake = answering_intake(config, store)
    for i, addr in enumerate(["a@target.example", "b@TARGET.example", "c@target.example.",
                              "d@other.example"]):
        intake.process(*_mail(addr, i))
    assert [r.rcpt_to for r in outbox_rows(store)] == [
        "a@target.example", "b@target.example", "d@other.example"]
    [event] = suppressed_events(store)
    assert event["check"] == "domain-limit"
    assert event["reason"] == ("2 auto-responses to target.example in the last hour "
                               "(max_per_domain_per_hour = 2)")


@pytest.mark.parametrize(("key", "value"), [
    ("max_per_hour", -1), ("max_per_domain_per_hour", -1), ("max_answer_size", 100),
    ("recipient_delimiter", "a"), ("recipient_delimiter", "@")])
def test_bad_limit_settings_are_refused(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"autoresponse.{key}"):
        make_config(tmp_path, "sqlite://", autoresponse={key: value})


# -- exact with concurrent writers (issue 18, item 5) -------------------------------------

WRITERS = 4
PER_WRITER = 6
MAX_PER_DAY = 5


def test_daily_limit_is_exact_with_concurrent_writer_processes(tmp_path: Path, db_url: str,
                                                                store: Store) -> None:
    """Four processes acknowledge follow-ups to one mailbox (in several spellings) at once;
    each writes to its own ticket, so only the limit is shared between them."""
    sections: dict[str, Any] = {
        "autoresponse": {"max_per_day": MAX_PER_DAY},
        "queues": [{"name": "Support", "addresses": [QUEUE], "follow_up_ack": True}]}
    config = make_config(tmp_path, db_url, **sections)
    opener = Intake(config, store.factory)  # no responder: opening the tickets counts nothing
    opener.sync_queues()
    tickets = [opener.process(*_mail("victim@target.example", 100 + w)).ticket_number
               for w in range(WRITERS)]
    spellings = ["victim@target.example", "Victim@TARGET.example", "victim+x@target.example",
                 "victim@target.example."]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=answer_flood, args=(
        str(tmp_path), db_url, sections, tickets[w],
        [spellings[(w + i) % len(spellings)] for i in range(PER_WRITER)], barrier))
        for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with store.factory() as s:
        answers = s.execute(select(func.count()).select_from(AnswerCount)).scalar_one()
        assert answers == 1
    assert len(outbox_rows(store)) == MAX_PER_DAY
    checks = [e["check"] for e in suppressed_events(store)]
    assert checks == ["daily-limit"] * (WRITERS * PER_WRITER - MAX_PER_DAY)


def test_status_page_and_healthz_say_a_flood_limit_was_reached(tmp_path: Path,
                                                                db_url: str) -> None:
    import json

    from tests.status_helpers import StatusService, make_context

    config = make_config(tmp_path, db_url, status={"listen": "127.0.0.1:0"},
                         autoresponse={"max_per_hour": 2})
    ctx, store = make_context(config)
    try:
        svc = StatusService(ctx)
        try:
            before = json.loads(svc.request("/healthz").body)
            intake = answering_intake(config, store)
            for i in range(3):
                intake.process(*_mail(f"user@d{i}.example", i))
            health = svc.request("/healthz")
            page = svc.request("/").text
        finally:
            svc.stop()
    finally:
        store.dispose()
    assert before["checks"]["autoresponse"]["ok"] is True
    doc = json.loads(health.body)
    assert doc["status"] == "fail" and doc["failing"] == ["autoresponse"]
    assert doc["checks"]["autoresponse"]["detail"] == "global-limit reached (1 suppressed)"
    assert "global-limit reached: 1 answer suppressed in the last hour" in page


def test_answer_counts_of_past_days_are_pruned(tmp_path: Path, db_url: str,
                                               store: Store) -> None:
    from autoresponse.limits import prune, reserve

    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    with store.engine.begin() as conn:
        for days in range(4):
            assert reserve(conn, "ana@c.example", now - dt.timedelta(days=days), 5)
        assert prune(conn, now) == 2  # today and yesterday stay
    with store.factory() as s:
        assert sorted(d.day for d in s.execute(select(AnswerCount)).scalars()) == [
            dt.date(2026, 11, 21), dt.date(2026, 11, 22)]
