"""Invariants of the decoder-only scorer on tiny random Llama and Gemma 3 (text + multimodal), CPU fp32."""
from __future__ import annotations

import pytest
import torch

import workers.scoring.decoder as dec
from tracker.errors import EmptyAnswerError, InputTooLongError
from workers.backends.memory import AdaptiveBatchSize
from workers.scoring.buckets import DEFAULT_BUCKETS, EXACT, LengthLadder
from workers.scoring.compat import cache_keyword, cache_kwargs
from workers.scoring.decoder import (
    ScoringRow,
    layout_row,
    run_phase_a,
    score_rows,
    score_two_phase,
    select_and_rerotate,
    single_pass_nlls,
    whole_sequence,
)
from workers.scoring.kvcache import layers_of
from workers.tiny import TINY_SLIDING_WINDOW, build_tiny, get_tiny

BOS, NL = 1, 14  # tiny tokenizer: <bos> and the "\n" byte

DECODERS = ["tiny-random-llama", "tiny-random-gemma3", "tiny-random-gemma3-mm"]


def rand_ids(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, 260, (n,), generator=gen).tolist()


DOC, QUERY, ANSWER = rand_ids(40, 1), rand_ids(7, 2), rand_ids(6, 3)
LONG_DOC = rand_ids(3 * TINY_SLIDING_WINDOW + 5, 4)  # longer than Gemma 3's tiny window
PREFIXES = {"p6": rand_ids(6, 5), "p6b": rand_ids(6, 6), "p3": rand_ids(3, 7), "p11": rand_ids(11, 8)}


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


def reference(model, mode: str, prefix, doc=DOC) -> torch.Tensor:
    layout = layout_row(BOS, (NL,), ScoringRow.of(prefix, doc, QUERY, ANSWER))
    ids, start = whole_sequence(mode, layout)
    return single_pass_nlls(model, ids, start)


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("doc", [DOC, LONG_DOC], ids=["doc40", "doc_longer_than_window"])
def test_bare_two_phase_equals_single_forward(name, doc):
    model, _ = get_tiny(name)
    score = score_two_phase(model, BOS, NL, None, doc, QUERY, ANSWER)
    assert len(score.token_nlls) == len(ANSWER)
    assert max_diff(score.token_nlls, reference(model, "two_phase", None, doc)) < 1e-4


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("mode", ["full", "prefix_lm_causal"])
@pytest.mark.parametrize("prefix", [None, [], PREFIXES["p6"]], ids=["bare", "bare_nl", "prefixed"])
def test_full_and_causal_prefix_lm_equal_single_forward(name, mode, prefix):
    model, _ = get_tiny(name)
    score = score_two_phase(model, BOS, NL, prefix, LONG_DOC, QUERY, ANSWER, mode=mode)
    assert max_diff(score.token_nlls, reference(model, mode, prefix, LONG_DOC)) < 1e-4


def test_phase_ids_follow_the_documented_layout():
    layout = layout_row(BOS, (NL,), ScoringRow.of([7, 8], [20, 21, 22], [30], [40, 41]))
    assert layout.phase_a == (BOS, 7, 8, NL, 20, 21, 22)
    assert layout.phase_b == (NL, 30, NL, 40, 41)
    assert (layout.doc_start, layout.shift, layout.answer_start) == (4, 3, 3)
    bare = layout_row(BOS, (NL,), ScoringRow.of(None, [20, 21, 22], [30], [40, 41]))
    assert bare.phase_a == (BOS, 20, 21, 22) and bare.shift == 0
    bare_nl = layout_row(BOS, (NL,), ScoringRow.of([], [20, 21, 22], [30], [40, 41]))
    assert bare_nl.phase_a == (BOS, NL, 20, 21, 22) and bare_nl.shift == 1


ONE_LAYER = [
    ("tiny-random-llama", {}),
    ("tiny-random-gemma3", {"layer_types": ["sliding_attention"]}),
    ("tiny-random-gemma3", {"layer_types": ["full_attention"]}),
    ("tiny-random-gemma3-mm", {"layer_types": ["full_attention"]}),
]


