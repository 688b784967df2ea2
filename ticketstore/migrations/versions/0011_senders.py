"""status page: the sender verdict figures counted in the rollups

Revision ID: 0011_senders
Revises: 0009_answer_limits
Create Date: 2026-12-07

The `senders` figure (incoming articles aligned / aligned_failed / unverified in the last
hour, 24 hours and 30 days) was counted over every incoming article of 30 days on each
request. The articles trigger now adds it to the rollups (series `senders`); this
migration puts that trigger in and counts the articles already stored (only this
series: the articles table is locked for as long as counting it takes). A database at
the previous head needs it: nothing else re-creates the triggers there.
"""
from __future__ import annotations

from alembic import op

from ticketstore import rollups
from ticketstore.models import Rollup

revision = '0011_senders'
down_revision = '0009_answer_limits'
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    rollups.lock_for_rebuild(conn, "articles")  # writers of articles wait, then count
    rollups.install(conn, senders=True)
    rollups.rebuild_senders(conn)


def downgrade() -> None:
    conn = op.get_bind()
    rollups.install(conn, senders=False)
    R = Rollup.__table__
    conn.execute(R.delete().where(R.c.series == "senders"))
