"""Options several commands share."""
from __future__ import annotations

import functools

import click


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


def run_option(func):
    """``--run ID``: one experiment run (default: the latest; ``all`` for every run)."""
    return click.option("--run", "run", default=None, metavar="ID",
                        help="Experiment run id (default: the latest run; `all`: every run).")(func)
