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


def _parse_limits(ctx, param, values: tuple[str, ...]):
    """``--limit N`` and/or ``--limit DATASET=N`` (repeatable) -> None, an int, or {key: N, "*": N}."""
    if not values:
        return None
    caps: dict[str, int] = {}
    for value in values:
        key, _, number = value.rpartition("=")
        try:
            cap = int(number)
        except ValueError:
            raise click.BadParameter(f"{value!r}: write N or DATASET=N (e.g. 50 or squad_v2=50)") from None
        if cap < 1:
            raise click.BadParameter(f"{value!r}: a limit is at least 1")
        caps[key or "*"] = cap
    return caps["*"] if set(caps) == {"*"} else caps


def limit_option(func):
    """``--limit``: a cap on the samples taken from each dataset, one for all and/or per dataset."""
    return click.option(
        "--limit", "limit", multiple=True, callback=_parse_limits, metavar="[DATASET=]N",
        help="At most N samples per dataset (the first N of the spec's seeded order); DATASET=N for one "
             "dataset (repeatable). A dataset with fewer usable rows gives what it has, with a warning.",
    )(func)