@pytest.mark.parametrize(("name", "overrides"), ONE_LAYER, ids=["llama", "gemma3-sliding", "gemma3-full", "gemma3-mm"])
def test_one_layer_prefixed_equals_bare(name, overrides):
    """With one layer the doc's keys/values cannot depend on the prefix: any difference is a selection/rotation bug."""
    model, _ = build_tiny(name, num_hidden_layers=1, **overrides)
    bare = score_two_phase(model, BOS, NL, None, LONG_DOC, QUERY, ANSWER).token_nlls
    for prefix in [[], *PREFIXES.values()]:
        prefixed = score_two_phase(model, BOS, NL, prefix, LONG_DOC, QUERY, ANSWER).token_nlls
        assert max_diff(prefixed, bare) < 1e-5, f"prefix of {len(prefix)} tokens moved the one-layer NLL"


@pytest.mark.parametrize(("name", "overrides"), ONE_LAYER[:3], ids=["llama", "gemma3-sliding", "gemma3-full"])
def test_one_layer_test_detects_missing_rerotation(name, overrides, monkeypatch):
    model, _ = build_tiny(name, num_hidden_layers=1, **overrides)
    bare = score_two_phase(model, BOS, NL, None, DOC, QUERY, ANSWER).token_nlls
    monkeypatch.setattr(dec, "rerotate_span", lambda view, layers, start, deltas: layers)
    unrotated = score_two_phase(model, BOS, NL, PREFIXES["p6"], DOC, QUERY, ANSWER).token_nlls
    assert max_diff(unrotated, bare) > 1e-3


@pytest.mark.parametrize("name", DECODERS)
def test_layer0_doc_keys_after_rerotation_equal_bare(name):
    model, _ = get_tiny(name)
    view = dec.view_of(model)
    bare = layout_row(BOS, (NL,), ScoringRow.of(None, LONG_DOC, QUERY, ANSWER))
    bare_cache, _, _ = run_phase_a(view, "two_phase", [bare])
    expected = layers_of(bare_cache)[0]
    for prefix in PREFIXES.values():
        layout = layout_row(BOS, (NL,), ScoringRow.of(prefix, LONG_DOC, QUERY, ANSWER))
        cache, pads, _ = run_phase_a(view, "two_phase", [layout])
        moved = layers_of(select_and_rerotate(view, cache, pads, [layout]))
        assert all(k.shape[2] == 1 + len(LONG_DOC) for k, _ in moved)
        assert max_diff(moved[0][0], expected[0]) < 1e-4  # keys, re-rotated
        assert max_diff(moved[0][1], expected[1]) < 1e-5  # values, never rotated


@pytest.mark.parametrize("name", DECODERS)
def test_scores_differ_between_conditions_on_a_deep_model(name):
    """Sanity: the invariants above are not vacuous; on a multi-layer model prefixes do move the NLL."""
    model, _ = get_tiny(name)
    bare = score_two_phase(model, BOS, NL, None, DOC, QUERY, ANSWER).token_nlls
    prefixed = score_two_phase(model, BOS, NL, PREFIXES["p6"], DOC, QUERY, ANSWER).token_nlls
    assert max_diff(bare, prefixed) > 1e-4


def rows_for(prefixes, doc=DOC):
    return [ScoringRow.of(p, doc, QUERY, ANSWER) for p in prefixes]


OTHER_QUERY, OTHER_ANSWER = rand_ids(9, 12), rand_ids(4, 13)


def cross_sample_rows() -> list[ScoringRow]:
    """Rows of three samples (docs of 40, 42 and 53 tokens): bare, bare_nl and prefixes of 3, 6, 6 and 11 tokens."""
    docs = [(DOC, QUERY, ANSWER), (rand_ids(42, 14), OTHER_QUERY, OTHER_ANSWER), (LONG_DOC, QUERY, ANSWER)]
    prefixes = [None, [], PREFIXES["p3"], PREFIXES["p6"], PREFIXES["p6b"], PREFIXES["p11"]]
    return [ScoringRow.of(p, d, q, a) for d, q, a in docs for p in prefixes]


