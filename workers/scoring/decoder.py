"""Decoder-only scoring on token ids: two-phase KV-cache NLL, full cache, prefix-LM.

Layout of one row (ids are tokenized per segment, no special tokens added):

- Phase A: ``[BOS] + doc`` (bare, prefix None) or ``[BOS] + prefix + SEP + doc``
  (``prefix == []`` is ``bare_nl``). SEP is the tokenizer's ``"\\n"``.
- ``two_phase``: keep the BOS and doc entries of every layer and re-rotate the doc keys
  by ``-(P + len(SEP))`` so the cache is exactly ``1 + D`` entries at positions ``0..D``;
  Phase B ``SEP + query + SEP + answer`` at positions ``D+1...``.
- ``full``: Phase B attends to the whole Phase A cache (no selection, no re-rotation).
- ``prefix_lm_causal`` / ``prefix_lm_bidir``: Phase A with a causal / bidirectional mask
  over everything after the BOS (prefix, separator and doc), Phase B over the whole cache.
  (The separator is kept between prefix and doc so that the bidirectional mask is the only
  difference between the two prefix-LM modes and `two_phase`'s Phase A; with a causal mask
  `prefix_lm_causal` therefore scores exactly like `full`.)

NLL of answer token ``i`` is the cross-entropy of the logit one position before it,
computed in fp32. The cache length is checked before and after Phase B: transformers
ignores unknown keyword arguments, so a misspelt cache argument would otherwise score
without the doc.

Batching (batch invariance by construction, see workers.scoring.buckets): every row runs in
a pass whose shapes are a function of the row alone. Its Phase A is left-padded to the
`ShapeBuckets` width of its own length (explicit position ids and an explicit mask, pads
hidden), its re-rotated cache is left-padded to the width of ``1 + D`` (two_phase), and its
Phase B is right-padded to the width of its own Phase B length; rows of any samples with
the same three widths share passes. A row scored alone runs in exactly that shape, so its
per-token NLLs are the same whichever rows share its pass (bit-identical on the CPU; on CUDA
the device benchmark measures it). Out-of-memory passes are split (workers.backends.memory).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from tracker.catalogue.modes import DECODER_MODES, PREFIX_LM_BIDIR, TWO_PHASE
from tracker.errors import EmptyAnswerError, InputTooLongError, TrackerError
from workers.backends.memory import AdaptiveBatchSize, run_in_batches
from workers.scoring.buckets import DEFAULT_BUCKETS, ShapeBuckets
from workers.scoring.compat import cache_kwargs
from workers.scoring.kvcache import (
    cache_from_layers,
    layers_of,
    new_phase_a_cache,
    rerotate_span,
    select_entries,
)
from workers.scoring.lm_view import LanguageModelView, view_of
from workers.scoring.masks import attention_masks, mask_argument
from workers.scoring.rotary import check_rope_supported

DEFAULT_MAX_BATCH = 16
DEFAULT_GPU_MAX_BATCH = 64


@dataclass(frozen=True)
class ScoringRow:
    """One condition of one sample, tokenized. prefix None = bare, () = bare_nl."""

    prefix_ids: tuple[int, ...] | None
    doc_ids: tuple[int, ...]
    query_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]

    @classmethod
    def of(cls, prefix_ids, doc_ids, query_ids, answer_ids) -> ScoringRow:
        prefix = None if prefix_ids is None else tuple(int(i) for i in prefix_ids)
        return cls(prefix, _ints(doc_ids), _ints(query_ids), _ints(answer_ids))

    @property
    def same_sample_key(self) -> tuple:
        return (self.doc_ids, self.query_ids, self.answer_ids)


@dataclass
class RowScore:
    """Per-token answer NLLs of one row and how it was computed."""

    token_nlls: list[float]
    nll_mean: float
    phase_a_ids: list[int]
    phase_b_ids: list[int]
    batch_size: int  # rows in the pass this row ran in
    padded: bool  # whether the row itself was padded to its bucket widths
    chunk: int  # index of that pass within the call
    shape: PassShape | None = None  # the pass's padded widths
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RowLayout:
    """Where things sit in one row's Phase A and Phase B."""

    phase_a: tuple[int, ...]
    phase_b: tuple[int, ...]
    doc_start: int  # index of the first doc token in Phase A
    doc_len: int
    answer_start: int  # index of the first answer token in Phase B

    @property
    def shift(self) -> int:
        """How far the doc sits from positions 1..D: P + len(SEP), or 0 for bare."""
        return self.doc_start - 1


