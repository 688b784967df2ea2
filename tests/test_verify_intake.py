"""Sender verification end to end: over LMTP (a real daemon), through `ticketgate pipe` (a
real subprocess), on SQLite and PostgreSQL. DNS is a real DNS server on loopback UDP
(`[verify] nameservers`), serving the test key; no network."""

from __future__ import annotations

import datetime as dt
import json
import threading
from importlib import resources
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.config import Config
from gateway.intake.core import Intake
from gateway.intake.verify.verifier import Verifier
from gateway.mail.envelope import Envelope
from gateway.runtime import open_store
from gateway.status.queries import sender_verdicts
from rules.loader import load_router
from tests.pipe_helpers import SUPPORT, ticketgate, write_config
from tests.server_helpers import RunningDaemon, daemon_config, prepare_database, send
from tests.support import make_config, wait_until
from tests.verify_helpers import (
    LoopbackDns,
    SigningKey,
    dkim_key,
    key_name,
    mail,
    records_lookup,
    sign,
)
from ticketstore.db import make_engine
from ticketstore.models import Article, Ticket

CUSTOMER = "customer.example"
MONITORING = "monitoring.example"
NAGIOS = "Nagios <nagios@monitoring.example>"
STARTER_RULES = Path(str(resources.files("gateway").joinpath("starter", "rules")))


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return dkim_key(tmp_path_factory.mktemp("key"))


def _records(key: SigningKey) -> dict[str, bytes]:
    return {key_name(d): key.txt() for d in (CUSTOMER, MONITORING, "evil.example")}


def _verdicts(url: str) -> dict[str, tuple[str, bool, bool, str]]:
    """message_id -> (dkim, aligned, aligned_failed, source) of every incoming article."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Article.message_id, Article.dkim, Article.aligned,
                                       Article.aligned_failed, Article.verdict_source)
                                .where(Article.direction == "in")).all()
    finally:
        engine.dispose()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def _state(url: str, number: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.scalar(select(Ticket.state).where(Ticket.number == number)))
    finally:
        engine.dispose()


# -- LMTP ------------------------------------------------------------------------------------


def test_lmtp_stores_the_verdict(tmp_path: Path, db_url: str, key: SigningKey) -> None:
    prepare_database(db_url)
    signed = sign(mail(message_id="good@customer.example"), CUSTOMER, key)
    tampered = sign(mail(message_id="bad@customer.example"), CUSTOMER, key).replace(
        b"on fire", b"paid, new IBAN")
    with LoopbackDns(_records(key)) as dns:
        d = RunningDaemon(daemon_config(tmp_path, db_url, verify={
            "nameservers": [dns.address]})).start()
        try:
            client = d.lmtp()
            for raw in (signed, tampered, mail(message_id="plain@customer.example")):
                assert [code for code, _ in send(client, [SUPPORT], raw)] == [250]
            client.quit()
        finally:
            d.stop()
    assert _verdicts(db_url) == {
        "good@customer.example": ("pass", True, False, "dkimpy"),
        "bad@customer.example": ("fail", False, True, "dkimpy"),
        "plain@customer.example": ("none", False, False, "dkimpy"),
    }
    # The status page counts them.
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            counts = sender_verdicts(conn, dt.datetime.now(dt.UTC))
    finally:
        engine.dispose()
    assert {k: v["day"] for k, v in counts.items()} == {
        "aligned": 1, "aligned_failed": 1, "unverified": 1}


def test_lmtp_dns_timeout_is_temperror_and_blocks_no_other_session(
    tmp_path: Path, sqlite_url: str, key: SigningKey
) -> None:
    """A signed message waits for a DNS server that never answers (dns_timeout), off the
    event loop: meanwhile another session's unsigned message is stored and answered."""
    signed = sign(mail(message_id="slow@customer.example"), CUSTOMER, key)
    with LoopbackDns({}, silent=True) as dns:
        d = RunningDaemon(daemon_config(tmp_path, sqlite_url, verify={
            "nameservers": [dns.address], "dns_timeout": 5.0})).start()
        try:
            replies: list[int] = []

            def deliver_signed() -> None:
                c = d.lmtp()
                replies.extend(code for code, _ in send(c, [SUPPORT], signed))
                c.quit()

            slow = threading.Thread(target=deliver_signed, daemon=True)
            slow.start()
            wait_until("the DKIM key query", lambda: dns.queries, timeout=30)
            other = d.lmtp()
            assert [c for c, _ in send(other, [SUPPORT], mail(message_id="q@x.example"))] == [250]
            other.quit()
            assert slow.is_alive() and replies == []  # still waiting for DNS
            slow.join(60)
            assert replies == [250]
        finally:
            d.stop()
    got = _verdicts(sqlite_url)
    assert got["slow@customer.example"] == ("temperror", False, False, "dkimpy")


