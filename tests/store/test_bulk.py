"""`store.bulk.Bulk` and `IdList`: the same rows as `Connection.execute` writes, in the caller's
transaction.

Run against SQLite (positional parameters) and PostgreSQL (named parameters, when
DRIPMAIL_TEST_DATABASE_URL is set), each on a table of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    literal_column,
    select,
    update,
)

from dripmail.store.bulk import Bulk, IdList
from dripmail.store.db import open_store
from dripmail.store.schema import UTCDateTime
from tests.store_fixture import new_store

NOW = datetime(2026, 6, 1, 7, 30, 15, 123456, tzinfo=UTC)


def _table(name: str) -> Table:
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("label", String(50), nullable=False),
        Column("state", String(16), nullable=False),
        Column("tries", Integer, nullable=False),
        Column("due_at", UTCDateTime),
        Column("updated_at", UTCDateTime, nullable=False),
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        store = new_store("sqlite:///bulk.db", tmp_path)
    else:
        url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
        if not url:
            pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
        store = open_store(url, tmp_path)
    yield store
    store.dispose()


def test_bulk_writes_what_execute_writes(engine: Engine) -> None:
    ours, theirs = _table("bulk_ours"), _table("bulk_theirs")
    for table in (ours, theirs):
        table.drop(engine, checkfirst=True)
        table.create(engine)
    rows = [(i, f"row {i}", NOW + timedelta(hours=i) if i % 2 else None) for i in range(1, 6)]
    add = Bulk(
        insert(ours).values(
            id=bindparam("row_id"),
            label=bindparam("label"),
            state="planned",  # written into the statement: a constant converted once
            tries=0,
            due_at=bindparam("due", type_=ours.c.due_at.type),
            updated_at=bindparam("now", type_=ours.c.updated_at.type),
        ),
        ("row_id", "label", "due"),
    )
    bump = Bulk(
        update(ours)
        .where(ours.c.id == bindparam("row_id"))
        .values(state=bindparam("new_state"), tries=ours.c.tries + 1, updated_at=bindparam("now")),
        ("row_id", "new_state"),
    )
    later = NOW + timedelta(days=1)
    try:
        with engine.begin() as conn:
            add.run(conn, rows, {"now": NOW})
            bump.run(conn, [(2, "sent"), (3, "failed")], {"now": later})
            conn.execute(
                insert(theirs),
                [
                    {"id": i, "label": label, "state": "planned", "tries": 0, "due_at": due}
                    | {"updated_at": NOW}
                    for i, label, due in rows
                ],
            )
            for row_id, state in ((2, "sent"), (3, "failed")):
                conn.execute(
                    update(theirs)
                    .where(theirs.c.id == row_id)
                    .values(state=state, tries=theirs.c.tries + 1, updated_at=later)
                )
        with engine.connect() as conn:
            got = conn.execute(select(ours).order_by(ours.c.id)).all()
            want = conn.execute(select(theirs).order_by(theirs.c.id)).all()
            # The stored text too, where the driver keeps datetimes as text (SQLite).
            raw = conn.exec_driver_sql("SELECT due_at, updated_at FROM bulk_ours").all()
            raw_want = conn.exec_driver_sql("SELECT due_at, updated_at FROM bulk_theirs").all()
        assert got == want
        assert raw == raw_want
        assert got[1].state == "sent" and got[1].tries == 1 and got[1].updated_at == later
        assert got[0].due_at == NOW + timedelta(hours=1) and got[1].due_at is None
    finally:
        for table in (ours, theirs):
            table.drop(engine, checkfirst=True)


def test_bulk_joins_the_callers_transaction(engine: Engine) -> None:
    table = _table("bulk_rollback")
    table.drop(engine, checkfirst=True)
    table.create(engine)
    add = Bulk(
        insert(table).values(
            id=bindparam("row_id"),
            label="x",
            state="planned",
            tries=0,
            updated_at=bindparam("now", type_=table.c.updated_at.type),
        ),
        ("row_id",),
    )
    try:
        with pytest.raises(RuntimeError), engine.begin() as conn:
            add.run(conn, [(1,), (2,)], {"now": NOW})
            raise RuntimeError("the caller fails after the bulk write")
        with engine.connect() as conn:
            assert conn.execute(select(table)).all() == []
        with engine.begin() as conn:
            add.run(conn, [], {"now": NOW})  # nothing to do: no statement at all
            add.run(conn, [(7,)], {"now": NOW})
        with engine.connect() as conn:
            assert conn.execute(select(table.c.id, table.c.label)).all() == [(7, "x")]
    finally:
        table.drop(engine, checkfirst=True)


def _claim(table: Table, states: list) -> object:
    """Claim planned rows among a list of ids, as the hand-over does, returning their ids."""
    return (
        update(table)
        .where(table.c.id.in_(bindparam("ids", expanding=True)), table.c.state.in_(states))
        .values(
            state="claimed",
            label=bindparam("label"),
            tries=table.c.tries + 1,
            updated_at=bindparam("now", type_=table.c.updated_at.type),
        )
        .returning(table.c.id)
    )


def test_id_list_writes_and_returns_what_execute_does(engine: Engine) -> None:
    ours, theirs = _table("ids_ours"), _table("ids_theirs")
    planned = [literal_column("'planned'")]
    try:
        for table in (ours, theirs):
            table.drop(engine, checkfirst=True)
            table.create(engine)
            with engine.begin() as conn:
                conn.execute(
                    insert(table),
                    [
                        {"id": i, "label": "-", "state": "planned" if i % 3 else "sent"}
                        | {"tries": 0, "updated_at": NOW}
                        for i in range(1, 21)
                    ],
                )
        # A literal state list (the fast way) and a Python list (rendered by SQLAlchemy).
        fast, slow = IdList(_claim(ours, planned)), IdList(_claim(ours, ["planned"]))
        later = NOW + timedelta(minutes=5)
        with engine.begin() as conn:
            got = [
                sorted(fast.execute(conn, [1, 2, 3, 4], {"label": "a", "now": later}).scalars()),
                sorted(fast.execute(conn, [5, 6, 7, 8], {"label": "b", "now": later}).scalars()),
                sorted(slow.execute(conn, [9, 10, 12], {"label": "c", "now": later}).scalars()),
                sorted(fast.execute(conn, [], {"label": "d", "now": later}).scalars()),
            ]
            want = [
                sorted(
                    conn.execute(
                        _claim(theirs, ["planned"]),
                        {"ids": ids, "label": label, "now": later},
                    ).scalars()
                )
                for ids, label in (([1, 2, 3, 4], "a"), ([5, 6, 7, 8], "b"), ([9, 10, 12], "c"))
            ] + [[]]
        with engine.connect() as conn:
            rows = conn.execute(select(ours).order_by(ours.c.id)).all()
            assert rows == conn.execute(select(theirs).order_by(theirs.c.id)).all()
            if engine.dialect.name == "sqlite":
                # The stored text of the converted time is SQLAlchemy's too.
                text = "SELECT updated_at FROM {} ORDER BY id"
                assert (
                    conn.exec_driver_sql(text.format("ids_ours")).all()
                    == conn.exec_driver_sql(text.format("ids_theirs")).all()
                )
        assert got == want == [[1, 2, 4], [5, 7, 8], [10], []]
        assert rows[0].label == "a" and rows[0].tries == 1 and rows[0].updated_at == later
        assert rows[2].state == "sent" and rows[2].tries == 0  # not planned: untouched
    finally:
        for table in (ours, theirs):
            table.drop(engine, checkfirst=True)


def test_rows_reads_what_execute_reads(engine: Engine) -> None:
    """`Rows.fetch`: the same values as `Connection.execute` gives, converted by their types
    (an aware datetime from stored text, a boolean from 0/1, NULL as None)."""
    from sqlalchemy import Boolean, and_, or_

    from dripmail.store.bulk import Rows

    table = Table(
        "rows_read",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("label", String(50), nullable=False),
        Column("flag", Boolean, nullable=False),
        Column("due_at", UTCDateTime),
    )
    table.drop(engine, checkfirst=True)
    table.create(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(table),
                [
                    {"id": i, "label": f"r{i}", "flag": i % 2 == 0}
                    | {"due_at": None if i % 3 == 0 else NOW + timedelta(seconds=i)}
                    for i in range(1, 30)
                ],
            )
        due = bindparam("now", type_=UTCDateTime())
        query = (
            select(table.c.id, table.c.label, table.c.flag, table.c.due_at)
            .where(
                table.c.id > bindparam("after"),
                or_(table.c.due_at.is_(None), and_(table.c.due_at <= due, table.c.flag)),
            )
            .order_by(table.c.id)
            .limit(bindparam("size"))
        )
        params = {"after": 4, "now": NOW + timedelta(seconds=20), "size": 10}
        with engine.connect() as conn:
            got = Rows(query).fetch(conn, params)
            want = [row._asdict() for row in conn.execute(query, params)]
        assert got == want and len(got) == 10
        assert {type(r["flag"]) for r in got} == {bool}
        assert got[0]["due_at"] is None or got[0]["due_at"].tzinfo is UTC
        assert any(r["due_at"] is None for r in got) and any(r["due_at"] for r in got)
    finally:
        table.drop(engine, checkfirst=True)
