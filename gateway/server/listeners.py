"""Listener addresses: `host:port`, `[::1]:port`, `unix:/path`.

Parsed once at start, so a typo is an error naming the address instead of a listener
that silently binds somewhere else.
"""

from __future__ import annotations

import os
import socket
import stat
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


def bind(address: ListenAddress, backlog: int = 128) -> list[socket.socket]:
    """Listening sockets for `address`: one per resolved IP, or the Unix socket.

    Bound here rather than by `loop.create_server` so that the same sockets can be
    served in-process or handed to worker processes. A Unix socket left by a crashed
    daemon is replaced; a live one means another server is running there.
    """
    if address.path is not None:
        path = address.path
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            # Access is controlled by the socket's folder (RuntimeDirectoryMode, group).
            os.chmod(path, 0o666)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return [sock]
    found: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            found.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # "::" must not also take the IPv4 port
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
    except BaseException:
        for sock in found:
            sock.close()
        raise
    return found


def _remove_stale_socket(path: Path) -> None:
    """A socket left by a crashed daemon is removed; a live one means we are a duplicate."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise ListenError(f"{path}: another server is already listening there")
