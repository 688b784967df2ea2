"""Running counts of what was stored, per hour and per month, kept by the database itself.

The status page and /metrics show how many messages, tickets and answers arrived in the
last hour, 24 hours and 30 days, per day and per customer domain per month. Counting
those rows on every request gets slower with every message; these counts are kept up to
date as rows are written, so the page reads a few hundred rows however busy the site is.

Database triggers (created by migration `0006_rollups`, SQLite and PostgreSQL) keep the
`rollups` table in step with every writer in the same transaction: the intake, the
auto-responder, the outbox, the CLI and anything added later, with nothing to call.
Each trigger adds with `INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n`
(no read-modify-write). On PostgreSQL each connection adds to its own rows (`shard` is
its backend pid), so concurrent writers never wait for each other's rollup rows nor
deadlock on them; readers sum the shards. SQLite has one writer at a time: shard 0.

Series (`series`, `bucket`, `key`):

| series | bucket | key | counts |
|---|---|---|---|
| `events` | hour, or `''` for all time | event kind | events, by `occurrences` (1) |
| `suppressed` | hour, or `''` | the suppression check | `autoresponse-suppressed` events |
| `articles` | hour, or `''` | direction (`in`, `out`) | articles |
| `senders` | hour, or `''` | the sender verdict (`SENDER_KEYS`) | incoming articles checked |
| `tickets` | hour, or `''` | `''` | tickets created |
| `domain-created` | month | customer domain | tickets created in the month |
| `domain-closed` | month | customer domain | tickets whose `closed_at` is in the month |

A `size-rejected` row counts refusals (`occurrences`, see gateway/intake/size_events.py):
its count grows by update, and a trigger on that update adds the difference.
`senders` needs the verdict columns of `articles` (migration 0007_verdict): `install()`
and `rebuild()` leave it out while the table has none (0006_rollups runs before them);
0011_senders adds it. The verdict is written with the article and never changed, so the
insert trigger alone keeps it exact.
An hour is `YYYY-MM-DD HH`, a month `YYYY-MM` (UTC). Deleting rows does not take counts
back (nothing in ticketgate deletes them); a ticket closed, reopened or closed again
moves its `domain-closed` count, as the ticket's `closed_at` does.
"""

from __future__ import annotations

from sqlalchemy import Connection, Table, case, func, inspect, literal, select, text
from sqlalchemy.sql.elements import ColumnElement

from .models import Article, Event, Rollup, Ticket

ALL_TIME = ""
HOURLY = ("events", "suppressed", "articles", "senders", "tickets")
SUPPRESSED_KIND = "autoresponse-suppressed"
TRIGGERS = {"rollup_events": "events", "rollup_events_update": "events",
            "rollup_articles": "articles", "rollup_tickets_insert": "tickets",
            "rollup_tickets_update": "tickets"}

# The `senders` key of an incoming article and which articles count, as the status page
# always defined the three figures (the verifier never sets aligned and aligned_failed
# together). Written twice: as SQL for the triggers, as expressions for the rest.
SENDER_KEYS = ("aligned", "aligned_failed", "unverified")
_SENDER_KEY = ("CASE WHEN NEW.aligned THEN 'aligned' WHEN NEW.aligned_failed "
               "THEN 'aligned_failed' ELSE 'unverified' END")
_SENDER_COUNTED = ("NEW.direction = 'in' "
                   "AND (NEW.aligned OR NEW.aligned_failed OR NEW.verdict_source != 'off')")


def sender_key(articles: Table) -> ColumnElement[str]:
    a = articles.c
    return case((a.aligned, "aligned"), (a.aligned_failed, "aligned_failed"),
                else_="unverified")


def sender_counted(articles: Table) -> ColumnElement[bool]:
    a = articles.c
    return (a.direction == "in") & (a.aligned | a.aligned_failed | (a.verdict_source != "off"))


def has_verdicts(conn: Connection) -> bool:
    """Does `articles` have the sender verdict yet (migration 0007_verdict)?"""
    return "verdict_source" in {c["name"] for c in inspect(conn).get_columns("articles")}


