"""Attention probing (ed07/ed08): shares equal a direct computation from output_attentions."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

from workers.scoring.encdec import (
    build_layout,
    decoder_start_id,
    parse_mode,
    random_query_ids,
    score_layouts,
)
from workers.scoring.probing import MERGED_TARGETS, SEPARATE_TARGETS, attention_masses
from workers.tiny import get_tiny

FAMILIES = {"tiny-random-t5": False, "tiny-random-bart": False, "tiny-random-t5gemma": True}  # name: merged
DOC = [70, 71, 72, 73, 74, 75]
QUERY = [80, 81, 82]
ANSWER = [90, 91, 92, 93]
PREFIX = [100, 101, 102, 103]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def eager_model(request):
    model = copy.deepcopy(get_tiny(request.param)[0])
    model.set_attn_implementation("eager")
    return request.param, model


def _layout(model, mode: str, prefix=PREFIX, random_ids=None):
    return build_layout(
        prefix_ids=prefix, doc_ids=DOC, query_ids=QUERY, answer_ids=ANSWER,
        start_id=decoder_start_id(model.config), mode=parse_mode(mode), random_ids=random_ids,
        encoder_lead=[1], encoder_trail=[2],
    )


def _layouts(model):
    rand = random_query_ids("probe", len(QUERY), 260, {0, 1, 2, 3})
    return [
        _layout(model, "encdec_q_probe"),
        _layout(model, "encdec_nq_probe", prefix=None),
        _layout(model, "encdec_rq_probe", prefix=[104], random_ids=rand),
        _layout(model, "encdec_q_visible_probe"),
    ]


@torch.no_grad()
def _direct_attentions(model, layout):
    """One unbatched forward with output_attentions, built without the scorer's helpers."""
    enc = torch.tensor([layout.encoder_ids])
    hidden = model.get_encoder()(input_ids=enc, attention_mask=torch.ones_like(enc)).last_hidden_state
    cross_mask = torch.ones_like(enc)
    if layout.hide_prefix:
        cross_mask[0, layout.prefix_span[0]: layout.prefix_span[1]] = 0
    out = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=cross_mask,
                decoder_input_ids=torch.tensor([layout.decoder_ids]), output_attentions=True)
    return out.decoder_attentions, out.cross_attentions


def _expected_rows(model, layout, merged: bool) -> dict[tuple, float]:
    """Shares by explicit loops over layers, answer tokens and heads."""
    self_attn, cross_attn = _direct_attentions(model, layout)
    n_layers, n_heads = len(self_attn), self_attn[0].shape[1]
    dec_cols = {
        "start": [0],
        "query": list(range(*layout.middle_span)),
        "answer": list(range(*layout.answer_span)),
    }
    prefix = list(range(*layout.prefix_span))
    enc_cols = {"prefix": prefix, "doc": [k for k in range(len(layout.encoder_ids)) if k not in prefix]}
    dec_cols["decoder"] = list(range(len(layout.decoder_ids)))
    enc_cols["encoder"] = list(range(len(layout.encoder_ids)))
    targets = MERGED_TARGETS if merged else SEPARATE_TARGETS
    expected: dict[tuple, float] = {}
    for softmax, target in targets:
        per_layer = []
        for layer in range(n_layers):
            shares = []
            for position, row in enumerate(layout.predicting_positions):
                total = 0.0
                for head in range(n_heads):
                    if target in dec_cols:
                        total += sum(float(self_attn[layer][0, head, row, k]) for k in dec_cols[target])
                    else:
                        total += sum(float(cross_attn[layer][0, head, row, k]) for k in enc_cols[target])
                shares.append(total / n_heads)
                expected[(layer, position, softmax, target)] = total / n_heads
            per_layer.append(shares)
        for position in range(len(ANSWER)):
            expected[(-1, position, softmax, target)] = sum(s[position] for s in per_layer) / n_layers
    return expected


def test_shares_equal_a_direct_computation_from_output_attentions(eager_model):
    name, model = eager_model
    merged = FAMILIES[name]
    layouts = _layouts(model)
    scores = score_layouts(model, layouts, pad_id=0, probe=True)  # one right-padded batch
    for layout, score in zip(layouts, scores):
        expected = _expected_rows(model, layout, merged)
        got = {(r["layer"], r["position"], r["softmax"], r["target"]): r["share"] for r in score.attention}
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-5), key