# -- the pipe, with the shipped rules ----------------------------------------------------------


def test_pipe_forged_recovery_does_not_close_and_tickets_show_the_verdict(
    tmp_path: Path, db_url: str, key: SigningKey
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    for item in STARTER_RULES.iterdir():
        if item.name.endswith(".toml"):
            (rules / item.name).write_text(item.read_text())
    with LoopbackDns(_records(key)) as dns:
        config = write_config(tmp_path, db_url, rules={"dir": str(rules)},
                              verify={"nameservers": [dns.address]})

        def pipe(raw: bytes) -> str:
            r = ticketgate(config, "pipe", "-f", "x@customer.example", "-r", SUPPORT,
                           stdin=raw)
            assert r.returncode == 0, r.stderr
            listed = ticketgate(config, "tickets", "list", "--json")
            return str(json.loads(listed.stdout)[0]["number"])  # newest first

        customer = pipe(sign(mail(message_id="c1@customer.example"), CUSTOMER, key))
        tag = f"[Ticket#{customer}]"
        forged = mail(NAGIOS, f"** RECOVERY Host Alert: db01 is UP ** {tag}",
                      message_id="forged@monitoring.example")
        (tmp_path / "forged.eml").write_bytes(forged)
        stranger = pipe(forged)
        assert _state(db_url, customer) != "closed"
        # Not a participant: under the default stranger_follow_up it got its own ticket.
        assert stranger != customer

        explained = ticketgate(config, "rules", "test", str(tmp_path / "forged.eml"))
        out = explained.stdout.decode()
        assert "sender: dkim=none dmarc=none (by dkimpy)" in out
        [line] = [x for x in out.splitlines() if "monitoring recovery (20-monitoring" in x]
        assert line.startswith("  no ") and line.endswith(
            "aligned: no valid signature aligned with the From domain (dkim none, by dkimpy); "
            "required: aligned = true")

        alert = pipe(sign(mail(NAGIOS, "** PROBLEM Host Alert: db01 is DOWN **",
                               message_id="p1@monitoring.example"), MONITORING, key))
        pipe(sign(mail(NAGIOS, "** RECOVERY Host Alert: db01 is UP **",
                       message_id="r1@monitoring.example"), MONITORING, key))
        assert _state(db_url, alert) == "closed"

        verdicts = [a["verdict"] for number in (customer, stranger) for a in json.loads(
            ticketgate(config, "tickets", "show", number, "--json").stdout)["articles"]]
        assert verdicts == [
            {"dkim": "pass", "aligned": True, "dmarc": "pass", "aligned_failed": False,
             "source": "dkimpy"},
            {"dkim": "none", "aligned": False, "dmarc": "none", "aligned_failed": False,
             "source": "dkimpy"},
        ]
        text = ticketgate(config, "tickets", "show", customer).stdout.decode()
        assert "SENDER" in text and "pass aligned" in text


# -- the core on both backends: trusted MTA results ----------------------------------------


@pytest.fixture
def mta_site(tmp_path: Path, db_url: str) -> Config:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "close.toml").write_text(
        '[[rule]]\nname = "verified robot closes"\nfrom = "robot@customer.example"\n'
        'aligned = true\nstate = "closed"\n')
    return make_config(tmp_path, db_url, verify={
        "dkim": False, "trusted_authserv_ids": ["mx.helpdesk.example"]})


def test_trusted_and_untrusted_authentication_results_through_the_core(
    mta_site: Config, db_url: str
) -> None:
    config = mta_site
    store = open_store(config)
    try:
        intake = Intake(config, store.factory, router=load_router(config),
                        verifier=Verifier.from_config(config, records_lookup({})))
        intake.sync_queues()
        env = Envelope("robot@customer.example", (SUPPORT,))
        robot = "Robot <robot@customer.example>"
        first = intake.process(mail(robot, "job 1", message_id="j1@customer.example"), env)
        tag = f"[Ticket#{first.ticket_number}]"
        forged = (b"Authentication-Results: attacker.example; dkim=pass "
                  b"header.d=customer.example\r\n"
                  + mail(robot, f"done {tag}", message_id="j2@customer.example"))
        assert intake.process(forged, env).notes == ()
        assert _state(db_url, str(first.ticket_number)) != "closed"
        trusted = (b"Authentication-Results: mx.helpdesk.example; dkim=pass "
                   b"header.d=customer.example\r\n"
                   + mail(robot, f"done {tag}", message_id="j3@customer.example"))
        assert intake.process(trusted, env).notes == ("verified robot closes",)
        assert _state(db_url, str(first.ticket_number)) == "closed"
    finally:
        store.dispose()
    got = _verdicts(db_url)
    assert got["j2@customer.example"] == ("none", False, False, "off")
    assert got["j3@customer.example"] == ("pass", True, False, "authres:mx.helpdesk.example")