_UPSERT = ("ON CONFLICT (series, bucket, key, shard) DO UPDATE SET n = rollups.n + excluded.n")


def hour_of(col: ColumnElement, dialect: str) -> ColumnElement[str]:
    """The UTC hour of a timestamp column as 'YYYY-MM-DD HH' (a rollup bucket)."""
    if dialect == "sqlite":
        # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC here).
        return func.substr(col, 1, 13)
    return func.to_char(func.timezone("UTC", col), "YYYY-MM-DD HH24")


def month_of(col: ColumnElement, dialect: str) -> ColumnElement[str]:
    if dialect == "sqlite":
        return func.substr(col, 1, 7)
    return func.to_char(func.timezone("UTC", col), "YYYY-MM")


# -- triggers ---------------------------------------------------------------------------


def _sqlite_add(series: str, bucket: str, key: str, n: str = "1", when: str = "1") -> str:
    return (f"INSERT INTO rollups (series, bucket, key, shard, n) "
            f"SELECT '{series}', {bucket}, {key}, 0, {n} WHERE {when} {_UPSERT};")


def _sqlite_ddl(senders: bool) -> list[str]:
    def hour(c: str) -> str:
        return f"substr({c}, 1, 13)"

    def month(c: str) -> str:
        return f"substr({c}, 1, 7)"

    check = "coalesce(json_extract(NEW.detail, '$.check'), '')"
    suppressed = f"NEW.kind = '{SUPPRESSED_KIND}'"
    closed_moved = ("OLD.closed_at IS NOT NEW.closed_at "
                    "OR OLD.customer_domain IS NOT NEW.customer_domain")
    return [
        "CREATE TRIGGER rollup_events AFTER INSERT ON events BEGIN "
        + _sqlite_add("events", hour("NEW.created_at"), "NEW.kind", "NEW.occurrences")
        + _sqlite_add("events", "''", "NEW.kind", "NEW.occurrences")
        + _sqlite_add("suppressed", hour("NEW.created_at"), check, when=suppressed)
        + _sqlite_add("suppressed", "''", check, when=suppressed)
        + " END",
        "CREATE TRIGGER rollup_events_update AFTER UPDATE OF occurrences ON events "
        "WHEN NEW.occurrences != OLD.occurrences BEGIN "
        + _sqlite_add("events", hour("NEW.created_at"), "NEW.kind",
                      "NEW.occurrences - OLD.occurrences")
        + _sqlite_add("events", "''", "NEW.kind", "NEW.occurrences - OLD.occurrences")
        + " END",
        "CREATE TRIGGER rollup_articles AFTER INSERT ON articles BEGIN "
        + _sqlite_add("articles", hour("NEW.created_at"), "NEW.direction")
        + _sqlite_add("articles", "''", "NEW.direction")
        + (_sqlite_add("senders", hour("NEW.created_at"), _SENDER_KEY, when=_SENDER_COUNTED)
           + _sqlite_add("senders", "''", _SENDER_KEY, when=_SENDER_COUNTED) if senders else "")
        + " END",
        "CREATE TRIGGER rollup_tickets_insert AFTER INSERT ON tickets BEGIN "
        + _sqlite_add("tickets", hour("NEW.created_at"), "''")
        + _sqlite_add("tickets", "''", "''")
        + _sqlite_add("domain-created", month("NEW.created_at"), "NEW.customer_domain")
        + _sqlite_add("domain-closed", month("NEW.closed_at"), "NEW.customer_domain",
                      when="NEW.closed_at IS NOT NULL")
        + " END",
        "CREATE TRIGGER rollup_tickets_update AFTER UPDATE OF closed_at, customer_domain "
        f"ON tickets WHEN {closed_moved} BEGIN "
        + _sqlite_add("domain-closed", month("OLD.closed_at"), "OLD.customer_domain", "-1",
                      "OLD.closed_at IS NOT NULL")
        + _sqlite_add("domain-closed", month("NEW.closed_at"), "NEW.customer_domain", "1",
                      "NEW.closed_at IS NOT NULL")
        + _sqlite_add("domain-created", month("OLD.created_at"), "OLD.customer_domain", "-1",
                      "OLD.customer_domain IS NOT NEW.customer_domain")
        + _sqlite_add("domain-created", month("NEW.created_at"), "NEW.customer_domain", "1",
                      "OLD.customer_domain IS NOT NEW.customer_domain")
        + " END",
    ]


