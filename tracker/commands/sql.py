"""``tracker sql``: one read-only statement over the results."""
from __future__ import annotations

import itertools
import sys

import click

from tracker.commands.options import db_option
from tracker.render import format_option, render_rows, unique_column_names, write_rows
from tracker.settings import ENV_READER_DB, resolve_db_url, resolve_reader_url
from tracker.signal_cancel import cancel_on_signals
from tracker.sqlquery import open_readonly_query

DEFAULT_TIMEOUT_S = 60.0
TABLE_MAX_ROWS = 1000


@click.command("sql")
@click.argument("query")
@format_option()
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=DEFAULT_TIMEOUT_S, show_default=True,
              metavar="SECONDS",
              help="Stop the statement after this many seconds (0 = no limit); the database enforces it. "
                   "60 s lets an aggregate over tens of millions of token rows finish and still stops a "
                   "runaway join or endless recursive CTE; the limit covers sending the rows too.")
@click.option("--max-rows", type=click.IntRange(min=0), default=None, metavar="N",
              help=f"Print at most N rows (0 = all), with a note on stderr when there were more. Default: "
                   f"{TABLE_MAX_ROWS} for the table (it is aligned in memory); csv and json stream every row "
                   "in constant memory.")
@click.option("--reader-db", default=None, metavar="URL",
              help=f"PostgreSQL: log in with this SELECT-only URL (default: ${ENV_READER_DB}, else the "
                   "reader role `tracker db upgrade` makes, on --db's server and database).")
@db_option
def sql_cmd(query: str, fmt: str, timeout_s: float, max_rows: int | None, reader_db: str | None,
            db: str | None) -> None:
    """Run one read-only SQL statement and print the rows.

    The view `results` has one row per experiment x scoring job; `token_nlls` has one
    row per answer token. Writes are refused by the database; on PostgreSQL the statement
    runs as a SELECT-only role, never as the --db URL's role. SIGINT / SIGTERM stop the
    statement on the server. Columns of the same name are renamed `nll`, `nll_2`, ...;
    NULL prints as empty (csv) / null (json), NaN as `NaN`.

    \b
    Example:
        tracker sql "SELECT condition, avg(nll) FROM results GROUP BY 1"
        tracker sql "SELECT * FROM results" --format json
        tracker sql "SELECT * FROM token_nlls" --format csv --timeout 600 > tokens.csv
    """
    url = resolve_db_url(db)
    cap = max_rows if max_rows is not None else (TABLE_MAX_ROWS if fmt == "table" else 0)
    with cancel_on_signals() as cancel, open_readonly_query(
            url, query, timeout_s=timeout_s, cancel=cancel, reader_url=resolve_reader_url(reader_db)) as result:
        columns, renamed = unique_column_names(result.columns)
        if renamed:
            click.echo("Note: columns of the same name renamed: "
                       + ", ".join(f"{old} -> {new}" for old, new in renamed), err=True)
        rows = itertools.islice(result.rows, cap + 1) if cap else result.rows
        shown = _print_rows(columns, rows, fmt, cap)
        if cap and shown > cap:
            click.echo(f"Note: printed the first {cap} rows; the statement returned more "
                       "(--max-rows N, 0 = all; csv and json stream any number).", err=True)


def _print_rows(columns: list[str], rows, fmt: str, cap: int) -> int:
    """Print up to ``cap`` rows (0 = all); returns how many were read (cap + 1 means "more")."""
    read = 0

    def counted():
        nonlocal read
        for row in rows:
            read += 1
            if cap and read > cap:
                return
            yield row

    if fmt == "table":
        click.echo(render_rows(columns, list(counted()), fmt))
    else:
        write_rows(columns, counted(), fmt, sys.stdout)
        sys.stdout.flush()
    return read


COMMANDS = [sql_cmd]
