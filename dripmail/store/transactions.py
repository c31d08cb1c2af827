"""One helper so library functions can run alone or inside a caller's transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine


@contextmanager
def transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A connection in a transaction: the caller's (a Connection) or a new one (an Engine).

    Given a Connection, nothing is committed here: the caller's `begin()` decides, so several
    steps (add, activate, plan) commit or roll back together.
    """
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.begin() as conn:
        yield conn
