"""Prometheus metrics for /metrics, computed from the database at scrape time.

Counters that matter (messages by disposition, tickets, auto-responses) are COUNTs over
the events/tickets tables, so they survive restarts and agree with the page; only the
processing-time histogram and the temp-fail counter live in memory.

The server observes message processing time with::

    from gateway.status.metrics import PROCESSING_SECONDS
    PROCESSING_SECONDS.labels(entry="lmtp").observe(seconds)

This module imports only prometheus-client and SQLAlchemy (no jinja2), and does not
register anything in the global registry: each status server builds its own.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

log = logging.getLogger("ticketgate.status")

# Seconds from the end of DATA (or pipe input) to the committed transaction.
PROCESSING_SECONDS = Histogram(
    "ticketgate_processing_seconds",
    "Time to process one incoming message (parse, route, store, commit).",
    ["entry"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=None,
)

DISPOSITIONS = ("created", "follow-up", "ignored", "rejected", "size-rejected")


class DatabaseCollector(Collector):
    """Yields the database-backed metrics; a failing database gives ticketgate_database_up 0."""

    def __init__(
        self,
        engine: Engine,
        spool_dir: Callable[[], Path],
        counters: Callable[[], dict[str, int]],
        started_at: dt.datetime,
        version: str,
    ) -> None:
        self.engine = engine
        self.spool_dir = spool_dir
        self.counters = counters
        self.started_at = started_at
        self.version = version

    def collect(self) -> Iterator[Metric]:
        from .health import count_spool
        from .queries import temp_failed_count

        info = GaugeMetricFamily("ticketgate_info", "Version and database backend.",
                                 labels=["version", "backend"])
        info.add_metric([self.version, self.engine.dialect.name], 1)
        yield info
        yield GaugeMetricFamily("ticketgate_start_time_seconds",
                                "When this process started (Unix time).",
                                value=self.started_at.timestamp())
        temp = CounterMetricFamily(
            "ticketgate_temp_failed", "Deliveries answered 451 / exit 75 since this process "
            "started (in memory).")
        temp.add_metric([], float(temp_failed_count(self.counters())))
        yield temp
        yield GaugeMetricFamily("ticketgate_spool_quarantined_messages",
                                "Messages in the quarantine spool (spool/failed).",
                                value=count_spool(self.spool_dir()))
        try:
            figures = self._query()
        except Exception as exc:
            log.warning("metrics: database query failed: %s", type(exc).__name__)
            yield GaugeMetricFamily("ticketgate_database_up", "1 when the database answers.",
                                    value=0)
            return
        yield GaugeMetricFamily("ticketgate_database_up", "1 when the database answers.",
                                value=1)
        yield from figures

    def _query(self) -> list[Metric]:
        from .queries import OPEN_STATES, OUTBOX_STATES, A, E, O, Q, T, _age, _as_utc, read_only

        now = dt.datetime.now(dt.UTC)
        with read_only(self.engine) as conn:
            kinds = dict(conn.execute(
                select(E.c.kind, func.sum(E.c.occurrences))
                .where(E.c.kind.in_((*DISPOSITIONS, "autoresponse-sent")))
                .group_by(E.c.kind)
            ).all())
            reason = E.c.detail["reason"].as_string()
            reasons = conn.execute(
                select(reason, func.count())
                .where(E.c.kind == "autoresponse-suppressed")
                .group_by(reason)
            ).all()
            articles = dict(conn.execute(
                select(A.c.direction, func.count()).group_by(A.c.direction)
            ).all())
            tickets = int(conn.execute(select(func.count()).select_from(T)).scalar_one())
            open_rows = conn.execute(
                select(Q.c.name, T.c.state, func.count())
                .join(Q, Q.c.id == T.c.queue_id)
                .where(T.c.state.in_(OPEN_STATES))
                .group_by(Q.c.name, T.c.state)
            ).all()
            outbox = dict(conn.execute(
                select(O.c.state, func.count()).group_by(O.c.state)
            ).all())
            oldest = _as_utc(conn.execute(
                select(func.min(O.c.created_at)).where(O.c.state.in_(("pending", "sending")))
            ).scalar())

        out: list[Metric] = []
        msgs = CounterMetricFamily("ticketgate_messages",
                                   "Incoming messages by disposition (from the events table).",
                                   labels=["disposition"])
        for d in DISPOSITIONS:
            msgs.add_metric([d], float(kinds.get(d, 0)))
        out.append(msgs)
        arts = CounterMetricFamily("ticketgate_articles", "Stored articles by direction.",
                                   labels=["direction"])
        for d in ("in", "out"):
            arts.add_metric([d], float(articles.get(d, 0)))
        out.append(arts)
        out.append(CounterMetricFamily("ticketgate_tickets_created",
                                       "Tickets in the database.", value=tickets))
        gauge = GaugeMetricFamily("ticketgate_tickets_open", "Open tickets by queue and state.",
                                  labels=["queue", "state"])
        for name, state, n in open_rows:
            gauge.add_metric([name, state], float(n))
        out.append(gauge)
        ar = CounterMetricFamily("ticketgate_autoresponses", "Auto-responses by outcome.",
                                 labels=["outcome", "reason"])
        ar.add_metric(["sent", ""], float(kinds.get("autoresponse-sent", 0)))
        for why, n in reasons:
            ar.add_metric(["suppressed", why or "unknown"], float(n))
        out.append(ar)
        ob = GaugeMetricFamily("ticketgate_outbox_messages", "Outbox rows by state.",
                               labels=["state"])
        for s in OUTBOX_STATES:
            ob.add_metric([s], float(outbox.get(s, 0)))
        out.append(ob)
        out.append(GaugeMetricFamily(
            "ticketgate_outbox_backlog", "Outbox messages waiting to be sent (pending+sending).",
            value=float(outbox.get("pending", 0) + outbox.get("sending", 0))))
        out.append(GaugeMetricFamily(
            "ticketgate_outbox_oldest_pending_age_seconds",
            "Age of the oldest unsent outbox message (0 when none).",
            value=_age(now, oldest) or 0.0))
        return out


def build_registry(collector: DatabaseCollector, process: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    registry.register(PROCESSING_SECONDS)
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

