"""Inserting many rows at once, the one way every writer does it.

PostgreSQL gets ``INSERT ... SELECT FROM unnest(arrays)``: one short statement text whatever
the row count, so neither SQLAlchemy nor psycopg re-parse a long multi-row VALUES list per
batch (that parsing cost more than the database work). Columns of an enum type go through
executemany instead (their values are Python enums). SQLite runs in-process, where plain
executemany is cheapest.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import JSON, Enum, Table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tracker.db.clock import dialect_of
from tracker.db.schema import Base

CHUNK = 500  # rows per executemany call


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def bulk_insert(session: Session, table: Table | type, rows: list[dict], conflict: Sequence[str] = (), *,
                returning: Sequence[str] = ()) -> list[tuple]:
    """Insert ``rows``; ``ON CONFLICT (conflict) DO NOTHING`` when given (so concurrent writers
    cannot collide); the ``returning`` columns of the rows actually inserted."""
    if not rows:
        return []
    table = getattr(table, "__table__", table)
    conflict, returning = tuple(conflict), tuple(returning)
    out: list[tuple] = []
    by_columns: dict[tuple[str, ...], list[dict]] = {}
    for row in rows:
        by_columns.setdefault(tuple(row), []).append(row)
    postgres = dialect_of(session) == "postgresql"
    for columns, group in by_columns.items():
        if postgres and not any(isinstance(table.c[c].type, Enum) for c in columns):
            stmt = _unnest_insert_sql(table.name, columns, conflict, returning)
            params = {f"p_{c}": [_array_value(table.c[c], row[c]) for row in group] for c in columns}
            result = session.execute(stmt, params)
            if returning:
                out += [tuple(r) for r in result.all()]
            continue
        stmt = (postgresql if postgres else sqlite).insert(table)
        if conflict:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
        if returning:
            stmt = stmt.returning(*(table.c[c] for c in returning))
        for chunk in chunks(group):
            result = session.execute(stmt, list(chunk))
            if returning:
                out += [tuple(r) for r in result.all()]
    return out


def _array_value(column, value: Any) -> Any:
    return json.dumps(value) if isinstance(column.type, JSON) else value


@functools.lru_cache(maxsize=32)
def _unnest_insert_sql(table_name: str, columns: tuple[str, ...], conflict: tuple[str, ...],
                       returning: tuple[str, ...]):
    table = Base.metadata.tables[table_name]
    dialect = postgresql.dialect()
    arrays, selected = [], []
    for name in columns:
        column = table.c[name]
        is_json = isinstance(column.type, JSON)
        element = "TEXT" if is_json else column.type.compile(dialect=dialect)
        arrays.append(f"CAST(:p_{name} AS {element}[])")
        selected.append(f"CAST(r.{name} AS JSON)" if is_json else f"r.{name}")
    sql = (f"INSERT INTO {table_name} ({', '.join(columns)}) SELECT {', '.join(selected)} "
           f"FROM unnest({', '.join(arrays)}) AS r({', '.join(columns)})")
    if conflict:
        sql += f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    return text(sql)
