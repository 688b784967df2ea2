"""Which figures are whose: two gateways on one database, and labels a sender cannot grow.

Figures read from the database are site-wide (every instance shows the same); the spool,
temp-failures, latest errors and processing times are each instance's own. /metrics says
so in every HELP text and the page marks each section, so a Prometheus user takes the max
of the first kind and the sum of the second. No label value is text a sender chose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoresponse.autoresponder import AutoResponder
from gateway.intake.core import Intake
from gateway.mail.envelope import Envelope
from gateway.spool import quarantine
from gateway.status.metrics import PER_INSTANCE, SITE_WIDE
from gateway.status.queries import suppression_checks
from tests.status_helpers import StatusService, deliver, make_context, message, status_config

SITE_METRICS = {
    "ticketgate_messages", "ticketgate_articles", "ticketgate_tickets_created",
    "ticketgate_tickets_open", "ticketgate_autoresponses", "ticketgate_outbox_messages",
    "ticketgate_outbox_backlog", "ticketgate_outbox_oldest_pending_age_seconds",
}
INSTANCE_METRICS = {
    "ticketgate_info", "ticketgate_start_time_seconds", "ticketgate_temp_failed",
    "ticketgate_spool_quarantined_messages", "ticketgate_database_up",
    "ticketgate_processing_seconds",
}


def families(text: str) -> dict[str, tuple[str, dict[tuple[str, tuple], float]]]:
    """name -> (help, {(sample name, labels): value}) for the ticketgate_* families."""
    out = {}
    for f in text_string_to_metric_families(text):
        if f.name.startswith("ticketgate_"):
            out[f.name] = (f.documentation, {
                (s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples})
    return out


class Gateway:
    """One `serve` instance: its own context (memory, spool), the shared database."""

    def __init__(self, base: Path, db_url: str) -> None:
        self.config = status_config(base, db_url)
        self.ctx, self.store = make_context(self.config)
        self.svc = StatusService(self.ctx)

    def get(self, path: str) -> str:
        r = self.svc.request(path)
        assert r.status == 200, r.text
        return r.text

    def close(self) -> None:
        self.svc.stop()
        self.store.dispose()


@pytest.fixture
def gateways(tmp_path: Path, db_url: str) -> Iterator[tuple[Gateway, Gateway]]:
    a = Gateway(tmp_path / "mx1", db_url)
    b = Gateway(tmp_path / "mx2", db_url)
    yield a, b
    a.close()
    b.close()


def test_site_wide_figures_agree_and_instance_figures_are_each_gateways_own(
    gateways: tuple[Gateway, Gateway],
) -> None:
    a, b = gateways
    for i in range(3):
        deliver(a.ctx.intake, message(f"Printer {i} jammed"))
    deliver(b.ctx.intake, message("VPN down"))
    a.ctx.counters["server.tempfail"] += 2
    b.ctx.counters["server.tempfail"] += 1
    quarantine(a.config.path(a.config.intake.spool_dir), b"Subject: x\r\n\r\nx",
               Envelope("x@y.example", ("support@helpdesk.example",)), RuntimeError("bug"))
    a.ctx.record_error("intake", "database at /x is read-only")

    ma, mb = families(a.get("/metrics")), families(b.get("/metrics"))
    for name in SITE_METRICS:
        assert ma[name][0].startswith(SITE_WIDE), name
        assert ma[name][1] == mb[name][1], f"{name} differs between instances"
    for name in INSTANCE_METRICS:
        assert ma[name][0].startswith(PER_INSTANCE), name
    for name, (doc, _) in ma.items():
        assert doc.startswith((SITE_WIDE, PER_INSTANCE)), f"{name} does not say whose it is"
    # (prometheus-client adds a `_created` family for a labelled histogram it has seen)
    assert {n for n in ma if n.removesuffix("_created") not in INSTANCE_METRICS} \
        | INSTANCE_METRICS == SITE_METRICS | INSTANCE_METRICS
    # The documented aggregation: max of site-wide, sum of per-instance.
    created = ("ticketgate_messages_total", (("disposition", "created"),))
    assert max(ma["ticketgate_messages"][1][created],
               mb["ticketgate_messages"][1][created]) == 4
    temp = ("ticketgate_temp_failed_total", ())
    assert ma["ticketgate_temp_failed"][1][temp] + mb["ticketgate_temp_failed"][1][temp] == 3
    spool = ("ticketgate_spool_quarantined_messages", ())
    assert ma["ticketgate_spool_quarantined_messages"][1][spool] == 1
    assert mb["ticketgate_spool_quarantined_messages"][1][spool] == 0

    ja, jb = json.loads(a.get("/api/status.json")), json.loads(b.get("/api/status.json"))
    assert ja["scopes"] == jb["scopes"]
    for key in ja["scopes"]["site"]:
        if key == "mail_flow":
            assert {k: v for k, v in ja[key].items() if k != "quarantined"} == \
                   {k: v for k, v in jb[key].items() if k != "quarantined"}
        elif key != "database":
            assert _ageless(ja[key]) == _ageless(jb[key]), key
    assert "mail_flow.quarantined" in ja["scopes"]["instance"]
    assert ja["mail_flow"]["quarantined"]["day"] == 1 and jb["mail_flow"]["quarantined"]["day"] == 0
    assert (ja["temp_failed_since_start"], jb["temp_failed_since_start"]) == (2, 1)
    assert ja["instance"]["pid"] and ja["instance"]["host"]
    assert set(ja) - {"generated_at", "scopes"} <= \
        set(ja["scopes"]["site"]) | set(ja["scopes"]["instance"])

    page = a.get("/")
    for section in ("mail-flow", "autoresponses", "volume", "queues", "latest-tickets",
                    "domains"):
        assert _heading(page, section).count("site-wide") == 1, section
    assert "this instance" in _heading(page, "latest-errors")
    assert re.search(r'<tr data-scope="instance"><th scope="row">quarantined in this host', page)
    assert re.search(r'<p class="note" data-scope="instance">.*Temp-failed', page)
    assert '<dl class="facts" data-scope="instance">' in page
    assert a.ctx.state["status"] and ja["instance"]["host"] in page


def _ageless(doc: object) -> object:
    """The document without ages (they depend on when each snapshot was taken)."""
    if isinstance(doc, dict):
        return {k: _ageless(v) for k, v in doc.items() if not k.endswith("_age_seconds")}
    if isinstance(doc, list):
        return [_ageless(v) for v in doc]
    return doc


def _heading(page: str, section: str) -> str:
    found = re.search(rf'id="{section}">\s*<h2>(.*?)</h2>', page, re.S)
    assert found, section
    return found.group(1)


def test_sender_chosen_header_values_never_become_label_values(
    tmp_path: Path, db_url: str,
) -> None:
    """100 distinct `Auto-Submitted: random-N` headers: one fixed label value, no new series."""
    config = status_config(tmp_path, db_url)
    ctx, store = make_context(config)
    ctx.intake = Intake(config, store.factory, responder=AutoResponder(config))
    svc = StatusService(ctx)
    try:
        def robot(i: int) -> None:
            deliver(ctx.intake, message(f"alert {i}", sender=f"monitor{i}@robots.example",
                                        extra=f"Auto-Submitted: random-{i}\r\n"),
                    mail_from=f"monitor{i}@robots.example")

        robot(0)
        first = _series(svc.request("/metrics").text)
        for i in range(1, 100):
            robot(i)
        text = svc.request("/metrics").text
        page = svc.request("/").text
        doc = json.loads(svc.request("/api/status.json").text)
    finally:
        svc.stop()
        store.dispose()
    assert _series(text) == first, "new label sets appeared"
    assert "random-" not in text and "random-" not in page
    checks = {dict(labels)["check"] for (name, labels) in families(text)[
        "ticketgate_autoresponses"][1] if name.endswith("_total")}
    assert checks <= {"", "other", *suppression_checks()}
    suppressed = families(text)["ticketgate_autoresponses"][1]
    key = ("ticketgate_autoresponses_total", (("check", "auto-submitted"),
                                              ("outcome", "suppressed")))
    assert suppressed[key] == 100
    assert doc["autoresponses"]["suppressed_by_check_30d"] == {"auto-submitted": 100}


def _series(text: str) -> set[tuple[str, tuple]]:
    """Every ticketgate_* sample's name and label set (the series Prometheus would keep)."""
    return {key for _, samples in families(text).values() for key in samples}


def test_unknown_check_names_fold_into_other() -> None:
    from gateway.status.queries import by_check

    assert by_check({"auto-submitted": 2, "made-up 1": 1, "made-up 2": 4, "list": 0}) == {
        "other": 5, "auto-submitted": 2}
