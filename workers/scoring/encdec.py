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

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers.modeling_outputs import BaseModelOutput

from tracker.catalogue import modes
from tracker.errors import ConfigError, DatasetError, EmptyAnswerError

DecoderQuery = Literal["query", "none", "random"]

# Bumped whenever what is scored changes (encoder wrapping, decoder layout, masks, NLL).

_BASE_MODES: dict[str, tuple[DecoderQuery, bool]] = {
    # mode: (what sits between the start token and the answer, prefix hidden from cross-attn)
    modes.ENCDEC_Q: ("query", True),
    modes.ENCDEC_NQ: ("none", True),
    modes.ENCDEC_RQ: ("random", True),
    modes.ENCDEC_Q_VISIBLE: ("query", False),
}
ENCDEC_MODES: tuple[str, ...] = modes.ENCDEC_MODES

# Families whose decoder attends to its own tokens and the encoder's in ONE softmax.
MERGED_ATTENTION_FAMILIES = frozenset({"t5gemma2"})
# Families whose decoder start token is the decoder config's BOS, not `decoder_start_token_id`.
DECODER_BOS_START_FAMILIES = frozenset({"t5gemma", "t5gemma2"})


@dataclass(frozen=True)
class EncDecMode:
    """A parsed scoring mode: decoder variant, prefix visibility, attention probing."""

    name: str
    decoder_query: DecoderQuery
    hide_prefix: bool
    probe: bool


def parse_mode(mode: str) -> EncDecMode:
    """Parse an ``encdec_*`` mode name; unknown names are a :class:`ConfigError`."""
    base = modes.base_mode(mode)
    if mode not in ENCDEC_MODES or base not in _BASE_MODES:
        raise ConfigError(
            f"unknown encoder-decoder scoring mode {mode!r}",
            hint=f"use one of: {', '.join(ENCDEC_MODES)}",
        )
    decoder_query, hide_prefix = _BASE_MODES[base]
    return EncDecMode(name=mode, decoder_query=decoder_query, hide_prefix=hide_prefix, probe=modes.is_probe(mode))


@dataclass(frozen=True)
class EncDecLayout:
    """The exact token layout of one scored row (one sample x condition x mode).

    Spans are half-open ``(start, end)`` index ranges.
    """

    encoder_ids: tuple[int, ...]      # lead + prefix + doc + trail
    prefix_span: tuple[int, int]      # encoder positions of the prefix (empty when bare)
    hide_prefix: bool                 # zero the prefix in the cross-attention mask
    decoder_ids: tuple[int, ...]      # [start] + middle + answer
    middle_span: tuple[int, int]      # decoder positions of the query / random stand-in
    answer_span: tuple[int, int]      # decoder positions of the answer

    @property
    def answer_ids(self) -> tuple[int, ...]:
        return self.decoder_ids[self.answer_span[0] : self.answer_span[1]]

    @property
    def predicting_positions(self) -> range:
        """Decoder positions whose logits score the answer tokens (one before each)."""
        return range(self.answer_span[0] - 1, self.answer_span[1] - 1)


def build_layout(
    *,
    prefix_ids: Sequence[int] | None,
    doc_ids: Sequence[int],
    query_ids: Sequence[int],
    answer_ids: Sequence[int],
    start_id: int,
    mode: EncDecMode,
    random_ids: Sequence[int] | None = None,
    encoder_lead: Sequence[int] = (),
    encoder_trail: Sequence[int] = (),
) -> EncDecLayout:
    """Lay out one row's encoder and decoder inputs for ``mode``.

    ``prefix_ids`` is None for bare; ``random_ids`` (required for ``encdec_rq``) must have
    the query's length.
    """
    if not answer_ids:
        raise EmptyAnswerError(
            "the answer tokenizes to no tokens, so it has no NLL",
            hint="drop samples with empty answers when preparing the dataset",
        )
    if not doc_ids:
        raise DatasetError(
            "the document tokenizes to no tokens, so there is nothing to condition on",
            hint="drop samples with empty documents when preparing the dataset",
        )
    prefix = list(prefix_ids or [])
    encoder_ids = [*encoder_lead, *prefix, *doc_ids, *encoder_trail]
    prefix_start = len(encoder_lead)
    middle = _decoder_middle(mode, query_ids, random_ids)
    decoder_ids = [start_id, *middle, *answer_ids]
    answer_start = 1 + len(middle)
    return EncDecLayout(
        encoder_ids=tuple(encoder_ids),
        prefix_span=(prefix_start, prefix_start + len(prefix)),
        hide_prefix=mode.hide_prefix,
        decoder_ids=tuple(decoder_ids),
        middle_span=(1, answer_start),
        answer_span=(answer_start, len(decoder_ids)),
    )


def _decoder_middle(
    mode: EncDecMode, query_ids: Sequence[int], random_ids: Sequence[int] | None
) -> list[int]:
    """The tokens between the start token and the answer for this decoder variant."""
    if mode.decoder_query == "query":
        return list(query_ids)
    if mode.decoder_query == "none":
        return []
    if random_ids is None or len(random_ids) != len(query_ids):
        raise ValueError(
            f"encdec_rq needs random ids of the query's length {len(query_ids)}, "
            f"got {None if random_ids is None else len(random_ids)}"
        )
    return list(random_ids)


def random_query_ids(
    source_key: str, length: int, vocab_size: int, special_ids: Iterable[int]
) -> list[int]:
    """``length`` random non-special token ids, a pure function of the sample's source key.

    The seed is derived with SHA-256 (not Python's salted ``hash``) so every worker and every
    rerun draws the same ids; special ids are rejected and redrawn.
    """
    specials = {i for i in special_ids if 0 <= i < vocab_size}
    if len(specials) >= vocab_size:
        raise ValueError("every token id is special; cannot draw a random query")
    digest = hashlib.sha256(f"encdec_rq:{source_key}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    ids: list[int] = []
    while len(ids) < length:
        candidate = rng.randrange(vocab_size)
        if candidate not in specials:
            ids.append(candidate)
    return ids


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
    from workers.scoring.probing import attention_rows_for_batch

    rows = attention_rows_for_batch(
        out.decoder_attentions, out.cross_attentions, layouts, merged=has_merged_attention(model.config)
    )
    return [RowScore(token_nlls=n, attention=a) for n, a in zip(nlls, rows)]
