"""Alembic driven from code, so migrations work from an installed (non-editable) package."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, exc, inspect

import migrations
from tracker.db.errors import translate_db_error
from tracker.errors import DatabaseError

VERSION_TABLE = "tracker_alembic_version"


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at the installed ``migrations`` package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("version_table", VERSION_TABLE)
    if engine is not None:
        cfg.attributes["engine"] = engine
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(VERSION_TABLE):
                return None
            return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    except exc.DBAPIError as err:
        raise translate_db_error(err, engine.url.render_as_string(hide_password=True)) from err


def _run(fn, engine: Engine, *args) -> None:
    try:
        fn(alembic_config(engine), *args)
    except exc.DBAPIError as err:
        raise translate_db_error(err, engine.url.render_as_string(hide_password=True)) from err
    except Exception as err:  # alembic's own errors (unknown revision, ...)
        if err.__class__.__module__.startswith("alembic"):
            raise DatabaseError(f"Migration failed: {err}") from err
        raise


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(command.upgrade, engine, revision)


def downgrade(engine: Engine, revision: str) -> None:
    _run(command.downgrade, engine, revision)
