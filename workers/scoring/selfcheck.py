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

`self_check` raises `SelfCheckFailed` naming the failed probe; it returns a JSON-able dict
recorded on the worker row.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tracker.catalogue.modes import TWO_PHASE
from tracker.errors import SelfCheckFailed, TrackerError
from workers.scoring import SCORER_VERSION
from workers.scoring.decoder import (
    RowLayout,
    ScoringRow,
    layout_row,
    run_phase_a,
    run_phase_b,
    score_chunk_with_cache,
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
) -> dict:
    """Run the probes on a fixed short input; raise SelfCheckFailed if any fails."""
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
    view.text_model(input_ids=torch.tensor([ids], device=view.device), cache=single_cache, use_cache=True)
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
    result = {"passed": not failures, "scorer_version": SCORER_VERSION, "dtype": str(dtype).removeprefix("torch."),
              "device": str(view.device), "bare_vs_single_pass": bare, "causality": causality,
              "positions": positions, "rerotation": rerotation, "failures": failures}
    if failures:
        raise SelfCheckFailed(
            "scorer self-check failed on this model/dtype/device: " + "; ".join(failures),
            hint="this model family or dtype is not handled correctly by the decoder-only scorer; do not score "
            "with it (try --dtype float32 to tell precision from logic errors)",
        )
    return result
