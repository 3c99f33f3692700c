"""The causality probe and the start-up self-check: pass on good models, catch deliberately broken scorers."""
from __future__ import annotations

import json

import pytest
import torch

import workers.scoring.decoder as dec
import workers.scoring.kvcache as kvcache
from tracker.errors import SelfCheckFailed
from workers.scoring import SCORER_VERSION
from workers.scoring.decoder import ScoringRow, layout_row, run_phase_a, run_phase_b
from workers.scoring.kvcache import clone_cache
from workers.scoring.lm_view import view_of
from workers.scoring.selfcheck import causality_probe, phase_b_logits_fn, self_check
from workers.tiny import build_tiny, get_tiny

BOS, NL = 1, [14]

DECODERS = ["tiny-random-llama", "tiny-random-gemma3", "tiny-random-gemma3-mm"]


def enc(text: str) -> list[int]:
    return get_tiny("tiny-random-llama")[1](text, add_special_tokens=False)["input_ids"]


DOC = enc("The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall.")
QUERY, ANSWER, PREFIX = enc("When was it built?"), enc("In 1889."), enc("Extract the facts:")


def bare_cache(view):
    layout = layout_row(BOS, tuple(NL), ScoringRow.of(None, DOC, QUERY, ANSWER))
    cache, _, _ = run_phase_a(view, "two_phase", [layout])
    return layout, cache


def lookahead_logits_fn(view, cache, start_position: int):
    """A broken Phase B: the mask lets every token see the NEXT one (the seed's off-by-one bug)."""

    def run(ids):
        past, n = cache.get_seq_length(), len(ids)
        q = torch.arange(n)[:, None] + past
        k = torch.arange(past + n)[None, :]
        broken = (k <= q + 1)[None, None]  # [1, 1, q, kv] bool, as sdpa expects
        mask = {t: broken for t in set(view.layer_types)} if view.accepts_mask_mapping else broken
        hidden = run_phase_b(view, clone_cache(cache), tuple(ids), 1, torch.tensor([start_position]),
                             mask_override=mask)
        return view.logits(hidden[0])

    return run


@pytest.mark.parametrize("name", DECODERS)
def test_causality_probe_finds_no_leak_in_the_scorer(name):
    view = view_of(get_tiny(name)[0])
    layout, cache = bare_cache(view)
    result = causality_probe(phase_b_logits_fn(view, cache, 1 + layout.doc_len), layout.phase_b, view.vocab_size)
    assert result["positions"] == len(layout.phase_b) - 1
    assert result["max_leak"] == 0.0  # exactly
    assert result["min_effect"] > 1e-3


@pytest.mark.parametrize("name", DECODERS)
def test_causality_probe_catches_an_off_by_one_mask(name):
    view = view_of(get_tiny(name)[0])
    layout, cache = bare_cache(view)
    result = causality_probe(lookahead_logits_fn(view, cache, 1 + layout.doc_len), layout.phase_b, view.vocab_size)
    assert result["max_leak"] > 1e-3


@pytest.mark.parametrize("name", DECODERS)
def test_self_check_passes_on_good_models(name):
    result = self_check(get_tiny(name)[0], BOS, NL, DOC, QUERY, ANSWER, PREFIX)
    assert result["passed"] is True and result["failures"] == []
    assert result["scorer_version"] == SCORER_VERSION and result["dtype"] == "float32"
    assert result["bare_vs_single_pass"]["max_abs_diff"] < 1e-4
    assert result["bare_vs_single_pass"]["n_tokens"] == len(ANSWER)
    assert result["causality"]["max_leak"] == 0.0
    assert result["rerotation"]["max_rel_diff"] < 1e-4
    assert result["positions"]["max_rel_diff"] < 1e-4
    assert result["positions"]["entries"] == 1 + len(DOC) + 2 * len(NL) + len(QUERY) + len(ANSWER)


def test_self_check_refuses_a_lookahead_scorer():
    model = get_tiny("tiny-random-llama")[0]
    with pytest.raises(SelfCheckFailed, match="look-ahead"):
        self_check(model, BOS, NL, DOC, QUERY, ANSWER, PREFIX, phase_b_logits_factory=lookahead_logits_fn)


