"""systemd socket activation: listening sockets handed over as fds 3, 4, ...

With `ticketgate.socket`, systemd owns the listeners, so Postfix's connections wait in
the kernel's backlog while the daemon restarts instead of being refused (and deferred).
Every inherited socket speaks LMTP unless its FileDescriptorName is "smtp".
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

SD_LISTEN_FDS_START = 3


def inherited_sockets(
    env: MutableMapping[str, str] | None = None,
) -> list[tuple[str, socket.socket]]:
    """[(protocol, socket)] passed by systemd to this process; [] when not activated.

    The LISTEN_* variables are removed so that child processes do not take them too.
    """
    env = os.environ if env is None else env
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    names = env.get("LISTEN_FDNAMES", "").split(":")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    found = []
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        name = names[i] if i < len(names) else ""
        found.append(("smtp" if name == "smtp" else "lmtp", sock))
    return found
