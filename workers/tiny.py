"""Deterministic tiny random models (and a byte-level tokenizer) for CPU tests.

Every builder seeds torch before constructing its model, so the same name always
gives the same weights on any machine. Nothing is downloaded: configs are written
here and the tokenizer is assembled offline with `tokenizers`.

Names (also registered in :mod:`workers.registry`):

- ``tiny-random-llama``        LlamaForCausalLM, GQA, default RoPE.
- ``tiny-random-gemma3``       Gemma3ForCausalLM (text only), sliding window 16,
                               mixed sliding/full layers with different RoPE per type.
- ``tiny-random-gemma3-mm``    Gemma3ForConditionalGeneration (multimodal wrapper
                               around the same text config, tiny SigLIP tower).
- ``tiny-random-t5``, ``tiny-random-bart``, ``tiny-random-t5gemma`` (T5Gemma 2)
                               encoder-decoder models for the encoder-decoder scorer.

Token ids are shared by all tiny models: ``<pad>``=0, ``<bos>``=1, ``<eos>``=2,
``<unk>``=3, then the 256 byte tokens (so ``"\\n"`` is a single token).

`get_tiny(name)` caches the built (model, tokenizer) pair in memory; callers that
change a model's dtype, device or weights must copy it first (`copy.deepcopy`).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from tracker.catalogue.revisions import (
    TINY_SEED,  # part of the tiny models' revision string
)

TINY_VOCAB_SIZE = 272  # 4 specials + 256 bytes, rounded up; ids 260.. are unused by text
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
TINY_SLIDING_WINDOW = 16
TINY_MAX_POSITIONS = 4096
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<bos>{{ message['role'] }}\n{{ message['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what ByteLevel expects)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


@functools.lru_cache(maxsize=1)
def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: every UTF-8 byte is one token, no merges, no added BOS."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for byte, char in sorted(_bytes_to_unicode().items()):
        vocab[char] = len(SPECIAL_TOKENS) + byte
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def _seeded(build: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    """Build a model under a fixed seed, in eval mode (configs start in training mode)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = build()
    model.requires_grad_(False)  # inference only: no autograd bookkeeping
    return model.eval()


def llama_config(**overrides: Any):
    from transformers import LlamaConfig

    params: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=TINY_MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, initializer_range=0.1,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=False,
    )
    params.update(overrides)
    return LlamaConfig(**params)


def gemma3_text_config(**overrides: Any):
    """Mixed sliding/full layers; sliding RoPE theta 1e4, full RoPE theta 1e6 with linear scaling x8 (as 4B/12B)."""
    from transformers import Gemma3TextConfig

    params: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=TINY_MAX_POSITIONS, sliding_window=TINY_SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
        initializer_range=0.1, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )
    params.update(overrides)
    if "num_hidden_layers" in overrides and "layer_types" not in overrides:
        n = overrides["num_hidden_layers"]
        params["layer_types"] = (params["layer_types"] * n)[:n]
    return Gemma3TextConfig(**params)


def _siglip_tiny():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=28, patch_size=14,
    )


def build_llama(**overrides: Any) -> PreTrainedModel:
    from transformers import LlamaForCausalLM

    return _seeded(lambda: LlamaForCausalLM(llama_config(**overrides)))


def build_gemma3_text(**overrides: Any) -> PreTrainedModel:
    from transformers import Gemma3ForCausalLM

    return _seeded(lambda: Gemma3ForCausalLM(gemma3_text_config(**overrides)))


def build_gemma3_multimodal(**overrides: Any) -> PreTrainedModel:
    """Gemma3ForConditionalGeneration, the class `google/gemma-3-*-it` checkpoints load as."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    def build() -> PreTrainedModel:
        config = Gemma3Config(
            text_config=gemma3_text_config(**overrides).to_dict(), vision_config=_siglip_tiny().to_dict(),
            mm_tokens_per_image=4, boi_token_index=TINY_VOCAB_SIZE - 3, eoi_token_index=TINY_VOCAB_SIZE - 2,
            image_token_index=TINY_VOCAB_SIZE - 1,
        )
        return Gemma3ForConditionalGeneration(config)

    return _seeded(build)


def build_t5(**overrides: Any) -> PreTrainedModel:
    from transformers import T5Config, T5ForConditionalGeneration

    params: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB_SIZE, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
        dropout_rate=0.0, initializer_factor=1.0, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )
    params.update(overrides)
    return _seeded(lambda: T5ForConditionalGeneration(T5Config(**params)))


def build_bart(**overrides: Any) -> PreTrainedModel:
    from transformers import BartConfig, BartForConditionalGeneration

    params: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB_SIZE, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=1024,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, init_std=0.1,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, decoder_start_token_id=EOS_ID,
        forced_bos_token_id=None, forced_eos_token_id=None,
    )
    params.update(overrides)
    return _seeded(lambda: BartForConditionalGeneration(BartConfig(**params)))


def build_t5gemma2(**overrides: Any) -> PreTrainedModel:
    """T5Gemma 2 (the seed's encoder-decoder family); its start token is `config.decoder.bos_token_id`."""
    from transformers import T5Gemma2Config, T5Gemma2ForConditionalGeneration
    from transformers.models.t5gemma2.configuration_t5gemma2 import (
        T5Gemma2DecoderConfig,
        T5Gemma2EncoderConfig,
        T5Gemma2TextConfig,
    )

    common: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=TINY_MAX_POSITIONS, sliding_window=TINY_SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"], initializer_range=0.1,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )
    common.update(overrides)

    def build() -> PreTrainedModel:
        encoder = T5Gemma2EncoderConfig(
            text_config=T5Gemma2TextConfig(**common).to_dict(), vision_config=_siglip_tiny().to_dict(),
            mm_tokens_per_image=4, boi_token_index=TINY_VOCAB_SIZE - 3, eoi_token_index=TINY_VOCAB_SIZE - 2,
            image_token_index=TINY_VOCAB_SIZE - 1,
        )
        decoder = T5Gemma2DecoderConfig(**common)
        config = T5Gemma2Config(
            encoder=encoder.to_dict(), decoder=decoder.to_dict(), image_token_index=TINY_VOCAB_SIZE - 1,
            dropout_rate=0.0, attention_dropout=0.0,
        )
        return T5Gemma2ForConditionalGeneration(config)

    return _seeded(build)


TINY_BUILDERS: dict[str, Callable[..., PreTrainedModel]] = {
    "tiny-random-llama": build_llama,
    "tiny-random-gemma3": build_gemma3_text,
    "tiny-random-gemma3-mm": build_gemma3_multimodal,
    "tiny-random-t5": build_t5,
    "tiny-random-bart": build_bart,
    "tiny-random-t5gemma": build_t5gemma2,
}


def build_tiny(name: str, **overrides: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A freshly built tiny model (fp32, CPU, eval mode) and the shared byte tokenizer.

    `overrides` go into the model config, e.g. ``num_hidden_layers=1`` for the one-layer invariant tests.
    """
    if name not in TINY_BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; known: {sorted(TINY_BUILDERS)}")
    return TINY_BUILDERS[name](**overrides), build_tiny_tokenizer()


@functools.lru_cache(maxsize=None)
def get_tiny(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Cached `build_tiny(name)`; do not mutate the returned model (copy it first)."""
    return build_tiny(name)
