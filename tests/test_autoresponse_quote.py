"""The customer's text is quoted only where a template asks for it.

The shipped new-ticket answer does not quote it (an auto-reply that repeats what it
received carries a forger's text to whoever's address was forged); agents' notifications
and site templates may (`{{ article.excerpt }}`).
"""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message
from pathlib import Path

from sqlalchemy import select

from gateway.config import Config
from gateway.mail.envelope import Envelope
from gateway.runtime import Store, open_store
from tests.autoresponse_helpers import answering_intake, build_mail
from tests.support import make_config
from ticketstore.models import OutboxMessage

SUPPORT = "support@helpdesk.example"
SECRET = "the spare key is under the third flowerpot"


def _site_templates(base: Path, text: str) -> Path:
    folder = base / "default" / "en"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "new-ticket.txt").write_text(text, encoding="utf-8")
    return base


def _answers(tmp_path: Path, sqlite_url: str, templates: Path | None) -> list[Message]:
    """Three new tickets; the answers' text parts."""
    extra = {"templates": {"dir": str(templates)}} if templates else {}
    config: Config = make_config(tmp_path, sqlite_url, **extra)
    store: Store = open_store(config)
    try:
        intake = answering_intake(config, store)
        for i in range(3):
            sender = f"c{i}@customer.example"
            intake.process(build_mail(subject=f"Question {i}", sender=sender,
                                      message_id=f"q{i}@customer.example",
                                      body=f"Hello,\n{SECRET}.\n"),
                           Envelope(sender, (SUPPORT,)))
        with store.factory() as s:
            rows = list(s.execute(select(OutboxMessage).where(
                OutboxMessage.kind == "auto-reply")).scalars())
    finally:
        store.dispose()
    assert len(rows) == 3
    parts = []
    for row in rows:
        msg = message_from_bytes(row.message)
        part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
        parts.append(part)
    return parts


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(part.get_content_charset() or "utf-8")


def test_the_shipped_answer_does_not_quote_the_customer(
    tmp_path: Path, sqlite_url: str,
) -> None:
    parts = _answers(tmp_path, sqlite_url, None)
    assert all(SECRET not in _text(p) and "Question" in _text(p) for p in parts)


def test_a_site_template_that_quotes_gets_the_excerpt(tmp_path: Path, sqlite_url: str) -> None:
    site = _site_templates(tmp_path / "t", "Ticket {{ ticket.number }}\n\n"
                                          "{{ article.excerpt }}\n")
    parts = _answers(tmp_path, sqlite_url, site)
    assert all(f"> {SECRET}." in _text(p) for p in parts)
