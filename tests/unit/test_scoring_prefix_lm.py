"""Prefix-LM specs on Llama-shaped models: the bidirectional mask lets the prefix see the doc.

`test_scoring_masks.py` proves the masks on Gemma 3 (dict of per-layer-type masks); this
adds the Llama path (one mask tensor), which plm01-plm03 run on in tests, and checks
plm01's stored scores: causal = decoder-only `full` (as its description says), bidir differs.
"""
from __future__ import annotations

import pytest
import torch
from helpers.dataset_fixtures import FIXTURES, drain
from sqlalchemy import select

from tracker.datasets import clear_cache  # noqa: E402
from tracker.db import get_engine, session_scope  # noqa: E402
from tracker.db.schema import Condition, Job, Sample, Score  # noqa: E402
from tracker.planning import enqueue  # noqa: E402
from tracker.planning.stages import condition_definition  # noqa: E402
from workers.backends import ScoreTask, get_backend  # noqa: E402
from workers.scoring.decoder import ScoringRow, layout_row, run_phase_a  # noqa: E402
from workers.scoring.kvcache import layers_of, new_phase_a_cache  # noqa: E402
from workers.scoring.lm_view import view_of  # noqa: E402
from workers.scoring.masks import phase_a_masks  # noqa: E402
from workers.tiny import get_tiny  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

BOS, NL = 1, 14


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(4, 260, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def first_prefix_key(model, mode: str, prefix: list[int], doc: list[int], layer: int = 1) -> torch.Tensor:
    """Key of the first prefix token (sequence index 1) in ``layer`` after Phase A."""
    layout = layout_row(BOS, (NL,), ScoringRow.of(prefix, doc, [5], [6]))
    cache, _, _ = run_phase_a(view_of(model), mode, [layout])
    return layers_of(cache)[layer][0][0, :, 1, :]  # [kv_heads, head_dim]


def test_llama_phase_a_mask_lets_the_first_prefix_token_see_the_last_doc_token_only_when_bidirectional():
    view = view_of(get_tiny("tiny-random-llama")[0])
    length = 1 + 4 + 1 + 30
    for bidirectional in (True, False):
        masks = phase_a_masks(view, batch=1, length=length, pads=torch.tensor([0]), bidirectional=bidirectional,
                              cache=new_phase_a_cache())
        mask = masks["full_attention"][0, 0]  # [q, k]
        assert bool(mask[1, length - 1]) is bidirectional  # first prefix token -> last doc token
        assert bool(mask[length - 1, 1])  # the other way is causal anyway
        assert not bool(mask[0, 1])  # the BOS never sees what follows it


def test_llama_prefix_keys_change_with_a_later_doc_token_only_under_bidir():
    model, _ = get_tiny("tiny-random-llama")
    prefix, doc = ids(4, 1), ids(30, 2)
    changed = list(doc)
    changed[-1] = (changed[-1] + 1) % 250 + 4  # the last doc token, 34 positions after the first prefix token
    for mode, sees in [("prefix_lm_bidir", True), ("prefix_lm_causal", False)]:
        a, b = first_prefix_key(model, mode, prefix, doc), first_prefix_key(model, mode, prefix, changed)
        assert (not torch.equal(a, b)) is sees, mode


def test_plm01_causal_scores_equal_decoder_only_full_and_bidir_scores_differ(sqlite_url):
    clear_cache()
    enqueue("plm01", db=sqlite_url, models=["tiny-random-llama"], limit=2, data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    drain(sqlite_url, model="tiny-random-llama")
    with session_scope(get_engine(sqlite_url)) as s:
        rows = s.execute(select(Score.nll, Job.id, Job.mode, Sample, Condition).join(Job, Job.id == Score.job_id)
                         .join(Sample, Sample.id == Job.sample_id)
                         .join(Condition, Condition.id == Job.condition_id)).all()
        stored = {(sample.id, cond.name, mode): nll for nll, _, mode, sample, cond in rows}
        tasks = [ScoreTask(job_id=job_id, mode="full", sample=sample.as_dict(),
                           condition=condition_definition(cond).as_dict())
                 for _, job_id, mode, sample, cond in rows if mode == "prefix_lm_causal"]
    assert len(tasks) == 2 * 4 and len(stored) == 2 * 4 * 2
    backend = get_backend("tiny-random-llama", "cpu")
    for task, result in zip(tasks, backend.score(tasks)):
        key = (task.sample["id"], task.condition["name"])
        assert result.nll_mean == pytest.approx(stored[(*key, "prefix_lm_causal")], abs=1e-5)
        assert abs(stored[(*key, "prefix_lm_bidir")] - stored[(*key, "prefix_lm_causal")]) > 1e-6
