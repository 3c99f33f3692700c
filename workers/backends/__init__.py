"""Scoring backends, one per model family, imported only when a model of that family loads.

`get_backend("smollm2-135m", "cpu")` imports `workers.backends.decoder` only then; the
encoder-decoder and fake backends likewise.
"""
from __future__ import annotations

from tracker.catalogue import DECODER, ENCDEC, FAKE, CatalogueEntry, resolve_model
from tracker.errors import ConfigError
from workers.backends.base import (
    GenerateResult,
    GenerateTask,
    ScoreResult,
    ScoreTask,
    ScoringBackend,
)

__all__ = [
    "GenerateResult", "GenerateTask", "ScoreResult", "ScoreTask", "ScoringBackend", "backend_class", "get_backend",
]


def backend_class(entry: CatalogueEntry) -> type[ScoringBackend]:
    """The backend class of the entry's family (imported on first use: it imports torch)."""
    if entry.family == DECODER:
        from workers.backends.decoder import DecoderBackend

        return DecoderBackend
    if entry.family == ENCDEC:
        from workers.backends.encdec import EncDecBackend

        return EncDecBackend
    if entry.family == FAKE:
        from workers.backends.fake import FakeBackend

        return FakeBackend
    raise ConfigError(f"model {entry.name}: no backend for family {entry.family!r}")


def get_backend(model_name: str, device: str = "cpu", dtype: str | None = None, **kw) -> ScoringBackend:
    """Build the backend for a catalogue name or local folder (UnknownModelError otherwise)."""
    entry = resolve_model(model_name)
    return backend_class(entry)(entry, device, dtype, **kw)
