"""One compiled statement run for many rows with plain values: the hand-over's hot writes.

`Connection.execute(statement, [dict, ...])` builds and type-processes every parameter of
every row in Python (`construct_params`), constants included: for a chunk of a thousand
deliveries that is most of the engine's time beyond SQLite's own. A `Bulk` statement is
compiled once per dialect; its constants (`now`, the provider's name) are processed once per
call; each row passes only the values that differ, as a tuple, and the whole list goes to the
driver's ``executemany`` through `Connection.exec_driver_sql` (still inside the caller's
transaction, so atomicity and crash safety are unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, CursorResult, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import Executable, Select


class _Compiled:
    """One statement compiled for one dialect: its SQL and how to lay out a row's values."""

    def __init__(self, statement: Executable, dialect: Dialect, row_names: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        self.sql = str(compiled)
        self.binds = compiled.binds
        self.positional = bool(compiled.positional)
        # For a positional driver (SQLite's "?"), the order of the parameters in the SQL.
        self.order: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.dialect = dialect
        self.row_names = tuple(row_names)
        self.row_processors = [self.processor(name) for name in self.row_names]
        # Values written into the statement itself (``state="sending"``, ``attempts + 1``):
        # constants too, converted once here.
        self.defaults: dict[str, Any] = {}
        # `binds` also holds internal aliases of some parameters: only names the SQL uses count.
        if self.positional:
            used = set(self.order)
        else:
            used = {name for name in self.binds if f"%({name})s" in self.sql}
        for name, bind in self.binds.items():
            if name in used and name not in self.row_names and not bind.required:
                value = bind.effective_value
                process = self.processor(name)
                self.defaults[name] = value if process is None or value is None else process(value)

    def processor(self, name: str) -> Callable[[Any], Any] | None:
        """The type's conversion of a Python value for this driver (e.g. datetime -> text)."""
        bind = self.binds[name]
        return bind.type.dialect_impl(self.dialect).bind_processor(self.dialect)


class Bulk:
    """An UPDATE or INSERT executed for many rows at once; see the module docstring.

    `row_names` are the `bindparam`s given per row (in the order of each row's tuple); every
    other parameter is a constant: given to `run`, or a value written into the statement
    (``.values(state="sending")``). Values go
    through their column type's conversion exactly as `Connection.execute` would do.
    """

    def __init__(self, statement: Executable, row_names: Sequence[str]) -> None:
        self.statement = statement
        self.row_names = tuple(row_names)
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, dialect: Dialect) -> _Compiled:
        key = f"{dialect.name}+{dialect.driver}"
        compiled = self._by_dialect.get(key)
        if compiled is None:
            compiled = self._by_dialect[key] = _Compiled(self.statement, dialect, self.row_names)
        return compiled

    def run(
        self,
        conn: Connection,
        rows: Sequence[tuple[Any, ...]],
        constants: Mapping[str, Any] | None = None,
    ) -> None:
        """Execute the statement once per row of `rows` (tuples in `row_names` order)."""
        if not rows:
            return
        c = self._compiled(conn.dialect)
        fixed = dict(c.defaults)
        for name, value in (constants or {}).items():
            process = c.processor(name)
            fixed[name] = process(value) if process is not None and value is not None else value
        processors = [(i, p) for i, p in enumerate(c.row_processors) if p is not None]
        if processors:
            converted = []
            for row in rows:
                values = list(row)
                for i, process in processors:
                    if values[i] is not None:
                        values[i] = process(values[i])
                converted.append(tuple(values))
            rows = converted
        params: list[Any]
        if c.positional:
            # Each row's tuple followed by the constants, picked in the SQL's order by one
            # C-level itemgetter per row.
            slots = {name: i for i, name in enumerate(self.row_names)}
            tail = tuple(fixed.values())
            for j, name in enumerate(fixed):
                slots.setdefault(name, len(self.row_names) + j)
            pick = itemgetter(*(slots[name] for name in c.order))
            if len(c.order) == 1:
                params = [(pick(row + tail),) for row in rows]
            else:
                params = [pick(row + tail) for row in rows]
        else:
            params = [{**fixed, **dict(zip(self.row_names, row, strict=True))} for row in rows]
        conn.exec_driver_sql(c.sql, params)


