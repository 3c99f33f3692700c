"""What makes a model row: identities built from the catalogue, without loading weights.
"""
from __future__ import annotations

from dataclasses import dataclass

from tracker.catalogue import (
    FAKE,
    SCORER_VERSIONS,
    CatalogueEntry,
    dtype_name,
    resolve_model,
)
from tracker.catalogue.embedded import embedded_revision
from tracker.catalogue.revisions import folder_revision, tiny_revision

# --- model identity ----------------------------------------------------------------------

@dataclass(frozen=True)
class ModelIdentity:
    """What makes a model row: (name, revision, dtype, attention implementation)."""

    name: str
    source: str
    family: str
    revision: str
    dtype: str
    attn_implementation: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.name, self.revision, self.dtype, self.attn_implementation)

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "revision": self.revision, "dtype": self.dtype,
                "attn_implementation": self.attn_implementation}


def static_revision(entry: CatalogueEntry) -> str:
    """The revision a worker will record for this model, known without loading it.

    Hub models are unpinned ("") unless the spec pins a revision; local folders, the tiny
    models and the embedded model have content fingerprints (:mod:`tracker.catalogue.revisions`).
    """
    if entry.source == "tiny":
        return tiny_revision()
    if entry.source == "embedded":
        return embedded_revision()
    if entry.source == "local":
        return folder_revision(entry.location)
    if entry.source == "fake":
        return "fake"
    return ""


def model_identity(name: str, *, device: str, dtype: str | None = None, revision: str | None = None,
                   attn_implementation: str | None = None) -> ModelIdentity:
    """Identity of a catalogue model (or local folder) on ``device``; no weights are loaded."""
    entry = resolve_model(name)  # UnknownModelError lists the known names
    dtype_ = (dtype or "float32") if entry.family == FAKE else dtype_name(device, dtype)
    attn = attn_implementation or ("" if entry.family == FAKE else "sdpa")
    return ModelIdentity(entry.name, entry.source, entry.family,
                         revision if revision is not None else static_revision(entry), dtype_, attn)


def allowed_modes(name: str) -> tuple[str, ...]:
    return tuple(resolve_model(name).modes)


def scorer_version_for(family: str) -> str:
    """The scorer version string a worker of this model family stamps on its scores."""
    return SCORER_VERSIONS[family]


def attn_for_mode(mode: str, base: ModelIdentity) -> str:
    """Probing modes read attention weights, which sdpa does not return: eager attention."""
    if base.family != "fake" and mode.endswith("_probe"):
        return "eager"
    return base.attn_implementation
