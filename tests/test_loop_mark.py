"""Our loop header is an HMAC of the Message-ID under the site secret: a forged one silences
nothing and is flagged; our own answer coming back is still recognised. Stored through the
real intake with the real auto-responder (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import stat
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.cli import main as cli_main
from gateway.config import Config, read_site_secret
from gateway.mail.classify import LOOP, LOOP_FORGED, classify
from gateway.mail.envelope import Envelope
from gateway.mail.loopmark import loop_mark, mark_is_valid
from gateway.mail.parse import parse_message
from gateway.runtime import Store
from tests.autoresponse_helpers import answering_intake, outbox_rows, suppressed_events
from tests.support import make_config
from tests.verify_helpers import SigningKey, dkim_key, key_name, mail, records_lookup, sign
from ticketstore.models import Article, Event

SECRET = b"0123456789abcdef0123456789abcdef"
ENV = Envelope("ana@customer.example", ("support@helpdesk.example",))
AGENTS = [{"name": "Support", "addresses": ["support@helpdesk.example"],
           "notify": ["agents@helpdesk.example"]}]


def test_the_mark_is_keyed_and_bound_to_the_message_id() -> None:
    mark = loop_mark(SECRET, "abc@helpdesk.example")
    assert mark.startswith("v1:") and len(mark) == 35
    assert mark_is_valid(SECRET, "<abc@helpdesk.example>", f"  {mark.upper()} ")
    assert not mark_is_valid(SECRET, "other@helpdesk.example", mark)
    assert not mark_is_valid(b"another site's secret", "abc@helpdesk.example", mark)
    assert not mark_is_valid(SECRET, "", loop_mark(SECRET, ""))


def _classify(extra: str, secret: bytes | None = SECRET, message_id: str = "m1@x.example"):  # type: ignore[no-untyped-def]
    return classify(parse_message(mail(extra=extra, message_id=message_id)), ENV,
                    "X-Ticketgate-Loop", secret)


def test_classify_valid_forged_and_unchecked_marks() -> None:
    ours = _classify(f"X-Ticketgate-Loop: {loop_mark(SECRET, 'm1@x.example')}\r\n")
    assert LOOP in ours.labels and ours.own_loop and LOOP_FORGED not in ours.labels
    forged = _classify("X-Ticketgate-Loop: support@helpdesk.example\r\n")
    assert forged.labels == {LOOP_FORGED} and not forged.own_loop
    assert "loop-forged: X-Ticketgate-Loop header with a mark that is not ours" in forged.reasons[0]
    replayed = _classify(f"X-Ticketgate-Loop: {loop_mark(SECRET, 'm1@x.example')}\r\n",
                         message_id="m2@x.example")
    assert replayed.labels == {LOOP_FORGED}
    unchecked = _classify("X-Ticketgate-Loop: support@helpdesk.example\r\n", secret=None)
    assert unchecked.labels == frozenset() and not unchecked.own_loop
    other = _classify("X-Loop: helpdesk@other.example\r\n")
    assert other.labels == {LOOP} and not other.own_loop


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Config:
    (tmp_path / "site.secret").write_bytes(SECRET + b"\n")
    return make_config(tmp_path, db_url, queues=AGENTS)





@pytest.fixture
def site_store(site: Config) -> Store:
    from gateway.runtime import open_store

    store = open_store(site)
    yield store  # type: ignore[misc]
    store.dispose()


def test_forged_loop_header_silences_nothing_and_is_flagged(site: Config,
                                                            site_store: Store) -> None:
    forged = mail(extra="X-Ticketgate-Loop: support@helpdesk.example\r\n")
    d = answering_intake(site, site_store).process(forged, ENV)
    kinds = sorted((o.kind, o.rcpt_to) for o in outbox_rows(site_store))
    assert kinds == [("agent-notification", "agents@helpdesk.example"),
                     ("auto-reply", "ana@customer.example")]
    assert suppressed_events(site_store) == []
    with site_store.factory() as s:
        article = s.execute(select(Article).where(Article.message_id == d.message_id)
                            ).scalar_one()
        assert LOOP_FORGED in article.classification
        created = s.execute(select(Event).where(Event.kind == "created")).scalar_one()
        assert LOOP_FORGED in created.detail["classification"]


def test_our_own_answer_coming_back_is_still_recognised(site: Config,
                                                        site_store: Store) -> None:
    intake = answering_intake(site, site_store)
    intake.process(mail(), ENV)
    answer = next(o for o in outbox_rows(site_store) if o.kind == "auto-reply")
    header = message_from_bytes(answer.message)["X-Ticketgate-Loop"]
    assert header == loop_mark(SECRET, answer.message_id)
    # Our answer comes back, e.g. forwarded by the customer's mailbox to us again, From the
    # customer: the valid mark alone silences both the answer and the agents.
    back = answer.message.replace(b"From: ", b"X-Old-From: ", 1)
    back = b"From: ana@customer.example\r\n" + back
    before = len(outbox_rows(site_store))
    intake.process(back, ENV)
    assert len(outbox_rows(site_store)) == before
    assert [(e["event"], e["check"]) for e in suppressed_events(site_store)] == [
        ("agent-notification", "loop")]
    with site_store.factory() as s:
        came_back = s.execute(select(Article).order_by(Article.id.desc())).scalars().first()
        assert came_back is not None and LOOP in came_back.classification


def test_any_x_loop_no_longer_silences_the_agents(site: Config, site_store: Store) -> None:
    answering_intake(site, site_store).process(mail(extra="X-Loop: whatever@else.example\r\n"), ENV)
    assert [o.kind for o in outbox_rows(site_store)] == ["agent-notification"]
    assert [e["check"] for e in suppressed_events(site_store)] == ["loop"]  # no answer, though


def test_without_a_secret_the_header_is_plain_and_not_trusted(tmp_path: Path,
                                                              db_url: str) -> None:
    from gateway.runtime import open_store

    config = make_config(tmp_path, db_url, queues=AGENTS)
    assert read_site_secret(config) is None
    store = open_store(config)
    try:
        answering_intake(config, store).process(
            mail(extra="X-Ticketgate-Loop: support@helpdesk.example\r\n"), ENV)
        out = outbox_rows(store)
        assert sorted(o.kind for o in out) == ["agent-notification", "auto-reply"]
        answer = next(o for o in out if o.kind == "auto-reply")
        assert message_from_bytes(answer.message)["X-Ticketgate-Loop"] == \
            "support@helpdesk.example"
    finally:
        store.dispose()


def test_init_writes_a_private_site_secret(tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert cli_main(["init", str(site)]) == 0
    secret = site / "site.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    value = secret.read_text().strip()
    assert len(value) == 64 and int(value, 16) >= 0
    assert cli_main(["init", "--secret-only", str(site)]) == 1  # never overwritten
    assert secret.read_text().strip() == value
    old = tmp_path / "old-site"
    old.mkdir()
    assert cli_main(["init", "--secret-only", str(old)]) == 0
    assert stat.S_IMODE((old / "site.secret").stat().st_mode) == 0o600
    assert (old / "site.secret").read_text() != secret.read_text()
    assert os.listdir(old) == ["site.secret"]


# -- one of our addresses in From -----------------------------------------------------------

OUR_FROM = "Support <support@helpdesk.example>"


def _through(config: Config, store: Store, raw: bytes, records: dict[str, bytes]) -> None:
    """Stored by the intake with the auto-responder and DKIM checked against `records`."""
    from autoresponse.autoresponder import AutoResponder
    from gateway.intake.core import Intake
    from gateway.intake.verify.verifier import Verifier

    intake = Intake(config, store.factory, responder=AutoResponder(config),
                    verifier=Verifier.from_config(config, records_lookup(records)))
    intake.sync_queues()
    intake.process(raw, ENV)


def test_a_forged_from_of_ours_does_not_silence_the_agents(site: Config,
                                                           site_store: Store) -> None:
    _through(site, site_store, mail(sender=OUR_FROM), {})
    assert [o.kind for o in outbox_rows(site_store)] == ["agent-notification"]
    assert [e["event"] for e in suppressed_events(site_store)] == ["new-ticket"]  # no answer to us


def test_a_from_of_ours_proven_by_dkim_is_our_own_mail(
        site: Config, site_store: Store, tmp_path_factory: pytest.TempPathFactory) -> None:
    key: SigningKey = dkim_key(tmp_path_factory.mktemp("key"))
    signed = sign(mail(sender=OUR_FROM), "helpdesk.example", key)
    _through(site, site_store, signed, {key_name("helpdesk.example"): key.txt()})
    assert outbox_rows(site_store) == []
    assert ("agent-notification", "loop") in [(e["event"], e["check"])
                                              for e in suppressed_events(site_store)]


def test_without_a_secret_a_from_of_ours_is_our_own_mail(tmp_path: Path, db_url: str) -> None:
    from gateway.runtime import open_store

    config = make_config(tmp_path, db_url, queues=AGENTS)
    store = open_store(config)
    try:
        _through(config, store, mail(sender=OUR_FROM), {})
        assert outbox_rows(store) == []
        assert ("agent-notification", "loop") in [(e["event"], e["check"])
                                                  for e in suppressed_events(store)]
    finally:
        store.dispose()