class IdList:
    """A statement with one expanding list parameter (``id IN (...)``), run for lists of ids.

    `Connection.execute` renders the list's placeholders and binds each value by name on every
    call: for a chunk of 1,000 ids that costs more Python than SQLite takes to run the
    statement. On a driver with positional ``?`` parameters (SQLite) the SQL for each list
    length is made once and the ids are passed as they are, through
    `Connection.exec_driver_sql` (same transaction, same statement text as SQLAlchemy's); other
    drivers run it through `Connection.execute` as before. Other parameters are converted
    by their column type, as `Connection.execute` would do.
    """

    def __init__(self, statement: Executable, name: str = "ids") -> None:
        self.statement = statement
        self.name = name
        self._by_dialect: dict[str, _Compiled] = {}
        self._sql: dict[tuple[str, int], str] = {}

    def execute(
        self, conn: Connection, ids: Sequence[Any], params: Mapping[str, Any] | None = None
    ) -> CursorResult[Any]:
        """Run the statement with `ids` as the list and `params` for the other parameters."""
        params = params or {}
        dialect = conn.dialect
        if dialect.paramstyle != "qmark" or not ids:
            return conn.execute(self.statement, {self.name: list(ids), **params})
        key = f"{dialect.name}+{dialect.driver}"
        c = self._by_dialect.get(key)
        if c is None:
            c = self._by_dialect[key] = _Compiled(self.statement, dialect, ())
        if c.sql.count("__[POSTCOMPILE_") != 1:
            # Another list parameter (``state IN ('a', 'b')`` with a Python list): SQLAlchemy
            # renders it; write such constants with `literal_column` to use the fast way.
            return conn.execute(self.statement, {self.name: list(ids), **params})
        sql = self._sql.get((key, len(ids)))
        if sql is None:
            marks = ", ".join("?" * len(ids))
            sql = c.sql.replace(f"__[POSTCOMPILE_{self.name}]", marks)
            self._sql[(key, len(ids))] = sql
        values = dict(c.defaults)
        for name, value in params.items():
            process = c.processor(name)
            values[name] = process(value) if process is not None and value is not None else value
        args: list[Any] = []
        for name in c.order:
            if name == self.name:
                args.extend(ids)
            else:
                args.append(values[name])
        return conn.exec_driver_sql(sql, tuple(args))