def _ints(ids: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(i) for i in ids)


def _as_sep(nl_ids: int | Sequence[int]) -> tuple[int, ...]:
    return (int(nl_ids),) if isinstance(nl_ids, int) else _ints(nl_ids)


def layout_row(bos_id: int, sep_ids: tuple[int, ...], row: ScoringRow) -> RowLayout:
    """Phase A / Phase B token ids of a row (the same for every decoder-only mode)."""
    if not row.answer_ids:
        raise EmptyAnswerError(
            "the answer tokenizes to no tokens, so there is no NLL to measure; drop the sample or fix its answer "
            "in the dataset recipe"
        )
    if row.prefix_ids is None:
        phase_a = (bos_id, *row.doc_ids)
    else:
        phase_a = (bos_id, *row.prefix_ids, *sep_ids, *row.doc_ids)
    phase_b = (*sep_ids, *row.query_ids, *sep_ids, *row.answer_ids)
    doc_start = len(phase_a) - len(row.doc_ids)
    answer_start = len(phase_b) - len(row.answer_ids)
    return RowLayout(phase_a, phase_b, doc_start, len(row.doc_ids), answer_start)


def positions_needed(mode: str, layout: RowLayout) -> int:
    """Number of positions (highest position id + 1) a row uses in `mode`."""
    if mode == TWO_PHASE:
        return max(len(layout.phase_a), 1 + layout.doc_len + len(layout.phase_b))
    return len(layout.phase_a) + len(layout.phase_b)


def check_fits(view: LanguageModelView, mode: str, layout: RowLayout) -> None:
    """Raise InputTooLongError when a row needs more positions than the model has."""
    needed = positions_needed(mode, layout)
    if view.max_positions and needed > view.max_positions:
        raise InputTooLongError(
            f"this sample needs {needed} positions in mode {mode} (doc {layout.doc_len} tokens) but the model "
            f"allows {view.max_positions}; lower the doc token budget in the sample preparation recipe "
            "(truncate docs when samples are created, never per condition)"
        )


@dataclass(frozen=True)
class PassShape:
    """The padded widths of one row's passes; rows with equal shapes (and mode) may share them."""

    phase_a: int  # Phase A ids, left-padded
    cache: int  # cache entries before Phase B: 1 + D bucket (two_phase) or = phase_a (full, prefix-LM)
    phase_b: int  # Phase B ids, right-padded

    def as_dict(self) -> dict:
        return {"phase_a": self.phase_a, "cache": self.cache, "phase_b": self.phase_b}


def pass_shape(mode: str, layout: RowLayout, buckets: ShapeBuckets) -> PassShape:
    """The shape a row runs in under `buckets`: a function of the row alone."""
    phase_a = buckets.phase_a_width(len(layout.phase_a))
    cache = buckets.phase_a_width(1 + layout.doc_len) if mode == TWO_PHASE else phase_a
    return PassShape(phase_a, cache, buckets.phase_b_width(len(layout.phase_b)))


def plan_groups(shapes: Sequence[PassShape]) -> list[list[int]]:
    """Row indices grouped by pass shape (first-seen order); each group may be cut into passes freely."""
    groups: OrderedDict[PassShape, list[int]] = OrderedDict()
    for idx, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(idx)
    return list(groups.values())


def _left_pad(seqs: list[tuple[int, ...]], pad_id: int, device, width: int | None = None):
    """Left-padded ids [batch, width], per-row pad counts [batch] and position ids that start at 0 on each row's
    first real token (pads sit at position 0)."""
    length = width or max(len(s) for s in seqs)
    pads = torch.tensor([length - len(s) for s in seqs], device=device)  # [batch]
    ids = torch.tensor([(pad_id,) * (length - len(s)) + s for s in seqs], device=device)  # [batch, length]
    positions = (torch.arange(length, device=device)[None, :] - pads[:, None]).clamp(min=0)  # [batch, length]
    return ids, pads, positions


