"""ed08's probing runs, end to end: the stored ``attention_shares`` equal a direct computation.

For every probing score a worker stored, the test rebuilds the encoder and decoder inputs
from the stored sample and condition (not from the scorer's layout code), runs the tiny
model once with eager attention and ``output_attentions``, sums the weights of each answer
token's predicting position over each target by explicit loops, and compares with every
stored row (each layer and the layer mean, each answer position, each target).
"""
from __future__ import annotations

import copy
import statistics
from collections import defaultdict

import pytest
import torch
from helpers.dataset_fixtures import FIXTURES, drain
from sqlalchemy import select
from transformers.modeling_outputs import BaseModelOutput

from tracker.conditions import build_prefix_ids, special_ids  # noqa: E402
from tracker.datasets import clear_cache  # noqa: E402
from tracker.db import get_engine, session_scope  # noqa: E402
from tracker.db.schema import AttentionShare, Condition, Job, Sample, Score  # noqa: E402
from tracker.planning import enqueue  # noqa: E402
from tracker.planning.stages import condition_definition  # noqa: E402
from workers.tiny import build_tiny_tokenizer, get_tiny  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

LIMIT = 2
FAMILIES = {"tiny-random-t5": False, "tiny-random-bart": False, "tiny-random-t5gemma": True}  # name: merged softmax



def run_ed08(url: str, model: str) -> None:
    clear_cache()
    enqueue("ed08", db=url, models=[model], limit=LIMIT, data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    drain(url, model=model)


def wrapping(tokenizer) -> tuple[list[int], list[int]]:
    plain = tokenizer("probe text", add_special_tokens=False)["input_ids"]
    full = tokenizer("probe text")["input_ids"]
    start = next(i for i in range(len(full)) if full[i: i + len(plain)] == plain)
    return full[:start], full[start + len(plain):]


def start_token(config) -> int:
    return config.decoder.bos_token_id if config.model_type == "t5gemma2" else config.decoder_start_token_id


@torch.no_grad()
def direct_shares(model, score: Score, sample: dict, condition: dict, mode: str, merged: bool):
    """(expected rows {(layer, position, softmax, target): share}, per-head decoder+encoder mass, answer NLLs)."""
    tok = build_tiny_tokenizer()
    ids = {k: tok(sample[k], add_special_tokens=False)["input_ids"] for k in ("doc", "query", "answer")}
    prefix = build_prefix_ids(condition, sample, tok) or []
    lead, trail = wrapping(tok)
    encoder = lead + prefix + ids["doc"] + trail
    middle = {"encdec_nq_probe": [], "encdec_q_probe": ids["query"]}.get(mode)
    if mode == "encdec_rq_probe":
        middle = score.extras["random_query_ids"]
    decoder = [start_token(model.config)] + middle + ids["answer"]
    enc = torch.tensor([encoder])
    hidden = model.get_encoder()(input_ids=enc, attention_mask=torch.ones_like(enc)).last_hidden_state
    cross_mask = torch.ones_like(enc)
    cross_mask[0, len(lead): len(lead) + len(prefix)] = 0  # every ed08 mode hides the prefix from the decoder
    out = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=cross_mask,
                decoder_input_ids=torch.tensor([decoder]), output_attentions=True)
    self_attn, cross_attn = out.decoder_attentions, out.cross_attentions  # per layer [1, heads, dec, dec|enc]
    answer_start = 1 + len(middle)
    dec_groups = {"start": [0], "query": list(range(1, answer_start)),
                  "answer": list(range(answer_start, len(decoder))), "decoder": list(range(len(decoder)))}
    prefix_cols = list(range(len(lead), len(lead) + len(prefix)))
    enc_groups = {"prefix": prefix_cols, "doc": [k for k in range(len(encoder)) if k not in prefix_cols],
                  "encoder": list(range(len(encoder)))}
    targets = (["start", "query", "answer", "decoder", "prefix", "doc", "encoder"] if merged
               else ["start", "query", "answer", "prefix", "doc"])
    n_layers, n_heads = len(self_attn), self_attn[0].shape[1]
    expected, head_totals = {}, []
    for position, row in enumerate(range(answer_start - 1, len(decoder) - 1)):  # the predicting positions
        for target in targets:
            softmax = "merged" if merged else ("self" if target in dec_groups else "cross")
            per_layer = []
            for layer in range(n_layers):
                attn, cols = ((self_attn, dec_groups[target]) if target in dec_groups else (cross_attn, enc_groups[target]))
                heads = [float(attn[layer][0, h, row, cols].sum()) for h in range(n_heads)]
                per_layer.append(sum(heads) / n_heads)
                expected[(layer, position, softmax, target)] = per_layer[-1]
            expected[(-1, position, softmax, target)] = sum(per_layer) / n_layers
        for layer in range(n_layers):
            for h in range(n_heads):
                head_totals.append(float(self_attn[layer][0, h, row].sum() + cross_attn[layer][0, h, row].sum()))
    log_probs = torch.log_softmax(out.logits[0].float(), dim=-1)
    nlls = [-float(log_probs[t - 1, decoder[t]]) for t in range(answer_start, len(decoder))]
    return expected, head_totals, nlls


def check_stored_shares(url: str, name: str) -> int:
    """Compare every stored probing score with the direct computation; returns how many were checked."""
    merged = FAMILIES[name]
    model = copy.deepcopy(get_tiny(name)[0])
    model.set_attn_implementation("eager")
    checked = 0
    with session_scope(get_engine(url)) as s:
        rows = s.execute(select(Score, Job.mode, Sample, Condition).join(Job, Job.id == Score.job_id)
                         .join(Sample, Sample.id == Job.sample_id).join(Condition, Condition.id == Job.condition_id)).all()
        shares = defaultdict(dict)
        for r in s.scalars(select(AttentionShare)):
            shares[r.score_id][(r.layer, r.position, r.softmax, r.target)] = r.share
        for score, mode, sample, condition in rows:
            sample_d = sample.as_dict()
            cond_d = condition_definition(condition).as_dict()
            expected, head_totals, nlls = direct_shares(model, score, sample_d, cond_d, mode, merged)
            stored = shares[score.id]
            assert stored.keys() == expected.keys(), (mode, condition.name)
            for key, value in expected.items():
                assert stored[key] == pytest.approx(value, abs=1e-5), (mode, condition.name, key)
            assert score.nll == pytest.approx(statistics.fmean(nlls), abs=1e-5)
            if merged:  # one softmax over decoder and encoder positions: cross + self = 1 per token and head
                assert head_totals and all(abs(t - 1.0) < 1e-5 for t in head_totals)
                for (layer, position, softmax, target), value in stored.items():
                    if target == "decoder":
                        assert value + stored[(layer, position, softmax, "encoder")] == pytest.approx(1.0, abs=1e-5)
            if mode == "encdec_rq_probe":
                random_ids = score.extras["random_query_ids"]
                assert len(random_ids) == len(score.query_ids) and not set(random_ids) & special_ids(build_tiny_tokenizer())
            checked += 1
    return checked


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_ed08_stored_attention_shares_equal_a_direct_computation(sqlite_url, name):
    run_ed08(sqlite_url, name)
    assert check_stored_shares(sqlite_url, name) == LIMIT * 2 * 3


@pytest.mark.postgres
def test_ed08_attention_shares_on_postgres_t5gemma(pg_url):
    run_ed08(pg_url, "tiny-random-t5gemma")
    assert check_stored_shares(pg_url, "tiny-random-t5gemma") == LIMIT * 2 * 3
