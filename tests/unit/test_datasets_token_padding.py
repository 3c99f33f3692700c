"""ed02: MS MARCO docs padded with unrelated passages to exact token lengths, end to end.

The fixture is hub-shaped MS MARCO rows with short passages (the spec keeps rows whose own
passage has at most 98 tokens), enough of them to pad to 4096 tokens under a byte-level and
a BPE tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers.dataset_fixtures import drain, smollm2_tokenizer, tiny_tokenizer
from sqlalchemy import select

from tracker import datasets as ds  # noqa: E402
from tracker.cli import cli  # noqa: E402
from tracker.db import get_engine, session_scope  # noqa: E402
from tracker.db.schema import Job, Sample, Score  # noqa: E402
from tracker.errors import DatasetError, SpecError  # noqa: E402
from tracker.planning import enqueue  # noqa: E402
from tracker.specs import parse_spec  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

LEVELS = [98, 256, 512, 1024, 2048, 4096]
ROWS = 600
PLACES = ["Avelon", "Brisk", "Corvale", "Dunmere", "Estrin", "Falkirr", "Gorran", "Hestia"]


def short_ms_marco(root: Path, n: int = ROWS) -> Path:
    """``n`` MS MARCO rows whose selected passage is one short sentence with a unique year."""
    rows = []
    for i in range(n):
        year = str(1000 + i)
        passage = f"Bridge {i} near {PLACES[i % len(PLACES)]} opened in {year}."
        rows.append({
            "answers": [year], "query": f"when did bridge {i} open", "query_id": 90_000 + i, "query_type": "NUMERIC",
            "wellFormedAnswers": [],
            "passages": {"is_selected": [0, 1], "passage_text": [f"Unrelated text {i}.", passage], "url": ["a", "b"]},
        })
    folder = root / "ms_marco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return short_ms_marco(tmp_path_factory.mktemp("short_marco"))


@pytest.fixture(autouse=True)
def _fresh_dataset_cache():
    ds.clear_cache()
    yield
    ds.clear_cache()


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("model, tokenizer", [("tiny-random-t5", tiny_tokenizer), ("smollm2-135m", smollm2_tokenizer)])
def test_padded_docs_have_the_exact_token_lengths_and_keep_their_passage(data_dir, model, tokenizer):
    tok = tokenizer()
    originals = {str(90_000 + i): f"Bridge {i} near {PLACES[i % len(PLACES)]} opened in {1000 + i}." for i in range(ROWS)}
    keys_per_level = []
    for level in LEVELS:
        recipe = {"pad_to_tokens": level, "max_doc_tokens": 98, "tokenizer": model}
        samples = ds.load_samples("ms_marco", n=4, seed=42, recipe=recipe, data_dir=data_dir, tokenizers=load_tokenizer)
        keys_per_level.append([s.source_key for s in samples])
        for s in samples:
            assert n_tokens(tok, s.doc) == level, (level, s.source_key)
            assert s.doc.startswith(originals[s.source_key] + "\n")
            padding = s.meta["padding"]
            assert padding["target_tokens"] == level and padding["doc_tokens"] == n_tokens(tok, originals[s.source_key])
            assert s.source_key not in padding["passages"] and padding["passages"]
            tail = s.doc[len(originals[s.source_key]) + 1:]
            # the padding is the listed passages in order, the last one possibly cut (a cut may fall on a separator)
            full = "\n".join(originals[k] for k in padding["passages"]) + "\n"
            assert full.startswith(tail) and len(full) - len(tail) <= len(originals[padding["passages"][-1]]) + 1
            assert s.answer not in tail  # never pad with the answer
    assert all(keys == keys_per_level[0] for keys in keys_per_level)  # every level pads the same samples


def test_padding_is_a_property_of_the_sample_not_of_n_or_seed(data_dir):
    recipe = {"pad_to_tokens": 512, "max_doc_tokens": 98, "tokenizer": "tiny-random-t5"}
    few = {s.source_key: s.doc for s in ds.load_samples("ms_marco", n=20, seed=42, recipe=recipe, data_dir=data_dir, tokenizers=load_tokenizer)}
    ds.clear_cache()
    many = {s.source_key: s.doc for s in ds.load_samples("ms_marco", n=150, seed=3, recipe=recipe, data_dir=data_dir, tokenizers=load_tokenizer)}
    shared = set(few) & set(many)
    assert len(many) == 150 and shared  # another seed and N share some samples ...
    assert {k: few[k] for k in shared} == {k: many[k] for k in shared}  # ... padded identically


def test_max_doc_tokens_filters_rows_before_sampling(data_dir):
    tok = tiny_tokenizer()
    recipe = {"pad_to_tokens": 256, "max_doc_tokens": 36, "tokenizer": "tiny-random-t5"}
    usable = ds.load_prepared("ms_marco", recipe=recipe, data_dir=data_dir, tokenizers=load_tokenizer)
    lengths = [n_tokens(tok, f"Bridge {i} near {PLACES[i % len(PLACES)]} opened in {1000 + i}.") for i in range(ROWS)]
    assert len(usable) == sum(n <= 36 for n in lengths) and 0 < len(usable) < ROWS


def test_cut_to_tokens_finds_the_exact_length_under_bpe_merges():
    tok = smollm2_tokenizer()
    doc = "Alpha beta."
    text = doc + "\n" + " ".join(["internationalization"] * 200)
    for target in range(n_tokens(tok, doc) + 1, 120):
        cut = ds.cut_to_tokens(text, len(doc), target, tok)
        assert n_tokens(tok, cut) == target and cut.startswith(doc)


def test_too_few_passages_and_unreachable_hub_tokenizers_are_clear_errors(data_dir, tmp_path, monkeypatch):
    small = short_ms_marco(tmp_path / "few", n=10)
    with pytest.raises(DatasetError, match="too few to pad"):
        ds.load_samples("ms_marco", n=2, recipe={"pad_to_tokens": 4096, "tokenizer": "tiny-random-t5"}, data_dir=small, tokenizers=load_tokenizer)
    monkeypatch.setattr("workers.tokenizers.hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DatasetError) as err:
        ds.load_samples("ms_marco", n=2, recipe={"pad_to_tokens": 256, "tokenizer": "google/t5gemma-2-4b-4b"},
                        data_dir=data_dir, tokenizers=load_tokenizer)
    assert "google/t5gemma-2-4b-4b" in str(err.value) and "huggingface-cli download" in err.value.hint
    with pytest.raises(DatasetError, match="scoring"):
        ds.recipe_tokenizer({"tokenizer": "scoring"}, load_tokenizer)


def test_spec_checks_of_token_length_recipes(data_dir, sqlite_url):
    base = {"name": "pad", "models": ["tiny-random-t5", "tiny-random-bart"], "mode": "encdec_q",
            "datasets": [{"name": "ms_marco", "n": 2, "recipe": {"pad_to_tokens": 256}}], "conditions": ["bare"]}
    spec = parse_spec(base)
    assert spec.datasets[0].recipe == {"pad_to_tokens": 256, "tokenizer": "scoring"}
    with pytest.raises(SpecError, match=r"`datasets\[0\].recipe.tokenizer`.*one model"):
        enqueue(spec, db=sqlite_url, data_dir=str(data_dir), device="cpu", tokenizers=load_tokenizer)
    bad = [({"pad_to_tokens": 256, "max_doc_tokens": 512}, "max_doc_tokens"),
           ({"tokenizer": "tiny-random-t5"}, "tokenizer"), ({"pad_to_tokens": 0}, "pad_to_tokens")]
    for recipe, field in bad:
        with pytest.raises(SpecError, match=rf"`datasets\[0\].recipe.{field}`"):
            parse_spec({**base, "datasets": [{"name": "ms_marco", "recipe": recipe}]})
    with pytest.raises(SpecError, match="pad_to_tokens"):  # only MS MARCO is padded
        parse_spec({**base, "datasets": [{"name": "squad_v2", "recipe": {"pad_to_tokens": 256}}]})


def test_ed02_runs_on_tiny_t5_with_exact_doc_lengths_and_analyses_per_level(data_dir, sqlite_url, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = enqueue("ed02", db=sqlite_url, models=["tiny-random-t5"], limit=1, data_dir=str(data_dir), device="cpu", tokenizers=load_tokenizer)
        assert report.stage(1).score.created == len(LEVELS) * 4
        drain(sqlite_url, model="tiny-random-t5")
    finally:
        torch.set_num_threads(threads)
    with session_scope(get_engine(sqlite_url)) as s:
        rows = s.execute(select(Score.doc_ids, Sample.recipe, Sample.doc)
                         .join(Job, Job.id == Score.job_id).join(Sample, Sample.id == Job.sample_id)).all()
        assert len(rows) == len(LEVELS) * 4
        for doc_ids, recipe, doc in rows:  # the scorer's own doc tokens
            assert len(doc_ids) == recipe["pad_to_tokens"] == n_tokens(tiny_tokenizer(), doc)
            assert recipe["tokenizer"] == "tiny-random-t5" and recipe["max_doc_tokens"] == 98
    out = CliRunner().invoke(cli, ["--db", sqlite_url, "analyze", "ed02", "--no-mlflow", "--format", "json",
                                   "--bootstrap", "0"])
    assert out.exit_code == 0, out.output
    effects = json.loads(out.output)["effects"]
    assert {e["dataset"] for e in effects} == {f"len{n}" for n in LEVELS}  # one row set per level, none pooled
    assert {(e["dataset"], e["condition"]) for e in effects if e["table"] == "main"} == {
        (f"len{n}", c) for n in LEVELS for c in ("oracle", "random_tokens", "surr_doc")}
