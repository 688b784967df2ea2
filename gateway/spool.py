"""Quarantine spool: messages our code failed on, kept with the error for replay.

A message goes here when processing raised something unexpected (a bug). The MTA has
been told to retry (451 / exit 75), so the spool is a second copy for the admin to
inspect and for `ticketgate spool replay` once the bug is fixed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

from gateway.mail.envelope import Envelope


@dataclass(frozen=True)
class SpoolEntry:
    path: Path  # the .eml file; the error sits beside it as .json

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    def read(self) -> tuple[bytes, Envelope, dict[str, object]]:
        meta = json.loads(self.meta_path.read_text("utf-8")) if self.meta_path.exists() else {}
        env = Envelope(meta.get("mail_from"), tuple(meta.get("rcpt_tos", ())))
        return self.path.read_bytes(), env, meta

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)


def failed_dir(spool_dir: Path) -> Path:
    return spool_dir / "failed"


def quarantine(spool_dir: Path, raw: bytes, envelope: Envelope, exc: BaseException) -> Path:
    """Write raw + error atomically (temp file, fsync, rename). Returns the .eml path.

    One entry per distinct message: the MTA retries a message that failed for days, and
    every retry that fails again only updates the entry's error and attempt count.
    """
    target = failed_dir(spool_dir)
    target.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    eml = target / f"{hashlib.sha256(raw).hexdigest()[:32]}.eml"
    previous: dict[str, object] = {}
    if eml.exists():
        try:
            previous = json.loads(eml.with_suffix(".json").read_text("utf-8"))
        except (OSError, ValueError):
            previous = {}
    attempts = previous.get("attempts", 1 if previous else 0)
    meta = {
        "mail_from": envelope.mail_from,
        "rcpt_tos": list(envelope.rcpt_tos),
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
        "quarantined_at": stamp,
        "first_quarantined_at": previous.get("first_quarantined_at", stamp),
        "attempts": (attempts if isinstance(attempts, int) else 1) + 1,
    }
    _atomic_write(eml.with_suffix(".json"), json.dumps(meta, indent=2).encode("utf-8"))
    if not eml.exists():
        _atomic_write(eml, raw)
    return eml


def entries(spool_dir: Path) -> list[SpoolEntry]:
    folder = failed_dir(spool_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.glob("*.eml"):
        try:
            found.append((p.stat().st_mtime, p.name, p))
        except FileNotFoundError:  # replayed and removed meanwhile
            continue
    return [SpoolEntry(p) for _t, _n, p in sorted(found)]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
