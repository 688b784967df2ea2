"""status page: index tickets by creation/close time and customer domain

Revision ID: 0002_status
Revises: 0001_initial
Create Date: 2026-11-22

The status page counts tickets created and closed per customer domain per month; with
these covering indexes the current month is read from the index alone, and closed
tickets are found without a scan over every ticket (hundreds of ms at 100,000 tickets).
"""
from __future__ import annotations

from alembic import op

revision = '0002_status'
down_revision = '0001_initial'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_tickets_created_domain', 'tickets', ['created_at', 'customer_domain'])
    op.create_index('ix_tickets_closed_domain', 'tickets', ['closed_at', 'customer_domain'])


def downgrade() -> None:
    op.drop_index('ix_tickets_closed_domain', table_name='tickets')
    op.drop_index('ix_tickets_created_domain', table_name='tickets')