@torch.inference_mode()
def run_phase_a(view: LanguageModelView, mode: str, layouts: list[RowLayout], *, width: int | None = None,
                masked: bool = False):
    """Forward Phase A of a batch on a config-free cache, left-padded to `width` (default: the longest row).

    Returns (cache, pads [batch], padding mask [batch, width] bool or None). An explicit mask is passed when a
    row is padded, in prefix_lm_bidir, or with `masked` (bucketed passes always mask, see ShapeBuckets).
    """
    ids, pads, positions = _left_pad([lay.phase_a for lay in layouts], layouts[0].phase_a[0], view.device, width)
    batch, length = ids.shape
    padded = bool((pads > 0).any())
    padding_mask = (torch.arange(length, device=view.device)[None, :] >= pads[:, None]) if padded else None
    cache = new_phase_a_cache()
    attention = None
    if padded or masked or mode == PREFIX_LM_BIDIR:
        masks = attention_masks(view, batch=batch, length=length, pads=pads, bidirectional=mode == PREFIX_LM_BIDIR,
                                cache=cache)
        attention = mask_argument(view, masks)
    view.text_model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True,
                    **cache_kwargs(view.text_model, cache))
    _expect_cache_length(cache, length, "after Phase A")
    return cache, pads, padding_mask


def doc_keep_indices(pads: torch.Tensor, layouts: list[RowLayout], width: int) -> torch.Tensor:
    """Phase A indices to keep per row, left-padded to `width`. -> keep [batch, width]

    Row b keeps ``[filler] * (width - 1 - D) + [BOS] + doc``; BOS sits at index ``pads[b]`` of the padded Phase A,
    the doc at ``pads[b] + doc_start ...``. Fillers repeat the BOS entry and are masked in Phase B
    (`selected_cache_pads`).
    """
    rows = []
    for b, lay in enumerate(layouts):
        fill = width - 1 - lay.doc_len
        bos = pads[b : b + 1]
        doc = pads[b] + lay.doc_start + torch.arange(lay.doc_len, device=pads.device)
        rows.append(torch.cat([bos.expand(fill + 1), doc]))
    return torch.stack(rows)


def selected_cache_pads(layouts: list[RowLayout], width: int) -> torch.Tensor:
    """Left pads (fillers) of each row's re-rotated cache of `width` entries. -> [batch]"""
    return torch.tensor([width - 1 - lay.doc_len for lay in layouts])


@torch.inference_mode()
def select_and_rerotate(view: LanguageModelView, cache, pads: torch.Tensor, layouts: list[RowLayout],
                        width: int | None = None):
    """Keep BOS + doc entries of every row and move the doc keys to positions 1..D. -> cache of `width` entries
    (default 1 + D), left-padded per row by `selected_cache_pads`."""
    width = width or 1 + max(lay.doc_len for lay in layouts)
    keep = doc_keep_indices(pads, layouts, width)  # [batch, width]
    is_doc = torch.arange(width, device=pads.device)[None, :] >= (width - torch.tensor(
        [lay.doc_len for lay in layouts], device=pads.device))[:, None]  # [batch, width]
    deltas = torch.tensor([-lay.shift for lay in layouts], device=pads.device)[:, None] * is_doc  # [batch, width]
    layers = rerotate_span(view, select_entries(layers_of(cache), keep), 0, deltas)
    return cache_from_layers(layers)


def _per_row(phase_b, batch: int) -> list[tuple[int, ...]]:
    """Phase B ids per row: one sequence shared by every row, or one per row."""
    if phase_b and isinstance(phase_b[0], int):
        return [tuple(phase_b)] * batch
    return [tuple(ids) for ids in phase_b]


@torch.inference_mode()
def run_phase_b(
    view: LanguageModelView,
    cache,
    phase_b,
    batch: int,
    start_positions: torch.Tensor,
    cache_pads: torch.Tensor | None = None,
    mask_override=None,
    *,
    width: int | None = None,
    masked: bool = False,
) -> torch.Tensor:
    """Forward Phase B over `cache`. Returns final hidden states [batch, width, hidden].

    phase_b: ids shared by every row, or a list of per-row ids, right-padded to `width` (default: longest);
    start_positions: [batch] position id of each row's first Phase B token; cache_pads: [batch] left pads of
    the cache (hidden). Pad tokens follow the real ones, so causality keeps them from every real token.
    `mask_override` exists for tests that prove a broken mask is caught.
    """
    rows = _per_row(phase_b, batch)
    length = width or max(len(r) for r in rows)
    before = cache.get_seq_length()
    pad_id = rows[0][0]
    ids = torch.tensor([r + (pad_id,) * (length - len(r)) for r in rows], device=view.device)  # [batch, Lb]
    positions = start_positions.to(view.device)[:, None] + torch.arange(length, device=view.device)[None, :]
    if view.max_positions:
        positions = positions.clamp(max=view.max_positions - 1)  # only right pads can reach past the last position
    attention = mask_override
    padded = cache_pads is not None and bool((cache_pads > 0).any())
    if attention is None and (padded or masked):
        pads = cache_pads if cache_pads is not None else torch.zeros(batch, dtype=torch.long)
        attention = mask_argument(view, attention_masks(view, batch=batch, length=length, pads=pads.to(view.device),
                                                        bidirectional=False, cache=cache))
    out = view.text_model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True,
                          **cache_kwargs(view.text_model, cache))
    _expect_cache_length(cache, before + length, "after Phase B")
    return out.last_hidden_state


