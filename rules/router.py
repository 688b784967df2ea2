"""Routers over a rule set: a fixed one, and one that reloads when the files change.

`ReloadingRouter` swaps its rule set with a single attribute assignment, so a message
being routed on another thread sees either the old or the new rules, never a mix. A
reload that finds problems keeps the old rules and remembers the problems for the
status page and the log; mail keeps flowing.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.intake.ports import Route
from gateway.mail.verdict import NO_VERDICT, SenderVerdict

from .errors import Problem, RulesError
from .evaluate import route_only
from .model import RuleSet
from .reader import file_signature, load_rules

if TYPE_CHECKING:
    from gateway.mail.classify import Classification
    from gateway.mail.envelope import Envelope
    from gateway.mail.parse import ParsedMessage

log = logging.getLogger("ticketgate.rules")


class RuleRouter:
    """A fixed rule set."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset

    def route(
        self, msg: ParsedMessage, envelope: Envelope, classification: Classification,
        verdict: SenderVerdict = NO_VERDICT,
    ) -> Route:
        return route_only(self.ruleset, msg, envelope, classification, verdict)


class ReloadingRouter(RuleRouter):
    """The rules in a directory; `reload()` swaps them in only when they are all valid."""

    def __init__(
        self,
        directory: Path,
        queues: Iterable[str],
        max_match_chars: int = 65536,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.directory = directory
        self.queues = tuple(queues)
        self.max_match_chars = max_match_chars
        self.clock = clock
        self.errors: tuple[Problem, ...] = ()
        self.errors_at: dt.datetime | None = None
        self._lock = threading.Lock()  # one reload at a time (SIGHUP and the watcher)
        super().__init__(load_rules(directory, self.queues, max_match_chars))
        # The files last read, loaded or rejected: broken ones are not retried until they
        # change again.
        self._seen = self.ruleset.files

    def changed(self) -> bool:
        """True when the files differ from those last read."""
        return file_signature(self.directory) != self._seen

    def reload(self) -> tuple[Problem, ...]:
        """Read the files again; on problems keep the current rules and return them."""
        with self._lock:
            self._seen = file_signature(self.directory)
            try:
                new = load_rules(self.directory, self.queues, self.max_match_chars)
            except RulesError as exc:
                self.errors, self.errors_at = exc.problems, self.clock()
                # One line for the daemon (gateway/server/app.py: workers stay quiet).
                log.error("rule reload failed, keeping the %d rules loaded before: %s",
                          len(self.ruleset.rules), "; ".join(str(p) for p in exc.problems))
                return exc.problems
            self.ruleset = new
            self.errors, self.errors_at = (), None
            log.info("rules reloaded: %d rules from %s", len(new.rules), self.directory)
            return ()

    def status(self) -> dict[str, Any]:
        """What the status page shows about the rules."""
        return {
            "dir": str(self.directory),
            "count": len(self.ruleset.rules),
            "files": [name for name, _m, _s in self.ruleset.files],
            "loaded_at": self.ruleset.loaded_at.isoformat(),
            "errors": [str(p) for p in self.errors],
            "errors_at": self.errors_at.isoformat() if self.errors_at else None,
        }
