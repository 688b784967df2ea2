"""articles: the sender verdict (DKIM, From alignment, DMARC-style result, source)

Revision ID: 0007_verdict
Revises: 0006_rollups
Create Date: 2026-12-07

Every incoming article keeps where it really came from, as the intake worked it out
(gateway/intake/verify): shown by `tickets show`, counted on the status page. Articles
stored before have source "off" (not checked).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007_verdict'
down_revision = '0006_rollups'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('articles', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dkim', sa.String(length=16), nullable=False,
                                      server_default='none'))
        batch_op.add_column(sa.Column('aligned', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('dmarc', sa.String(length=16), nullable=False,
                                      server_default='none'))
        batch_op.add_column(sa.Column('aligned_failed', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('verdict_source', sa.String(length=300), nullable=False,
                                      server_default='off'))


def downgrade() -> None:
    with op.batch_alter_table('articles', schema=None) as batch_op:
        for name in ('verdict_source', 'aligned_failed', 'dmarc', 'aligned', 'dkim'):
            batch_op.drop_column(name)
