"""KV-cache plumbing: read layers, select entries, re-rotate, rebuild, clone.

A cache here is a transformers `DynamicCache` built *without* a config, so every layer
is a plain `DynamicLayer` that keeps every entry (a config-aware cache would keep only
`sliding_window - 1` entries on Gemma 3's sliding layers and report a cumulative length,
so selecting by absolute index would read the wrong tokens). The window still applies
through the attention mask.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from workers.scoring.lm_view import LanguageModelView
from workers.scoring.rotary import rotate_keys, rotation_cos_sin

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [batch, kv_heads, seq, head_dim]


def new_phase_a_cache() -> DynamicCache:
    """A config-free cache: full-length `DynamicLayer` on every layer, sliding ones included."""
    return DynamicCache()


def layers_of(cache: DynamicCache) -> list[LayerKV]:
    """The (keys, values) of every layer. # each [batch, kv_heads, seq, head_dim]"""
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_from_layers(layers: list[LayerKV]) -> DynamicCache:
    """A config-free cache holding exactly these tensors (shared, not copied)."""
    return DynamicCache(layers)


def clone_cache(cache: DynamicCache) -> DynamicCache:
    """An independent cache object over the same tensors; `update` concatenates, so sharing is safe."""
    return cache_from_layers(layers_of(cache))


def select_entries(layers: list[LayerKV], keep: torch.Tensor) -> list[LayerKV]:
    """Keep the listed sequence indices per batch row. keep: [batch, n_keep] -> layers of [batch, heads, n_keep, dim]."""
    selected = []
    for keys, values in layers:
        index = keep.to(keys.device)[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
        selected.append((keys.gather(2, index), values.gather(2, index)))
    return selected


def rerotate_span(
    view: LanguageModelView, layers: list[LayerKV], start: int, deltas: torch.Tensor
) -> list[LayerKV]:
    """Rotate the keys at sequence indices `start:` of every layer (values untouched).

    deltas: [batch] (one shift per row) or [batch, seq - start] (one per entry; 0 leaves an entry exactly as is).
    """
    if bool((deltas == 0).all()):
        return layers
    cos_sin: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    moved = []
    for layer_idx, (keys, values) in enumerate(layers):
        layer_type = view.layer_types[layer_idx]
        if layer_type not in cos_sin:
            cos_sin[layer_type] = rotation_cos_sin(view, layer_type, deltas)
        cos, sin = cos_sin[layer_type]
        span = rotate_keys(keys[:, :, start:, :], cos.to(keys.device), sin.to(keys.device))
        moved.append((torch.cat([keys[:, :, :start, :], span], dim=2), values))
    return moved


def concat_rows(parts: list[list[LayerKV]]) -> list[LayerKV]:
    """Stack several batches of caches with equal sequence length along the batch dimension."""
    if len(parts) == 1:
        return parts[0]
    return [
        (torch.cat([p[i][0] for p in parts], dim=0), torch.cat([p[i][1] for p in parts], dim=0))
        for i in range(len(parts[0]))
    ]