_PG_HOUR = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')"
_PG_MONTH = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM')"


def _pg_ddl(senders: bool) -> list[str]:
    def hour(c: str) -> str:
        return _PG_HOUR.format(c)

    def month(c: str) -> str:
        return _PG_MONTH.format(c)

    def add(series: str, bucket: str, key: str, n: str = "1") -> str:
        return f"PERFORM rollup_add('{series}', {bucket}, {key}, {n});"

    def function(name: str, body: str) -> str:
        return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN {body} RETURN NULL; END $$")

    check = "coalesce(NEW.detail->>'check', '')"
    return [
        # One backend adds only to its own rows (shard = its pid): no waits, no deadlocks.
        "CREATE OR REPLACE FUNCTION rollup_add(s text, b text, k text, d bigint) "
        "RETURNS void LANGUAGE sql AS $$ "
        "INSERT INTO rollups (series, bucket, key, shard, n) "
        f"VALUES (s, b, coalesce(k, ''), pg_backend_pid(), d) {_UPSERT} $$",
        function("rollup_events",
                 add("events", hour("NEW.created_at"), "NEW.kind", "NEW.occurrences")
                 + add("events", "''", "NEW.kind", "NEW.occurrences")
                 + f"IF NEW.kind = '{SUPPRESSED_KIND}' THEN "
                 + add("suppressed", hour("NEW.created_at"), check)
                 + add("suppressed", "''", check) + " END IF;"),
        function("rollup_events_update",
                 add("events", hour("NEW.created_at"), "NEW.kind",
                     "NEW.occurrences - OLD.occurrences")
                 + add("events", "''", "NEW.kind", "NEW.occurrences - OLD.occurrences")),
        function("rollup_articles",
                 add("articles", hour("NEW.created_at"), "NEW.direction")
                 + add("articles", "''", "NEW.direction")
                 + (f"IF {_SENDER_COUNTED} THEN "
                    + add("senders", hour("NEW.created_at"), _SENDER_KEY)
                    + add("senders", "''", _SENDER_KEY) + " END IF;" if senders else "")),
        function("rollup_tickets_insert",
                 add("tickets", hour("NEW.created_at"), "''")
                 + add("tickets", "''", "''")
                 + add("domain-created", month("NEW.created_at"), "NEW.customer_domain")
                 + "IF NEW.closed_at IS NOT NULL THEN "
                 + add("domain-closed", month("NEW.closed_at"), "NEW.customer_domain")
                 + " END IF;"),
        function("rollup_tickets_update",
                 "IF OLD.closed_at IS NOT NULL THEN "
                 + add("domain-closed", month("OLD.closed_at"), "OLD.customer_domain", "-1")
                 + " END IF; IF NEW.closed_at IS NOT NULL THEN "
                 + add("domain-closed", month("NEW.closed_at"), "NEW.customer_domain")
                 + " END IF; IF OLD.customer_domain IS DISTINCT FROM NEW.customer_domain THEN "
                 + add("domain-created", month("OLD.created_at"), "OLD.customer_domain", "-1")
                 + add("domain-created", month("NEW.created_at"), "NEW.customer_domain")
                 + " END IF;"),
        "CREATE TRIGGER rollup_events AFTER INSERT ON events "
        "FOR EACH ROW EXECUTE FUNCTION rollup_events()",
        "CREATE TRIGGER rollup_events_update AFTER UPDATE OF occurrences ON events "
        "FOR EACH ROW WHEN (NEW.occurrences <> OLD.occurrences) "
        "EXECUTE FUNCTION rollup_events_update()",
        "CREATE TRIGGER rollup_articles AFTER INSERT ON articles "
        "FOR EACH ROW EXECUTE FUNCTION rollup_articles()",
        "CREATE TRIGGER rollup_tickets_insert AFTER INSERT ON tickets "
        "FOR EACH ROW EXECUTE FUNCTION rollup_tickets_insert()",
        "CREATE TRIGGER rollup_tickets_update AFTER UPDATE OF closed_at, customer_domain "
        "ON tickets FOR EACH ROW WHEN (OLD.closed_at IS DISTINCT FROM NEW.closed_at "
        "OR OLD.customer_domain IS DISTINCT FROM NEW.customer_domain) "
        "EXECUTE FUNCTION rollup_tickets_update()",
    ]


