"""The decision a rule set makes about one message, and the router interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.classify import Classification
    from gateway.envelope import Envelope
    from gateway.parse import ParsedMessage


@dataclass(frozen=True)
class Route:
    """Fields left None were not set by any rule: the intake's defaults apply."""

    queue: str | None = None
    priority: int | None = None
    state: str | None = None
    tags: tuple[str, ...] = ()
    customer: str | None = None
    ignore: bool = False
    no_auto_response: bool = False
    thread_key: str | None = None
    # Names of the rules that matched, in evaluation order (recorded on the ticket).
    matched: tuple[str, ...] = ()


class Router(Protocol):
    def route(
        self, msg: ParsedMessage, envelope: Envelope, classification: Classification
    ) -> Route: ...


class NullRouter:
    """No rules loaded: every message gets the empty route."""

    def route(
        self, msg: ParsedMessage, envelope: Envelope, classification: Classification
    ) -> Route:
        return Route()
