"""What is known about models before any weights load (torch-free): names, families, modes,
scorer versions, revision fingerprints, device and dtype names, where the embedded model is."""
from __future__ import annotations

from tracker.catalogue.dtypes import device_string, dtype_name, is_gpu
from tracker.catalogue.models import (
    CATALOGUE,
    DECODER,
    DEFAULT_MODEL,
    ENCDEC,
    FAKE,
    FAKE_MODEL_NAME,
    SCORER_VERSIONS,
    CatalogueEntry,
    check_mode_allowed,
    resolve_model,
)
from tracker.catalogue.revisions import revision_matches

__all__ = [
    "CATALOGUE", "DECODER", "DEFAULT_MODEL", "ENCDEC", "FAKE", "FAKE_MODEL_NAME", "SCORER_VERSIONS",
    "CatalogueEntry", "check_mode_allowed", "device_string", "dtype_name", "is_gpu", "resolve_model",
    "revision_matches",
]
