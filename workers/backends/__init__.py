"""Scoring backends, chosen by model name from `workers.registry` and imported lazily.

`get_backend("smollm2-135m", "cpu")` imports `workers.backends.decoder` only then; the
encoder-decoder and fake backends are imported the same way, by their registry path.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from workers.backends.base import (
    GenerateResult,
    GenerateTask,
    ScoreResult,
    ScoreTask,
    ScoringBackend,
)

if TYPE_CHECKING:  # the registry imports torch; keep `import workers.backends` cheap
    from workers.registry import ModelSpec

__all__ = [
    "GenerateResult", "GenerateTask", "ScoreResult", "ScoreTask", "ScoringBackend", "backend_class", "get_backend",
]


def backend_class(spec: ModelSpec) -> type[ScoringBackend]:
    """Import the backend class named by `spec.backend` ("module:Class")."""
    module_name, _, class_name = spec.backend.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_backend(model_name: str, device: str = "cpu", dtype: str | None = None, **kw) -> ScoringBackend:
    """Build the backend for a registered model name or local folder (UnknownModelError otherwise)."""
    from workers.registry import resolve_model

    spec = resolve_model(model_name)
    return backend_class(spec)(spec, device, dtype, **kw)
