"""This database's installation id (see `schema.installation`)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from dripmail.store.schema import installation

_ROW = "this"


def installation_id(engine: Engine) -> str:
    """The random id made once per database (16 hex digits); made now if missing.

    Migration 0005 creates it; this also covers a database whose row was removed. Two
    processes making it at once agree: the primary key lets one insert win, both read it.
    """
    query = select(installation.c.id).where(installation.c.name == _ROW)
    with engine.connect() as conn:
        found = conn.execute(query).scalar()
    if found:
        return str(found)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(installation).values(
                    name=_ROW, id=secrets.token_hex(8), created_at=datetime.now(UTC)
                )
            )
    except IntegrityError:
        pass  # another process made it first
    with engine.connect() as conn:
        return str(conn.execute(query).scalar_one())
