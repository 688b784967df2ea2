"""The customer's text is quoted only where a template asks for it.

The shipped new-ticket answer does not quote it (an auto-reply that repeats what it
received carries a forger's text to whoever's address was forged); agents' notifications
and site templates may (`{{ article.excerpt }}`). Working the excerpt out costs more
than rendering a template without it, so it is skipped when the templates' syntax trees
show they cannot read it (`Templates.reads_excerpt`), and only then.
"""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from sqlalchemy import select

import autoresponse.autoresponder as autoresponder
from autoresponse.templates import Templates
from gateway.config import Config
from gateway.mail.envelope import Envelope
from gateway.runtime import Store, open_store
from tests.autoresponse_helpers import answering_intake, build_mail
from tests.support import make_config
from ticketstore.models import OutboxMessage

SUPPORT = "support@helpdesk.example"
SECRET = "the spare key is under the third flowerpot"

READS = {
    "{{ article.excerpt }}": True,
    "{{ article['excerpt'] }}": True,
    "{{ article.subject }} {{ article['text'] }} {{ article.from }}": False,
    "no article at all: {{ ticket.number }}": False,
    "{% for k, v in article.items() %}{{ v }}{% endfor %}": True,
    "{{ article|length }}": True,
    "{% for v in article %}{{ v }}{% endfor %}": True,
    "{% set a = article %}{{ a.subject }}": True,
    "{% with a = article %}{{ a.subject }}{% endwith %}": True,
    "{{ article['exc' ~ 'erpt'] }}": True,
    "{{ article|attr('excerpt') }}": True,
    "{% include 'default/en/other.txt' %}": True,
    "{% for article in [customer] %}{{ article.name }}{% endfor %}": True,
}


def _site_templates(base: Path, text: str, html: str | None = None) -> Path:
    folder = base / "default" / "en"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "new-ticket.txt").write_text(text, encoding="utf-8")
    (folder / "other.txt").write_text("{{ article.excerpt }}", encoding="utf-8")
    if html is not None:
        (folder / "new-ticket.html").write_text(html, encoding="utf-8")
    return base


def _reads(templates: Templates, event: str = "new-ticket") -> bool:
    return templates.reads_excerpt(templates.lookup("default", event))


@pytest.mark.parametrize(("source", "reads"), list(READS.items()))
def test_reads_excerpt_from_the_syntax_tree(tmp_path: Path, source: str, reads: bool) -> None:
    templates = Templates(_site_templates(tmp_path, source))
    assert _reads(templates)  # not analysed yet: assume so
    templates.resolve("default", "new-ticket")  # analyses
    assert _reads(templates) is reads


def test_the_html_part_reading_it_is_enough(tmp_path: Path) -> None:
    templates = Templates(_site_templates(tmp_path, "{{ article.subject }}",
                                          "<pre>{{ article.excerpt }}</pre>"))
    templates.resolve("default", "new-ticket")
    assert _reads(templates)


def test_shipped_templates_quote_for_agents_not_for_customers() -> None:
    templates = Templates(None)
    for event in ("new-ticket", "agent-notification"):
        templates.resolve("default", event)
    assert not _reads(templates)
    assert _reads(templates, "agent-notification")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every text the responder works an excerpt out of."""
    seen: list[str] = []
    real = autoresponder.excerpt

    def counting(text: str, lines: int = autoresponder.EXCERPT_LINES) -> str:
        seen.append(text)
        return real(text, lines)

    monkeypatch.setattr(autoresponder, "excerpt", counting)
    yield seen


def _answers(tmp_path: Path, sqlite_url: str, templates: Path | None) -> list[Message]:
    """Three new tickets (the first answered in the transaction, the others through
    drafts); the answers' text parts."""
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


def test_a_site_template_that_quotes_gets_the_excerpt(
    tmp_path: Path, sqlite_url: str, calls: list[str],
) -> None:
    site = _site_templates(tmp_path / "t", "Ticket {{ ticket.number }}\n\n"
                                          "{{ article.excerpt }}\n")
    parts = _answers(tmp_path, sqlite_url, site)
    assert all(f"> {SECRET}." in _text(p) for p in parts)
    assert len(calls) == 3
