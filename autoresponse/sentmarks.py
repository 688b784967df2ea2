"""Sent marks the database did not take: kept in the spool until it takes them.

The smarthost accepted a message; the transaction that marks its outbox row sent failed
(the database restarted, or went away). The row still says "sending", so once its lease
ran out it would be claimed and sent again. The mark is kept instead, in memory and in
`<spool_dir>/outbox-sent/` (so a restart of ticketgate while the database is still
down does not lose it), and written before anything new is claimed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

FOLDER = "outbox-sent"


@dataclass(frozen=True)
class SentMark:
    outbox_id: int
    sent_at: dt.datetime
    data: bytes  # the bytes the smarthost accepted (DKIM signature included)


class KeptMarks:
    """The marks waiting for the database: one JSON file each, written atomically."""

    def __init__(self, spool_dir: Path) -> None:
        self.folder = spool_dir / FOLDER

    def keep(self, marks: list[SentMark]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for mark in marks:
            body = json.dumps({"outbox_id": mark.outbox_id,
                               "sent_at": mark.sent_at.isoformat(),
                               "data": base64.b64encode(mark.data).decode("ascii")})
            _atomic_write(self.folder / f"{mark.outbox_id}.json", body.encode("utf-8"))

    def load(self) -> list[SentMark]:
        if not self.folder.is_dir():
            return []
        marks = []
        for path in sorted(self.folder.glob("*.json")):
            meta = json.loads(path.read_text("utf-8"))
            marks.append(SentMark(int(meta["outbox_id"]),
                                  dt.datetime.fromisoformat(meta["sent_at"]),
                                  base64.b64decode(meta["data"])))
        return marks

    def drop(self, outbox_ids: list[int]) -> None:
        for outbox_id in outbox_ids:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f"{outbox_id}.json").unlink()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
