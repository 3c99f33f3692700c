"""Encoder-decoder row layouts: the exact encoder and decoder token ids of one scored row.

Pure token-id bookkeeping, shared by the scorer (:mod:`workers.scoring.encdec`) and the
attention probe (:mod:`workers.scoring.probing`).
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from tracker.catalogue import modes
from tracker.errors import ConfigError, DatasetError, EmptyAnswerError

DecoderQuery = Literal["query", "none", "random"]

_BASE_MODES: dict[str, tuple[DecoderQuery, bool]] = {
    # mode: (what sits between the start token and the answer, prefix hidden from cross-attn)
    modes.ENCDEC_Q: ("query", True),
    modes.ENCDEC_NQ: ("none", True),
    modes.ENCDEC_RQ: ("random", True),
    modes.ENCDEC_Q_VISIBLE: ("query", False),
}
ENCDEC_MODES: tuple[str, ...] = modes.ENCDEC_MODES

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
