"""tracker: a database-backed experiment tracker and GPU job queue for directed KV-cache experiments.

The Python API (:mod:`tracker.api`) is imported on first use, so ``import tracker`` stays
light (no pandas, torch or analysis code until a function is called)::

    import tracker
    frame = tracker.results("demo")            # db=None: $TRACKER_DB, else ./tracker.db
    report = tracker.analyze("demo")
"""
from __future__ import annotations

from tracker.version import __version__  # noqa: F401 - the package version

API_NAMES = ("results", "token_nlls", "analyze", "compare", "export", "export_frame", "show", "read_provenance")


def __getattr__(name: str):
    if name in API_NAMES:
        from tracker import api

        return getattr(api, name)
    raise AttributeError(f"module 'tracker' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API_NAMES])
