"""answer_counts: the exact daily auto-response limit; an outbox index by time

Revision ID: 0009_answer_limits
Revises: 0008_participants
Create Date: 2026-12-07

`answer_counts` holds one row per normalised mailbox and UTC day, raised atomically in
the intake transaction, so the daily limit holds with any number of writers.
`ix_outbox_created` serves the site's and each domain's answers of the last hour.
Older instances keep running on this schema (they neither read nor write the new table).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009_answer_limits'
down_revision = '0008_participants'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'answer_counts',
        sa.Column('mailbox', sa.String(length=320), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('answers', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('mailbox', 'day'),
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_created', ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_created')
    op.drop_table('answer_counts')
