"""Re-rotating cached keys to new positions with the model's own rotary module.

Cached keys are already rotated: ``k_p = a * R(p) k`` with ``R`` the RoPE rotation in
the ``rotate_half`` convention and ``a`` the module's ``attention_scaling``. Because
``R(delta) R(p) = R(p + delta)``, multiplying a cached key by the *unscaled* ``R(delta)``
gives exactly the key the model would have cached at position ``p + delta``. We take
``cos``/``sin`` of ``delta`` from the model's rotary module (so per-layer-type frequencies
and linear/yarn/llama3 scaling are honoured, Gemma 3 uses different ones for sliding and
full layers), divide out ``attention_scaling``, and rotate in fp32.

RoPE types whose frequencies depend on the sequence length (``dynamic``, ``longrope``)
are refused: a key cached in a longer sequence used different frequencies.
"""
from __future__ import annotations

import inspect

import torch

from tracker.errors import ConfigError
from workers.scoring.lm_view import LanguageModelView

UNSUPPORTED_ROPE_TYPES = frozenset({"dynamic", "longrope"})


def rope_types_by_layer_type(view: LanguageModelView) -> dict[str, str]:
    """The RoPE type used by each layer type of the model, e.g. {'full_attention': 'linear'}."""
    rope_type = getattr(view.rotary, "rope_type", "default")
    if isinstance(rope_type, dict):
        return {layer_type: rope_type.get(layer_type, "none") for layer_type in set(view.layer_types)}
    return {layer_type: str(rope_type) for layer_type in set(view.layer_types)}


def check_rope_supported(view: LanguageModelView) -> None:
    """Raise ConfigError for RoPE variants that cannot be re-rotated exactly."""
    for layer_type, rope_type in rope_types_by_layer_type(view).items():
        if rope_type in UNSUPPORTED_ROPE_TYPES or rope_type == "none":
            raise ConfigError(
                f"{type(view.model).__name__} uses RoPE type {rope_type!r} on {layer_type} layers; keys cannot be "
                "re-rotated exactly (frequencies depend on sequence length). Use mode `full` or a model with "
                "default/linear/llama3/yarn RoPE"
            )


def _rotary_takes_layer_type(view: LanguageModelView) -> bool:
    return "layer_type" in inspect.signature(view.rotary.forward).parameters


def _attention_scaling(view: LanguageModelView, layer_type: str) -> float | None:
    rotary = view.rotary
    if _rotary_takes_layer_type(view):
        return getattr(rotary, f"{layer_type}_attention_scaling", None)
    return getattr(rotary, "attention_scaling", None)


def rotation_cos_sin(
    view: LanguageModelView, layer_type: str, deltas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled fp32 cos/sin of R(delta). deltas: [batch] -> cos, sin: [batch, 1, 1, head_dim];
    deltas: [batch, n] (one per entry) -> [batch, 1, n, head_dim]."""
    positions = deltas.to(device=view.device, dtype=torch.long)
    positions = positions if positions.dim() == 2 else positions.view(-1, 1)  # [batch, n]
    probe = torch.zeros(1, device=view.device, dtype=torch.float32)
    if _rotary_takes_layer_type(view):
        cos, sin = view.rotary(probe, positions, layer_type)
    else:
        cos, sin = view.rotary(probe, positions)
    cos, sin = cos.float(), sin.float()  # [batch, n, head_dim]
    scaling = _attention_scaling(view, layer_type)
    if scaling is None:  # derive it: cos^2 + sin^2 == scaling^2 element-wise
        scaling_t = torch.sqrt(cos.square() + sin.square())
        cos, sin = cos / scaling_t, sin / scaling_t
    elif scaling != 1.0:
        cos, sin = cos / scaling, sin / scaling
    return cos.unsqueeze(1), sin.unsqueeze(1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The Llama/Gemma RoPE convention: (x1, x2) -> (-x2, x1) over the two halves of head_dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_keys(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply R(delta) to cached keys in fp32. keys: [batch, kv_heads, seq, head_dim]; cos/sin broadcastable."""
    if cos.shape[-1] != keys.shape[-1]:
        raise ConfigError(
            f"partial rotary embeddings (rotary dim {cos.shape[-1]} != head dim {keys.shape[-1]}) are not supported "
            "by the two-phase scorer"
        )
    k32 = keys.float()
    return (k32 * cos + rotate_half(k32) * sin).to(keys.dtype)


def rerotate_layer_keys(
    view: LanguageModelView, layer_idx: int, keys: torch.Tensor, deltas: torch.Tensor
) -> torch.Tensor:
    """Move every key of one layer by its row's delta. keys: [batch, kv_heads, seq, head_dim]; deltas: [batch]."""
    cos, sin = rotation_cos_sin(view, view.layer_types[layer_idx], deltas)
    return rotate_keys(keys, cos, sin)
