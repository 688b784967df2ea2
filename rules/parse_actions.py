"""Check the action keys of a rule (queue, priority, tags, ...) and their placeholders."""

from __future__ import annotations

import string
from typing import Any

from ticketstore.models import TICKET_STATES

from .errors import ValueProblem

ACTION_KEYS = ("queue", "priority", "state", "tags", "customer", "ignore", "no_auto_response",
               "thread_key", "stop", "override")
FLAGS = ("ignore", "no_auto_response", "stop", "override")
# Placeholders a template may use besides the rule's named regex groups.
BUILTIN_PLACEHOLDERS = ("from", "from_domain")


def type_name(value: Any) -> str:
    return {list: "a list", dict: "a table", bool: "a boolean", str: "a string",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def parse_action(key: str, value: Any, queues: tuple[str, ...]) -> Any:
    """The value of action `key` as the rule keeps it; raises ValueProblem."""
    if key in FLAGS:
        if not isinstance(value, bool):
            raise ValueProblem(f"must be true or false, not {type_name(value)}")
        return value
    if key == "priority":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueProblem(f"must be an integer 1-5, not {type_name(value)}")
        if not 1 <= value <= 5:
            raise ValueProblem(f"must be between 1 and 5, not {value}")
        return value
    if key == "tags":
        tags = [value] if isinstance(value, str) else value
        if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
            raise ValueProblem("must be a list of non-empty strings")
        return tuple(tags)
    if not isinstance(value, str):
        raise ValueProblem(f"must be a string, not {type_name(value)}")
    if not value.strip():
        raise ValueProblem("must not be empty")
    if key == "queue" and value not in queues:
        raise ValueProblem(f"unknown queue {value!r} (configured: {', '.join(queues)})")
    if key == "state" and value not in TICKET_STATES:
        raise ValueProblem(f"unknown state {value!r}; one of {', '.join(TICKET_STATES)}")
    return value


def check_template(template: str, groups: frozenset[str]) -> None:
    """`thread_key` and `customer` may use only the rule's named groups and the builtins."""
    try:
        fields = [f for _lit, f, _spec, _conv in string.Formatter().parse(template)
                  if f is not None]
    except ValueError as exc:
        raise ValueProblem(f"bad template {template!r}: {exc} "
                           "(write {{ and }} for literal braces)") from None
    allowed = groups | set(BUILTIN_PLACEHOLDERS)
    unknown = next((f for f in fields if f not in allowed), None)
    if unknown is not None:
        raise ValueProblem(f"placeholder {{{unknown}}} is not a named group of this rule's "
                           f"*_matches regexes (known: {', '.join(sorted(allowed))})")