class UnnestUpdate:
    """PostgreSQL: one ``UPDATE table SET ... FROM unnest(ids, col...) AS v WHERE id = v.id``
    for a whole chunk, instead of an executemany of single-row updates (one statement the
    server plans and runs once, not a thousand; same transaction, so crash safety is the same).

    `per_row`: columns whose value differs by row (each row's tuple is ``(id, *values)`` in
    this order); `shared`: columns set to one value given to `run`; `raw`: columns set by a
    fixed SQL expression (``{"attempts": "deliveries.attempts + 1", "claimed_by": "NULL"}``).
    Values go through their column type's conversion, as `Connection.execute` would do.
    """

    def __init__(
        self,
        table: Table,
        per_row: Sequence[str],
        shared: Sequence[str] = (),
        raw: Mapping[str, str] | None = None,
    ) -> None:
        self.table = table
        self.per_row = tuple(per_row)
        self.shared = tuple(shared)
        self.raw = dict(raw or {})
        self._sql: dict[str, tuple[str, list[Callable[[Any], Any] | None]]] = {}

    def _compiled(self, dialect: Dialect) -> tuple[str, list[Callable[[Any], Any] | None]]:
        key = f"{dialect.name}+{dialect.driver}"
        if key not in self._sql:
            t, name = self.table, self.table.name

            def sql_type(column: str) -> str:
                return t.c[column].type.compile(dialect=dialect)

            sets = [f"{c} = v.c{i}" for i, c in enumerate(self.per_row)]
            sets += [f"{c} = %(s_{c})s::{sql_type(c)}" for c in self.shared]
            sets += [f"{c} = {expr}" for c, expr in self.raw.items()]
            arrays = [f"%(ids)s::{sql_type('id')}[]"]
            arrays += [f"%(a{i})s::{sql_type(c)}[]" for i, c in enumerate(self.per_row)]
            names = ", ".join(["id", *(f"c{i}" for i in range(len(self.per_row)))])
            sql = (
                f"UPDATE {name} SET {', '.join(sets)} FROM unnest({', '.join(arrays)})"
                f" AS v({names}) WHERE {name}.id = v.id"
            )
            processors: list[Callable[[Any], Any] | None] = [
                t.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in self.per_row
            ]
            self._sql[key] = (sql, processors)
        return self._sql[key]

    def run(
        self,
        conn: Connection,
        rows: Sequence[tuple[Any, ...]],
        shared: Mapping[str, Any] | None = None,
    ) -> None:
        """Update every row of `rows` (``(id, *per_row values)``) in one statement."""
        if not rows:
            return
        sql, processors = self._compiled(conn.dialect)
        columns = list(zip(*rows, strict=True))
        params: dict[str, Any] = {"ids": list(columns[0])}
        for i, process in enumerate(processors):
            values = columns[i + 1]
            params[f"a{i}"] = (
                list(values)
                if process is None
                else [None if v is None else process(v) for v in values]
            )
        for c, value in (shared or {}).items():
            process = self.table.c[c].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
            params[f"s_{c}"] = value if process is None or value is None else process(value)
        conn.exec_driver_sql(sql, params)


# (column position, the column type's conversion of the driver's value)
_Converters = list[tuple[int, Callable[[Any], Any]]]


class Rows:
    """A SELECT compiled once, whose rows come back as dicts of plain values: a chunk's read.

    `Connection.execute` runs every row through SQLAlchemy's result machinery: for a chunk of
    1,000 rows that is more Python than SQLite takes to find them. On a driver with positional
    ``?`` parameters (SQLite) the SQL is compiled once and run through
    `Connection.exec_driver_sql` (same transaction, same statement text), and only columns
    whose type converts the driver's value (a datetime stored as text, a boolean stored as 0
    or 1) are converted, as their type does it. Other drivers go through `Connection.execute`.
    The statement's parameters are `bindparam`s given by name to `fetch`.
    """

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self.names = [c.name for c in statement.selected_columns]
        self._by_dialect: dict[str, tuple[_Compiled, _Converters]] = {}

    def _compiled(self, dialect: Dialect) -> tuple[_Compiled, _Converters]:
        key = f"{dialect.name}+{dialect.driver}"
        found = self._by_dialect.get(key)
        if found is None:
            compiled = _Compiled(self.statement, dialect, ())
            converters: _Converters = []
            for i, column in enumerate(self.statement.selected_columns):
                convert = column.type.dialect_impl(dialect).result_processor(dialect, None)
                if convert is not None:
                    converters.append((i, convert))
            found = (compiled, converters)
            self._by_dialect[key] = found
        return found

    def fetch(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows for these parameters, each a dict by column name (in the caller's
        transaction)."""
        names = self.names
        if conn.dialect.paramstyle != "qmark":
            result = conn.execute(self.statement, dict(params))
            return [dict(zip(names, row, strict=True)) for row in result]
        compiled, converters = self._compiled(conn.dialect)
        values = dict(compiled.defaults)
        for name, value in params.items():
            process = compiled.processor(name)
            values[name] = process(value) if process is not None and value is not None else value
        args = tuple(values[name] for name in compiled.order)
        raw = conn.exec_driver_sql(compiled.sql, args).fetchall()
        if not converters:
            return [dict(zip(names, row, strict=True)) for row in raw]
        rows = []
        for row in raw:
            converted = list(row)
            for i, convert in converters:
                converted[i] = convert(converted[i])
            rows.append(dict(zip(names, converted, strict=True)))
        return rows
