"""The database layer: schema (ORM rows), engines and sessions, migrations, bulk writes,
the database clock and driver-error classification. Nothing here knows about jobs' meaning."""
from __future__ import annotations

from tracker.db.engine import (
    create_tracker_engine,
    dispose_engines,
    ensure_schema,
    get_engine,
    is_sqlite,
    require_existing_sqlite,
    run_transaction,
    session_scope,
)
from tracker.db.errors import translate_db_error

__all__ = [
    "create_tracker_engine", "dispose_engines", "ensure_schema", "get_engine", "is_sqlite", "require_existing_sqlite", "run_transaction", "session_scope",
    "translate_db_error",
]
