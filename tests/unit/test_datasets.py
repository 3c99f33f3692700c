"""Dataset loaders on fixture rows shaped like the hub's: mapping, filters, sampling, partners."""
from __future__ import annotations

import json
import random

import pytest
from helpers.dataset_fixtures import FIXTURES, smollm2_tokenizer
from helpers.synth import write_synthetic_data_dir

from tracker import datasets as ds  # noqa: E402
from tracker.errors import DatasetError  # noqa: E402
from tracker.identity import content_hash  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    ds.clear_cache()
    monkeypatch.delenv(ds.ENV_DATA_DIR, raising=False)
    yield
    ds.clear_cache()


def _rows(name: str, split: str = "validation") -> list[dict]:
    path = FIXTURES / name / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_key(name: str, **kw) -> dict[str, ds.PreparedSample]:
    return {s.source_key: s for s in ds.load_prepared(name, data_dir=FIXTURES, **kw, tokenizers=load_tokenizer)}


def test_ms_marco_maps_the_selected_passage_and_skips_unanswerable_rows():
    got = _by_key("ms_marco")
    assert sorted(got) == ["1001", "1002", "1005", "1006", "1007", "1009"]  # 1003, 1004, 1008 filtered
    raw = next(r for r in _rows("ms_marco") if r["query_id"] == 1005)
    s = got["1005"]
    assert s.doc == raw["passages"]["passage_text"][1]  # the selected one, not the first
    assert s.query == raw["query"] and s.answer == "Canberra"
    assert s.meta["url"] == raw["passages"]["url"][1]
    assert got["1002"].answer == "Eight"  # the first of several answers
    assert s.dataset == "ms_marco" and s.split == "validation"


def test_squad_v2_skips_unanswerable_questions():
    got = _by_key("squad_v2")
    assert sorted(got) == ["sq0001", "sq0002", "sq0004", "sq0005", "sq0007", "sq0008"]
    raw = next(r for r in _rows("squad_v2") if r["id"] == "sq0002")
    assert got["sq0002"].answer == "the Volga"
    assert got["sq0002"].doc == raw["context"] and got["sq0002"].meta["title"] == "Danube"


def test_trivia_qa_takes_a_window_around_the_answer_within_the_budget():
    got = _by_key("trivia_qa")
    assert sorted(got) == ["tc_1", "tc_2", "tc_3", "tc_6"]  # tc_4: answer not in page; tc_5: no page
    bonn = got["tc_1"]
    assert "Bonn" in bonn.doc and len(bonn.doc.split()) == 300
    raw = next(r for r in _rows("trivia_qa") if r["question_id"] == "tc_1")
    assert bonn.doc in raw["entity_pages"]["wiki_context"][0]
    assert got["tc_2"].doc.startswith("Mars is the fourth planet")  # the page with the answer
    small = _by_key("trivia_qa", recipe={"doc_max_words": 40})["tc_1"]
    assert "Bonn" in small.doc and len(small.doc.split()) == 40
    assert small.recipe_hash != bonn.recipe_hash


def test_hotpot_qa_keeps_supporting_paragraphs_and_skips_yes_no():
    got = _by_key("hotpot_qa")
    assert sorted(got) == ["hp001", "hp003", "hp004"]  # hp002 yes/no, hp005 empty question
    doc = got["hp001"].doc
    assert doc == ("The Nile is a major river in northeastern Africa. It flows into the Mediterranean Sea.\n"
                   "Cairo is the capital of Egypt. The city lies on the banks of the Nile.")
    assert "Tokyo" not in doc
    assert got["hp004"].doc == "Microsoft was founded in 1975. Its headquarters are in Redmond."
    with_yes_no = _by_key("hotpot_qa", recipe={"skip_yes_no": False})
    assert "hp002" in with_yes_no and with_yes_no["hp002"].answer == "no"


def test_neural_bridge_keys_rows_by_their_text():
    got = ds.load_prepared("neural_bridge", data_dir=FIXTURES, tokenizers=load_tokenizer)
    assert len(got) == 3
    raw = _rows("neural_bridge", "test")[0]
    key = content_hash([raw["context"], raw["question"]], 20)
    assert {s.source_key for s in got} >= {key}
    assert next(s for s in got if s.source_key == key).answer == "Queensland"


def test_tinyqa_is_bundled_with_60_docs_of_80_to_200_tokens():
    got = ds.load_prepared("tinyqa", tokenizers=load_tokenizer)
    assert len(got) == 60 and len({s.query for s in got}) == 60
    tok = smollm2_tokenizer()
    lengths = [len(tok(s.doc, add_special_tokens=False)["input_ids"]) for s in got]
    assert min(lengths) >= 80 and max(lengths) <= 200
    for s in got:
        assert 0 < len(s.answer.split()) <= 6
        core = s.answer.lower().removeprefix("the ").removeprefix("a ").removeprefix("about ")
        assert core in s.doc.lower(), s.source_key  # the passage supports the answer


