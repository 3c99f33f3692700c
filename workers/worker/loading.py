"""Loading a model's backend and checking that its weights are the revision its jobs pin.
"""
from __future__ import annotations

from typing import Any

from tracker.catalogue import revision_matches
from tracker.errors import (
    ConfigError,
)
from workers.backends import get_backend
from workers.backends.base import ScoringBackend


def load_backend(model_name: str, device: str, dtype: str | None, **kw: Any) -> ScoringBackend:
    """The backend for a model name (``kw`` goes to it: ``revision=`` pins a hub model's weights)."""
    return get_backend(model_name, device, dtype, **kw)


def check_revision(name: str, wanted: str | None, loaded: str | None) -> None:
    """Refuse to score with weights other than the revision the jobs were enqueued for
    (the rule: :func:`tracker.catalogue.revision_matches`)."""
    if not revision_matches(wanted, loaded):
        raise ConfigError(
            f"model {name}: the jobs want revision {wanted!r}, but this worker loaded {loaded!r}",
            hint=f"make revision {wanted} loadable here (e.g. `huggingface-cli download {name} --revision {wanted}`), "
                 "or enqueue again without the pinned revision",
        )
