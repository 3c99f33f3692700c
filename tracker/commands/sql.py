"""``tracker sql``: one read-only statement over the results."""
from __future__ import annotations

import click

from tracker.commands.options import db_option
from tracker.db import get_engine
from tracker.render import format_option, render_rows
from tracker.settings import resolve_db_url
from tracker.sqlquery import run_readonly_query


@click.command("sql")
@click.argument("query")
@format_option()
@db_option
def sql_cmd(query: str, fmt: str, db: str | None) -> None:
    """Run one read-only SQL statement and print the rows.

    The view `results` has one row per experiment x scoring job; `token_nlls` has one
    row per answer token. Writes are refused by the database.

    \b
    Example:
        tracker sql "SELECT condition, avg(nll) FROM results GROUP BY 1"
        tracker sql "SELECT * FROM results" --format json
    """
    url = resolve_db_url(db)
    get_engine(url)  # creates a fresh default SQLite file, refuses an old schema
    result = run_readonly_query(url, query)
    click.echo(render_rows(result.columns, result.rows, fmt))


COMMANDS = [sql_cmd]