def install(conn: Connection, senders: bool | None = None) -> None:
    """Create the triggers (again). A migration that rebuilds `events`, `articles` or
    `tickets` on SQLite (batch_alter_table with recreate) drops their triggers: it must
    call this afterwards. `senders` is counted when the articles have verdicts (None:
    look at the table)."""
    if senders is None:
        senders = has_verdicts(conn)
    drop(conn)
    for statement in (_sqlite_ddl(senders) if conn.dialect.name == "sqlite"
                      else _pg_ddl(senders)):
        conn.exec_driver_sql(statement)


def drop(conn: Connection) -> None:
    for name, table in TRIGGERS.items():
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        else:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {name}()")
    if conn.dialect.name != "sqlite":
        conn.exec_driver_sql("DROP FUNCTION IF EXISTS rollup_add(text, text, text, bigint)")


# -- filling from the stored rows ---------------------------------------------------------


def rebuild(conn: Connection) -> None:
    """Recount every series from the stored rows (the migration; a repair). Run it in a
    transaction that writers wait for: on SQLite any write transaction; on PostgreSQL
    the caller locks the counted tables (the migration runs before the gateways start)."""
    dialect = conn.dialect.name
    R = Rollup.__table__
    conn.execute(R.delete())
    T, A, E = Ticket.__table__, Article.__table__, Event.__table__
    check = func.coalesce(E.c.detail["check"].as_string(), "")
    sources = [
        ("events", E, E.c.created_at, E.c.kind, None, func.sum(E.c.occurrences)),
        ("suppressed", E, E.c.created_at, check, E.c.kind == SUPPRESSED_KIND, func.count()),
        ("articles", A, A.c.created_at, A.c.direction, None, func.count()),
        ("tickets", T, T.c.created_at, literal(""), None, func.count()),
    ]
    for series, table, col, key, where, n in sources:
        for bucket in (hour_of(col, dialect), literal(ALL_TIME)):
            _fill(conn, series, table, bucket, key, where, n)
    domain = func.coalesce(T.c.customer_domain, "")
    _fill(conn, "domain-created", T, month_of(T.c.created_at, dialect), domain, None)
    _fill(conn, "domain-closed", T, month_of(T.c.closed_at, dialect), domain,
          T.c.closed_at.is_not(None))
    if has_verdicts(conn):
        _fill_senders(conn)


def rebuild_senders(conn: Connection) -> None:
    """Recount only `senders` (migration 0011_senders): the articles table is the one to
    lock (`lock_for_rebuild(conn, "articles")`), for as long as counting it takes."""
    R = Rollup.__table__
    conn.execute(R.delete().where(R.c.series == "senders"))
    _fill_senders(conn)


def _fill_senders(conn: Connection) -> None:
    A = Article.__table__
    for bucket in (hour_of(A.c.created_at, conn.dialect.name), literal(ALL_TIME)):
        _fill(conn, "senders", A, bucket, sender_key(A), sender_counted(A))


def _fill(conn: Connection, series: str, table: Table, bucket: ColumnElement,
          key: ColumnElement, where: ColumnElement | None,
          n: ColumnElement[int] | None = None) -> None:
    R = Rollup.__table__
    b, k = bucket.label("b"), key.label("k")
    query = select(literal(series), b, k, literal(0),
                   func.count() if n is None else n).select_from(table)
    if where is not None:
        query = query.where(where)
    query = query.group_by(b, k)
    conn.execute(R.insert().from_select(["series", "bucket", "key", "shard", "n"], query))


def lock_for_rebuild(conn: Connection, tables: str = "tickets, articles, events") -> None:
    """PostgreSQL: keep writers out while the counts are rebuilt (they wait, then count)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"LOCK TABLE {tables} IN SHARE MODE"))