def model_in(name: str, dtype: torch.dtype):
    return get_tiny(name)[0] if dtype == torch.float32 else build_tiny(name)[0].to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("mode", ["two_phase", "full", "prefix_lm_causal", "prefix_lm_bidir"])
def test_batched_rows_equal_their_rows_alone(name, mode, dtype):
    """Batch invariance: a row's per-token NLLs do not depend on the rows that share its pass (CPU: exactly)."""
    model = model_in(name, dtype)
    rows = cross_sample_rows()
    batched = score_rows(model, mode, BOS, NL, rows, max_batch=16)
    alone = score_rows(model, mode, BOS, NL, rows, max_batch=1)
    assert all(s.batch_size == 1 for s in alone)
    assert max(s.batch_size for s in batched) >= 3 and any(s.padded for s in batched)
    assert len({s.chunk for s in batched}) < len(rows) / 2  # rows of several samples and lengths share passes
    for b, s in zip(batched, alone):
        assert b.shape == s.shape
        assert max_diff(b.token_nlls, s.token_nlls) <= 1e-6


@pytest.mark.parametrize("mode", ["two_phase", "prefix_lm_bidir"])
def test_bucketed_and_exact_shapes_agree_in_fp32(mode):
    """Padding to a bucket changes nothing but rounding: fp32 scores equal the unpadded ones."""
    model, _ = get_tiny("tiny-random-gemma3")
    rows = cross_sample_rows()
    bucketed = score_rows(model, mode, BOS, NL, rows)
    exact = score_rows(model, mode, BOS, NL, rows, buckets=EXACT)
    assert not any(s.padded for s in exact)
    for e in exact:  # exact shapes: every pass holds rows of one length only
        assert (e.shape.phase_a, e.shape.phase_b) == (len(e.phase_a_ids), len(e.phase_b_ids))
    for b, e in zip(bucketed, exact):
        assert max_diff(b.token_nlls, e.token_nlls) < 1e-5


def test_length_ladder_pads_by_at_most_one_step_per_octave():
    ladder = LengthLadder(steps=8, min_step=4)
    for n in range(1, 3000):
        w = ladder.width(n)
        assert w >= n and ladder.width(w) == w
        if n >= 32:
            assert (w - n) / n <= 1 / 8
    assert [ladder.width(n) for n in (1, 5, 41, 255, 256, 257, 400)] == [4, 8, 44, 256, 256, 288, 416]


def test_pass_shape_depends_on_the_row_alone():
    layouts = [layout_row(BOS, (NL,), row) for row in cross_sample_rows()]
    shapes = [dec.pass_shape("two_phase", lay, DEFAULT_BUCKETS) for lay in layouts]
    for lay, shape in zip(layouts, shapes):
        assert shape.phase_a >= len(lay.phase_a) and shape.cache >= 1 + lay.doc_len
        assert shape.phase_b >= len(lay.phase_b)
    groups = dec.plan_groups(shapes)
    assert sorted(i for g in groups for i in g) == list(range(len(layouts)))
    assert all(len({shapes[i] for i in g}) == 1 for g in groups)


def test_rows_of_different_samples_share_a_pass_when_their_shapes_match():
    model, _ = get_tiny("tiny-random-llama")
    rows = [ScoringRow.of(None, DOC, QUERY, ANSWER), ScoringRow.of(None, rand_ids(42, 14), OTHER_QUERY, OTHER_ANSWER)]
    scores = score_rows(model, "two_phase", BOS, NL, rows)
    assert [s.batch_size for s in scores] == [2, 2] and scores[0].chunk == scores[1].chunk
    for score, row in zip(scores, rows):
        layout = layout_row(BOS, (NL,), row)
        assert max_diff(score.token_nlls, single_pass_nlls(model, *whole_sequence("two_phase", layout))) < 1e-4


