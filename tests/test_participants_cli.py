"""Participants and strangers from the outside: `ticketgate pipe` (a real subprocess),
the LMTP server, `tickets participants`, `held` and `rules test`, on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.cli import main
from gateway.config import load_config
from gateway.runtime import open_store
from tests.participants_helpers import AGENT, OPENING_ID, SUPPORT, opening, participants, reply
from tests.pipe_helpers import ticketgate, write_config
from tests.server_helpers import RunningDaemon, daemon_config, prepare_database, send
from ticketstore.models import Article, Ticket

STRANGER = "Ana Ruiz <mallory@evil.example>"


def site(tmp_path: Path, db_url: str, policy: str = "new-ticket") -> Path:
    """A pipe-style config whose Support queue has `stranger_follow_up = policy`."""
    path = write_config(tmp_path, db_url, participants={"agents": [AGENT]})
    text = path.read_text("utf-8").replace(
        'name = "Support"', f'name = "Support"\nstranger_follow_up = "{policy}"')
    path.write_text(text, "utf-8")
    return path


def pipe(config: Path, raw: bytes) -> None:
    done = ticketgate(config, "pipe", "-f", "someone@sender.example", "-r", SUPPORT, stdin=raw)
    assert done.returncode == 0, done.stderr


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["-c", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> Any:
    code, out, err = run(capsys, config, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def numbers(capsys: pytest.CaptureFixture[str], config: Path) -> list[str]:
    return [t["number"] for t in run_json(capsys, config, "tickets", "list")]


def test_over_the_pipe_a_stranger_gets_a_linked_ticket_and_the_customer_threads(
        tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = site(tmp_path, db_url)
    pipe(config, opening())
    (n,) = numbers(capsys, config)
    pipe(config, reply(STRANGER, n))
    stranger_n = next(x for x in numbers(capsys, config) if x != n)
    pipe(config, reply("Ben <ben@customer.example>", n, body="colleague here"))
    pipe(config, reply("pat@partner.example", n, body="partner here"))
    data = run_json(capsys, config, "tickets", "show", n)
    assert [a["from"] for a in data["articles"]] == [
        "ana@customer.example", "ben@customer.example", "pat@partner.example"]
    assert not any(a["from_stranger"] for a in data["articles"])
    assert [p["address"] for p in data["participants"]] == [
        "ana@customer.example", "pat@partner.example"]
    (event,) = [e for e in data["history"] if e["kind"] == "stranger-follow-up"]
    assert event["detail"]["new_ticket"] == stranger_n
    assert event["detail"]["from"] == "mallory@evil.example"
    theirs = run_json(capsys, config, "tickets", "show", stranger_n)
    assert theirs["linked_ticket"] == n


def test_participants_add_remove_list_are_recorded(
        tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = site(tmp_path, db_url, policy="hold")
    pipe(config, opening())
    (n,) = numbers(capsys, config)
    code, out, _ = run(capsys, config, "tickets", "participants", "add", n,
                       "Auditor+x@Audit.Example")
    assert (code, out.strip()) == (0, f"ticket {n}: auditor@audit.example added")
    code, out, _ = run(capsys, config, "tickets", "participants", "add", n,
                       "auditor@audit.example")
    assert "already a participant" in out
    listed = run_json(capsys, config, "tickets", "participants", "list", n)
    assert [(p["address"], p["source"]) for p in listed] == [
        ("ana@customer.example", "customer"), ("pat@partner.example", "cc"),
        ("auditor@audit.example", "admin")]
    pipe(config, reply("auditor@audit.example", n))  # now they may write
    assert run(capsys, config, "tickets", "participants", "remove", n, "pat@partner.example"
               )[0] == 0
    code, _, err = run(capsys, config, "tickets", "participants", "remove", n,
                       "pat@partner.example")
    assert code == 1 and "not a participant" in err
    assert run(capsys, config, "tickets", "participants", "add", n)[0] == 64
    assert run(capsys, config, "tickets", "participants", "add", n, "nobody")[0] == 64
    assert run(capsys, config, "tickets", "participants", "list", "999")[0] == 1
    code, out, _ = run(capsys, config, "tickets", "participants", "list", n)
    assert out.splitlines()[0].split() == ["ADDRESS", "SOURCE", "ADDED"]
    data = run_json(capsys, config, "tickets", "show", n)
    changes = [(e["kind"], e["detail"]) for e in data["history"]
               if e["kind"].startswith("participants-") and e["detail"]["by"] == "cli"]
    assert changes == [
        ("participants-added", {"added": [{"address": "auditor@audit.example",
                                           "source": "admin"}], "by": "cli"}),
        ("participants-removed", {"removed": ["pat@partner.example"], "by": "cli"})]
    assert [a["from"] for a in data["articles"]][-1] == "auditor@audit.example"
    # Pat is a stranger now: held.
    pipe(config, reply("pat@partner.example", n))
    assert len(run_json(capsys, config, "held", "list")) == 1


def test_held_list_release_discard(tmp_path: Path, db_url: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = site(tmp_path, db_url, policy="hold")
    pipe(config, opening())
    (n,) = numbers(capsys, config)
    pipe(config, reply(STRANGER, n, body="one"))
    pipe(config, reply(STRANGER, n, body="two"))
    assert numbers(capsys, config) == [n]
    rows = run_json(capsys, config, "held", "list")
    assert [(r["ticket"], r["state"], r["from"]) for r in rows] == [
        (n, "held", "mallory@evil.example")] * 2
    first, second = rows[0]["id"], rows[1]["id"]
    code, out, _ = run(capsys, config, "held", "list")
    assert code == 0 and "mallory@evil.example" in out
    code, out, err = run(capsys, config, "held", "release", str(first))
    assert code == 0, err
    assert f"onto ticket {n}" in out
    assert run(capsys, config, "held", "discard", str(second))[0] == 0
    code, _, err = run(capsys, config, "held", "discard", str(second))
    assert code == 1 and "already discarded" in err
    assert run_json(capsys, config, "held", "list") == []
    assert [r["state"] for r in run_json(capsys, config, "held", "list", "--all")] == [
        "released", "discarded"]
    data = run_json(capsys, config, "tickets", "show", n)
    assert [a["from_stranger"] for a in data["articles"]] == [False, True]
    code, out, _ = run(capsys, config, "tickets", "show", n)
    assert "STRANGER" in out and "Participants: ana@customer.example (customer)" in out


def test_rules_test_explains_the_path_and_the_policy(
        tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = site(tmp_path, db_url)
    pipe(config, opening())
    (n,) = numbers(capsys, config)
    eml = tmp_path / "stranger.eml"
    eml.write_bytes(reply(STRANGER, n))
    data = run_json(capsys, config, "rules", "test", str(eml))
    assert data["threading"] == {
        "path": "number", "why": f"ticket number {n}",
        "sender": "mallory@evil.example is not a participant",
        "stranger_policy": "new-ticket"}
    assert data["ticket_note"].startswith(f"a stranger's follow-up to [Ticket#{n}] by number: "
                                          "new ticket in Support")
    eml.write_bytes(reply("ana@customer.example", n, extra=f"In-Reply-To: <{OPENING_ID}>\n"))
    code, out, _ = run(capsys, config, "rules", "test", str(eml))
    assert code == 0
    assert (f"threaded by:  proof: In-Reply-To/References name <{OPENING_ID}>, a message of "
            "this ticket") in out
    assert "sender:       ana@customer.example is a participant (customer)" in out
    eml.write_bytes(reply("ben@customer.example", n))
    data = run_json(capsys, config, "rules", "test", str(eml))
    assert data["threading"]["sender"] == (
        "ben@customer.example is at the customer's domain customer.example (same_domain)")
    assert data["ticket_note"] == f"follow-up to [Ticket#{n}] (new) in Support"
    for policy, note in [("accept", "appended, flagged as a stranger's"),
                         ("hold", "held, not threaded")]:
        config = site(tmp_path, db_url, policy)
        eml.write_bytes(reply(STRANGER, n))
        data = run_json(capsys, config, "rules", "test", str(eml))
        assert note in data["ticket_note"]
        assert data["threading"]["stranger_policy"] == policy


def test_over_lmtp_a_strangers_follow_up_does_not_touch_the_customers_ticket(
        tmp_path: Path, db_url: str) -> None:
    prepare_database(db_url)
    daemon = RunningDaemon(daemon_config(tmp_path, db_url)).start()
    try:
        client = daemon.lmtp()
        try:
            assert [c for c, _ in send(client, [SUPPORT], opening())] == [250]
            with daemon.ctx.store.factory() as s:
                n = s.execute(select(Ticket.number)).scalar_one()
            assert [c for c, _ in send(client, [SUPPORT], reply(STRANGER, n))] == [250]
            assert [c for c, _ in send(client, [SUPPORT], reply("ben@customer.example", n))
                    ] == [250]
        finally:
            client.quit()
        with daemon.ctx.store.factory() as s:
            rows = s.execute(select(Ticket.number, Article.from_address).join(Article)
                             .order_by(Article.id)).all()
            assert participants(s, n) == {"ana@customer.example": "customer",
                                          "pat@partner.example": "cc",
                                          "kai.agent@helpdesk.example": "cc"}
    finally:
        daemon.stop()
    assert [(num == n, sender) for num, sender in rows] == [
        (True, "ana@customer.example"), (False, "mallory@evil.example"),
        (True, "ben@customer.example")]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_makes_existing_customers_participants(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    from sqlalchemy import text

    from ticketstore.db import make_engine, upgrade

    url = (f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = make_engine(url)
    upgrade(engine, "0003_outbox_answer")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO queues (id, name, created_at) VALUES (1, 'S', "
                          "'2026-01-01 00:00:00+00')"))
        conn.execute(text(
            "INSERT INTO tickets (id, number, title, queue_id, state, priority, "
            "customer_address, customer_name, customer_domain, customer_id, tags, "
            "created_at, updated_at) VALUES (1, '1', 't', 1, 'new', 3, 'Ana@X.example', '', "
            "'x.example', '', '[]', '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00')"))
    upgrade(engine)
    with engine.connect() as conn:
        assert participants(conn, "1") == {"ana@x.example": "customer"}
    engine.dispose()
    loaded = load_config(str(write_config(tmp_path, url)), env={})
    open_store(loaded).dispose()  # the schema is current: no complaint


def test_a_site_from_init_keeps_strangers_out_and_lets_the_customers_people_in(
        tmp_path: Path) -> None:
    """Issue 16's "done when", as a new user would try it on a site from `ticketgate init`."""
    from gateway.intake.outcome import Outcome
    from gateway.mail.envelope import Envelope
    from gateway.runtime import build_intake
    from ticketstore.models import OutboxMessage

    site_dir = tmp_path / "site"
    assert main(["init", str(site_dir)]) == 0
    config = load_config(str(site_dir / "ticketgate.toml"), env={})
    store = open_store(config)
    try:
        intake = build_intake(config, store)
        env = Envelope("relay@sender.example", (SUPPORT,))
        first = intake.process(opening(), env)
        n = first.ticket_number
        assert first.outcome is Outcome.CREATED and n is not None
        with store.factory() as s:
            (answer_id,) = s.execute(select(OutboxMessage.message_id)).scalars()
        stranger = intake.process(reply(STRANGER, n), env)
        assert stranger.outcome is Outcome.CREATED and stranger.ticket_number != n
        by_reference = reply("ana@customer.example", n, subject="Re: your request",
                             extra=f"References: <{answer_id}>\n")
        for raw in (by_reference, reply("ben@customer.example", n),
                    reply("pat@partner.example", n)):
            assert intake.process(raw, env).ticket_number == n
        with store.factory() as s, s.begin():
            t = s.execute(select(Ticket).where(Ticket.number == n)).scalar_one()
            t.state = "closed"
        again = intake.process(reply(STRANGER, n, body="reopen it"), env)
        assert again.ticket_number != n
        with store.factory() as s:
            t = s.execute(select(Ticket).where(Ticket.number == n)).scalar_one()
            assert t.state == "closed"
            froms = s.execute(select(Article.from_address).where(
                Article.ticket_id == t.id, Article.direction == "in")).scalars().all()
            assert "mallory@evil.example" not in froms and len(froms) == 4
            to_stranger = s.execute(select(OutboxMessage.message).where(
                OutboxMessage.rcpt_to == "mallory@evil.example")).scalars().all()
        assert to_stranger and not any(b"CONFIDENTIAL" in m for m in to_stranger)
    finally:
        store.dispose()
