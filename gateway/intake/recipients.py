"""Which queue does a recipient address belong to?

Addresses are compared case-insensitively. Plus-addressing works: `support+billing@x`
goes to the queue named `billing` (any case) if there is one, else to the queue of
`support@x`. An address that matches no queue returns None (strict mode refuses it;
otherwise the default queue takes it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import Config


def split_plus(address: str) -> tuple[str, str]:
    """`support+billing@x` -> (`support@x`, `billing`); no tag -> (address, "")."""
    local, at, domain = address.strip().strip("<>").lower().rpartition("@")
    if not at:
        return address.lower(), ""
    base, plus, tag = local.partition("+")
    return (f"{base}@{domain}", tag) if plus else (f"{local}@{domain}", "")


@dataclass(frozen=True)
class QueueMap:
    by_address: dict[str, str]
    by_lower_name: dict[str, str]

    @classmethod
    def from_config(cls, config: Config) -> QueueMap:
        by_address = {a.lower(): q.name for q in config.queues for a in q.addresses}
        by_name = {name.lower(): name for name in config.queue_names}
        return cls(by_address, by_name)

    def lookup(self, address: str) -> str | None:
        addr = address.strip().strip("<>").lower()
        if addr in self.by_address:
            return self.by_address[addr]
        base, tag = split_plus(addr)
        if base in self.by_address:
            return self.by_lower_name.get(tag) or self.by_address[base]
        return None

    def queue_for(self, recipients: Iterable[str]) -> str | None:
        """The queue of the first recipient that is one of ours (documented order)."""
        for rcpt in recipients:
            queue = self.lookup(rcpt)
            if queue is not None:
                return queue
        return None
