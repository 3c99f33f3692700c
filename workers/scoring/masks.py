"""Attention masks for the bidirectional prefix-LM Phase A.

A custom 4D mask replaces a model's own per-layer masks, so handing Gemma 3 one
bidirectional mask would silently drop its sliding window. We therefore build one mask
per layer type with transformers' own mask factories (so the format matches the
attention implementation: bool for sdpa, additive float for eager) and pass a dict
keyed by layer type to models that accept one; a single-type model gets the tensor.

The bidirectional region of row ``b`` is sequence indices ``[start[b], end[b])`` (the
prefix, separator and doc; BOS stays causal). Inside it every token sees every other,
limited to ``|q - k| < window`` on sliding layers (Gemma 3's own bidirectional overlay);
everything else stays causal (and windowed). Left padding is handled by the 2D padding
mask; indices are sequence indices, which differ from positions only by each row's
constant padding offset, so distances are unchanged.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.masking_utils import (
    and_masks,
    create_causal_mask,
    create_sliding_window_causal_mask,
)

from tracker.errors import ConfigError
from workers.scoring.lm_view import SLIDING, LanguageModelView

MaskFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def region_overlay(start: torch.Tensor, end: torch.Tensor) -> MaskFn:
    """True where query and key both lie in the row's region [start, end). start, end: [batch]."""

    def inner(batch_idx, head_idx, q_idx, kv_idx):
        lo, hi = start[batch_idx], end[batch_idx]
        return (q_idx >= lo) & (q_idx < hi) & (kv_idx >= lo) & (kv_idx < hi)

    return inner


def window_overlay(window: int) -> MaskFn:
    """True where |q - k| < window (the exclusive bound Gemma 3 uses)."""

    def inner(batch_idx, head_idx, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() < window

    return inner


def bidirectional_prefix_masks(
    view: LanguageModelView,
    *,
    batch: int,
    length: int,
    region_start: torch.Tensor,
    region_end: torch.Tensor,
    padding_mask: torch.Tensor | None,
    cache,
) -> dict[str, torch.Tensor]:
    """One mask per layer type for a Phase A of `length` tokens. # each [batch, 1, length, length]"""
    embeds = torch.empty((batch, length, 1), dtype=view.dtype, device=view.device)  # only shape/dtype/device are read
    region = region_overlay(region_start.to(view.device), region_end.to(view.device))
    common = dict(
        config=view.text_config, inputs_embeds=embeds, attention_mask=padding_mask, cache=cache,
        allow_is_causal_skip=False,
    )
    masks: dict[str, torch.Tensor] = {}
    for layer_type in sorted(set(view.layer_types)):
        if layer_type == SLIDING:
            window = view.sliding_window
            masks[layer_type] = create_sliding_window_causal_mask(
                **common, or_mask_function=and_masks(region, window_overlay(window))
            )
        else:
            masks[layer_type] = create_causal_mask(**common, or_mask_function=region)
    return masks


def mask_argument(view: LanguageModelView, masks: dict[str, torch.Tensor]):
    """What to pass as `attention_mask`: the dict for models with per-layer-type masks, else the one tensor."""
    if len(masks) == 1 and not view.accepts_mask_mapping:
        return next(iter(masks.values()))
    if not view.accepts_mask_mapping:
        raise ConfigError(
            f"{type(view.model).__name__} mixes layer types {sorted(masks)} but does not accept per-layer-type "
            "masks; prefix_lm_bidir cannot keep its sliding window. Use prefix_lm_causal or another model"
        )
    return masks
