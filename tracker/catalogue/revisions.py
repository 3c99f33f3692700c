"""The revision string a model's jobs pin, and whether loaded weights match it: one rule.

Content fingerprints (``tiny-seed1234``, ``gguf-sha256:<16 hex>``, ``local-<16 hex>``) are
computed from what is on disk, so enqueue knows them without loading anything and a worker
must load exactly them. Hub revisions are commits (a short sha pins its full sha) or branch
and tag names, which ``from_pretrained`` resolves (the commit is what a worker records).
These strings are stored in model rows and job identities: changing how one is made
orphans every existing score of that model.
"""
from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

TINY_SEED = 1234
FINGERPRINT_PREFIXES = ("tiny-", "gguf-sha256:", "local-")
_COMMIT = re.compile(r"[0-9a-f]{7,40}")


@functools.lru_cache(maxsize=None)
def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (cached per path for the process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tiny_revision() -> str:
    """The tiny random models are built from configs with this seed."""
    return f"tiny-seed{TINY_SEED}"


def gguf_revision(sha256_hex: str) -> str:
    """The embedded model: the GGUF file it was converted from."""
    return f"gguf-sha256:{sha256_hex[:16]}"


def folder_revision(path: str | Path) -> str:
    """A local model folder: hash of config.json plus weight file names and sizes."""
    digest = hashlib.sha256()
    folder = Path(path)
    digest.update((folder / "config.json").read_bytes())
    for weight in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return "local-" + digest.hexdigest()[:16]


def is_fingerprint(revision: str) -> bool:
    return revision.startswith(FINGERPRINT_PREFIXES)


def revision_matches(wanted: str | None, loaded: str | None) -> bool:
    """Whether weights recorded as ``loaded`` are the revision ``wanted`` that jobs pin.

    No pin (or nothing recorded) matches; a fingerprint must be equal; a commit matches its
    own prefix; a branch or tag name was resolved by ``from_pretrained`` and matches.
    """
    if not wanted or not loaded:
        return True
    if is_fingerprint(wanted):
        return loaded == wanted
    if _COMMIT.fullmatch(wanted):
        return loaded.startswith(wanted)
    return True
