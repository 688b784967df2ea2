"""Listener addresses: `host:port`, `[::1]:port`, `unix:/path`.

Parsed once at start, so a typo is an error naming the address instead of a listener
that silently binds somewhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ListenError(ValueError):
    """An address we cannot listen on as written."""


@dataclass(frozen=True)
class ListenAddress:
    protocol: str  # "lmtp" | "smtp"
    host: str = ""
    port: int = 0
    path: Path | None = None  # set for Unix sockets

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.protocol} unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol} {host}:{self.port}"


def parse_listen(text: str, protocol: str = "lmtp", base_dir: Path | None = None) -> ListenAddress:
    """Parse one address; relative Unix socket paths resolve against `base_dir`."""
    value = text.strip()
    if value.startswith("unix:"):
        raw = value[len("unix:"):]
        if not raw:
            raise ListenError(f"{text!r}: empty socket path")
        path = Path(raw)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return ListenAddress(protocol, path=path)
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ListenError(f"{text!r}: expected [IPv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ListenError(f"{text!r}: expected host:port, [IPv6]:port or unix:/path")
        if ":" in host:
            raise ListenError(f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:8024")
    if not host:
        raise ListenError(f"{text!r}: missing host (use 0.0.0.0 or [::] for every address)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenError(f"{text!r}: port must be a number from 0 to 65535")
    return ListenAddress(protocol, host=host, port=int(port_text))
