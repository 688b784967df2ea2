"""/metrics: Prometheus text computed from the database, so counters survive a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.mail.envelope import Envelope
from gateway.spool import quarantine
from gateway.status.metrics import PROCESSING_SECONDS
from tests.status_helpers import StatusService, deliver, make_context, message, status_config
from ticketstore.models import Event, OutboxMessage, utcnow


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def test_metrics_are_computed_from_the_database_and_survive_a_restart(
    tmp_path: Path, db_url: str
) -> None:
    config = status_config(tmp_path, db_url)
    ctx, store = make_context(config)
    d = deliver(ctx.intake, message("Disk full"))
    deliver(ctx.intake, message(f"Re: [Ticket#{d.ticket_number}] Disk full"))
    deliver(ctx.intake, message("Other problem", to="billing@helpdesk.example"),
            rcpt="billing@helpdesk.example")
    ctx.intake.record_size_rejected(50_000_000, Envelope("x@y.example", ("support@h.example",)))
    with store.factory() as s, s.begin():
        s.add(Event(kind="autoresponse-sent", created_at=utcnow()))
        s.add(Event(kind="autoresponse-suppressed", created_at=utcnow(),
                    detail={"check": "precedence", "reason": "precedence: bulk"}))
        s.add(OutboxMessage(kind="auto-reply", rcpt_to="a@x.example", message_id="o1@x",
                            message=b"x", state="pending"))
        s.add(OutboxMessage(kind="auto-reply", rcpt_to="a@x.example", message_id="o2@x",
                            message=b"x", state="failed"))
    quarantine(config.path(config.intake.spool_dir), b"Subject: x\r\n\r\nx",
               Envelope("a@b.example", ("c@d.example",)), RuntimeError("bug"))
    ctx.counters["server.tempfail"] += 2
    PROCESSING_SECONDS.labels(entry="test").observe(0.042)

    svc = StatusService(ctx)
    try:
        r = svc.request("/metrics")
    finally:
        svc.stop()
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    assert r.headers["x-content-type-options"] == "nosniff"
    text = r.text
    assert value(text, "ticketgate_messages_total", disposition="created") == 2
    assert value(text, "ticketgate_messages_total", disposition="follow-up") == 1
    assert value(text, "ticketgate_messages_total", disposition="size-rejected") == 1
    assert value(text, "ticketgate_tickets_created_total") == 2
    assert value(text, "ticketgate_articles_total", direction="in") == 3
    assert value(text, "ticketgate_tickets_open", queue="Support", state="new") == 1
    assert value(text, "ticketgate_tickets_open", queue="Billing", state="new") == 1
    assert value(text, "ticketgate_autoresponses_total", outcome="sent", check="") == 1
    assert value(text, "ticketgate_autoresponses_total", outcome="suppressed",
                 check="precedence") == 1
    assert value(text, "ticketgate_outbox_messages", state="pending") == 1
    assert value(text, "ticketgate_outbox_messages", state="failed") == 1
    assert value(text, "ticketgate_outbox_backlog") == 1
    assert value(text, "ticketgate_spool_quarantined_messages") == 1
    assert value(text, "ticketgate_temp_failed_total") == 2
    assert value(text, "ticketgate_database_up") == 1
    assert value(text, "ticketgate_processing_seconds_bucket", entry="test", le="0.05") >= 1
    assert value(text, "ticketgate_info", version="0.1.0",
                 backend=store.engine.dialect.name) == 1

    # A restart: a new daemon context on the same database keeps every stored count;
    # only the in-memory temp-fail counter starts again from zero.
    store.dispose()
    ctx2, store2 = make_context(config)
    svc2 = StatusService(ctx2)
    try:
        text2 = svc2.request("/metrics").text
    finally:
        svc2.stop()
        store2.dispose()
    assert value(text2, "ticketgate_messages_total", disposition="created") == 2
    assert value(text2, "ticketgate_tickets_created_total") == 2
    assert value(text2, "ticketgate_autoresponses_total", outcome="sent", check="") == 1
    assert value(text2, "ticketgate_temp_failed_total") == 0


def test_metrics_and_the_pipe_do_not_import_jinja2() -> None:
    """The pipe path stays lean; the metrics module is importable by the server cheaply."""
    code = (
        "import sys, gateway.pipe, gateway.intake, gateway.runtime\n"
        "assert 'gateway.status' not in sys.modules, 'pipe imports the status page'\n"
        "import gateway.status.metrics\n"
        "assert 'jinja2' not in sys.modules, 'metrics imports jinja2'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
