"""Left only for autoresponse/ until its rewrite is merged (issue 14): the lead deletes this
module and ticketstore/hotpath.py then. Nothing of the intake uses them any more.
"""

from __future__ import annotations

from .hotpath import Catalogue, insert_all
from .models import Article, Event, OutboxMessage

STATEMENTS = Catalogue({
    "insert_article": lambda _d: insert_all(Article.__table__, Article.__table__.c.id),
    "insert_event": lambda _d: insert_all(Event.__table__),
    "insert_outbox": lambda _d: insert_all(OutboxMessage.__table__),
})
