"""Batched statements that stay fast and within bound-parameter limits on both backends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

T = TypeVar("T")

# IN (...) lists stay well inside SQLite's 32766 and PostgreSQL's 65535 bound parameters.
ROWS_PER_STATEMENT: Final = 1000


def chunks(items: Sequence[T], size: int = ROWS_PER_STATEMENT) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_rows(conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """One executemany (psycopg pipelines it); an empty batch is not a statement at all."""
    if rows:
        conn.execute(table.insert(), list(rows))
