"""One uniform handle on a decoder-only language model, whatever class it loaded as.

`google/gemma-3-*-it` checkpoints load as `Gemma3ForConditionalGeneration` (a vision
tower around a `Gemma3TextModel`); SmolLM2 loads as `LlamaForCausalLM`. The scorer
never calls the top-level forward: it runs the text decoder stack directly (so Phase A
computes no logits at all) and applies the LM head only at the positions it scores.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
from transformers import PreTrainedModel

from tracker.errors import ConfigError

FULL = "full_attention"
SLIDING = "sliding_attention"


@dataclass
class LanguageModelView:
    """The text decoder, LM head, rotary module and layer layout of a causal LM."""

    model: PreTrainedModel
    text_model: nn.Module
    lm_head: nn.Module
    text_config: object
    final_logit_softcapping: float | None

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def num_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def max_positions(self) -> int:
        return int(getattr(self.text_config, "max_position_embeddings", 0) or 0)

    @property
    def vocab_size(self) -> int:
        return int(self.text_config.vocab_size)

    @property
    def sliding_window(self) -> int | None:
        return getattr(self.text_config, "sliding_window", None)

    @cached_property
    def layer_types(self) -> list[str]:
        """Attention type of every layer: Gemma 3 mixes sliding and full layers."""
        types = getattr(self.text_config, "layer_types", None)
        if types:
            return list(types)
        sliding = self.sliding_window is not None and getattr(self.text_config, "use_sliding_window", True)
        return [SLIDING if sliding else FULL] * self.num_layers

    @property
    def rotary(self) -> nn.Module:
        rotary = getattr(self.text_model, "rotary_emb", None)
        if rotary is None:
            raise ConfigError(
                f"{type(self.model).__name__} has no rotary embedding module at `.rotary_emb`; the two-phase "
                "scorer re-rotates keys with it and supports RoPE decoder families (Llama, Gemma 3, ...) only"
            )
        return rotary

    @cached_property
    def accepts_mask_mapping(self) -> bool:
        """Whether the text model takes a dict of masks keyed by layer type (Gemma 2/3 style)."""
        try:
            source = inspect.getsource(type(self.text_model).forward)
        except (OSError, TypeError):
            return False
        return "causal_mask_mapping" in source

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on final hidden states, returned in fp32. # [..., vocab]"""
        logits = self.lm_head(hidden).float()
        if self.final_logit_softcapping is not None:
            cap = float(self.final_logit_softcapping)
            logits = torch.tanh(logits / cap) * cap
        return logits


def view_of(model: PreTrainedModel) -> LanguageModelView:
    """Find the text decoder inside `model` (plain causal LM or multimodal wrapper)."""
    if isinstance(model, LanguageModelView):
        return model
    if getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError(
            f"{type(model).__name__} is an encoder-decoder model; score it with an encdec_* mode, "
            "not a decoder-only mode"
        )
    inner = getattr(model, "model", None)
    lm_head = getattr(model, "lm_head", None)
    if inner is None or lm_head is None:
        raise ConfigError(f"cannot find the decoder and LM head of {type(model).__name__}")
    language_model = getattr(inner, "language_model", None)
    if language_model is not None:
        # Multimodal wrapper (Gemma3ForConditionalGeneration): its forward applies no logit softcapping.
        return LanguageModelView(model, language_model, lm_head, model.config.get_text_config(), None)
    config = model.config
    return LanguageModelView(model, inner, lm_head, config, getattr(config, "final_logit_softcapping", None))
