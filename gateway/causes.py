"""Why a delivery failed, in words an admin can act on.

`cause_of(exc, database_url)` turns an exception into a `Cause`: a short `category`
for the 451 reply (`database read-only`: Postfix copies the reply into its log and its
delay notices) and a full `description` for our own log, the pipe's stderr line and the
status page's "Latest errors": the database's own message and the path or host, e.g.
`database at /var/lib/ticketgate/ticketgate.db is read-only (attempt to write a readonly
database)` or `PostgreSQL at db1:5432 refused the connection`.

What a cause never holds: a bare exception class name (an admin cannot act on
`OperationalError`), the SQL statement or its parameters (SQLAlchemy's `str(exc)` has
both, and parameters are customer data), a password (the URL is rendered without it and
the driver's message is scrubbed of it).
"""

from __future__ import annotations

import errno
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Categories: the 451 text says `<category>, try again later`.
READ_ONLY = "database read-only"
LOCKED = "database locked"
DISK_FULL = "disk full"
IO_ERROR = "database I/O error"
UNAVAILABLE = "database unavailable"
CANNOT_OPEN = "database cannot be opened"
PERMISSION = "permission denied"
FS_READ_ONLY = "file system read-only"
BUSY = "database busy"
LOGIN_REFUSED = "database login refused"
SCHEMA = "database schema mismatch"
SCHEMA_NEWER = "database upgraded by a newer ticketgate"
DATABASE_ERROR = "database error"
INTERNAL = "internal error"

MAX_MESSAGE = 200  # of the driver's message quoted in a description


@dataclass(frozen=True)
class Cause:
    category: str  # short, ASCII, for the 451 reply text
    description: str  # one line for logs, stderr and the status page

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class _Where:
    """The database named the way an admin finds it: a file path or host:port."""

    dialect: str
    path: str = ""  # SQLite
    host: str = ""  # others

    def __str__(self) -> str:
        if self.path:
            return f"database at {self.path}"
        name = "PostgreSQL" if self.dialect.startswith("postgres") else self.dialect
        return f"{name} at {self.host}"


def _where(database_url: Any) -> _Where:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(database_url) if database_url else None
    except Exception:
        url = None
    if url is None:
        return _Where("database", host="?")
    dialect = url.get_backend_name()
    if dialect == "sqlite":
        db = url.database or ""
        return _Where("sqlite", path=os.path.abspath(db) if db and db != ":memory:" else db)
    port = url.port or {"postgresql": 5432, "mysql": 3306}.get(dialect)
    host = url.host or "localhost"
    return _Where(dialect, host=f"{host}:{port}" if port else host)


def _driver_message(exc: BaseException, password: str | None) -> str:
    """The database's own words: the driver exception's first line, no SQL, no password."""
    from sqlalchemy import exc as sa_exc

    orig = exc.orig if isinstance(exc, sa_exc.StatementError) else exc
    if orig is None:
        return ""
    text = orig.strerror if isinstance(orig, OSError) and orig.strerror else str(orig)
    line = next((c.strip() for c in text.splitlines() if c.strip()), "")
    # psycopg: 'connection failed: connection to server at "h" (ip), port 5432 failed: X'
    if "connection to server" in line:
        line = line.rpartition(" failed: ")[2]
    if password:
        line = line.replace(password, "***")
    return line[:MAX_MESSAGE]


