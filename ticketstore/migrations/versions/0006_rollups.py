"""status page: running counts per hour and month, kept by triggers

Revision ID: 0006_rollups
Revises: 0004_size_events
Create Date: 2026-12-07

The status page and /metrics counted events, articles and tickets of the last 30 days
(and every row, for /metrics) on each request: about a second with 150,000 tickets in a
month. The `rollups` table holds those counts per hour, per month and in total; triggers
on `events`, `articles` and `tickets` keep it current in every writer's transaction, and
this migration fills it from the rows already stored. See ticketstore/rollups.py.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ticketstore import rollups

revision = '0006_rollups'
down_revision = '0004_size_events'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'rollups',
        sa.Column('series', sa.String(length=40), nullable=False),
        sa.Column('bucket', sa.String(length=16), nullable=False),
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('shard', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('series', 'bucket', 'key', 'shard', name='pk_rollups'),
    )
    conn = op.get_bind()
    rollups.lock_for_rebuild(conn)
    rollups.install(conn)
    rollups.rebuild(conn)


def downgrade() -> None:
    rollups.drop(op.get_bind())
    op.drop_table('rollups')
