"""outbox: the answer's one row in the intake transaction

Revision ID: 0003_outbox_answer
Revises: 0002_status
Create Date: 2026-11-22

An auto-response now writes only its outbox row inside the intake transaction; the
outgoing article and the `autoresponse-sent` event are written when it has been sent.
The row therefore keeps the template it was rendered from. `ix_outbox_rcpt_to` went:
`ix_outbox_rcpt_created` (rcpt_to, created_at) serves every lookup by recipient, and
each index is one more page every answer dirties.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003_outbox_answer'
down_revision = '0002_status'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('template', sa.String(length=200), nullable=False,
                                      server_default=''))
        batch_op.drop_index('ix_outbox_rcpt_to')


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_rcpt_to', ['rcpt_to'], unique=False)
        batch_op.drop_column('template')
