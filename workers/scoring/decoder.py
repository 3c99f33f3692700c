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

Batching: rows of one call that share doc, query and answer (all conditions of one
sample) run together. Rows whose Phase A lengths are equal are batched without padding;
the remaining rows of distinct lengths are left-padded together, with explicit position
ids and a padding mask, so every row sees exactly what it would see alone. Phase B needs
no padding in `two_phase` (every row's cache has ``1 + D`` entries). A batch that runs
out of device memory is split in halves and retried.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from tracker.catalogue.modes import DECODER_MODES, PREFIX_LM_BIDIR, TWO_PHASE
from tracker.errors import (
    DeviceError,
    EmptyAnswerError,
    InputTooLongError,
    TrackerError,
)
from workers.scoring.kvcache import (
    cache_from_layers,
    layers_of,
    new_phase_a_cache,
    rerotate_span,
    select_entries,
)
from workers.scoring.lm_view import LanguageModelView, view_of
from workers.scoring.masks import mask_argument, phase_a_masks
from workers.scoring.rotary import check_rope_supported

DEFAULT_MAX_BATCH = 16


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
    batch_size: int
    padded: bool
    chunk: int
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


def plan_chunks(lengths: Sequence[int], max_batch: int) -> list[list[int]]:
    """Group row indices into batches: equal lengths together unpadded, the odd ones out left-padded together."""
    by_length: OrderedDict[int, list[int]] = OrderedDict()
    for idx, length in enumerate(lengths):
        by_length.setdefault(length, []).append(idx)
    chunks: list[list[int]] = []
    singles: list[int] = []
    for idxs in by_length.values():
        if len(idxs) >= 2 or max_batch == 1:
            chunks.extend(_split(idxs, max_batch))
        else:
            singles.extend(idxs)
    singles.sort(key=lambda i: lengths[i])
    chunks.extend(_split(singles, max_batch))
    return chunks


def _split(idxs: list[int], size: int) -> list[list[int]]:
    return [idxs[i : i + size] for i in range(0, len(idxs), size)]


def _left_pad(seqs: list[tuple[int, ...]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, per-row pad counts and position ids that start at 0 on each row's first real token."""
    length = max(len(s) for s in seqs)
    pads = torch.tensor([length - len(s) for s in seqs], device=device)  # [batch]
    ids = torch.tensor([(pad_id,) * (length - len(s)) + s for s in seqs], device=device)  # [batch, length]
    positions = (torch.arange(length, device=device)[None, :] - pads[:, None]).clamp(min=0)  # [batch, length]
    return ids, pads, positions


@torch.inference_mode()
def run_phase_a(view: LanguageModelView, mode: str, layouts: list[RowLayout]):
    """Forward Phase A of a batch on a config-free cache. Returns (cache, pads [batch], padding mask or None)."""
    ids, pads, positions = _left_pad([lay.phase_a for lay in layouts], layouts[0].phase_a[0], view.device)
    batch, length = ids.shape
    padded = bool((pads > 0).any())
    padding_mask = (torch.arange(length, device=view.device)[None, :] >= pads[:, None]) if padded else None
    cache = new_phase_a_cache()
    attention = None
    if padded or mode == PREFIX_LM_BIDIR:
        masks = phase_a_masks(view, batch=batch, length=length, pads=pads, bidirectional=mode == PREFIX_LM_BIDIR,
                              cache=cache)
        attention = mask_argument(view, masks)
    view.text_model(input_ids=ids, attention_mask=attention, position_ids=positions, cache=cache, use_cache=True)
    _expect_cache_length(cache, length, "after Phase A")
    return cache, pads, padding_mask


@torch.inference_mode()
def select_and_rerotate(view: LanguageModelView, cache, pads: torch.Tensor, layouts: list[RowLayout]):
    """Keep BOS + doc entries of every row and move the doc keys to positions 1..D. -> cache of 1+D."""
    doc_len = layouts[0].doc_len
    offsets = torch.arange(doc_len, device=pads.device)
    keep = torch.stack(
        [torch.cat([pads[b : b + 1], pads[b] + lay.doc_start + offsets]) for b, lay in enumerate(layouts)]
    )  # [batch, 1 + D]
    deltas = torch.tensor([-lay.shift for lay in layouts], device=pads.device)  # [batch]
    layers = rerotate_span(view, select_entries(layers_of(cache), keep), 1, deltas)
    return cache_from_layers(layers)


@torch.inference_mode()
def run_phase_b(
    view: LanguageModelView,
    cache,
    phase_b: tuple[int, ...],
    batch: int,
    start_positions: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    mask_override=None,
) -> torch.Tensor:
    """Forward Phase B over `cache`, every row the same ids. Returns final hidden states [batch, Lb, hidden].

    start_positions: [batch] position id of each row's first Phase B token. `mask_override` exists for tests
    that prove a broken mask is caught.
    """
    before = cache.get_seq_length()
    ids = torch.tensor([phase_b], device=view.device).expand(batch, -1)  # [batch, Lb]
    positions = start_positions.to(view.device)[:, None] + torch.arange(len(phase_b), device=view.device)[None, :]
    attention = mask_override
    if attention is None and padding_mask is not None:
        attention = torch.cat([padding_mask, padding_mask.new_ones(batch, len(phase_b))], dim=1).long()
    out = view.text_model(input_ids=ids, attention_mask=attention, position_ids=positions, cache=cache, use_cache=True)
    _expect_cache_length(cache, before + len(phase_b), "after Phase B")
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


def score_chunk(view: LanguageModelView, mode: str, layouts: list[RowLayout]) -> torch.Tensor:
    """Phase A + Phase B for rows sharing doc/query/answer. Returns answer NLLs [batch, A]."""
    return score_chunk_with_cache(view, mode, layouts)[0]


def score_chunk_with_cache(view: LanguageModelView, mode: str, layouts: list[RowLayout]):
    """`score_chunk` that also returns the final cache (Phase A entries kept + Phase B), for the self-check."""
    cache, pads, padding_mask = run_phase_a(view, mode, layouts)
    batch = len(layouts)
    first = layouts[0]
    if mode == TWO_PHASE:
        cache = select_and_rerotate(view, cache, pads, layouts)
        _expect_cache_length(cache, 1 + first.doc_len, "before Phase B")
        starts = torch.full((batch,), 1 + first.doc_len)
        hidden = run_phase_b(view, cache, first.phase_b, batch, starts)
    else:
        lengths = torch.tensor([len(lay.phase_a) for lay in layouts])
        _expect_cache_length(cache, int(lengths.max()), "before Phase B")
        hidden = run_phase_b(view, cache, first.phase_b, batch, lengths, padding_mask)
    nlls = answer_nlls(view, hidden, first)
    if not bool(torch.isfinite(nlls).all()):
        raise TrackerError(
            f"the model produced a non-finite NLL in {view.dtype} on {view.device}",
            hint="rerun with --dtype float32; if it persists the checkpoint or the scorer is broken for this family",
        )
    return nlls, cache


def _is_oom(error: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(error, oom_type) or "out of memory" in str(error).lower()


@dataclass
class BatchBudget:
    """The largest batch that fits; halved on every out-of-memory error and kept for later calls."""

    max_batch: int = DEFAULT_MAX_BATCH
    ooms: int = 0


def _score_chunk_adaptive(view, mode, layouts, budget: BatchBudget) -> list[tuple[torch.Tensor, int]]:
    """(nlls [A], batch size used) per row; on OOM halve the budget and carry on with smaller batches."""
    done: list[tuple[torch.Tensor, int]] = []
    remaining = list(layouts)
    while remaining:
        batch = remaining[: budget.max_batch]
        try:
            nlls = score_chunk(view, mode, batch)
        except Exception as error:  # noqa: BLE001 - only OOM is handled, everything else re-raised
            if not _is_oom(error):
                raise
            budget.ooms += 1
            if view.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) == 1:
                raise DeviceError(
                    f"out of memory scoring a single row of {len(batch[0].phase_a)}+{len(batch[0].phase_b)} "
                    f"tokens on {view.device}; use a smaller model, a shorter doc budget or a larger device"
                ) from error
            budget.max_batch = max(1, len(batch) // 2)
            continue
        done.extend((nlls[i], len(batch)) for i in range(len(batch)))
        remaining = remaining[len(batch) :]
    return done


@torch.inference_mode()
def score_rows(
    model: PreTrainedModel | LanguageModelView,
    mode: str,
    bos_id: int,
    nl_ids: int | Sequence[int],
    rows: Sequence[ScoringRow],
    *,
    max_batch: int | None = None,
    budget: BatchBudget | None = None,
) -> list[RowScore]:
    """Score rows in `mode`, batched; one RowScore per row, same order."""
    if mode not in DECODER_MODES:
        raise ValueError(f"not a decoder-only mode: {mode!r} (known: {', '.join(DECODER_MODES)})")
    view = view_of(model)
    if mode == TWO_PHASE:
        check_rope_supported(view)
    budget = budget or BatchBudget(max_batch or DEFAULT_MAX_BATCH)
    if max_batch is not None:
        budget.max_batch = max_batch
    sep = _as_sep(nl_ids)
    layouts = [layout_row(int(bos_id), sep, row) for row in rows]
    for layout in layouts:
        check_fits(view, mode, layout)
    results: list[RowScore | None] = [None] * len(rows)
    groups: OrderedDict[tuple, list[int]] = OrderedDict()
    for idx, row in enumerate(rows):
        groups.setdefault(row.same_sample_key, []).append(idx)
    chunk_counter = 0
    for members in groups.values():
        for chunk in plan_chunks([len(layouts[i].phase_a) for i in members], budget.max_batch):
            idxs = [members[i] for i in chunk]
            chunk_layouts = [layouts[i] for i in idxs]
            padded = len({len(lay.phase_a) for lay in chunk_layouts}) > 1
            for idx, (nlls, used) in zip(idxs, _score_chunk_adaptive(view, mode, chunk_layouts, budget)):
                values = nlls.tolist()
                results[idx] = RowScore(
                    token_nlls=values, nll_mean=float(sum(values) / len(values)),
                    phase_a_ids=list(layouts[idx].phase_a), phase_b_ids=list(layouts[idx].phase_b),
                    batch_size=used, padded=padded, chunk=chunk_counter,
                )
            chunk_counter += 1
    return results  # type: ignore[return-value]


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
) -> RowScore:
    """Score one row unbatched (the reference path); see `score_rows` for the batched one."""
    row = ScoringRow.of(prefix_ids, doc_ids, query_ids, answer_ids)
    return score_rows(model, mode, bos_id, nl_ids, [row], max_batch=1)[0]


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

