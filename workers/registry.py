"""Loading a catalogue entry's weights: the model and tokenizer on a device, in a dtype.

Every backend class is constructed as ``Backend(entry, device, dtype, **kw)`` with
``entry`` a :class:`tracker.catalogue.CatalogueEntry`, ``device`` a device string and
``dtype`` a dtype name or None. `load_pretrained(entry, ...)` loads the model and tokenizer
of any non-fake entry (tiny, embedded, hub, local folder) and returns a `LoadedModel` with
the revision to record (the rule is :mod:`tracker.catalogue.revisions`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tracker import settings
from tracker.catalogue import CatalogueEntry
from tracker.catalogue.revisions import folder_revision, tiny_revision
from tracker.errors import ConfigError
from workers.backends.precision import cast_keeping_fp32_modules
from workers.devices import torch_device, torch_dtype


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


def _auto_class(spec: CatalogueEntry):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if spec.is_encdec else AutoModelForCausalLM


def _from_hub_or_folder(spec: CatalogueEntry, dtype: torch.dtype, attn: str, revision: str | None = None,
                        device: torch.device | str = "cpu"):
    """from_pretrained on a hub id (cached copy first, then network unless offline) or a local folder.

    ``revision`` pins a hub model's commit, branch or tag (the jobs' model row carries it).
    """
    from transformers import AutoTokenizer

    auto = _auto_class(spec)
    # straight to the device in the requested dtype: no host copy of the weights, and
    # from_pretrained keeps the class's fp32 modules (T5's `wo`) in fp32 itself
    kwargs = dict(dtype=dtype, attn_implementation=attn, device_map=str(device))
    if spec.source == "local":
        return auto.from_pretrained(spec.location, **kwargs), AutoTokenizer.from_pretrained(spec.location)
    pin = {"revision": revision} if revision else {}
    attempts = [True] if settings.hub_offline() else [True, False]
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


def load_pretrained(
    spec: CatalogueEntry, device: str | None = "cpu", dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None, revision: str | None = None,
) -> LoadedModel:
    """Load model + tokenizer for a spec, on `device` in `dtype`, in eval mode (hub models at ``revision``)."""
    dev = torch_device(device)
    dtype_ = torch_dtype(dev, dtype)
    attn = attn_implementation or "sdpa"
    if spec.source == "tiny":
        import copy

        from workers.tiny import get_tiny

        cached, tokenizer = get_tiny(spec.location)
        model = copy.deepcopy(cached)
        model.set_attn_implementation(attn)
        revision = tiny_revision()
    elif spec.source == "embedded":
        from workers.embedded import load_smollm2

        model, tokenizer, revision = load_smollm2(dtype=dtype_, attn_implementation=attn)
    elif spec.source in {"hub", "local"}:
        model, tokenizer = _from_hub_or_folder(spec, dtype_, attn, revision, dev)
        # a local folder is identified by its content fingerprint (as enqueue records it), even
        # when it is a snapshot inside the hub cache whose config carries a commit hash
        revision = folder_revision(spec.location) if spec.source == "local" else (
            getattr(model.config, "_commit_hash", None) or "unknown"
        )
    else:
        raise ConfigError(f"model {spec.name} ({spec.source}) has no weights to load")
    if spec.source in {"tiny", "embedded"}:  # built on the host: cast, keeping the class's fp32 modules
        model = cast_keeping_fp32_modules(model, dtype_, dev)
    model = drop_vision_tower(model).eval()
    return LoadedModel(model, tokenizer, str(revision), dtype_, dev, attn)


def drop_vision_tower(model: Any) -> Any:
    """Free a multimodal checkpoint's image encoder: only text is scored and generated.

    Gemma 3's conditional-generation model calls its vision tower only when ``pixel_values``
    are given, which the scorer never passes; the language model and ``lm_head`` stay.
    """
    inner = getattr(model, "model", None)
    dropped = False
    for name in ("vision_tower", "multi_modal_projector"):
        if inner is not None and getattr(inner, name, None) is not None:
            setattr(inner, name, None)
            dropped = True
    if dropped and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return model
