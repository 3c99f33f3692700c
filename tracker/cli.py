"""The ``tracker`` command line. Commands are thin: parse, call the library, render."""
from __future__ import annotations

import functools
import importlib
import sys

import click

from tracker import __version__
from tracker.errors import TrackerError

# Modules under tracker/commands that add commands to the group (see ``register``).
COMMAND_MODULES = ("db", "sql", "queue", "experiments", "analyze", "run")


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


def db_option(func):
    """``--db URL`` on a command; falls back to the group's ``--db``, then $TRACKER_DB, then ./tracker.db."""

    @click.option("--db", "db", default=None, metavar="URL",
                  help="Database URL (default: $TRACKER_DB, else sqlite:///tracker.db).")
    @functools.wraps(func)
    def wrapper(*args, db=None, **kwargs):
        ctx = click.get_current_context()
        root = ctx.find_root()
        db = db or (root.obj or {}).get("db")
        return func(*args, db=db, **kwargs)

    return wrapper


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


def register(group: click.Group) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"tracker.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"tracker.commands.{name}":
                continue  # not built yet
            raise
        for command in getattr(module, "COMMANDS", ()):
            group.add_command(command)


register(cli)


def main() -> None:
    cli(prog_name="tracker")


if __name__ == "__main__":
    main()
