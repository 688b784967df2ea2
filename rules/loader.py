"""Load the configured rule set: `[rules] dir`, `*.toml` in file-name order.

An invalid rule set raises `RulesError` (every problem as `file:line: rule 'x': ...`):
the server refuses to start on it, while a running server's reload keeps the old rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .router import ReloadingRouter

if TYPE_CHECKING:
    from gateway.config import Config


def load_router(config: Config) -> ReloadingRouter:
    """The router for `config`; raises rules.errors.RulesError on invalid rule files."""
    return ReloadingRouter(
        config.path(config.rules.dir), config.queue_names, config.rules.max_match_chars
    )
