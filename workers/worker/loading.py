"""Checking that a loaded backend's weights are the revision its jobs pin
(backends themselves come from :func:`workers.backends.get_backend`).
"""
from __future__ import annotations

from tracker.catalogue import revision_matches
from tracker.errors import (
    ConfigError,
)


def check_revision(name: str, wanted: str | None, loaded: str | None) -> None:
    """Refuse to score with weights other than the revision the jobs were enqueued for
    (the rule: :func:`tracker.catalogue.revision_matches`)."""
    if not revision_matches(wanted, loaded):
        raise ConfigError(
            f"model {name}: the jobs want revision {wanted!r}, but this worker loaded {loaded!r}",
            hint=f"make revision {wanted} loadable here (e.g. `huggingface-cli download {name} --revision {wanted}`), "
                 "or enqueue again without the pinned revision",
        )
