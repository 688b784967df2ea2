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

from .envelope import Envelope


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
    """Write raw + error atomically (temp file, fsync, rename). Returns the .eml path."""
    target = failed_dir(spool_dir)
    target.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    name = f"{stamp}-{hashlib.sha256(raw).hexdigest()[:16]}"
    meta = {
        "mail_from": envelope.mail_from,
        "rcpt_tos": list(envelope.rcpt_tos),
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
        "quarantined_at": stamp,
    }
    _atomic_write(target / f"{name}.json", json.dumps(meta, indent=2).encode("utf-8"))
    eml = target / f"{name}.eml"
    _atomic_write(eml, raw)
    return eml


def entries(spool_dir: Path) -> list[SpoolEntry]:
    folder = failed_dir(spool_dir)
    if not folder.is_dir():
        return []
    return [SpoolEntry(p) for p in sorted(folder.glob("*.eml"))]


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
