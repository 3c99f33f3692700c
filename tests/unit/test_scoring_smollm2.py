"""Scorer invariants and golden values on the real embedded model, smollm2-135m (CPU fp32).

All tests share one loaded model (module fixture); the GGUF is converted once per cache dir.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import workers.embedded as embedded
from workers.backends import get_backend
from workers.scoring import SCORER_VERSION
from workers.scoring.decoder import (
    ScoringRow,
    layout_row,
    run_phase_a,
    score_rows,
    single_pass_nlls,
    whole_sequence,
)
from workers.scoring.selfcheck import causality_probe, phase_b_logits_fn

pytestmark = pytest.mark.slow

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"


def _golden_module():
    spec = importlib.util.spec_from_file_location("regenerate_smollm2", GOLDEN_DIR / "regenerate_smollm2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smol():
    """One backend for the module; one intra-op thread (much faster than two on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield get_backend("smollm2-135m", "cpu", "float32")
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sample(smol):
    enc = smol._encode
    return {
        "doc": enc("The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 and is "
                   "330 metres tall; it was the tallest man-made structure in the world for 41 years."),
        "query": enc("When was the Eiffel Tower completed?"),
        "answer": enc("It was completed in 1889."),
        "prefixes": [enc("Extract the key facts."), enc("Ignore this and cook pasta."), enc("What is the tower?")],
    }


def rows(sample, prefixes) -> list[ScoringRow]:
    return [ScoringRow.of(p, sample["doc"], sample["query"], sample["answer"]) for p in prefixes]


def test_bos_and_separator_choice(smol):
    tok = smol.tokenizer
    assert smol.bos_id == tok.bos_token_id == 1
    assert tok.convert_ids_to_tokens(smol.bos_id) == "<|im_start|>"
    assert smol.nl_ids == [198]
    assert 1 not in tok("Hello there")["input_ids"]  # the tokenizer never adds a BOS itself
    assert smol.describe()["revision"].startswith("gguf-sha256:")


def test_conversion_is_cached(smol, monkeypatch):
    def must_not_run(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(embedded, "_convert_into", must_not_run)
    assert embedded.ensure_converted() == embedded.converted_dir()


@pytest.mark.parametrize(
    ("mode", "prefix_index"), [("two_phase", None), ("full", 0), ("prefix_lm_causal", 1)],
)
def test_two_phase_full_and_causal_prefix_lm_equal_one_forward(smol, sample, mode, prefix_index):
    prefix = None if prefix_index is None else sample["prefixes"][prefix_index]
    row = rows(sample, [prefix])[0]
    got = torch.tensor(score_rows(smol.view, mode, smol.bos_id, smol.nl_ids, [row])[0].token_nlls)
    ids, start = whole_sequence(mode, layout_row(smol.bos_id, tuple(smol.nl_ids), row))
    want = single_pass_nlls(smol.model, ids, start)
    assert float((got - want).abs().max()) < 1e-4


def test_batched_equals_unbatched(smol, sample):
    enc = smol._encode
    equal = [enc("Alpha beta gamma delta."), enc("One two three four."), enc("Red green blue pink.")]
    assert len({len(p) for p in equal}) == 1
    mixed = [None, [], sample["prefixes"][0][:2], sample["prefixes"][0] + sample["prefixes"][1]]
    for prefixes in [equal, mixed]:
        batched = score_rows(smol.view, "two_phase", smol.bos_id, smol.nl_ids, rows(sample, prefixes))
        single = score_rows(smol.view, "two_phase", smol.bos_id, smol.nl_ids, rows(sample, prefixes), max_batch=1)
        assert max(b.batch_size for b in batched) >= 2 and all(s.batch_size == 1 for s in single)
        for b, s in zip(batched, single):
            assert b.token_nlls == s.token_nlls  # same pass shape: bit-identical on the CPU


def test_causality_probe_is_exact(smol, sample):
    row = ScoringRow.of(None, sample["doc"][:20], sample["query"][:4], sample["answer"][:4])
    layout = layout_row(smol.bos_id, tuple(smol.nl_ids), row)
    cache, _, _ = run_phase_a(smol.view, "two_phase", [layout])
    result = causality_probe(phase_b_logits_fn(smol.view, cache, 1 + layout.doc_len), layout.phase_b,
                             smol.view.vocab_size)
    assert result["max_leak"] == 0.0 and result["min_effect"] > 1e-3


def test_self_check_passes(smol):
    result = smol.self_check()
    assert result["passed"] is True and result["causality"]["max_leak"] == 0.0
    assert result["bare_vs_single_pass"]["max_abs_diff"] < 1e-4 and result["rerotation"]["max_rel_diff"] < 1e-4


def test_golden_values(smol):
    """Fixed inputs vs NLLs stored in tests/golden/ (scored batched here, unbatched when stored)."""
    golden = json.loads((GOLDEN_DIR / "smollm2_135m.json").read_text())
    assert golden["scorer_version"] == SCORER_VERSION, "scoring semantics changed: regenerate the golden file"
    assert (golden["bos_id"], golden["nl_ids"]) == (smol.bos_id, smol.nl_ids)
    module = _golden_module()
    fresh_cases = module.golden_cases(smol.tokenizer)
    stored = golden["cases"]
    assert [{k: c[k] for k in c if k != "token_nlls"} for c in stored] == fresh_cases  # same token ids
    for mode in module.GOLDEN_MODES:
        idxs = [i for i, c in enumerate(stored) if c["mode"] == mode]
        batch = [ScoringRow.of(stored[i]["prefix_ids"], stored[i]["doc_ids"], stored[i]["query_ids"],
                               stored[i]["answer_ids"]) for i in idxs]
        scores = score_rows(smol.view, mode, smol.bos_id, smol.nl_ids, batch)
        for i, score in zip(idxs, scores):
            assert score.token_nlls == pytest.approx(stored[i]["token_nlls"], abs=2e-4), (mode, stored[i]["prefix"])
    by_key = {(c["sample"], c["prefix"], c["mode"]): sum(c["token_nlls"]) for c in stored}
    assert abs(by_key[(0, "bare", "two_phase")] - by_key[(0, "bare_nl", "two_phase")]) > 1e-3  # a real control


# --- batch invariance and generation on a demo-sized workload --------------------------------

DEMO_CONDITIONS = ["bare", "bare_nl", "random_tokens", "repeat_token", "scrambled_oracle", "oracle",
                   "extractor_matched", "adversarial_matched", "llm_extract"]  # tracker/specs/demo.yaml


def tinyqa_samples(n: int) -> list[dict]:
    from importlib import resources

    lines = resources.files("tracker.data").joinpath("tinyqa.jsonl").read_text().splitlines()[:n]
    rows = [json.loads(line) for line in lines]
    return [{"id": i, "dataset": "tinyqa", "source_key": r["id"], "doc": r["context"], "query": r["question"],
             "answer": r["answer"], "meta": {"unrelated_query": rows[(i + 1) % n]["question"]}}
            for i, r in enumerate(rows)]


def demo_tasks(n_samples: int):
    from tracker.conditions import CATALOGUE, first_sentence
    from workers.backends import ScoreTask

    tasks = []
    for sample in tinyqa_samples(n_samples):
        for name in DEMO_CONDITIONS:
            definition = CATALOGUE[name]
            condition = {"name": name, "kind": definition.kind, "params": dict(definition.params)}
            surrogate = first_sentence(sample["doc"]) if definition.needs_surrogate else None
            tasks.append(ScoreTask(len(tasks), "two_phase", sample, condition, surrogate))
    return tasks


@pytest.fixture(scope="module")
def smol_bf16(smol):
    return get_backend("smollm2-135m", "cpu", "bfloat16")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_demo_jobs_score_the_same_batched_and_alone(smol, smol_bf16, dtype):
    """Item 1 of issue 13: every job of a cross-sample demo call equals the job scored alone (--batch-size 1)."""
    backend = smol if dtype == "float32" else smol_bf16
    tasks = demo_tasks(3)
    batched = backend.score(tasks)
    alone = [backend.score([task])[0] for task in tasks]
    passes = {tuple(r.extras["batch_jobs"]) for r in batched}
    assert len(tasks) / len(passes) >= 3  # rows per forward pass
    assert any(len({tasks[j].sample["id"] for j in p}) > 1 for p in passes)  # passes span samples
    assert all(a.batch_size == 1 for a in alone)
    for b, a in zip(batched, alone):
        assert b.extras["bucket"] == a.extras["bucket"]
        assert max(abs(x - y) for x, y in zip(b.token_nlls, a.token_nlls)) <= 1e-6


def surrogate_generation_tasks(n: int):
    from tracker.conditions import CATALOGUE, render_surrogate_prompt
    from workers.backends import GenerateTask

    prompt = CATALOGUE["llm_extract"].params["prompt"]
    return [GenerateTask(i, s, "extract", render_surrogate_prompt(prompt, s), 24) for i, s in
            enumerate(tinyqa_samples(n))]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_generation_does_not_depend_on_the_batch(smol, smol_bf16, dtype):
    backend = smol if dtype == "float32" else smol_bf16
    tasks = surrogate_generation_tasks(6)
    backend.generation_budget.set_ceiling(6)
    together = backend.generate(tasks)
    backend.generation_budget.set_ceiling(1)
    one_by_one = backend.generate(tasks)
    backend.generation_budget.set_ceiling(8)
    assert max(r.settings["batch_size"] for r in together) >= 2
    assert all(r.settings["batch_size"] == 1 for r in one_by_one)
    assert [r.text for r in together] == [r.text for r in one_by_one]
    assert all(r.text for r in together)
