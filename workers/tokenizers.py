"""Tokenizers without weights, for token-length dataset recipes (ed02's padded docs).

``load_tokenizer`` is the loader the composition roots (the CLI, ``tracker.api``) hand to
``tracker.datasets`` and enqueue. Tiny and embedded models need no network; a hub model's
tokenizer comes from the local Hugging Face cache, or from the hub when it is reachable.
"""
from __future__ import annotations

from typing import Any

from tracker import settings
from tracker.catalogue import resolve_model
from tracker.catalogue.embedded import META_FILE, converted_dir, gguf_path
from tracker.datasets import HUB_HOST, hub_reachable
from tracker.errors import DatasetError

_tokenizers: dict[str, Any] = {}


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a catalogue model or a local model folder (cached per process)."""
    if name not in _tokenizers:
        _tokenizers[name] = _load(name)
    return _tokenizers[name]


def _load(name: str) -> Any:
    entry = resolve_model(name)  # UnknownModelError names the known models
    if entry.source == "tiny":
        from workers.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer()
    if entry.source == "embedded":
        return _embedded_tokenizer()
    from transformers import AutoTokenizer

    if entry.source == "local":
        return AutoTokenizer.from_pretrained(entry.location)
    if entry.source != "hub":
        raise DatasetError(f"Model {name} ({entry.source}) has no tokenizer to count doc tokens with.",
                           hint="name a real model in the recipe's `tokenizer`, or score a real model")
    try:
        return AutoTokenizer.from_pretrained(entry.location, local_files_only=True)
    except OSError as err:
        cached_error = err
    offline = settings.hub_offline()
    if not offline and hub_reachable():
        try:
            return AutoTokenizer.from_pretrained(entry.location)
        except OSError as err:
            cached_error = err
    raise DatasetError(
        f"Cannot load the tokenizer of {entry.location} to count doc tokens: it is not in the local Hugging Face "
        f"cache and {HUB_HOST} is {'switched off (offline mode)' if offline else 'not reachable'} "
        f"({type(cached_error).__name__}).",
        hint=f"where the hub is reachable run `huggingface-cli download {entry.location} --include 'tokenizer*' "
             "'special_tokens_map.json'`, or pass a local model folder with --model DIR",
    )


def _embedded_tokenizer() -> Any:
    """SmolLM2's tokenizer: from the converted cache when present, else read from the GGUF."""
    from transformers import AutoTokenizer

    folder = converted_dir()
    if (folder / META_FILE).is_file():
        return AutoTokenizer.from_pretrained(folder)
    gguf = gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
