"""What a ticket keeps of an answer once the smarthost has taken it.

The intake transaction writes only the answer's outbox row (autoresponder.py): every row
written there is time each intake worker waits for the database. The outgoing article
(the bytes as sent, DKIM signature included) and the `autoresponse-sent` event are
written here, in the transaction that marks the row sent, so they record what was
actually sent and when. Until then the outbox row's Message-ID threads a reply.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import update
from sqlalchemy.orm import Session

from gateway.mail.parse import parse_message
from ticketstore.models import Article, Event, OutboxMessage

from .autoresponder import KINDS

# outbox kind -> the template event it answered, and the outgoing article's kind
EVENT_OF_KIND = {kind: event for event, kind in KINDS.items()}
ARTICLE_KIND = {"auto-reply": "auto-reply", "follow-up": "auto-reply", "reject": "reject",
                "new-ticket-rejected": "reject", "agent-notification": "notification"}


def record_sent(session: Session, row: OutboxMessage, data: bytes, now: dt.datetime) -> None:
    """The outgoing article and the `autoresponse-sent` event of `row`, sent as `data`.

    A row that already has an article was written by a version that recorded both at
    intake: nothing to add.
    """
    if row.article_id is not None:
        return
    article_id = None
    if row.ticket_id is not None:
        msg = parse_message(data)
        article = Article(
            ticket_id=row.ticket_id, direction="out", kind=ARTICLE_KIND.get(row.kind, row.kind),
            message_id=row.message_id, content_hash=hashlib.sha256(data).hexdigest(),
            in_reply_to=" ".join(f"<{i}>" for i in msg.in_reply_to),
            references=" ".join(f"<{i}>" for i in msg.references),
            from_address=msg.from_address, from_name=msg.from_name, to=", ".join(msg.to),
            cc="", subject=msg.subject, body_text=msg.text, body_html=msg.html, raw=data,
            size=len(data), envelope_sender=row.mail_from, envelope_recipients=[row.rcpt_to],
            classification=[], created_at=now)
        session.add(article)
        session.flush()
        article_id = article.id
        session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id)
                        .values(article_id=article_id))
    session.add(Event(
        ticket_id=row.ticket_id, article_id=article_id, kind="autoresponse-sent",
        created_at=now, detail={
            "event": EVENT_OF_KIND.get(row.kind, row.kind), "template": row.template,
            "to": row.rcpt_to, "message_id": row.message_id, "outbox_id": row.id}))
