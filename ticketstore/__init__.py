"""Ticket store: SQLAlchemy models, migrations, ticket numbers and queries."""
