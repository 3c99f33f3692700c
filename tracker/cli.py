"""The ``tracker`` command line. Commands are thin: parse, call the library, render."""
from __future__ import annotations

import sys

import click

from tracker.commands import analyze as analyze_commands
from tracker.commands import db as db_commands
from tracker.commands import experiments as experiment_commands
from tracker.commands import queue as queue_commands
from tracker.commands import results as results_commands
from tracker.commands import run as run_commands
from tracker.commands import sql as sql_commands
from tracker.errors import TrackerError
from tracker.version import __version__


class TrackerGroup(click.Group):
    """Turns :class:`TrackerError` into ``Error: ...`` + hint and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TrackerError as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=TrackerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", default=None, metavar="URL", help="Database URL (default: $TRACKER_DB, else sqlite:///tracker.db).")
@click.version_option(__version__, prog_name="tracker")
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """Directed KV-cache experiment tracker.

    \b
    Example:
        tracker db upgrade
        tracker enqueue exp03
        tracker worker --gpu 0
        tracker sql "SELECT condition, avg(nll) FROM results GROUP BY 1"
    """
    ctx.ensure_object(dict)
    ctx.obj["db"] = db


for module in (db_commands, sql_commands, queue_commands, experiment_commands, analyze_commands, run_commands,
               results_commands):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="tracker")


if __name__ == "__main__":
    main()