@pytest.mark.parametrize("name", ["ms_marco", "squad_v2", "trivia_qa", "hotpot_qa", "neural_bridge"])
def test_each_loader_samples_deterministically(name, tmp_path):
    root = write_synthetic_data_dir(tmp_path, 30, (name,))
    first = [s.source_key for s in ds.load_samples(name, n=8, seed=42, data_dir=root, tokenizers=load_tokenizer)]
    ds.clear_cache()
    assert [s.source_key for s in ds.load_samples(name, n=8, seed=42, data_dir=root, tokenizers=load_tokenizer)] == first
    assert len(set(first)) == 8
    assert set(s.source_key for s in ds.load_samples(name, n=8, seed=7, data_dir=root, tokenizers=load_tokenizer)) != set(first)


def test_tinyqa_sampling_is_deterministic():
    a = ds.load_samples("tinyqa", n=10, seed=1, tokenizers=load_tokenizer)
    assert a == ds.load_samples("tinyqa", n=10, seed=1, tokenizers=load_tokenizer)
    assert {s.source_key for s in ds.load_samples("tinyqa", n=10, seed=2, tokenizers=load_tokenizer)} != {s.source_key for s in a}


def test_sampling_is_deterministic_per_seed_and_independent_of_file_order(tmp_path):
    root = write_synthetic_data_dir(tmp_path / "a", 50, ("squad_v2",))
    first = [s.source_key for s in ds.load_samples("squad_v2", n=10, seed=42, data_dir=root, tokenizers=load_tokenizer)]
    ds.clear_cache()
    assert [s.source_key for s in ds.load_samples("squad_v2", n=10, seed=42, data_dir=root, tokenizers=load_tokenizer)] == first
    other = [s.source_key for s in ds.load_samples("squad_v2", n=10, seed=43, data_dir=root, tokenizers=load_tokenizer)]
    assert set(other) != set(first)
    # the same rows in another order give the same samples and the same partners
    shuffled = tmp_path / "b" / "squad_v2" / "validation.jsonl"
    shuffled.parent.mkdir(parents=True)
    lines = (root / "squad_v2" / "validation.jsonl").read_text().splitlines()
    random.Random(0).shuffle(lines)
    shuffled.write_text("\n".join(lines) + "\n")
    again = ds.load_samples("squad_v2", n=10, seed=42, data_dir=tmp_path / "b", tokenizers=load_tokenizer)
    assert [s.source_key for s in again] == first
    before = {s.source_key: s.meta for s in ds.load_samples("squad_v2", n=10, seed=42, data_dir=root, tokenizers=load_tokenizer)}
    assert {s.source_key: s.meta for s in again} == before


def test_limit_takes_the_first_samples_of_the_full_order(tmp_path):
    root = write_synthetic_data_dir(tmp_path, 40, ("ms_marco",))
    full = ds.load_samples("ms_marco", n=30, seed=42, data_dir=root, tokenizers=load_tokenizer)
    limited = ds.load_samples("ms_marco", n=30, seed=42, data_dir=root, limit=7, tokenizers=load_tokenizer)
    assert limited == full[:7]
    with pytest.raises(DatasetError, match="40 usable rows"):
        ds.load_samples("ms_marco", n=41, seed=42, data_dir=root, tokenizers=load_tokenizer)


def test_partners_are_fixed_by_the_whole_dataset_not_by_seed_or_n(tmp_path):
    root = write_synthetic_data_dir(tmp_path, 40, ("hotpot_qa",))
    a = {s.source_key: s.meta["unrelated_source_key"] for s in ds.load_samples("hotpot_qa", n=5, seed=1, data_dir=root, tokenizers=load_tokenizer)}
    b = {s.source_key: s.meta["unrelated_source_key"] for s in ds.load_samples("hotpot_qa", n=40, seed=9, data_dir=root, tokenizers=load_tokenizer)}
    assert all(b[k] == v for k, v in a.items())
    everything = {s.source_key: s for s in ds.load_prepared("hotpot_qa", data_dir=root, tokenizers=load_tokenizer)}
    for key, partner in b.items():
        assert partner != key and partner in everything
        assert everything[key].meta["unrelated_query"] == everything[partner].query != everything[key].query


def test_parquet_in_the_hub_layout_reads_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = tmp_path / "microsoft" / "ms_marco" / "v1.1" / "validation-00000-of-00001.parquet"
    target.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_rows("ms_marco")), target)
    from_parquet = ds.load_prepared("ms_marco", data_dir=tmp_path, tokenizers=load_tokenizer)
    assert from_parquet == ds.load_prepared("ms_marco", data_dir=FIXTURES, tokenizers=load_tokenizer)


def test_data_dir_from_the_environment(monkeypatch):
    monkeypatch.setenv(ds.ENV_DATA_DIR, str(FIXTURES))
    assert len(ds.load_prepared("squad_v2", tokenizers=load_tokenizer)) == 6


def test_offline_without_a_local_copy_names_data_dir(monkeypatch, tmp_path):
    monkeypatch.setattr("tracker.datasets.files.hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(DatasetError) as err:
        ds.load_samples("squad_v2", n=3, tokenizers=load_tokenizer)
    assert "--data-dir" in str(err.value) and "rajpurkar/squad_v2" in str(err.value)
    with pytest.raises(DatasetError) as err:
        ds.load_samples("trivia_qa", n=3, data_dir=tmp_path, tokenizers=load_tokenizer)
    assert "--data-dir" in str(err.value) and str(tmp_path) in str(err.value)


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="known datasets"):
        ds.load_prepared("imagenet", tokenizers=load_tokenizer)
