"""Invariant probes a worker runs on the very checkpoint, dtype and device before scoring.

1. ``bare_vs_single_pass``: bare two-phase per-token NLLs equal one ordinary forward pass
   over ``[BOS]+doc+[\\n]+query+[\\n]+answer`` (within a dtype-appropriate tolerance).
2. ``causality``: perturbing each Phase B token in turn changes no earlier logit (exactly 0
   on CPU; a one-token look-ahead moves earlier logits by orders of magnitude more).
3. ``positions``: the layer-0 keys of the final bare two-phase cache (BOS, doc, Phase B)
   equal those of the single pass. Layer-0 keys depend only on token and position, so this
   catches a position offset even in bf16, where NLL noise can hide one.
4. ``rerotation``: after selection and re-rotation of a prefixed Phase A, the layer-0 doc
   keys equal the bare run's (layer-0 keys depend only on the token and its position, on
   any model), so the rotary convention, per-layer-type frequencies and selection indices
   are right for this family.
5. ``batches``: the passes the worker forms (rows of two samples, bare, bare_nl and two
   prefix lengths, bucketed and padded as in production, up to the worker's batch size)
   (a) equal each row scored alone in its own shape (batch invariance, tolerance per
   device and dtype: `BATCH_INVARIANCE_TOLERANCE`), and (b) equal each row scored alone
   without any padding (`EXACT` shapes), which catches selection or masking that gets a
   padding offset wrong.

`self_check` raises `SelfCheckFailed` naming the failed probe; it returns a JSON-able dict
recorded on the worker row, with ``margins``: ``{probe: {"measured", "tolerance", "share"}}``
(share = measured / tolerance; the worker logs it).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tracker.catalogue.modes import TWO_PHASE
from tracker.errors import SelfCheckFailed, TrackerError
from workers.scoring import SCORER_VERSION
from workers.scoring.buckets import DEFAULT_BUCKETS, EXACT, ShapeBuckets
from workers.scoring.compat import cache_kwargs
from workers.scoring.decoder import (
    DEFAULT_MAX_BATCH,
    RowLayout,
    ScoringRow,
    layout_row,
    run_phase_a,
    run_phase_b,
    score_chunk_with_cache,
    score_rows,
    select_and_rerotate,
    single_pass_nlls,
    whole_sequence,
)
from workers.scoring.kvcache import clone_cache, layers_of, new_phase_a_cache
from workers.scoring.lm_view import LanguageModelView, view_of
from workers.scoring.rotary import check_rope_supported

# Max abs per-token NLL difference (nats) and max relative key difference allowed, by dtype.
NLL_TOLERANCE = {torch.float32: 1e-4, torch.float16: 0.1, torch.bfloat16: 0.25}
NLL_MEAN_TOLERANCE = {torch.float32: 1e-4, torch.float16: 0.03, torch.bfloat16: 0.06}
KEY_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}

# Largest |batched - alone| per answer token (nats) for rows of one pass shape, by (device type, dtype).
# CPU (torch 2.13, sdpa): measured exactly 0.0 in fp32 and bf16 on SmolLM2-135M and tiny Llama / Gemma 3,
# so 1e-6 only absorbs float printing. CUDA: not measured in this repository yet (None): the probe then
# allows the dtype's padding tolerance (NLL_TOLERANCE, what bf16 noise is anyway) and reports the figure;
# `python benchmarks/device.py` prints the measured value on a GPU and the entry to put here (4x measured,
# never a CPU figure). A real batching bug (a padding offset ignored) moves NLLs by ~1 nat.
BATCH_INVARIANCE_TOLERANCE: dict[tuple[str, torch.dtype], float | None] = {
    ("cpu", torch.float32): 1e-6,
    ("cpu", torch.bfloat16): 1e-6,
    ("cuda", torch.float32): None,
    ("cuda", torch.bfloat16): None,
    ("cuda", torch.float16): None,
}

PhaseBLogits = Callable[[Sequence[int]], torch.Tensor]  # Phase B ids -> logits [Lb, vocab] fp32


def phase_b_logits_fn(view: LanguageModelView, cache, start_position: int) -> PhaseBLogits:
    """Phase B logits over a fresh copy of `cache` each call (the scorer's own Phase B)."""

    def run(ids: Sequence[int]) -> torch.Tensor:
        hidden = run_phase_b(view, clone_cache(cache), tuple(ids), 1, torch.tensor([start_position]))
        return view.logits(hidden[0])

    return run


@torch.inference_mode()
def causality_probe(phase_b_logits: PhaseBLogits, phase_b: Sequence[int], vocab_size: int) -> dict:
    """Perturb every Phase B position j >= 1 in turn; logits at positions < j must not move.

    Returns {"positions": n, "max_leak": largest change at an earlier position, "min_effect": smallest change
    at the perturbed position itself (> 0, else the probe proved nothing)}.
    """
    base = phase_b_logits(phase_b)
    max_leak, min_effect = 0.0, float("inf")
    for j in range(1, len(phase_b)):
        perturbed = list(phase_b)
        perturbed[j] = (perturbed[j] + 1 + j) % vocab_size
        if perturbed[j] == phase_b[j]:
            perturbed[j] = (perturbed[j] + 1) % vocab_size
        out = phase_b_logits(perturbed)
        max_leak = max(max_leak, float((out[:j] - base[:j]).abs().max()))
        min_effect = min(min_effect, float((out[j] - base[j]).abs().max()))
    return {"positions": len(phase_b) - 1, "max_leak": max_leak, "min_effect": min_effect}


def _layer0_doc_keys_after_rerotation(view: LanguageModelView, bos_id: int, sep, prefix, row: ScoringRow):
    """(re-rotated prefixed layer-0 doc keys, bare layer-0 doc keys). # each [1, kv_heads, D, head_dim]"""
    prefixed = layout_row(bos_id, sep, ScoringRow(tuple(prefix), row.doc_ids, row.query_ids, row.answer_ids))
    bare = layout_row(bos_id, sep, row)
    cache, pads, _ = run_phase_a(view, TWO_PHASE, [prefixed])
    moved = layers_of(select_and_rerotate(view, cache, pads, [prefixed]))[0][0][:, :, 1:, :]
    bare_cache, _, _ = run_phase_a(view, TWO_PHASE, [bare])
    reference = layers_of(bare_cache)[0][0][:, :, 1:, :]
    return moved, reference


def _rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude (inf on a shape mismatch)."""
    if got.shape != want.shape:
        return float("inf")
    return float((got - want).abs().max()) / (float(want.abs().max()) or 1.0)


def batch_invariance_tolerance(device: torch.device, dtype: torch.dtype) -> float:
    """The table entry for this device and dtype, or the dtype's per-token padding tolerance when unmeasured."""
    measured = BATCH_INVARIANCE_TOLERANCE.get((device.type, dtype))
    return measured if measured is not None else NLL_TOLERANCE.get(dtype, 0.25)


def probe_rows(doc_ids, query_ids, answer_ids, prefix_ids, buckets: ShapeBuckets) -> list[ScoringRow]:
    """Rows of two samples the worker would batch together: the probe doc and a shorter doc in the same Phase A
    bucket where one exists (so rows of different lengths and pads meet in one pass), each bare, bare_nl, prefixed
    and with half the prefix."""
    doc = tuple(int(i) for i in doc_ids)
    width = buckets.phase_a_width(1 + len(doc))
    cut = next((k for k in range(1, min(9, len(doc))) if buckets.phase_a_width(1 + len(doc) - k) == width), 1)
    other = doc[: len(doc) - cut]
    prefixes = [None, [], list(prefix_ids), list(prefix_ids[: max(1, len(prefix_ids) // 2)])]
    return [ScoringRow.of(p, d, query_ids, answer_ids) for d in (doc, other) for p in prefixes]


def batches_probe(view: LanguageModelView, bos_id: int, nl_ids, rows: list[ScoringRow], buckets: ShapeBuckets,
                  max_batch: int) -> dict:
    """(a) worker-shaped passes vs each row alone in its shape; (b) each row alone vs unpadded (EXACT)."""
    batched = score_rows(view, TWO_PHASE, bos_id, nl_ids, rows, max_batch=max_batch, buckets=buckets)
    alone = score_rows(view, TWO_PHASE, bos_id, nl_ids, rows, max_batch=1, buckets=buckets)
    exact = score_rows(view, TWO_PHASE, bos_id, nl_ids, rows, max_batch=1, buckets=EXACT)

    def worst(a, b) -> tuple[float, float]:
        diffs = [(torch.tensor(x.token_nlls) - torch.tensor(y.token_nlls)).abs() for x, y in zip(a, b)]
        return max(float(d.max()) for d in diffs), max(float(d.mean()) for d in diffs)

    invariance, _ = worst(batched, alone)
    padding_max, padding_mean = worst(alone, exact)
    dtype = view.dtype
    return {
        "rows": len(rows), "passes": len({s.chunk for s in batched}),
        "max_rows_per_pass": max(s.batch_size for s in batched), "padded_rows": sum(s.padded for s in alone),
        "invariance_max_abs_diff": invariance,
        "invariance_tolerance": batch_invariance_tolerance(view.device, dtype),
        "invariance_tolerance_measured": BATCH_INVARIANCE_TOLERANCE.get((view.device.type, dtype)) is not None,
        "padding_max_abs_diff": padding_max, "padding_mean_abs_diff": padding_mean,
        "padding_tolerance": NLL_TOLERANCE.get(dtype, 0.25), "padding_mean_tolerance": NLL_MEAN_TOLERANCE.get(dtype, 0.06),
    }


def _margin(measured: float, tolerance: float) -> dict:
    share = measured / tolerance if tolerance > 0 else (0.0 if measured == 0 else None)
    return {"measured": measured, "tolerance": tolerance, "share": share}


def _bare_cache(view: LanguageModelView, layout: RowLayout):
    cache, _, _ = run_phase_a(view, TWO_PHASE, [layout])
    return cache


@torch.inference_mode()
def self_check(
    model,
    bos_id: int,
    nl_ids: Sequence[int],
    doc_ids: Sequence[int],
    query_ids: Sequence[int],
    answer_ids: Sequence[int],
    prefix_ids: Sequence[int],
    *,
    phase_b_logits_factory: Callable[[LanguageModelView, object, int], PhaseBLogits] = phase_b_logits_fn,
    buckets: ShapeBuckets = DEFAULT_BUCKETS,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> dict:
    """Run the probes on a fixed short input, batched as the worker batches (`buckets`, `max_batch`);
    raise SelfCheckFailed if any fails."""
    view = view_of(model)
    dtype = view.dtype
    try:
        check_rope_supported(view)
    except TrackerError as error:
        raise SelfCheckFailed(f"self-check refused the model: {error}") from error
    sep = tuple(int(i) for i in nl_ids)
    row = ScoringRow.of(None, doc_ids, query_ids, answer_ids)
    layout = layout_row(int(bos_id), sep, row)

    nlls, final_cache = score_chunk_with_cache(view, TWO_PHASE, [layout])
    two_phase = nlls[0].float().cpu()
    ids, answer_start = whole_sequence(TWO_PHASE, layout)
    reference = single_pass_nlls(view.model, ids, answer_start).cpu()
    nll_diff = (two_phase - reference).abs()
    single_cache = new_phase_a_cache()
    view.text_model(input_ids=torch.tensor([ids], device=view.device), use_cache=True,
                    **cache_kwargs(view.text_model, single_cache))
    got_keys, want_keys = layers_of(final_cache)[0][0].float(), layers_of(single_cache)[0][0].float()
    positions = {"max_rel_diff": _rel_diff(got_keys, want_keys), "tolerance": KEY_TOLERANCE.get(dtype, 3e-2),
                 "entries": int(want_keys.shape[2])}
    bare = {"max_abs_diff": float(nll_diff.max()), "mean_abs_diff": float(nll_diff.mean()),
            "tolerance": NLL_TOLERANCE.get(dtype, 0.25), "n_tokens": int(nll_diff.numel())}

    cache = _bare_cache(view, layout)
    causality = causality_probe(
        phase_b_logits_factory(view, cache, 1 + layout.doc_len), layout.phase_b, view.vocab_size
    )
    causality["tolerance"] = 0.0 if view.device.type == "cpu" else 1e-3

    moved, expected = _layer0_doc_keys_after_rerotation(view, int(bos_id), sep, prefix_ids, row)
    rerotation = {"max_rel_diff": _rel_diff(moved.float(), expected.float()),
                  "tolerance": KEY_TOLERANCE.get(dtype, 3e-2), "prefix_len": len(prefix_ids)}
    batches = batches_probe(view, int(bos_id), sep, probe_rows(doc_ids, query_ids, answer_ids, prefix_ids, buckets),
                            buckets, max_batch)

    failures = []
    if bare["max_abs_diff"] > bare["tolerance"] or bare["mean_abs_diff"] > NLL_MEAN_TOLERANCE.get(dtype, 0.06):
        failures.append(f"bare two-phase differs from a single forward pass by {bare['max_abs_diff']:.3g} nats")
    if causality["max_leak"] > causality["tolerance"]:
        failures.append(f"a later Phase B token changed an earlier logit by {causality['max_leak']:.3g} (look-ahead)")
    if not causality["min_effect"] > 0:
        failures.append("perturbing a Phase B token did not change its own logits (probe is vacuous)")
    if got_keys.shape != want_keys.shape or positions["max_rel_diff"] > positions["tolerance"]:
        failures.append(f"layer-0 keys of the scored cache differ from a single pass by {positions['max_rel_diff']:.3g} "
                        "(wrong positions)")
    if rerotation["max_rel_diff"] > rerotation["tolerance"]:
        failures.append(f"re-rotated layer-0 doc keys differ from the bare run's by {rerotation['max_rel_diff']:.3g}")
    if batches["invariance_max_abs_diff"] > batches["invariance_tolerance"]:
        failures.append(f"rows batched as the worker batches differ from the same rows alone by "
                        f"{batches['invariance_max_abs_diff']:.3g} nats (batch invariance)")
    if (batches["padding_max_abs_diff"] > batches["padding_tolerance"]
            or batches["padding_mean_abs_diff"] > batches["padding_mean_tolerance"]):
        failures.append(f"padded rows differ from the same rows unpadded by {batches['padding_max_abs_diff']:.3g} "
                        "nats (a padding offset is wrong)")
    margins = {
        "bare_vs_single_pass": _margin(bare["max_abs_diff"], bare["tolerance"]),
        "bare_vs_single_pass_mean": _margin(bare["mean_abs_diff"], NLL_MEAN_TOLERANCE.get(dtype, 0.06)),
        "causality": _margin(causality["max_leak"], causality["tolerance"]),
        "positions": _margin(positions["max_rel_diff"], positions["tolerance"]),
        "rerotation": _margin(rerotation["max_rel_diff"], rerotation["tolerance"]),
        "batch_invariance": _margin(batches["invariance_max_abs_diff"], batches["invariance_tolerance"]),
        "padding": _margin(batches["padding_max_abs_diff"], batches["padding_tolerance"]),
        "padding_mean": _margin(batches["padding_mean_abs_diff"], batches["padding_mean_tolerance"]),
    }
    result = {"passed": not failures, "scorer_version": SCORER_VERSION, "dtype": str(dtype).removeprefix("torch."),
              "device": str(view.device), "bare_vs_single_pass": bare, "causality": causality,
              "positions": positions, "rerotation": rerotation, "batches": batches, "margins": margins,
              "buckets": buckets.describe(), "failures": failures}
    if failures:
        raise SelfCheckFailed(
            "scorer self-check failed on this model/dtype/device: " + "; ".join(failures),
            hint="this model family or dtype is not handled correctly by the decoder-only scorer; do not score "
            "with it (try --dtype float32 to tell precision from logic errors)",
        )
    return result