def test_self_check_refuses_phase_b_positions_off_by_one(monkeypatch):
    model = get_tiny("tiny-random-gemma3")[0]
    real = dec.run_phase_b

    def shifted(view, cache, phase_b, batch, start_positions, *args, **kwargs):
        return real(view, cache, phase_b, batch, start_positions + 1, *args, **kwargs)

    monkeypatch.setattr(dec, "run_phase_b", shifted)
    with pytest.raises(SelfCheckFailed, match="single forward pass") as info:
        self_check(model, BOS, NL, DOC, QUERY, ANSWER, PREFIX)
    assert "wrong positions" in str(info.value)


def test_bf16_self_check_passes_and_still_catches_a_position_offset(monkeypatch):
    """In bf16 NLL noise can hide a one-position offset; the layer-0 key probe does not."""
    model = build_tiny("tiny-random-llama")[0].to(torch.bfloat16)
    result = self_check(model, BOS, NL, DOC, QUERY, ANSWER, PREFIX)
    assert result["passed"] and result["dtype"] == "bfloat16"
    real = dec.run_phase_b
    monkeypatch.setattr(dec, "run_phase_b", lambda view, cache, ids, batch, starts, *a, **k: real(
        view, cache, ids, batch, starts + 1, *a, **k))
    with pytest.raises(SelfCheckFailed, match="wrong positions"):
        self_check(model, BOS, NL, DOC, QUERY, ANSWER, PREFIX)


def test_self_check_refuses_a_wrong_rotary_convention(monkeypatch):
    """Interleaved (GPT-J style) rotation instead of rotate_half: the layer-0 key probe must catch it."""
    model = get_tiny("tiny-random-llama")[0]

    def interleaved(keys, cos, sin):
        k = keys.float()
        swapped = torch.stack((-k[..., 1::2], k[..., ::2]), dim=-1).flatten(-2)
        return (k * cos + swapped * sin).to(keys.dtype)

    monkeypatch.setattr(kvcache, "rotate_keys", interleaved)
    with pytest.raises(SelfCheckFailed, match="re-rotated"):
        self_check(model, BOS, NL, DOC, QUERY, ANSWER, PREFIX)


def test_self_check_refuses_dynamic_rope():
    model, _ = build_tiny("tiny-random-llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(SelfCheckFailed, match="dynamic"):
        self_check(model, BOS, NL, DOC, QUERY, ANSWER, PREFIX)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gemma3"])
def test_self_check_refuses_selection_that_ignores_the_padding_offset(name, dtype, monkeypatch):
    model = get_tiny(name)[0] if dtype == torch.float32 else build_tiny(name)[0].to(dtype)
    good = self_check(model, BOS, NL, DOC, QUERY, ANSWER, PREFIX)
    assert good["batches"]["padded_rows"] > 0 and good["batches"]["max_rows_per_pass"] >= 2
    real = dec.doc_keep_indices  # the bug: select the doc entries as if Phase A had no left padding
    monkeypatch.setattr(dec, "doc_keep_indices", lambda pads, layouts, width: real(0 * pads, layouts, width))
    with pytest.raises(SelfCheckFailed, match="padding offset") as info:
        self_check(model, BOS, NL, DOC, QUERY, ANSWER, PREFIX)
    assert "single forward pass" not in str(info.value)  # only the batch probe sees it: the old probes run unpadded


def test_self_check_reports_margins_for_the_worker_row():
    result = self_check(get_tiny("tiny-random-gemma3")[0], BOS, NL, DOC, QUERY, ANSWER, PREFIX)
    margins = result["margins"]
    assert set(margins) >= {"bare_vs_single_pass", "causality", "positions", "rerotation", "batch_invariance",
                            "padding"}
    for margin in margins.values():
        assert set(margin) == {"measured", "tolerance", "share"}
        assert margin["share"] is not None and 0.0 <= margin["share"] < 1.0
    assert result["batches"]["invariance_max_abs_diff"] == 0.0  # CPU: bit-identical
    assert margins["batch_invariance"]["tolerance"] == 1e-6
    json.dumps(result, allow_nan=False)  # stored on the worker row as JSON


def test_unmeasured_devices_fall_back_to_the_padding_tolerance():
    from workers.scoring.selfcheck import NLL_TOLERANCE, batch_invariance_tolerance

    assert batch_invariance_tolerance(torch.device("cpu"), torch.bfloat16) == 1e-6
    assert batch_invariance_tolerance(torch.device("cuda", 0), torch.bfloat16) == NLL_TOLERANCE[torch.bfloat16]