def test_oom_splits_the_failing_batch_and_grows_back(monkeypatch):
    model, _ = get_tiny("tiny-random-llama")
    rows = rows_for([rand_ids(6, s) for s in range(10, 26)])  # 16 rows of one shape
    expected = score_rows(model, "two_phase", BOS, NL, rows, max_batch=1)
    real = dec.score_chunk
    sizes = []

    def flaky(view, mode, layouts, *args):
        sizes.append(len(layouts))
        if len(sizes) <= 2:  # memory pressure for the first two passes only
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(view, mode, layouts, *args)

    monkeypatch.setattr(dec, "score_chunk", flaky)
    budget = AdaptiveBatchSize(8, grow_after=4)
    scores = score_rows(model, "two_phase", BOS, NL, rows, budget=budget)
    assert sizes == [8, 4, 2, 2, 2, 2, 4, 4] and budget.size == 4 and budget.ooms == 2
    assert [s.batch_size for s in scores] == [2] * 8 + [4] * 8
    for got, want in zip(scores, expected):
        assert got.token_nlls == want.token_nlls  # batch invariance makes the split invisible


def test_empty_answer_is_refused():
    model, _ = get_tiny("tiny-random-llama")
    with pytest.raises(EmptyAnswerError):
        score_two_phase(model, BOS, NL, None, DOC, QUERY, [])


def test_too_long_input_names_the_doc_budget():
    model, _ = build_tiny("tiny-random-llama", max_position_embeddings=48)
    with pytest.raises(InputTooLongError, match="doc token budget"):
        score_two_phase(model, BOS, NL, PREFIXES["p6"], DOC, QUERY, ANSWER)


def test_a_forward_that_ignores_the_cache_is_caught(monkeypatch):
    """transformers ignores unknown kwargs: a misspelt cache argument must not silently score without the doc."""
    model, _ = get_tiny("tiny-random-llama")
    view = dec.view_of(model)
    real_forward = view.text_model.forward

    keyword = cache_keyword(view.text_model)

    def misspelt(*args, **kwargs):
        return real_forward(*args, kv_cache=kwargs.pop(keyword, None), **kwargs)

    monkeypatch.setattr(view.text_model, "forward", misspelt)
    with pytest.raises(RuntimeError, match="KV cache holds"):
        score_rows(view, "two_phase", BOS, NL, rows_for([None]))


def test_multimodal_wrapper_scores_like_its_own_forward():
    """Gemma3ForConditionalGeneration is scored through its language model + lm_head."""
    model, _ = get_tiny("tiny-random-gemma3-mm")
    view = dec.view_of(model)
    assert view.text_model is model.model.language_model and view.lm_head is model.lm_head
    assert view.layer_types == ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def test_phase_a_cache_keeps_every_entry_on_sliding_layers():
    """Gemma 3's config-aware cache keeps only window-1 entries on sliding layers; our Phase A cache keeps all."""
    from transformers import DynamicCache

    model, _ = get_tiny("tiny-random-gemma3")
    view = dec.view_of(model)
    layout = layout_row(BOS, (NL,), ScoringRow.of(PREFIXES["p6"], LONG_DOC, QUERY, ANSWER))
    cache, _, _ = run_phase_a(view, "two_phase", [layout])
    assert [k.shape[2] for k, _ in layers_of(cache)] == [len(layout.phase_a)] * view.num_layers
    with torch.inference_mode():
        config_cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([layout.phase_a]), use_cache=True, **cache_kwargs(model, config_cache))
    sliding = [k.shape[2] for (k, _), t in zip(layers_of(config_cache), view.layer_types) if t == "sliding_attention"]
    assert max(sliding) < len(layout.phase_a)  # the pitfall this scorer avoids


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gemma3"])
def test_eager_attention_scores_like_sdpa(name):
    """Probing runs load models with eager attention, whose masks are additive floats, not booleans."""
    sdpa, _ = get_tiny(name)
    eager, _ = build_tiny(name)
    eager.set_attn_implementation("eager")
    mixed = rows_for([None, [], PREFIXES["p3"], PREFIXES["p11"]], LONG_DOC)
    for mode in ["two_phase", "prefix_lm_bidir"]:
        want = score_rows(sdpa, mode, BOS, NL, mixed, max_batch=1)
        got = score_rows(eager, mode, BOS, NL, mixed)
        assert any(g.padded for g in got)
        for g, w in zip(got, want):
            assert max_diff(g.token_nlls, w.token_nlls) < 1e-4
