"""``tracker db``: create, inspect and migrate the schema."""
from __future__ import annotations

import click

from tracker.commands.options import db_option
from tracker.db import create_tracker_engine, migrate
from tracker.settings import redact_url, resolve_db_url


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

    \b
    Example:
        tracker db upgrade
    """
    url = resolve_db_url(db)
    engine = create_tracker_engine(url)
    migrate.upgrade(engine, revision)
    click.echo(f"{redact_url(url)} is at revision {migrate.current_revision(engine)}")


@db_group.command("current")
@db_option
def current_cmd(db: str | None) -> None:
    """Print the database's schema revision and the head revision.

    \b
    Example:
        tracker db current
    """
    url = resolve_db_url(db)
    current = migrate.current_revision(create_tracker_engine(url))
    head = migrate.head_revision()
    state = "up to date" if current == head else "run `tracker db upgrade`"
    click.echo(f"{redact_url(url)}: revision {current or '(none)'}; head {head} ({state})")


@db_group.command("downgrade")
@click.argument("revision")
@db_option
def downgrade_cmd(revision: str, db: str | None) -> None:
    """Migrate the database down to REVISION (`base` removes every tracker table).

    \b
    Example:
        tracker db downgrade base
    """
    url = resolve_db_url(db)
    engine = create_tracker_engine(url)
    migrate.downgrade(engine, revision)
    click.echo(f"{redact_url(url)} is at revision {migrate.current_revision(engine) or '(none)'}")


COMMANDS = [db_group]
