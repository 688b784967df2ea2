"""The answer to a new ticket, made before the store: outside the writer's lock.

Rendering and composing cost most of an answer, and inside the intake transaction every
worker waits for them (with SQLite the writers take turns). Only the ticket number is
unknown before the store. So the answer is made ahead for the ticket the message would
open, with a placeholder of random digits as long as the numbers being issued, and the
store swaps in the real number: a byte replacement in the finished message.

That is exact, not a guess, when:
  - the templates print `ticket.number` only as it is (`Templates.number_verbatim`:
    no filters, tests or slicing of it, checked on the template's syntax tree);
  - the placeholder has the real number's length and, like it, only digits: quoted-
    printable and header encoding treat every digit alike, so line breaks and escapes
    fall where they would have;
  - every placeholder the rendered parts and subject contain is in the composed bytes
    (none was split by a soft line break or base64-encoded): certain when they went in
    unchanged (7bit parts, an ASCII subject), else counted here;
  - everything else the answer depends on is what the store decided (`fits`).
Otherwise the store renders and composes as before. A copy of the random placeholder in
the customer's own words (quoted text, their name) would be replaced too; nobody can
know it in advance.
"""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoresponse.responder import TicketPreview
    from ticketstore.models import Ticket

    from .compose import Outgoing
    from .templates import Rendered


def placeholder(size: int) -> str:
    """`size` random digits (leading zeros included). Not `secrets`: that reads
    /dev/urandom on every call, and the placeholder never leaves the process. Not
    `randrange` either: its Python-level rejection sampling cost more than the rest;
    the slight bias of a modulo does not matter to a placeholder."""
    return f"{random.getrandbits(size * 4 + 64) % 10 ** size:0{size}d}"


_KEY_FIELDS = ("title", "state", "priority", "customer_name", "customer_address",
               "customer_domain", "customer_id")
_key_values = operator.itemgetter(*_KEY_FIELDS)


def ticket_key(t: Ticket | TicketPreview) -> tuple[object, ...]:
    """What of a ticket the answer depends on (context, template set, checks): all but
    its number and id.

    Read from the instance dict, where both the preview and the intake's detached
    tickets keep their values: through the ORM's attribute descriptors the same reads
    cost several times as much, inside the intake's transaction.
    """
    try:
        values = _key_values(vars(t))
    except KeyError:  # an ORM ticket with an attribute not loaded
        values = tuple(getattr(t, name) for name in _KEY_FIELDS)
    return (*values, queue_name(t))


def ticket_number(t: Ticket | TicketPreview) -> str:
    """The ticket's number, from the instance dict as in `ticket_key`."""
    number = vars(t).get("number")
    return number if number is not None else t.number


def queue_name(t: Ticket | TicketPreview) -> str:
    """The name of the ticket's queue, from the instance dicts as in `ticket_key`: on a
    detached ORM ticket, `t.queue.name` goes through two attribute descriptors (~6k
    instructions), and the answer asks several times inside the transaction."""
    queue = vars(t).get("queue") or t.queue
    try:
        return vars(queue)["name"]  # type: ignore[no-any-return]
    except (TypeError, KeyError):  # a queue without an instance dict, or no name in it
        return queue.name


@dataclass  # not frozen: made for every drafted answer, and a frozen __init__ costs more
class Draft:
    key: tuple[object, ...]
    placeholder: bytes
    out: Outgoing  # sender, recipient and Message-ID of the answer
    data: bytes
    template: str

    @classmethod
    def make(cls, preview: TicketPreview, number: str, out: Outgoing, rendered: Rendered,
             data: bytes, unchanged: bool = False) -> Draft | None:
        """The draft, or None if a placeholder did not survive composing verbatim.
        `unchanged`: the subject and parts went into `data` as they are
        (`compose_unchanged`), so every placeholder did and nothing needs counting."""
        mark = number.encode("ascii")
        if not unchanged:
            expected = (rendered.text.count(number) + (rendered.html or "").count(number)
                        + out.subject.count(number))
            if data.count(mark) != expected:
                return None
        return cls(ticket_key(preview), mark, out, data, rendered.template)

    def fits(self, ticket: Ticket) -> bool:
        """Was this drafted for the ticket the store created, and is its number as long?"""
        number = ticket_number(ticket)
        return len(number) == len(self.placeholder) and number.isdigit() \
            and ticket_key(ticket) == self.key

    def message(self, number: str) -> bytes:
        return self.data.replace(self.placeholder, number.encode("ascii"))
