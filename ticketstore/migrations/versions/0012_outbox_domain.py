"""outbox: the recipient's domain, indexed with the time, for the hourly answer limits

Revision ID: 0012_outbox_domain
Revises: 0011_senders
Create Date: 2026-12-07

`max_per_domain_per_hour` counted the last hour's outbox rows whose `rcpt_to` ends in
`@domain`: a suffix match no index serves, so each answer read every row of the hour
(about 1.5 ms per answer with 2,000 of them). `rcpt_domain` with
`ix_outbox_domain_created` makes it an index range, which autoresponse/limits.py stops
counting at the limit. Rows written by an older instance during a rolling upgrade keep
`''` and are not counted for their domain (older instances do not check it either).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012_outbox_domain'
down_revision = '0011_senders'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rcpt_domain', sa.String(length=255), nullable=False,
                                      server_default=''))
    domain = ("lower(substr(rcpt_to, instr(rcpt_to, '@') + 1))"
              if op.get_bind().dialect.name == "sqlite" else "lower(split_part(rcpt_to, '@', 2))")
    op.execute(f"UPDATE outbox SET rcpt_domain = {domain}")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_domain_created', ['rcpt_domain', 'created_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_domain_created')
        batch_op.drop_column('rcpt_domain')
