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
import io
import logging
import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert

from gateway.config import read_site_secret
from gateway.intake.outcome import Outcome
from gateway.intake.ports import Responder
from gateway.mail.classify import BOUNCE, bounced_message_ids, bounced_recipients
from gateway.mail.loopmark import loop_mark
from gateway.mail.subject import tag_subject
from ticketstore.models import Event, OutboxMessage

from . import limits
from .compose import Outgoing, compose, new_message_id, valid_address
from .sanitize import short_name, short_subject, short_text
from .suppress import Check, daily_reason, is_system_address, suppression
from .templates import DEFAULT_SET, EVENTS, Rendered, TemplateError, Templates

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from gateway.config import Config, QueueConfig
    from gateway.intake.ports import StoredMessage

log = logging.getLogger("ticketgate.autoresponse")

# template event -> outbox kind (one to one: the event written at sending maps it back)
KINDS = {
    "new-ticket": "auto-reply",
    "follow-up": "follow-up",
    "reject": "reject",
    "new-ticket-rejected": "new-ticket-rejected",
    "agent-notification": "agent-notification",
}
# Built once, executed with each answer's values (SQLAlchemy keys its compiled cache by
# the statement, and working out that key is most of what a fresh statement costs).
INSERT_OUTBOX = insert(OutboxMessage)
INSERT_EVENT = insert(Event)
EXCERPT_LINES = 15
EXCERPT_WIDTH = 74  # quoted with "> ": lines of at most 76 characters


def excerpt(text: str, lines: int = EXCERPT_LINES) -> str:
    """The customer's text quoted with "> ", first lines only, long lines wrapped as a
    mail program quotes them (so the answer's text part can go as it is: compose.py)."""
    kept: list[str] = []
    for piece in io.StringIO(text.strip()):  # line by line: the text may be megabytes
        for line in piece.splitlines():
            kept += wrap(line.rstrip(), EXCERPT_WIDTH)
        if len(kept) > lines:
            break
    quoted = "\n".join(f"> {line}" if line else ">" for line in kept[:lines])
    return quoted + "\n> [...]" if len(kept) > lines else quoted


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


def neutral_context(stored: StoredMessage) -> dict[str, Any]:
    """The variables of an answer to someone who is not a participant of the ticket: its
    number (which they wrote) and queue, their own name and address, and nothing else of
    the ticket or of its customer: no title, state, subject or excerpt."""
    t, m = stored.ticket, stored.msg
    return {
        "ticket": {"number": t.number, "title": "", "queue": t.queue.name, "state": "",
                   "priority": ""},
        "customer": {"name": short_name(m.from_name), "address": m.from_address,
                     "domain": m.from_address.rpartition("@")[2].lower(), "id": ""},
        "article": {"subject": "", "text": "", "excerpt": "", "from": m.from_address},
    }