def test_row_count_and_softmax_labels(eager_model):
    name, model = eager_model
    score = score_layouts(model, [_layout(model, "encdec_q_probe")], pad_id=0, probe=True)[0]
    n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    targets = MERGED_TARGETS if FAMILIES[name] else SEPARATE_TARGETS
    assert len(score.attention) == (n_layers + 1) * len(ANSWER) * len(targets)
    expected_softmaxes = {"merged"} if FAMILIES[name] else {"self", "cross"}
    assert {row["softmax"] for row in score.attention} == expected_softmaxes


def test_t5gemma2_cross_plus_self_is_one_per_answer_token_and_head():
    model = copy.deepcopy(get_tiny("tiny-random-t5gemma")[0])
    model.set_attn_implementation("eager")
    for layout in _layouts(model):
        self_attn, cross_attn = _direct_attentions(model, layout)
        masses = attention_masses(torch.stack(self_attn)[:, 0], torch.stack(cross_attn)[:, 0], layout, merged=True)
        decoder, encoder = masses[("merged", "decoder")], masses[("merged", "encoder")]  # [layers, heads, n_answer]
        assert decoder.shape == (2, 4, len(ANSWER))
        assert torch.allclose(decoder + encoder, torch.ones_like(decoder), atol=1e-5)
        parts = masses[("merged", "start")] + masses[("merged", "query")] + masses[("merged", "answer")]
        assert torch.allclose(parts, decoder, atol=1e-6)
        assert torch.allclose(masses[("merged", "prefix")] + masses[("merged", "doc")], encoder, atol=1e-6)
        assert 0.0 < float(encoder.min()) and float(encoder.max()) < 1.0


@pytest.mark.parametrize("name", ["tiny-random-t5", "tiny-random-bart"])
def test_separate_softmaxes_each_sum_to_one(name):
    model = copy.deepcopy(get_tiny(name)[0])
    model.set_attn_implementation("eager")
    layout = _layout(model, "encdec_q_visible_probe")
    self_attn, cross_attn = _direct_attentions(model, layout)
    masses = attention_masses(torch.stack(self_attn)[:, 0], torch.stack(cross_attn)[:, 0], layout, merged=False)
    self_total = masses[("self", "start")] + masses[("self", "query")] + masses[("self", "answer")]
    cross_total = masses[("cross", "prefix")] + masses[("cross", "doc")]
    assert torch.allclose(self_total, torch.ones_like(self_total), atol=1e-5)
    assert torch.allclose(cross_total, torch.ones_like(cross_total), atol=1e-5)


def test_hidden_prefix_gets_exactly_zero_cross_share_and_visible_does_not(eager_model):
    name, model = eager_model
    hidden, visible = score_layouts(
        model, [_layout(model, "encdec_q_probe"), _layout(model, "encdec_q_visible_probe")], pad_id=0, probe=True
    )
    prefix_hidden = [r["share"] for r in hidden.attention if r["target"] == "prefix"]
    prefix_visible = [r["share"] for r in visible.attention if r["target"] == "prefix"]
    assert prefix_hidden and all(share == 0.0 for share in prefix_hidden)
    assert min(prefix_visible) > 0.0


def test_no_query_decoder_puts_no_mass_on_query_and_first_answer_token_none_on_answer(eager_model):
    _, model = eager_model
    score = score_layouts(model, [_layout(model, "encdec_nq_probe")], pad_id=0, probe=True)[0]
    assert all(r["share"] == 0.0 for r in score.attention if r["target"] == "query")
    assert all(r["share"] == 0.0 for r in score.attention if r["target"] == "answer" and r["position"] == 0)


def test_probe_nll_equals_sdpa_nll(eager_model):
    name, model = eager_model
    layouts = _layouts(model)
    probed = score_layouts(model, layouts, pad_id=0, probe=True)
    plain = score_layouts(get_tiny(name)[0], layouts, pad_id=0)
    for a, b in zip(probed, plain):
        assert a.token_nlls == pytest.approx(b.token_nlls, abs=1e-5)
        assert b.attention is None


def test_probing_with_sdpa_is_refused():
    model = get_tiny("tiny-random-t5")[0]
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="eager"):
        score_layouts(model, [_layout(model, "encdec_q_probe")], pad_id=0, probe=True)
