"""Plan auto-responses and agent notifications inside the intake's transaction.

Nothing is sent here. For each answer we render the template, compose the message and
write one row beside the ticket: an `OutboxMessage` with the bytes, our Message-ID (so a
reply that only has References threads, even before it is sent) and the template used.
The outgoing article and the `autoresponse-sent` event are written when the smarthost
has taken it (outbox.py): each row the intake transaction writes is time every worker
waits for the database. When a check of `suppress.CHECKS` says no, an
`autoresponse-suppressed` event records why instead. Because the row commits with the
ticket, a crash loses neither the ticket nor its answer.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any

from autoresponse.responder import TicketPreview
from gateway.intake.outcome import Outcome
from gateway.intake.ports import StoredMessage
from gateway.intake.recipients import split_plus
from gateway.mail.classify import BOUNCE, LOOP, bounced_message_ids, bounced_recipients
from gateway.mail.subject import tag_subject
from ticketstore.models import utcnow
from ticketstore.statements import STATEMENTS

from . import rows
from .compose import Outgoing, compose, compose_unchanged, new_message_id, valid_address
from .draft import Draft, placeholder, queue_name, ticket_number
from .suppress import DATABASE_CHECKS, MESSAGE_CHECKS, SENT_SINCE, Check, suppression
from .templates import DEFAULT_SET, EVENTS, Lookup, Rendered, TemplateError

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from gateway.config import Config, QueueConfig
    from gateway.intake.core import Prepared

    from .templates import Templates

log = logging.getLogger("ticketgate.autoresponse")

# template event -> outbox kind (one to one: the event written at sending maps it back)
KINDS = {
    "new-ticket": "auto-reply",
    "follow-up": "follow-up",
    "reject": "reject",
    "new-ticket-rejected": "new-ticket-rejected",
    "agent-notification": "agent-notification",
}
EXCERPT_LINES = 15
EXCERPT_WIDTH = 74  # quoted with "> ": lines of at most 76 characters


def excerpt(text: str, lines: int = EXCERPT_LINES) -> str:
    """The customer's text quoted with "> ", first lines only, long lines wrapped as a
    mail program quotes them (so the answer's text part can go as it is: compose.py).

    Whole-string operations where they do: every answer pays for this, and each Python
    step per line costs about what a `str` method costs for a kilobyte.
    """
    head = text.strip()
    if not head:
        return ""
    # Only the first lines matter, and the text is often kilobytes: cut it after its
    # (lines + 1)-th "\n". Every line before that cut is split as in the whole text (a
    # "\r\n" cannot straddle it), and there are more than `lines` of them.
    parts = head.split("\n", lines + 1)
    if len(parts) > lines + 1:
        head = head[:len(head) - len(parts[-1])]
        parts[-1] = ""  # the cut leaves an empty line after the last "\n" (splitlines: none)
    if head.isascii() and not any(sep in head for sep in _ASCII_BREAKS):
        found = parts[:-1] if parts[-1] == "" and len(parts) > 1 else parts  # as splitlines
    else:
        found = head.splitlines()
    kept: list[str] = []
    for line in found:
        line = line.rstrip()
        if len(line) > EXCERPT_WIDTH:
            kept += wrap(line, EXCERPT_WIDTH)
        else:
            kept.append(line)
        if len(kept) > lines:
            break
    shown = kept[:lines]
    if not shown:
        return "\n> [...]" if len(kept) > lines else ""
    # "> " before every line, ">" alone for an empty one: between two "\n", "> " can only
    # be an empty line. Adjacent ones need the second pass (the first consumes the "\n"
    # they share).
    quoted = ("\n> " + "\n> ".join(shown) + "\n").replace("\n> \n", "\n>\n") \
        .replace("\n> \n", "\n>\n")[1:-1]
    return quoted + "\n> [...]" if len(kept) > lines else quoted


# What str.splitlines() breaks ASCII text at, but "\n".
_ASCII_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e")


def wrap(line: str, width: int) -> list[str]:
    """`line` broken at spaces into pieces of at most `width` characters; one space goes
    at each break, so " ".join(pieces) == line. A word longer than `width` stays whole
    (a URL must not be cut)."""
    pieces = []
    start, end = 0, len(line)
    while end - start > width:
        cut = line.rfind(" ", start + 1, start + width + 1)
        if cut < 0:
            cut = line.find(" ", start + width + 1)
            if cut < 0:
                break
        pieces.append(line[start:cut])
        start = cut + 1
    pieces.append(line[start:])
    return pieces


class AutoResponder:
    """The configured responder; stateless between messages (safe across threads)."""

    def __init__(self, config: Config, templates: Templates | None = None) -> None:
        self.config = config
        self._templates = templates
        ours = {a.lower() for q in config.queues for a in q.addresses}
        if config.autoresponse.from_address:
            ours.add(config.autoresponse.from_address.lower())
        self.system_addresses = frozenset(ours)
        self.noreply = re.compile(config.autoresponse.noreply_pattern, re.IGNORECASE)
        self._number_size = 0  # length of the last new ticket's number; 0: none seen yet

    @property
    def templates(self) -> Templates:
        """Built on first use, so a store that answers nothing never loads jinja2."""
        if self._templates is None:
            from .templates import Templates

            tcfg = self.config.templates
            self._templates = Templates(self.config.path(tcfg.dir), tcfg.language,
                                        tcfg.overrides)
        return self._templates

    def warm_up(self, conn: Connection) -> None:
        """Pay the first answer's one-off costs now, for a long-running server at start.

        The first answer in a process imports jinja2 (~40 ms), compiles the templates it
        uses (~5 ms each) and prebuilds this module's statements (SQLAlchemy's compiler,
        tens of ms the first time): 25-55 ms of CPU in all, which a server's first
        customer otherwise waits for. `ticketgate pipe` must not call this (it answers at
        most one message, and often none). Template errors are left for the answer that
        meets them, where they are recorded.
        """
        if self.config.autoresponse.enabled or any(q.notify for q in self.config.queues):
            sets = {DEFAULT_SET, *(q.templates for q in self.config.queues if q.templates),
                    *self.config.templates.overrides.values()}
            for tset in sorted(sets):
                for event in EVENTS:
                    with contextlib.suppress(TemplateError):
                        self.templates.resolve(tset, event)
        for name in (rows.OUTBOX, SENT_SINCE):
            STATEMENTS(conn, name)

    # -- the seam -------------------------------------------------------------------------

    def after_store(self, conn: Connection, stored: StoredMessage) -> None:
        if stored.outcome is Outcome.CREATED:
            # What the next draft's placeholder must be as long as (numbers grow rarely).
            self._number_size = len(ticket_number(stored.ticket))
        if BOUNCE in stored.classification.labels:
            self._record_bounce(conn, stored)
        qcfg = self.config.queue(queue_name(stored.ticket))
        event = self._customer_event(stored, qcfg)
        if event is not None:
            self._answer_customer(conn, stored, qcfg, event)
        if qcfg.notify and stored.outcome in (Outcome.CREATED, Outcome.FOLLOW_UP,
                                               Outcome.REJECTED):
            self._notify_agents(conn, stored, qcfg)

    def _customer_event(self, stored: StoredMessage, qcfg: QueueConfig) -> str | None:
        if not self.config.autoresponse.enabled:
            return None
        if stored.outcome is Outcome.CREATED:
            return "new-ticket-rejected" if stored.queue_refused_new else "new-ticket"
        if stored.outcome is Outcome.REJECTED:
            return "reject"
        if stored.outcome is Outcome.FOLLOW_UP and qcfg.follow_up_ack:
            return "follow-up"
        return None

    # -- customers ------------------------------------------------------------------------

    def recipient(self, stored: StoredMessage) -> str:
        """Reply-To when it is a usable address that is not ours, else From."""
        for addr in stored.msg.reply_to:
            if valid_address(addr) and not self._is_ours(addr):
                return addr.lower()
        return stored.msg.from_address.lower()

    def _is_ours(self, addr: str) -> bool:
        return addr.lower() in self.system_addresses or \
            split_plus(addr)[0] in self.system_addresses

    def _answer_customer(self, conn: Connection, stored: StoredMessage, qcfg: QueueConfig,
                         event: str) -> None:
        rcpt = self.recipient(stored)
        verdict = suppression(Check(conn, stored, self.config, rcpt,
                                    self.system_addresses, self.noreply))
        if verdict is None and not self.from_address(qcfg):
            verdict = ("no-from-address", "no queue address and no autoresponse.from_address")
        if verdict is not None:
            self._suppressed(conn, stored, event, *verdict)
            return
        self._plan(conn, stored, qcfg, event, rcpt, stored.msg.from_name
                   if rcpt == stored.msg.from_address.lower() else "")

    def _suppressed(self, conn: Connection, stored: StoredMessage, event: str, check: str,
                    reason: str) -> None:
        log.debug("no %s for ticket %s: %s", event, stored.ticket.number, reason)
        STATEMENTS(conn, "insert_event").execute(conn, dict(
            ticket_id=stored.ticket.id, article_id=stored.article.id,
            kind="autoresponse-suppressed", created_at=stored.now,
            detail={"event": event, "check": check, "reason": reason}))

    # -- agents ---------------------------------------------------------------------------

    def _notify_agents(self, conn: Connection, stored: StoredMessage, qcfg: QueueConfig) -> None:
        """Agents hear about new tickets and follow-ups, except our own mail coming back."""
        sender = stored.msg.from_address
        if LOOP in stored.classification.labels or (sender and self._is_ours(sender)):
            self._suppressed(conn, stored, "agent-notification", "loop",
                             "our own mail came back")
            return
        if not self.from_address(qcfg):
            return
        for addr in qcfg.notify:
            self._plan(conn, stored, qcfg, "agent-notification", addr.lower(), "")

    # -- writing --------------------------------------------------------------------------

    def from_address(self, qcfg: QueueConfig) -> str:
        """The queue's first address, else [autoresponse] from_address, else any queue's."""
        if qcfg.addresses:
            return qcfg.addresses[0]
        if self.config.autoresponse.from_address:
            return self.config.autoresponse.from_address
        for q in self.config.queues:
            if q.addresses:
                return q.addresses[0]
        return ""

    def context(self, stored: StoredMessage, qcfg: QueueConfig, event: str,
                number: str | None = None, quote: bool = True) -> dict[str, Any]:
        """The template variables. `quote` False: the templates cannot read
        `article.excerpt` (`Templates.reads_excerpt`), so it is left empty."""
        t, m = stored.ticket, stored.msg
        return {
            "event": event,
            "language": self.templates.language,
            "company_name": self.config.autoresponse.company_name,
            "ticket": {"number": t.number if number is None else number, "title": t.title,
                       "queue": t.queue.name, "state": t.state, "priority": t.priority},
            "customer": {"name": t.customer_name or "", "address": t.customer_address,
                         "domain": t.customer_domain, "id": t.customer_id or ""},
            "article": {"subject": m.subject, "text": m.text,
                        "excerpt": excerpt(m.text) if quote else "", "from": m.from_address},
            "queue": {"name": t.queue.name, "address": self.from_address(qcfg)},
        }

    def _outgoing(self, stored: StoredMessage, qcfg: QueueConfig, event: str, rcpt: str,
                  rcpt_name: str, number: str, hit: Lookup | None = None,
                  ) -> tuple[Outgoing, Rendered]:
        """The answer's message, rendered for ticket `number` (TemplateError if broken),
        from the templates `hit` (by default, those of the set `choose_set` picks)."""
        t, m = stored.ticket, stored.msg
        templates = self.templates
        if hit is None:
            hit = templates.lookup(templates.choose_set(
                qcfg.templates, t.customer_id or "", t.customer_domain), event)
        rendered = templates.render_of(hit, self.context(
            stored, qcfg, event, number, templates.reads_excerpt(hit)))
        sender = self.from_address(qcfg)
        tcfg = self.config.tickets
        return Outgoing(
            from_name=self.config.autoresponse.company_name,
            from_address=sender,
            to_name=rcpt_name,
            to_address=rcpt,
            subject=tag_subject(m.subject or t.title, tcfg.hook, number, tcfg.subject_tag),
            text=rendered.text,
            html=rendered.html,
            message_id=new_message_id(sender.rpartition("@")[2]),
            in_reply_to=m.message_id,  # "" when the customer's message had none
            references=m.references,
            auto_submitted="auto-generated" if event == "agent-notification" else "auto-replied",
            loop_header=self.config.autoresponse.loop_header,
            loop_value=sender,
            date=stored.now,
        ), rendered

    def _plan(self, conn: Connection, stored: StoredMessage, qcfg: QueueConfig, event: str,
              rcpt: str, rcpt_name: str) -> None:
        try:
            out, rendered = self._outgoing(stored, qcfg, event, rcpt, rcpt_name,
                                           stored.ticket.number)
        except TemplateError as exc:
            # A broken template must not make the MTA retry the customer's mail forever.
            log.error("template error for %s: %s", event, exc)
            self._suppressed(conn, stored, event, "template-error", str(exc))
            return
        try:
            data = compose(out)
        except ValueError as exc:
            self._suppressed(conn, stored, event, "compose-error", str(exc))
            return
        self._queue(conn, stored, event, out, data, rendered.template)

    def _queue(self, conn: Connection, stored: StoredMessage, event: str, out: Outgoing,
               data: bytes, template: str) -> None:
        STATEMENTS(conn, rows.OUTBOX).execute(conn, {
            "ticket_id": stored.ticket.id, "article_id": None, "kind": KINDS[event],
            "mail_from": out.from_address, "rcpt_to": out.to_address,
            "message_id": out.message_id, "message": data, "template": template,
            "next_attempt_at": stored.now, "created_at": stored.now,
        })

    # -- drafts: the answer to a new ticket, made before the store --------------------------

    @property
    def drafts(self) -> bool:
        """Only once this process has issued a number (a draft needs its length): a
        `ticketgate pipe` process, which stores one message, never builds a preview."""
        return self.config.autoresponse.enabled and self._number_size > 0

    def draft(self, p: Prepared, preview: TicketPreview) -> Draft | None:
        """The new-ticket answer, rendered and composed before the store (see draft.py).

        Only for mail that will most likely open a ticket, that no message check
        suppresses, and whose templates print the ticket number only as it is. None
        otherwise, and the answer is made in the transaction as before.
        """
        m = p.msg
        size = self._number_size
        if not size or m.in_reply_to or m.references or p.subject_numbers:
            return None
        qcfg = self.config.queue(preview.queue.name)
        if not qcfg.accept_new or not self.from_address(qcfg):
            return None
        stored = StoredMessage(
            msg=m, envelope=p.envelope, classification=p.classification, route=p.route,
            ticket=preview, article=None, outcome=Outcome.CREATED,  # type: ignore[arg-type]
            closed_policy=None, queue_refused_new=False, now=utcnow())
        rcpt = self.recipient(stored)
        check = Check(None, stored, self.config, rcpt,  # type: ignore[arg-type]
                      self.system_addresses, self.noreply)
        if suppression(check, MESSAGE_CHECKS) is not None:
            return None
        templates = self.templates
        try:
            hit = templates.lookup(templates.choose_set(
                qcfg.templates, preview.customer_id or "", preview.customer_domain),
                "new-ticket")
            if not templates.number_verbatim(hit):
                return None
            number = placeholder(size)
            out, rendered = self._outgoing(stored, qcfg, "new-ticket", rcpt, m.from_name
                                           if rcpt == m.from_address.lower() else "", number,
                                           hit)
            data, unchanged = compose_unchanged(out)
        except (TemplateError, ValueError):
            return None  # the transaction meets it again, and records it
        return Draft.make(preview, number, out, rendered, data, unchanged)

    def _send_draft(self, conn: Connection, stored: StoredMessage, draft: Draft) -> None:
        """Queue a fitting draft: only the daily limit needs the database."""
        verdict = suppression(Check(conn, stored, self.config, draft.out.to_address,
                                    self.system_addresses, self.noreply), DATABASE_CHECKS)
        if verdict is not None:
            self._suppressed(conn, stored, "new-ticket", *verdict)
            return
        self._queue(conn, stored, "new-ticket", draft.out,
                    draft.message(ticket_number(stored.ticket)), draft.template)

    def _record_bounce(self, conn: Connection, stored: StoredMessage) -> None:
        STATEMENTS(conn, "insert_event").execute(conn, dict(
            ticket_id=stored.ticket.id, article_id=stored.article.id, kind="bounce",
            created_at=stored.now,
            detail={"failed_recipients": sorted(bounced_recipients(stored.msg.raw))[:50],
                    "returned_message_ids": list(bounced_message_ids(stored.msg.raw))[:10],
                    "new_ticket": stored.outcome is Outcome.CREATED},
        ))
