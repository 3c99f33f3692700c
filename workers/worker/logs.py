"""Worker log lines: stderr, with time and pid (workers of one machine share a terminal).
"""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("tracker.worker")



def first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def tracker_version() -> str:
    from tracker.version import __version__

    return __version__


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines to stderr with time and pid (workers of one machine share a terminal)."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s worker[%(process)d] %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
