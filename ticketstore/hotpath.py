"""Statements that SQLAlchemy compiles once and the DBAPI cursor then runs directly.

Every message pays for the intake's handful of statements. Executing a Core statement
costs SQLAlchemy 60-100 µs of Python on top of the 10-30 µs the driver needs (cache
key, execution context, result wrapper), which made the statements, not the database,
the bulk of the writer's time (docs/benchmarks.md, "LMTP server"). Here SQLAlchemy
still writes the SQL, from the models, for the dialect in use, and its type processors
still convert each value (JSON, UTC datetimes); only the per-execution machinery is
skipped. The caller's SQLAlchemy `Connection` owns the transaction: these statements
run on its DBAPI connection, inside it. Driver errors are re-raised as SQLAlchemy's
exception classes, so callers handle one family of errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

Processor = Callable[[Any], Any]


class Prebuilt:
    """One statement compiled for one dialect: its SQL, parameter order and converters."""

    def __init__(self, stmt: ClauseElement, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        if "POSTCOMPILE" in self.sql:
            raise ValueError("expanding IN lists cannot be prebuilt; use numbered binds")
        self.dialect = dialect
        names = list(compiled.binds)
        self.positional = bool(dialect.positional)
        self.names: tuple[str, ...] = tuple(
            (compiled.positiontup or names) if self.positional else names)
        self.binders: dict[str, Processor] = {}
        # Values fixed in the statement itself (`state != 'closed'`), used when not given.
        self.fixed: dict[str, Any] = {}
        for name in names:
            bp = compiled.binds[name]
            if not bp.required:
                self.fixed[name] = bp.effective_value
            proc = bp.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                self.binders[name] = proc
        # Per call: every value fetched at once, then only the non-identity converters
        # run, by position (most columns need none).
        self._get = _getter(self.names)
        self._binds = tuple((i, self.binders[n]) for i, n in enumerate(self.names)
                            if n in self.binders)
        # Result columns and their converters, in select order (None: no conversion).
        self.columns: tuple[str, ...] = ()
        self.loaders: tuple[Processor | None, ...] = ()
        cols: list[Any] = list(getattr(stmt, "selected_columns", ()))
        if not cols and hasattr(stmt, "returning_column_descriptions"):
            cols = [d["expr"] for d in stmt.returning_column_descriptions]
        if cols:
            self.columns = tuple(c.key for c in cols)
            self.loaders = tuple(
                c.type.dialect_impl(dialect).result_processor(dialect, None) for c in cols)
        self._loads = tuple((i, f) for i, f in enumerate(self.loaders) if f is not None)

    def params(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        if self.fixed:
            values = {**self.fixed, **values}
        out = self._get(values)
        if self._binds:
            out = list(out)
            for i, f in self._binds:
                out[i] = f(out[i])
        return tuple(out) if self.positional else dict(zip(self.names, out, strict=True))

    def _cursor(self, conn: Connection, params: Any, many: bool = False) -> Any:
        """A cursor that has run the statement; driver errors raised as SQLAlchemy's."""
        cursor = conn.connection.cursor()
        try:
            if many:
                cursor.executemany(self.sql, params)
            else:
                cursor.execute(self.sql, params)
        except self.dialect.loaded_dbapi.Error as exc:
            cursor.close()
            raise sa_exc.DBAPIError.instance(
                self.sql, params, exc, self.dialect.loaded_dbapi.Error, hide_parameters=True,
                dialect=self.dialect) from exc
        return cursor

    def _fetched(self, conn: Connection, values: Mapping[str, Any]) -> list[Any]:
        cursor = self._cursor(conn, self.params(values))
        try:
            return cursor.fetchall()  # type: ignore[no-any-return]
        finally:
            cursor.close()

    def _row(self, row: Sequence[Any]) -> dict[str, Any]:
        if self._loads:
            row = list(row)
            for i, f in self._loads:
                row[i] = f(row[i])
        return dict(zip(self.columns, row, strict=True))

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> None:
        self._cursor(conn, self.params(values)).close()

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        self._cursor(conn, [self.params(v) for v in rows], many=True).close()

    def rows(self, conn: Connection, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """All result rows as dicts keyed by column key, values converted."""
        return [self._row(r) for r in self._fetched(conn, values)]

    def first(self, conn: Connection, values: Mapping[str, Any]) -> dict[str, Any] | None:
        found = self._fetched(conn, values)
        return self._row(found[0]) if found else None

    def scalar(self, conn: Connection, values: Mapping[str, Any]) -> Any:
        """The first column of the one row (INSERT .. RETURNING, counts)."""
        found = self._fetched(conn, values)
        if not found:
            raise sa_exc.NoResultFound("no row returned for a statement that needs one")
        value = found[0][0]
        load = self.loaders[0]
        return value if load is None else load(value)


def _getter(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """`values` -> the values of `names`, in order, as a sequence (KeyError if one is missing)."""
    if not names:
        return lambda _values: ()
    get = itemgetter(*names)
    if len(names) == 1:  # itemgetter of one name returns the value, not a 1-tuple
        return lambda values: (get(values),)
    return get  # type: ignore[return-value]


def insert_all(table: Table, returning: Any = None) -> ClauseElement:
    """INSERT naming every column but the integer primary key, one bind per column."""
    stmt = insert(table).values({c.key: bindparam(c.key) for c in table.columns
                                 if not (c.primary_key and c.autoincrement is not False
                                         and c.key == "id")})
    return stmt.returning(returning) if returning is not None else stmt


class Catalogue:
    """Statements by name, each compiled on first use for each dialect."""

    def __init__(self, builders: Mapping[str, Callable[[str], ClauseElement]]) -> None:
        self._builders = dict(builders)
        self._compiled: dict[tuple[str, str], Prebuilt] = {}

    def define(self, name: str, builder: Callable[[str], ClauseElement]) -> str:
        """Add a statement unless one of that name exists; returns the name."""
        self._builders.setdefault(name, builder)
        return name

    def __call__(self, conn: Connection, name: str) -> Prebuilt:
        dialect = conn.dialect
        key = (dialect.name, name)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = Prebuilt(self._builders[name](dialect.name), dialect)
        return found
