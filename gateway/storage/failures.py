"""Why a write failed: the rows, or the database.

The log writer retries a failed batch row by row only when the failure may lie in the rows (a value the
column refuses, a constraint, a value the driver cannot encode). A failure of the database itself (it is
unreachable, locked, read-only, out of space, its table is missing) would fail every row alike, so the
rows are kept and the batch is retried later as a whole instead.

Errors are recognised through the whole chain (SQLAlchemy's wrapper, its ``orig``, ``__cause__``), by
PostgreSQL's SQLSTATE where there is one: class 22 (data exception) and 23 (integrity constraint
violation) are the rows'; any other class is the database's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Literal

Blame = Literal["rows", "database"]

_ROW_SQLSTATE_CLASSES = frozenset({"22", "23"})
_SQLITE_ROW_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
)
_DATABASE_ERRORS = (OSError, TimeoutError, sqlite3.OperationalError, sqlite3.DatabaseError)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, e.__cause__, e.__context__]


def blame(exc: BaseException) -> Blame:
    """``"rows"`` when retrying the rows one at a time may isolate the failure, ``"database"`` when the
    database failed (see the module docstring). Unknown errors are the rows': they are retried row by row,
    so a failure nobody foresaw still cannot block the log. Pure."""
    chain = list(_chain(exc))
    for e in chain:
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and len(state) == 5:
            return "rows" if state[:2] in _ROW_SQLSTATE_CLASSES else "database"
    for e in chain:
        if isinstance(e, sqlite3.ProgrammingError) and "closed" in str(e):
            return "database"  # "Cannot operate on a closed database."
        if isinstance(e, _SQLITE_ROW_ERRORS):
            return "rows"
        if isinstance(e, _DATABASE_ERRORS):
            return "database"
        name = type(e).__module__ + "." + type(e).__name__
        # asyncpg's connection-level errors carry no SQLSTATE
        # (asyncpg.DataError, a bad argument, is an InterfaceError too, and a ValueError)
        connection_error = "Connection" in name or name.endswith("InterfaceError")
        if name.startswith("asyncpg.") and connection_error and not isinstance(e, ValueError):
            return "database"
        if getattr(e, "connection_invalidated", False):
            return "database"
    return "rows"
