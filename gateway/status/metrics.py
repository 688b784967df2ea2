"""Prometheus metrics for /metrics, read from the database at scrape time.

Counters that matter (messages by disposition, tickets, auto-responses) are the all-time
rollups the database keeps (ticketstore/rollups.py), so they survive restarts, agree
with the page and cost the same however much mail is stored.

Which figures are whose (several gateways on one database): every metric read from the
database is *site-wide*, the same on every instance (aggregate with max, never sum);
the rest (temp-failures, processing times, the spool, the process) are this *instance's*
own (sum over instances for the site). Each HELP text starts with its scope (`site` and
`local` below); docs/status.md states the rule.

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

from ticketstore.rollups import ALL_TIME

log = logging.getLogger("ticketgate.status")

SITE_WIDE = "Site-wide (from the shared database: the same on every instance; max, not sum)."
PER_INSTANCE = "Per instance (this process or its host: sum over instances for the site)."


def site(text: str) -> str:
    return f"{SITE_WIDE} {text}"


def local(text: str) -> str:
    return f"{PER_INSTANCE} {text}"


# Seconds from the end of DATA (or pipe input) to the committed transaction.
PROCESSING_SECONDS = Histogram(
    "ticketgate_processing_seconds",
    local("Time to process one incoming message (parse, route, store, commit)."),
    ["entry"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=None,
)

DATABASE_UP = local("1 when the database answered this instance's scrape.")
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

        info = GaugeMetricFamily("ticketgate_info",
                                 local("Version and database backend of this instance."),
                                 labels=["version", "backend"])
        info.add_metric([self.version, self.engine.dialect.name], 1)
        yield info
        yield GaugeMetricFamily("ticketgate_start_time_seconds",
                                local("When this process started (Unix time)."),
                                value=self.started_at.timestamp())
        temp = CounterMetricFamily(
            "ticketgate_temp_failed", local("Deliveries answered 451 / exit 75 since this "
                                            "process started (in memory)."))
        temp.add_metric([], float(temp_failed_count(self.counters())))
        yield temp
        yield GaugeMetricFamily("ticketgate_spool_quarantined_messages",
                                local("Messages in this host's quarantine spool "
                                      "(spool/failed)."),
                                value=count_spool(self.spool_dir()))
        try:
            figures = self._query()
        except Exception as exc:
            log.warning("metrics: database query failed: %s", type(exc).__name__)
            yield GaugeMetricFamily("ticketgate_database_up", DATABASE_UP, value=0)
            return
        yield GaugeMetricFamily("ticketgate_database_up", DATABASE_UP, value=1)
        yield from figures

    def _query(self) -> list[Metric]:
        from .queries import (
            OTHER_CHECK,
            UNSENT_STATES,
            O,
            R,
            _age,
            _as_utc,
            by_check,
            open_tickets,
            queue_names,
            read_only,
            suppression_checks,
        )

        now = dt.datetime.now(dt.UTC)
        with read_only(self.engine) as conn:
            # All-time totals are the rollups' '' bucket: a few rows, however old the store.
            totals: dict[tuple[str, str], int] = {
                (series, key): int(n) for series, key, n in conn.execute(
                    select(R.c.series, R.c.key, func.sum(R.c.n))
                    .where(R.c.series.in_(("events", "suppressed", "articles", "tickets")),
                           R.c.bucket == ALL_TIME)
                    .group_by(R.c.series, R.c.key))
            }
            names = queue_names(conn)
            open_rows = [(names[qid], state, n) for qid, state, n in open_tickets(conn, names)]
            # Unsent rows only (index state, next_attempt_at): sent rows grow forever.
            outbox = dict(conn.execute(
                select(O.c.state, func.count())
                .where(O.c.state.in_(UNSENT_STATES))
                .group_by(O.c.state)
            ).all())
            oldest = _as_utc(conn.execute(
                select(func.min(O.c.created_at)).where(O.c.state.in_(("pending", "sending")))
            ).scalar())

        def total(series: str, key: str = "") -> float:
            return float(totals.get((series, key), 0))

        out: list[Metric] = []
        msgs = CounterMetricFamily("ticketgate_messages", site(
            "Incoming messages by disposition (events)."), labels=["disposition"])
        for d in DISPOSITIONS:
            msgs.add_metric([d], total("events", d))
        out.append(msgs)
        arts = CounterMetricFamily("ticketgate_articles", site("Stored articles by direction."),
                                   labels=["direction"])
        for d in ("in", "out"):
            arts.add_metric([d], total("articles", d))
        out.append(arts)
        out.append(CounterMetricFamily("ticketgate_tickets_created",
                                       site("Tickets created."), value=total("tickets")))
        gauge = GaugeMetricFamily("ticketgate_tickets_open",
                                  site("Open tickets by queue and state."),
                                  labels=["queue", "state"])
        for name, state, n in open_rows:
            gauge.add_metric([name, state], float(n))
        out.append(gauge)
        sent = CounterMetricFamily("ticketgate_autoresponses", site(
            "Answers sent (outcome=sent), and answers not sent by the suppression check "
            "that stopped them (outcome=suppressed; check is one of a fixed set)."),
            labels=["outcome", "check"])
        sent.add_metric(["sent", ""], total("events", "autoresponse-sent"))
        checks = by_check({k: int(n) for (series, k), n in totals.items()
                           if series == "suppressed"})
        for name in (*suppression_checks(), OTHER_CHECK):
            sent.add_metric(["suppressed", name], float(checks.get(name, 0)))
        out.append(sent)
        ob = GaugeMetricFamily("ticketgate_outbox_messages",
                               site("Unsent outbox rows by state."), labels=["state"])
        for s in UNSENT_STATES:
            ob.add_metric([s], float(outbox.get(s, 0)))
        out.append(ob)
        out.append(GaugeMetricFamily(
            "ticketgate_outbox_backlog",
            site("Outbox messages waiting to be sent (pending+sending)."),
            value=float(outbox.get("pending", 0) + outbox.get("sending", 0))))
        out.append(GaugeMetricFamily(
            "ticketgate_outbox_oldest_pending_age_seconds",
            site("Age of the oldest unsent outbox message (0 when none)."),
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