def answer_nlls(view: LanguageModelView, hidden: torch.Tensor, layout: RowLayout) -> torch.Tensor:
    """Cross-entropy of each answer token from the logit one position before it, fp32. -> [batch, A]"""
    answer = torch.tensor(layout.phase_b[layout.answer_start :], device=hidden.device)  # [A]
    rows = hidden[:, layout.answer_start - 1 : len(layout.phase_b) - 1, :]  # [batch, A, hidden]
    logprobs = torch.log_softmax(view.logits(rows), dim=-1)  # [batch, A, vocab] fp32
    return -logprobs.gather(-1, answer[None, :, None].expand(rows.shape[0], -1, 1)).squeeze(-1)


def _expect_cache_length(cache, expected: int, when: str) -> None:
    actual = cache.get_seq_length()
    if actual != expected:
        raise RuntimeError(
            f"KV cache holds {actual} entries {when}, expected {expected}: the model did not use the cache as the "
            "scorer assumes (scorer bug or unsupported model family)"
        )


def score_chunk(view: LanguageModelView, mode: str, layouts: list[RowLayout], shape: PassShape | None = None,
                masked: bool = False) -> list[torch.Tensor]:
    """Phase A + Phase B for rows of one pass shape (default: unpadded, all rows alike). -> answer NLLs [A] per row"""
    return score_chunk_with_cache(view, mode, layouts, shape, masked)[0]


def score_chunk_with_cache(view: LanguageModelView, mode: str, layouts: list[RowLayout],
                           shape: PassShape | None = None, masked: bool = False):
    """`score_chunk` that also returns the final cache (Phase A entries kept + Phase B), for the self-check."""
    if shape is None:
        longest_a = max(len(lay.phase_a) for lay in layouts)
        cache = 1 + max(lay.doc_len for lay in layouts) if mode == TWO_PHASE else longest_a
        shape = PassShape(longest_a, cache, max(len(lay.phase_b) for lay in layouts))
    cache, pads, _ = run_phase_a(view, mode, layouts, width=shape.phase_a, masked=masked)
    batch = len(layouts)
    if mode == TWO_PHASE:
        cache = select_and_rerotate(view, cache, pads, layouts, shape.cache)
        cache_pads = selected_cache_pads(layouts, shape.cache)
        _expect_cache_length(cache, shape.cache, "before Phase B")
        starts = torch.tensor([1 + lay.doc_len for lay in layouts])
    else:
        cache_pads = pads
        _expect_cache_length(cache, shape.phase_a, "before Phase B")
        starts = torch.tensor([len(lay.phase_a) for lay in layouts])
    hidden = run_phase_b(view, cache, [lay.phase_b for lay in layouts], batch, starts, cache_pads,
                         width=shape.phase_b, masked=masked)
    nlls = [answer_nlls(view, hidden[b : b + 1], lay)[0] for b, lay in enumerate(layouts)]  # each [A_b], per row
    if not all(bool(torch.isfinite(n).all()) for n in nlls):
        raise TrackerError(
            f"the model produced a non-finite NLL in {view.dtype} on {view.device}",
            hint="rerun with --dtype float32; if it persists the checkpoint or the scorer is broken for this family",
        )
    return nlls, cache


def default_max_batch(device: torch.device) -> int:
    """Rows per pass: GPUs want many; on a CPU more than ~16 gains nothing."""
    return DEFAULT_GPU_MAX_BATCH if device.type == "cuda" else DEFAULT_MAX_BATCH


