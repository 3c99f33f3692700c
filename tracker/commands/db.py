"""``tracker db``: create, inspect and migrate the schema."""
from __future__ import annotations

import sys

import click
from sqlalchemy import exc, text
from sqlalchemy import inspect as sa_inspect

from tracker.commands.options import db_option
from tracker.db import (
    create_tracker_engine,
    is_sqlite,
    migrate,
    reader_role,
    require_existing_sqlite,
    translate_db_error,
)
from tracker.errors import ConfigError, SchemaOutOfDate
from tracker.settings import ENV_READER_DB, redact_url, resolve_db_url


@click.group("db")
def db_group() -> None:
    """Create, inspect and migrate the database schema.

    \b
    Example:
        tracker db upgrade
        tracker --db postgresql+psycopg://me@dbhost/tracker db upgrade
    """


@db_group.command("upgrade")
@click.argument("revision", default="head")
@db_option
def upgrade_cmd(revision: str, db: str | None) -> None:
    """Migrate the database to REVISION (default: head), creating it if needed.

    On PostgreSQL it also creates (when the URL's role may create roles) and re-grants
    the SELECT-only login role that `tracker sql` runs as.

    \b
    Example:
        tracker db upgrade
    """
    url = resolve_db_url(db)
    engine = create_tracker_engine(url)
    migrate.upgrade(engine, revision)
    click.echo(f"{redact_url(url)} is at revision {migrate.current_revision(engine)}")
    if not is_sqlite(engine):
        _report_reader_role(engine)


def _report_reader_role(engine) -> None:
    try:
        status = reader_role.ensure_reader_role(engine)
    except exc.DBAPIError as err:
        raise translate_db_error(err, redact_url(str(engine.url))) from err
    if status.ready:
        made = "created" if status.created else "up to date"
        click.echo(f"reader role {status.role} for `tracker sql`: {made} (SELECT on every table and view)")
        return
    click.echo(f"Note: `tracker sql` needs the SELECT-only login role {status.role}, and it is not ready: "
               + "; ".join(status.problems) + ".\nAn administrator (superuser or CREATEROLE) runs:\n"
               + status.admin_sql + f"\nor give `tracker sql` a SELECT-only login with --reader-db URL / "
               f"${ENV_READER_DB}.", err=True)


@db_group.command("current")
@db_option
def current_cmd(db: str | None) -> None:
    """Print the database's schema revision and the head revision; exit 1 when it is behind
    (like `alembic check`), so scripts can test it.

    \b
    Example:
        tracker db current
        tracker db current || tracker db upgrade
    """
    url = resolve_db_url(db)
    require_existing_sqlite(url)
    current = migrate.current_revision(create_tracker_engine(url))
    head = migrate.head_revision()
    if current != head:
        raise SchemaOutOfDate(f"{redact_url(url)}: revision {current or '(none)'}; head {head} (behind).",
                              hint=f"run `tracker db upgrade` (with --db {redact_url(url)} if it is not your default)")
    click.echo(f"{redact_url(url)}: revision {current}; head {head} (up to date)")


@db_group.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
@db_option
def downgrade_cmd(revision: str, yes: bool, db: str | None) -> None:
    """Migrate the database down to REVISION (`base` removes every tracker table and all scores).

    Asks for confirmation and says what will be dropped; --yes skips the question.

    \b
    Example:
        tracker db downgrade 0001
        tracker db downgrade base --yes
    """
    url = resolve_db_url(db)
    engine = create_tracker_engine(url)
    if not yes:
        what = _what_downgrade_drops(engine, revision)
        if not sys.stdin.isatty():
            raise ConfigError(f"Downgrading {redact_url(url)} to {revision} {what}; not confirmed.",
                              hint="run it in a terminal to confirm, or pass --yes")
        click.confirm(f"Downgrading {redact_url(url)} to {revision} {what}. Continue?", abort=True)
    migrate.downgrade(engine, revision)
    click.echo(f"{redact_url(url)} is at revision {migrate.current_revision(engine) or '(none)'}")


def _what_downgrade_drops(engine, revision: str) -> str:
    """What a downgrade to ``revision`` removes, in words with row counts."""
    if revision != "base":
        return "undoes the migrations after it (the index and view changes they made)"
    counts = []
    with engine.connect() as conn:
        tables = set(sa_inspect(conn).get_table_names())
        for table in ("experiments", "samples", "jobs", "scores", "token_nlls"):
            if table in tables:
                counts.append(f"{conn.execute(text(f'SELECT count(*) FROM {table}')).scalar_one():,} {table}")
    return "drops every tracker table" + (f" ({', '.join(counts)})" if counts else "")


COMMANDS = [db_group]
