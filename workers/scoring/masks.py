"""Attention masks: the bidirectional prefix-LM Phase A and every padded (bucketed) pass.

A custom 4D mask replaces a model's own per-layer masks, so handing Gemma 3 one
bidirectional mask would silently drop its sliding window. We therefore build one mask
per layer type with transformers' own mask factories (so the format matches the
attention implementation: bool for sdpa, additive float for eager) and pass a dict
keyed by layer type to models that accept one; a single-type model gets the tensor.

The bidirectional region of row ``b`` is sequence indices ``[start[b], end[b])`` (the
prefix, separator and doc; BOS stays causal). Inside it every token sees every other,
limited to ``|q - k| < window`` on sliding layers (Gemma 3's own bidirectional overlay);
everything else stays causal (and windowed). Left padding is handled by the 2D padding
mask (`padding_overlay`); indices are sequence indices, which differ from positions only by
each row's constant padding offset, so distances are unchanged. Padded causal batches use the
same builder (with no bidirectional region), and so does a padded Phase B over a left-padded cache
(`cache` then holds the cached entries and ``length`` is the number of new tokens).
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
from workers.scoring.compat import mask_factory_cache_kwargs
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


def padding_overlay(pads: torch.Tensor) -> MaskFn:
    """Real queries never see left padding; pad queries see the (causal) pads before them.

    A pad query that saw nothing would be a fully masked row, which some sdpa kernels turn into
    NaN; NaN values at pad positions would then poison real rows (0 x NaN) on the next layer.
    """

    def inner(batch_idx, head_idx, q_idx, kv_idx):
        pad = pads[batch_idx]
        return (kv_idx >= pad) | (q_idx < pad)

    return inner


def attention_masks(
    view: LanguageModelView,
    *,
    batch: int,
    length: int,
    pads: torch.Tensor,
    bidirectional: bool,
    cache,
) -> dict[str, torch.Tensor]:
    """One mask per layer type for `length` new tokens after what `cache` holds: causal (windowed on sliding
    layers), each row's first ``pads[b]`` sequence indices hidden, and with `bidirectional` (Phase A only)
    everything after each row's BOS mutually visible. Always materialised (never sdpa's ``is_causal`` skip).
    # each [batch, 1, length, cached + length]"""
    embeds = torch.empty((batch, length, 1), dtype=view.dtype, device=view.device)  # only shape/dtype/device are read
    pads = pads.to(view.device)
    cached = cache.get_seq_length()
    region = region_overlay(pads + 1, torch.full_like(pads, cached + length)) if bidirectional else None
    hide_pads = padding_overlay(pads) if bool((pads > 0).any()) else None
    masks: dict[str, torch.Tensor] = {}
    for layer_type in sorted(set(view.layer_types)):
        factory = create_sliding_window_causal_mask if layer_type == SLIDING else create_causal_mask
        common = dict(config=view.text_config, inputs_embeds=embeds, attention_mask=None,
                      and_mask_function=hide_pads, allow_is_causal_skip=False,
                      **mask_factory_cache_kwargs(factory, cache))
        if layer_type == SLIDING:
            overlay = None if region is None else and_masks(region, window_overlay(view.sliding_window))
            masks[layer_type] = factory(**common, or_mask_function=overlay)
        else:
            masks[layer_type] = factory(**common, or_mask_function=region)
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


phase_a_masks = attention_masks  # the Phase A name (empty cache), used by the prefix-LM tracks
