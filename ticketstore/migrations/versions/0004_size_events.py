"""events.occurrences: one size-rejected row per sender and hour, with a count

Revision ID: 0004_size_events
Revises: 0003_outbox_answer
Create Date: 2026-12-07

An unauthenticated client may repeat `MAIL FROM:<> SIZE=999999999999` as often as it
likes; each refusal used to be its own event row. Refusals for size are now counted
into one row per sender per hour (`occurrences`); every other event is one occurrence.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004_size_events'
down_revision = '0003_outbox_answer'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('occurrences', sa.Integer(), nullable=False,
                                      server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_column('occurrences')
