"""Where the database is, and other settings read from the environment."""
from __future__ import annotations

import os

from sqlalchemy.engine import make_url

DEFAULT_DB_URL = "sqlite:///tracker.db"
ENV_DB = "TRACKER_DB"
ENV_READER_DB = "TRACKER_READER_DB"


def resolve_db_url(explicit: str | None = None) -> str:
    """``--db URL``, else ``$TRACKER_DB``, else ``sqlite:///tracker.db`` in the working directory."""
    return explicit or os.environ.get(ENV_DB) or DEFAULT_DB_URL


def resolve_reader_url(explicit: str | None = None) -> str | None:
    """``--reader-db URL``, else ``$TRACKER_READER_DB``, else None (``tracker sql`` derives one)."""
    return explicit or os.environ.get(ENV_READER_DB) or None


def redact_url(url: str) -> str:
    """The URL without its password, for logs and MLflow params."""
    return make_url(url).render_as_string(hide_password=True)