class AutoResponder(Responder):
    """The configured responder; stateless between messages, so safe across threads."""

    def __init__(self, config: Config, templates: Templates | None = None) -> None:
        self.config = config
        self._templates = templates
        ours = {a.lower() for q in config.queues for a in q.addresses}
        if config.autoresponse.from_address:
            ours.add(config.autoresponse.from_address.lower())
        self.system_addresses = frozenset(ours)
        self.noreply = re.compile(config.autoresponse.noreply_pattern, re.IGNORECASE)
        # Keys our loop header (docs/identity.md); None: a site without a secret.
        self.loop_secret = read_site_secret(config)

    @property
    def templates(self) -> Templates:
        """Built on first use, so a store that answers nothing never loads jinja2."""
        if self._templates is None:
            tcfg = self.config.templates
            self._templates = Templates(self.config.path(tcfg.dir), tcfg.language,
                                        tcfg.overrides)
        return self._templates

    def warm_up(self, conn: Connection) -> None:
        """Import jinja2 and compile the templates now, for a long-running server at
        start, rather than while its first customer waits. Template errors are left for
        the answer that meets them, where they are recorded."""
        if self.config.autoresponse.enabled or any(q.notify for q in self.config.queues):
            sets = {DEFAULT_SET, *(q.templates for q in self.config.queues if q.templates),
                    *self.config.templates.overrides.values()}
            for tset in sorted(sets):
                for event in EVENTS:
                    with contextlib.suppress(TemplateError):
                        self.templates.resolve(tset, event)

    def after_store(self, conn: Connection, stored: StoredMessage) -> None:
        if BOUNCE in stored.classification.labels:
            self._record_bounce(conn, stored)
        qcfg = self.config.queue(stored.ticket.queue.name)
        event = self.customer_event(stored, qcfg)
        if event is not None:
            self._answer_customer(conn, stored, qcfg, event)
        if qcfg.notify and stored.outcome in (Outcome.CREATED, Outcome.FOLLOW_UP,
                                               Outcome.REJECTED):
            self._notify_agents(conn, stored, qcfg)

    def customer_event(self, stored: StoredMessage, qcfg: QueueConfig) -> str | None:
        """The template event the customer is answered with, or None (no answer)."""
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
        """Reply-To when it is a usable address that is not ours, else From; lower case,
        without a trailing dot in the domain (one spelling of a mailbox in the outbox)."""
        for addr in stored.msg.reply_to:
            if valid_address(addr) and not self._is_ours(addr):
                return addr.lower().rstrip(".")
        return stored.msg.from_address.lower().rstrip(".")

    def _is_ours(self, addr: str) -> bool:
        return is_system_address(addr, self.system_addresses)

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
        # The exact step of the daily limit, last: only an answer about to be made counts.
        acfg = self.config.autoresponse
        mailbox = limits.mailbox_key(rcpt, acfg.recipient_delimiter)
        if not limits.reserve(conn, mailbox, stored.now, acfg.max_per_day):
            sent = limits.answers_today(conn, mailbox, stored.now)
            self._suppressed(conn, stored, event, "daily-limit",
                             daily_reason(sent, mailbox, acfg.max_per_day))
            return
        name = stored.msg.from_name if rcpt == stored.msg.from_address.lower().rstrip(".") \
            else ""
        if not self._plan(conn, stored, qcfg, event, rcpt, short_name(name)):
            limits.release(conn, mailbox, stored.now)

    def _suppressed(self, conn: Connection, stored: StoredMessage, event: str, check: str,
                    reason: str) -> None:
        log.debug("no %s for ticket %s: %s", event, stored.ticket.number, reason)
        self._event(conn, stored, "autoresponse-suppressed",
                    {"event": event, "check": check, "reason": reason})

    # -- agents ---------------------------------------------------------------------------

    def _notify_agents(self, conn: Connection, stored: StoredMessage, qcfg: QueueConfig) -> None:
        """Agents hear about new tickets and follow-ups, except our own mail coming back:
        our loop header with a valid mark (anyone can write an X-Loop), or our address
        in From where it can be believed (`_from_is_ours`)."""
        if stored.classification.own_loop or self._from_is_ours(stored):
            self._suppressed(conn, stored, "agent-notification", "loop",
                             "our own mail came back")
            return
        if not self.from_address(qcfg):
            return
        for addr in qcfg.notify:
            self._plan(conn, stored, qcfg, "agent-notification", addr.lower(), "")

    def _from_is_ours(self, stored: StoredMessage) -> bool:
        """One of our addresses in From, proven by an aligned DKIM signature, or on a site
        without a secret, where nothing better tells our mail coming back. With a secret
        our mail carries a valid mark; an unproven From of ours without one is someone
        else's (forged, or an agent's own mail client), and the agents hear of it."""
        sender = stored.msg.from_address
        return bool(sender and self._is_ours(sender)
                    and (stored.article.aligned or self.loop_secret is None))

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

    def context(self, stored: StoredMessage, qcfg: QueueConfig, event: str) -> dict[str, Any]:
        """The template variables: plain values only.

        Agents get the message as it came. A customer answer goes to whoever the From
        names, so it carries only short, sanitised values (sanitize.py); one to a sender
        who is not a participant of the ticket gets the neutral context instead.
        """
        t, m = stored.ticket, stored.msg
        base = {
            "event": event,
            "language": self.templates.language,
            "company_name": self.config.autoresponse.company_name,
            "participant": stored.sender_is_participant,
            "queue": {"name": t.queue.name, "address": self.from_address(qcfg)},
            # The number as subjects carry it (`[tickets] hook` and `subject_tag`).
            "subject_tag": self.config.tickets.subject_tag.format(
                hook=self.config.tickets.hook, number=t.number),
        }
        if event == "agent-notification":
            return base | {
                "ticket": {"number": t.number, "title": t.title, "queue": t.queue.name,
                           "state": t.state, "priority": t.priority},
                "customer": {"name": t.customer_name or "", "address": t.customer_address,
                             "domain": t.customer_domain, "id": t.customer_id or ""},
                "article": {"subject": m.subject, "text": m.text, "excerpt": excerpt(m.text),
                            "from": m.from_address},
            }
        if not stored.sender_is_participant:
            return base | neutral_context(stored)
        text = short_text(m.text)
        return base | {
            "ticket": {"number": t.number, "title": short_subject(t.title),
                       "queue": t.queue.name, "state": t.state, "priority": t.priority},
            "customer": {"name": short_name(t.customer_name or ""),
                         "address": t.customer_address, "domain": t.customer_domain,
                         "id": t.customer_id or ""},
            "article": {"subject": short_subject(m.subject), "text": text,
                        "excerpt": excerpt(text), "from": m.from_address},
        }

    def _render(self, stored: StoredMessage, qcfg: QueueConfig, event: str) -> Rendered:
        t = stored.ticket
        templates = self.templates
        tset = templates.choose_set(qcfg.templates, t.customer_id or "", t.customer_domain)
        return templates.render(tset, event, self.context(stored, qcfg, event))

    def _outgoing(self, stored: StoredMessage, qcfg: QueueConfig, event: str, rcpt: str,
                  rcpt_name: str, rendered: Rendered) -> Outgoing:
        t, m = stored.ticket, stored.msg
        sender = self.from_address(qcfg)
        tcfg = self.config.tickets
        message_id = new_message_id(sender.rpartition("@")[2])
        return Outgoing(
            from_name=self.config.autoresponse.company_name,
            from_address=sender,
            to_name=rcpt_name,
            to_address=rcpt,
            subject=tag_subject(self._subject(stored, event), tcfg.hook, t.number,
                                tcfg.subject_tag),
            text=rendered.text,
            html=rendered.html,
            message_id=message_id,
            in_reply_to=m.message_id,  # "" when the customer's message had none
            references=m.references,
            auto_submitted="auto-generated" if event == "agent-notification" else "auto-replied",
            loop_header=self.config.autoresponse.loop_header,
            loop_value=(loop_mark(self.loop_secret, message_id) if self.loop_secret
                        else sender),
            date=stored.now,
        )

    @staticmethod
    def _subject(stored: StoredMessage, event: str) -> str:
        """The answer's subject before tagging: the sender's own (short) or the title."""
        m, t = stored.msg, stored.ticket
        if event == "agent-notification":
            return m.subject or t.title
        if not stored.sender_is_participant:
            return short_subject(m.subject)  # never the ticket's title
        return short_subject(m.subject or t.title)

    def _plan(self, conn: Connection, stored: StoredMessage, qcfg: QueueConfig, event: str,
              rcpt: str, rcpt_name: str) -> bool:
        """Write the answer's outbox row; False (and a suppression recorded) if it failed."""
        try:
            rendered = self._render(stored, qcfg, event)
        except TemplateError as exc:
            # A broken template must not make the MTA retry the customer's mail forever.
            log.error("template error for %s: %s", event, exc)
            self._suppressed(conn, stored, event, "template-error", str(exc))
            return False
        out = self._outgoing(stored, qcfg, event, rcpt, rcpt_name, rendered)
        try:
            data = compose(out)
        except ValueError as exc:
            self._suppressed(conn, stored, event, "compose-error", str(exc))
            return False
        # Customer answers only: a notification goes to our own agents, who may want it all.
        limit = self.config.autoresponse.max_answer_size
        if event != "agent-notification" and len(data) > limit:
            reason = (f"the answer is {len(data)} bytes, more than autoresponse.max_answer_size"
                      f" = {limit} ({rendered.template})")
            log.error("%s not sent: %s", event, reason)
            self._suppressed(conn, stored, event, "too-large", reason)
            return False
        conn.execute(INSERT_OUTBOX, {
            "ticket_id": stored.ticket.id, "kind": KINDS[event], "mail_from": out.from_address,
            "rcpt_to": out.to_address, "message_id": out.message_id, "message": data,
            "rcpt_domain": limits.domain_key(out.to_address.rpartition("@")[2]),
            "template": rendered.template, "next_attempt_at": stored.now,
            "created_at": stored.now})
        return True

    def _event(self, conn: Connection, stored: StoredMessage, kind: str,
               detail: dict[str, Any]) -> None:
        conn.execute(INSERT_EVENT, {
            "ticket_id": stored.ticket.id, "article_id": stored.article.id, "kind": kind,
            "created_at": stored.now, "detail": detail})

    def _record_bounce(self, conn: Connection, stored: StoredMessage) -> None:
        self._event(conn, stored, "bounce", {
            "failed_recipients": sorted(bounced_recipients(stored.msg.raw))[:50],
            "returned_message_ids": list(bounced_message_ids(stored.msg.raw))[:10],
            "new_ticket": stored.outcome is Outcome.CREATED,
        })