def _owner_hint(path: str) -> str:
    """`owned by ticketgate, mode 0640; this process runs as nobody` for a SQLite file."""
    if not path or path == ":memory:":
        return ""
    parts = []
    for p in (Path(path), Path(path).parent):
        try:
            st = p.stat()
        except OSError:
            continue
        if not os.access(p, os.W_OK):
            parts.append(f"{p} is not writable (owner {_user(st.st_uid)}, mode "
                         f"{st.st_mode & 0o7777:04o})")
    if not parts:
        return ""
    return "; " + "; ".join(parts) + f"; ticketgate runs as {_user(os.geteuid())}"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _sqlstate(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def cause_of(exc: BaseException, database_url: Any = None,
             busy_timeout: float | None = None) -> Cause:
    """The cause of a failed delivery (see the module docstring)."""
    from sqlalchemy import exc as sa_exc

    from ticketstore.db import SchemaTooNew, StoreUnavailable

    if isinstance(exc, SchemaTooNew):
        return Cause(SCHEMA_NEWER, str(exc))
    if isinstance(exc, StoreUnavailable):
        return Cause(SCHEMA if "schema" in str(exc) else UNAVAILABLE, str(exc))
    where = _where(database_url)
    password = None
    if database_url:
        try:
            from sqlalchemy.engine import make_url

            password = make_url(database_url).password
        except Exception:
            password = None
    if isinstance(exc, sa_exc.TimeoutError):
        return Cause(BUSY, f"{where}: every connection of this process is in use "
                           "(pool timeout; raise [database] pool_size?)")
    if isinstance(exc, OSError):
        return _os_cause(exc)
    if not isinstance(exc, sa_exc.DBAPIError | sa_exc.StatementError):
        return Cause(INTERNAL, "unexpected error in ticketgate (the log has the traceback)")
    message = _driver_message(exc, password)
    said = f" ({message})" if message else ""
    low = message.lower()
    code = getattr(exc.orig, "errno", None)
    hint = _owner_hint(where.path) if where.path else ""
    state = _sqlstate(exc)

    if code == errno.EROFS or "readonly" in low or "read-only" in low or state == "25006":
        return Cause(READ_ONLY, f"{where} is read-only{said}{hint}")
    if "locked" in low or state == "55P03":
        held = f" for {busy_timeout:g} s" if busy_timeout else ""
        return Cause(LOCKED, f"{where} locked{held} by another process{said}")
    if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in low or "no space" in low \
            or "quota" in low or state in ("53100", "53400"):
        return Cause(DISK_FULL, f"disk full: {where}{said}")
    if code == errno.EIO or "i/o error" in low:
        return Cause(IO_ERROR, f"{where}: I/O error{said}")
    if "unable to open database" in low or code in (errno.EACCES, errno.EPERM):
        return Cause(CANNOT_OPEN, f"{where} cannot be opened{said}{hint}")
    if state in ("40P01", "40001") or "deadlock" in low or "could not serialize" in low:
        return Cause(BUSY, f"{where} is busy: a transaction was cancelled{said}")
    if "too many clients" in low or "connection slots" in low or state == "53300":
        return Cause(BUSY, f"{where} has no free connections{said}")
    if "authentication failed" in low or "no pg_hba.conf entry" in low or state == "28P01":
        return Cause(LOGIN_REFUSED, f"{where} refused the login{said}")
    if "connection refused" in low or code == errno.ECONNREFUSED:
        return Cause(UNAVAILABLE, f"{where} refused the connection")
    if "name or service not known" in low or "could not translate host" in low \
            or "nodename nor servname" in low:
        return Cause(UNAVAILABLE, f"{where}: host not found{said}")
    if "timeout" in low or "timed out" in low:
        return Cause(UNAVAILABLE, f"{where} did not answer in time{said}")
    if "starting up" in low or "shutting down" in low or "recovery mode" in low:
        return Cause(UNAVAILABLE, f"{where} is not accepting connections{said}")
    if (isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated) \
            or "closed the connection" in low or "terminating connection" in low \
            or "connection was lost" in low or "connection is closed" in low \
            or "server closed" in low or "consuming input failed" in low:
        return Cause(UNAVAILABLE, f"{where}: the connection was lost{said}")
    if "does not exist" in low:
        return Cause(UNAVAILABLE, f"{where}: {message}")
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return Cause(UNAVAILABLE, f"{where}: {message or 'the database failed'}")
    return Cause(DATABASE_ERROR, f"{where}: {message or 'the database failed'}")


def _os_cause(exc: OSError) -> Cause:
    """A file-system error outside the database (the spool, a socket)."""
    what = f"{exc.strerror or 'system error'}" + (f": {exc.filename}" if exc.filename else "")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Cause(DISK_FULL, f"disk full: {what}")
    if exc.errno == errno.EROFS:
        return Cause(FS_READ_ONLY, what)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Cause(PERMISSION, f"{what} (ticketgate runs as {_user(os.geteuid())})")
    if exc.errno == errno.EIO:
        return Cause("I/O error", what)
    if exc.errno == errno.ECONNREFUSED:
        return Cause(UNAVAILABLE, what)
    return Cause("system error", what)
