"""participants, held messages, and the stranger flag on articles

Revision ID: 0008_participants
Revises: 0007_verdict
Create Date: 2026-12-07

Who takes part in a ticket decides whether a follow-up by ticket number is threaded
(docs/identity.md). Existing tickets get their customer as the first participant, so a
customer's reply keeps threading after the upgrade.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008_participants'
down_revision = '0007_verdict'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'participants',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ticket_id', sa.Integer(), nullable=False),
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('ticket_id', 'address', name='uq_participants'),
    )
    op.create_table(
        'held_messages',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ticket_id', sa.Integer(), nullable=True),
        sa.Column('message_id', sa.String(length=998), nullable=False),
        sa.Column('content_hash', sa.String(length=64), nullable=False),
        sa.Column('from_address', sa.String(length=320), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('raw', sa.LargeBinary(), nullable=False),
        sa.Column('envelope_sender', sa.String(length=320), nullable=True),
        sa.Column('envelope_recipients', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('message_id', 'content_hash', name='uq_held_message'),
    )
    op.create_index('ix_held_state', 'held_messages', ['state'], unique=False)
    with op.batch_alter_table('articles', schema=None) as batch_op:
        batch_op.add_column(sa.Column('from_stranger', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    op.execute(
        "INSERT INTO participants (ticket_id, address, source, added_at) "
        "SELECT id, lower(customer_address), 'customer', created_at FROM tickets "
        "WHERE customer_address <> ''"
    )


def downgrade() -> None:
    with op.batch_alter_table('articles', schema=None) as batch_op:
        batch_op.drop_column('from_stranger')
    op.drop_index('ix_held_state', table_name='held_messages')
    op.drop_table('held_messages')
    op.drop_table('participants')
