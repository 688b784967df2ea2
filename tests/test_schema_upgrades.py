"""Rolling upgrades: an older ticketgate on a newer schema, and which migrations allow it.

Several hosts share one PostgreSQL (docs/scale-out.md); they are upgraded one after the
other, so for a while older instances run on the schema a newer one migrated to. An
older instance must say what is true ("upgrade this host"), and the migrations must be
ones it can keep running on (docs/operations.md, "Upgrades").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.config import load_config
from gateway.runtime import open_store
from gateway.sysexits import EX_CONFIG, EX_TEMPFAIL
from tests.pipe_helpers import ticketgate, write_config
from tests.server_helpers import MESSAGE
from ticketstore.db import MIGRATIONS_DIR, SchemaTooNew, make_engine

FUTURE = "0099_from_a_newer_ticketgate"
NEWER_LINE = (f"the database was upgraded by a newer ticketgate (schema {FUTURE}); "
              "upgrade this host")


def _upgraded_by_a_newer_ticketgate(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})
    finally:
        engine.dispose()


def test_an_older_instance_says_upgrade_this_host(tmp_path: Path, db_url: str) -> None:
    _upgraded_by_a_newer_ticketgate(db_url)
    config = load_config(str(write_config(tmp_path, db_url)), env={})
    with pytest.raises(SchemaTooNew) as raised:
        open_store(config)
    assert str(raised.value) == NEWER_LINE
    assert "db upgrade" not in str(raised.value)


def test_the_cli_prints_that_one_line_instead_of_a_traceback(tmp_path: Path,
                                                             db_url: str) -> None:
    _upgraded_by_a_newer_ticketgate(db_url)
    cfg = write_config(tmp_path, db_url)
    listed = ticketgate(cfg, "tickets", "list")
    assert listed.returncode == EX_CONFIG
    assert listed.stderr.decode() == f"ticketgate: {NEWER_LINE}\n"
    assert listed.stdout == b""
    # The pipe: the MTA keeps the mail until this host is upgraded too.
    piped = ticketgate(cfg, "pipe", "-r", "support@helpdesk.example", stdin=MESSAGE)
    assert piped.returncode == EX_TEMPFAIL
    assert piped.stderr.decode() == f"ticketgate pipe: temporary failure: {NEWER_LINE}\n"
    # serve refuses to start with the same words (EX_CONFIG).
    served = ticketgate(cfg, "serve")
    assert served.returncode == EX_CONFIG
    assert NEWER_LINE in served.stderr.decode()
    assert "Traceback" not in served.stderr.decode()


# -- expand only: what older instances keep running on ------------------------------------

# Operations an older instance keeps running on: it never reads what is new, and what it
# writes still fits (a new column is nullable or has a server default).
EXPANDING = {"create_table", "create_index", "add_column", "drop_index", "batch_alter_table",
             "f", "execute", "get_bind", "inspect"}
# A migration that needs every instance upgraded first sets this module attribute to
# False and docs/operations.md lists it: the hosts are stopped for it.
MARKER = "older_instances_supported"


def _calls(func: ast.FunctionDef) -> list[ast.Call]:
    return [n for n in ast.walk(func) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name) and n.func.value.id in ("op", "batch_op")]


def _column_is_optional(call: ast.Call) -> bool:
    column = next((a for a in call.args if isinstance(a, ast.Call)), None)
    if column is None:
        return False
    keywords = {k.arg: k.value for k in column.keywords}
    nullable = keywords.get("nullable")
    return "server_default" in keywords or (
        isinstance(nullable, ast.Constant) and nullable.value is True)


def migration_problems(path: Path) -> list[str]:
    """Why an older ticketgate could not keep running on this migration (empty: it can)."""
    tree = ast.parse(path.read_text("utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == MARKER for t in node.targets)
                and isinstance(node.value, ast.Constant) and node.value.value is False):
            return []  # declared contracting: documented, hosts stopped for it
    upgrade = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                   and n.name == "upgrade")
    problems = []
    for call in _calls(upgrade):
        name = call.func.attr  # type: ignore[attr-defined]
        if name not in EXPANDING:
            problems.append(f"{path.name}: op.{name} (older instances still use it)")
        elif name == "add_column" and not _column_is_optional(call):
            problems.append(f"{path.name}: a NOT NULL column without a server_default "
                            "(older instances insert rows without it)")
    return problems


def test_every_migration_only_expands_the_schema() -> None:
    """Rule for ticketstore/migrations/versions: add tables, nullable (or defaulted)
    columns and indexes; never drop, rename or tighten what an older instance uses."""
    files = sorted(p for p in (MIGRATIONS_DIR / "versions").glob("0*.py")
                   if p.name != "0001_initial.py")
    assert files
    problems = [p for f in files for p in migration_problems(f)]
    assert not problems, "\n".join(problems)


def test_the_rule_catches_a_contracting_migration(tmp_path: Path) -> None:
    bad = tmp_path / "0099_bad.py"
    bad.write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n"
        "def upgrade():\n"
        "    op.add_column('tickets', sa.Column('x', sa.Integer(), nullable=False))\n"
        "    with op.batch_alter_table('outbox') as batch_op:\n"
        "        batch_op.drop_column('template')\n"
        "    op.add_column('tickets', sa.Column('y', sa.Integer(), nullable=True))\n")
    assert migration_problems(bad) == [
        "0099_bad.py: a NOT NULL column without a server_default (older instances insert "
        "rows without it)",
        "0099_bad.py: op.drop_column (older instances still use it)",
    ]
    bad.write_text(bad.read_text() + f"{MARKER} = False\n")
    assert migration_problems(bad) == []


def test_0012_fills_the_outbox_domain_of_stored_answers(db_url: str) -> None:
    """The hourly limit per domain reads `rcpt_domain`; answers stored before it existed
    must count too."""
    from alembic import command

    from ticketstore.db import alembic_config, upgrade

    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(db_url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0011_senders")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO outbox (kind, mail_from, rcpt_to, message_id, message, state, "
                "attempts, next_attempt_at, last_error, created_at) VALUES ('auto-reply', "
                "'s@helpdesk.example', 'Ana@Customer.Example', 'm1@x', :m, 'sent', 0, "
                ":t, '', :t)"), {"m": b"x", "t": "2026-12-07 10:00:00"})
        upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT rcpt_domain FROM outbox")).scalar_one() \
                == "customer.example"
    finally:
        engine.dispose()