@torch.inference_mode()
def score_rows(
    model: PreTrainedModel | LanguageModelView,
    mode: str,
    bos_id: int,
    nl_ids: int | Sequence[int],
    rows: Sequence[ScoringRow],
    *,
    max_batch: int | None = None,
    budget: AdaptiveBatchSize | None = None,
    buckets: ShapeBuckets = DEFAULT_BUCKETS,
    max_tokens: int | None = None,
) -> list[RowScore]:
    """Score rows (of any samples) in `mode`; one RowScore per row, same order.

    Rows are grouped by `pass_shape` under `buckets` and every group runs in passes of at most the budget's
    size (``max_batch`` overrides it for this call) and `max_tokens` Phase A tokens. ``max_batch=1`` is the
    one-row-per-pass reference: it gives the same numbers (see the module docstring).
    """
    if mode not in DECODER_MODES:
        raise ValueError(f"not a decoder-only mode: {mode!r} (known: {', '.join(DECODER_MODES)})")
    view = view_of(model)
    if mode == TWO_PHASE:
        check_rope_supported(view)
    if max_batch is not None:
        budget = AdaptiveBatchSize(max_batch)
    budget = budget or AdaptiveBatchSize(default_max_batch(view.device))
    sep = _as_sep(nl_ids)
    layouts = [layout_row(int(bos_id), sep, row) for row in rows]
    for layout in layouts:
        check_fits(view, mode, layout)
    shapes = [pass_shape(mode, layout, buckets) for layout in layouts]
    results: list[RowScore | None] = [None] * len(rows)
    chunk_counter = 0
    for group in plan_groups(shapes):
        shape = shapes[group[0]]
        cap = max(1, max_tokens // shape.phase_a) if max_tokens else None

        def run(idxs: list[int], shape=shape) -> list[torch.Tensor]:
            return score_chunk(view, mode, [layouts[i] for i in idxs], shape, buckets.explicit_masks)

        describe = lambda i: f"a row of {len(layouts[i].phase_a)}+{len(layouts[i].phase_b)} tokens"  # noqa: E731
        for idxs, nlls in run_in_batches(group, run, budget, view.device, describe=describe, cap=cap):
            for idx, row_nlls in zip(idxs, nlls):
                values = row_nlls.tolist()
                results[idx] = RowScore(
                    token_nlls=values, nll_mean=float(sum(values) / len(values)),
                    phase_a_ids=list(layouts[idx].phase_a), phase_b_ids=list(layouts[idx].phase_b),
                    batch_size=len(idxs), padded=_row_padded(layouts[idx], shape, mode), chunk=chunk_counter,
                    shape=shape,
                )
            chunk_counter += 1
    return results  # type: ignore[return-value]


def _row_padded(layout: RowLayout, shape: PassShape, mode: str) -> bool:
    cache = 1 + layout.doc_len if mode == TWO_PHASE else len(layout.phase_a)
    return (shape.phase_a, shape.cache, shape.phase_b) != (len(layout.phase_a), cache, len(layout.phase_b))


def score_two_phase(
    model: PreTrainedModel | LanguageModelView,
    bos_id: int,
    nl_ids: int | Sequence[int],
    prefix_ids: Sequence[int] | None,
    doc_ids: Sequence[int],
    query_ids: Sequence[int],
    answer_ids: Sequence[int],
    *,
    mode: str = TWO_PHASE,
    buckets: ShapeBuckets = DEFAULT_BUCKETS,
) -> RowScore:
    """Score one row unbatched (the reference path); see `score_rows` for the batched one."""
    row = ScoringRow.of(prefix_ids, doc_ids, query_ids, answer_ids)
    return score_rows(model, mode, bos_id, nl_ids, [row], max_batch=1, buckets=buckets)[0]


@torch.inference_mode()
def single_pass_nlls(model: PreTrainedModel, ids: Sequence[int], answer_start: int) -> torch.Tensor:
    """Reference: NLLs of ids[answer_start:] from ONE ordinary forward of the top-level model. -> [A] fp32"""
    view = view_of(model)
    input_ids = torch.tensor([list(ids)], device=view.device)
    logits = model(input_ids=input_ids).logits[0].float()  # [seq, vocab]
    targets = input_ids[0, answer_start:]
    logprobs = torch.log_softmax(logits[answer_start - 1 : len(ids) - 1], dim=-1)
    return -logprobs.gather(-1, targets[:, None]).squeeze(-1)


def whole_sequence(mode: str, layout: RowLayout) -> tuple[list[int], int]:
    """The one-pass equivalent of a row: (ids, index of the first answer token).

    two_phase bare: ``[BOS] + doc + phase B``; full and prefix-LM: ``phase A + phase B``.
    """
    if mode == TWO_PHASE:
        ids = [layout.phase_a[0], *layout.phase_a[layout.doc_start :], *layout.phase_b]
    else:
        ids = [*layout.phase_a, *layout.phase_b]
    return ids, len(ids) - (len(layout.phase_b) - layout.answer_start)

