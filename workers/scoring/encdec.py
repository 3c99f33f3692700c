"""Encoder-decoder scoring: answer NLL with the prefix hidden from cross-attention.

The seed's encoder-decoder track (T5Gemma 2, Flan-T5, BART) scores an answer as follows:

* encoder input = ``lead + prefix + doc + trail``. ``lead``/``trail`` are the special tokens
  the model's own tokenizer wraps a single sequence in (T5: a trailing ``</s>``; BART:
  ``<s> ... </s>``; Gemma-family tokenizers: a leading ``<bos>``). They are the same under
  every condition, so bare and prefixed inputs differ only by the prefix. There is no
  separator between prefix and doc, so ``bare_nl`` (empty prefix) scores exactly like bare.
* The encoder runs ONCE over the whole input with a full (padding-only) mask, so the doc's
  hidden states are conditioned on the prefix. The decoder is then called with
  ``encoder_outputs=`` and a cross-attention mask that zeros the prefix positions (default)
  or leaves them visible (``encdec_q_visible``). Passing that zeroed mask together with
  ``input_ids`` would hide the prefix from the encoder too and silently reproduce bare.
* decoder input = ``[start] + middle + answer`` passed explicitly (T5's automatic shift
  would put pads where the query belongs); ``middle`` is the query (``encdec_q``), nothing
  (``encdec_nq``) or random non-special ids of the query's length (``encdec_rq``).
* NLL of each answer token from the logit one position before it, in fp32.

Everything here works on token ids; tokenization and prefix construction live in
:mod:`workers.backends.encdec`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutput

from tracker.errors import ConfigError
from workers.scoring.encdec_layout import (  # noqa: F401 - the layout API, re-exported for the backend
    ENCDEC_MODES,
    DecoderQuery,
    EncDecLayout,
    EncDecMode,
    build_layout,
    parse_mode,
    random_query_ids,
)
from workers.scoring.probing import attention_rows_for_batch

# Families whose decoder attends to its own tokens and the encoder's in ONE softmax.
MERGED_ATTENTION_FAMILIES = frozenset({"t5gemma2"})
# Families whose decoder start token is the decoder config's BOS, not `decoder_start_token_id`.
DECODER_BOS_START_FAMILIES = frozenset({"t5gemma", "t5gemma2"})


def decoder_start_id(config) -> int:
    """The decoder start token: ``config.decoder.bos_token_id`` for T5Gemma (1 and 2),
    ``config.decoder_start_token_id`` for T5 and BART."""
    if config.model_type in DECODER_BOS_START_FAMILIES:
        start = config.decoder.bos_token_id
    else:
        start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        raise ConfigError(
            f"model type {config.model_type!r} defines no decoder start token",
            hint="set decoder_start_token_id in the model's config",
        )
    return int(start)


def has_merged_attention(config) -> bool:
    """True when the decoder's self- and cross-attention share one softmax (T5Gemma 2)."""
    return config.model_type in MERGED_ATTENTION_FAMILIES


@dataclass
class RowScore:
    """One row's answer NLLs and, in probing modes, its attention-share rows."""

    token_nlls: list[float]
    attention: list[dict] | None = None


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences; returns ``ids, mask`` both ``[batch, max_len]``.

    Right padding suits every family here: BART's learned and T5Gemma's rotary positions
    count from the left, T5's relative bias does not care, and the decoder is causal.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
        mask[row, : len(seq)] = 1
    return ids, mask


def cross_attention_mask(layouts: Sequence[EncDecLayout], encoder_mask: torch.Tensor) -> torch.Tensor:
    """The encoder padding mask with each hidden prefix zeroed: ``[batch, enc_len]``."""
    mask = encoder_mask.clone()
    for row, layout in enumerate(layouts):
        start, end = layout.prefix_span
        if layout.hide_prefix and end > start:
            mask[row, start:end] = 0
    return mask


def encode_unique(model, layouts: Sequence[EncDecLayout], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the encoder once per distinct encoder input (modes of one condition share it).

    Returns hidden states ``[batch, enc_len, hidden]`` and the padding mask ``[batch, enc_len]``,
    one row per layout. The encoder always sees the full input: the prefix is hidden later,
    from cross-attention only.
    """
    device = model.device
    unique: dict[tuple[int, ...], int] = {}
    for layout in layouts:
        unique.setdefault(layout.encoder_ids, len(unique))
    ids, mask = pad_right(list(unique), pad_id, device)  # [n_unique, enc_len]
    hidden = model.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
    rows = torch.tensor([unique[layout.encoder_ids] for layout in layouts], device=device)
    return hidden.index_select(0, rows), mask.index_select(0, rows)


def answer_token_nlls(logits: torch.Tensor, layouts: Sequence[EncDecLayout]) -> list[list[float]]:
    """Per-row answer-token NLLs in fp32 from logits ``[batch, dec_len, vocab]``."""
    nlls = []
    for row, layout in enumerate(layouts):
        positions = list(layout.predicting_positions)
        row_logits = logits[row, positions].float()  # [n_answer, vocab]
        targets = torch.tensor(layout.answer_ids, device=logits.device)
        log_probs = torch.log_softmax(row_logits, dim=-1)
        nlls.append((-log_probs.gather(1, targets[:, None])[:, 0]).tolist())
    return nlls


@torch.no_grad()
def score_layouts(
    model, layouts: Sequence[EncDecLayout], *, pad_id: int, probe: bool = False
) -> list[RowScore]:
    """Score ``layouts`` in one batched forward pass; one :class:`RowScore` per layout.

    With ``probe`` the model must run eager attention (sdpa returns no weights) and each
    score carries attention-share rows (see :mod:`workers.scoring.probing`).
    """
    if model.training:
        raise ValueError("model is in training mode (dropout on): call model.eval() first")
    encoder_hidden, encoder_mask = encode_unique(model, layouts, pad_id)
    cross_mask = cross_attention_mask(layouts, encoder_mask)  # [batch, enc_len]
    decoder_ids, decoder_mask = pad_right([l.decoder_ids for l in layouts], pad_id, model.device)
    out = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
        attention_mask=cross_mask,
        decoder_input_ids=decoder_ids,
        decoder_attention_mask=decoder_mask,
        use_cache=False,
        output_attentions=probe,
        return_dict=True,
    )
    nlls = answer_token_nlls(out.logits, layouts)
    if not probe:
        return [RowScore(token_nlls=row) for row in nlls]
    rows = attention_rows_for_batch(
        out.decoder_attentions, out.cross_attentions, layouts, merged=has_merged_attention(model.config)
    )
    return [RowScore(token_nlls=n, attention=a) for n, a in zip(nlls, rows)]
