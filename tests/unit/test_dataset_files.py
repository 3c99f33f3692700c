"""Local dataset files: the hub's own parquet layout for all five datasets, malformed rows as
errors naming file, line and field, and --limit as a cap (per dataset too) with a warning."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers.dataset_fixtures import FIXTURES, table_counts

from tracker import datasets as ds  # noqa: E402
from tracker.cli import cli  # noqa: E402
from tracker.errors import DatasetError  # noqa: E402
from tracker.planning import enqueue  # noqa: E402
from tracker.specs import load_spec  # noqa: E402

# dataset -> (flat fixture file, the hub repo's files for it, a decoy the loader must not read)
HUB = {
    "ms_marco": ("validation", "microsoft/ms_marco/v1.1/validation-00000-of-00001.parquet",
                 "microsoft/ms_marco/v2.1/validation-00000-of-00001.parquet"),
    "squad_v2": ("validation", "rajpurkar/squad_v2/squad_v2/validation-00000-of-00001.parquet",
                 "rajpurkar/squad_v2/squad_v2/train-00000-of-00001.parquet"),
    "trivia_qa": ("validation", "mandarjoshi/trivia_qa/rc.wikipedia/validation-0000{}-of-00002.parquet",
                  "mandarjoshi/trivia_qa/rc/validation-00000-of-00001.parquet"),
    "hotpot_qa": ("validation", "hotpotqa/hotpot_qa/distractor/validation-00000-of-00001.parquet",
                  "hotpotqa/hotpot_qa/fullwiki/validation-00000-of-00001.parquet"),
    "neural_bridge": ("test", "neural-bridge/rag-dataset-12000/data/test-00000-of-00001.parquet",
                      "neural-bridge/rag-dataset-12000/data/train-00000-of-00001.parquet"),
}


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    ds.clear_cache()
    monkeypatch.delenv(ds.ENV_DATA_DIR, raising=False)
    yield
    ds.clear_cache()


def rows_of(name: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("name", sorted(HUB))
def test_the_hub_layout_is_found_for_every_dataset(name, tmp_path):
    split, files, decoy = HUB[name]
    rows = rows_of(name, split)
    if "{}" in files:  # sharded: two files
        write_parquet(tmp_path / files.format(0), rows[: len(rows) // 2])
        write_parquet(tmp_path / files.format(1), rows[len(rows) // 2:])
    else:
        write_parquet(tmp_path / files, rows)
    write_parquet(tmp_path / decoy, rows[:1])  # another config / split: never read
    flat = {s.source_key: s for s in ds.load_prepared(name, data_dir=FIXTURES)}
    ds.clear_cache()
    found = ds.find_local_files(tmp_path, ds.DATASETS[name], split)
    assert len(found) == (2 if "{}" in files else 1) and all(str(decoy) not in str(f) for f in found)
    hub = {s.source_key: s for s in ds.load_prepared(name, data_dir=tmp_path)}
    assert sorted(hub) == sorted(flat) and len(hub) > 0
    assert all(hub[k].doc == flat[k].doc and hub[k].answer == flat[k].answer for k in hub)


BAD_ROWS = [
    ("squad_v2", '["not", "an object"]', "line 2: the row is a list, not an object"),
    ("squad_v2", '{"title": "x", "context": "c", "question": "q", "answers": {"text": ["a"], "answer_start": [0]}}',
     "line 2: field `id` is missing"),
    ("squad_v2", '{"id": "z1", "context": "c", "question": "q", "answers": [{"text": "a"}]}',
     "line 2: field `answers` is a list, expected an object"),
    ("squad_v2", '{"id": "z1", "context": "c", "question": "q", "answers": {"text": "Paris", "answer_start": [0]}}',
     "line 2: field `answers.text` is a string ('Paris'), expected a list"),
    ("ms_marco", '{"query_id": 5, "query": "q", "answers": "Paris", "passages": {"passage_text": [], "is_selected": []}}',
     "line 2: field `answers` is a string ('Paris'), expected a list"),
    ("trivia_qa", '{"question_id": "t", "question": "q", "answer": {"value": "v", "aliases": "v"}, "entity_pages": {}}',
     "line 2: field `answer.aliases` is a string ('v'), expected a list"),
    ("hotpot_qa", '{"id": "h", "question": "q", "answer": ["a"], "supporting_facts": {}, "context": {}}',
     "line 2: field `answer` is a list, expected a string"),
]


@pytest.mark.parametrize("name, line, says", BAD_ROWS)
def test_a_malformed_row_is_an_error_naming_file_line_and_field(name, line, says, tmp_path):
    split = HUB[name][0]
    good = (FIXTURES / name / f"{split}.jsonl").read_text().splitlines()[0]
    path = tmp_path / name / f"{split}.jsonl"
    path.parent.mkdir()
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DatasetError) as err:
        ds.load_prepared(name, data_dir=tmp_path)
    assert str(err.value).startswith(f"{path} {says}") and err.value.hint


def test_non_utf8_bytes_name_the_line_and_nothing_is_written(sqlite_url, tmp_path):
    good = (FIXTURES / "squad_v2" / "validation.jsonl").read_bytes().splitlines()
    path = tmp_path / "squad_v2" / "validation.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"\n".join([good[0], good[1], b'{"id": "x", "question": "caf\xe9"}']) + b"\n")
    spec = tmp_path / "sq.yaml"
    spec.write_text("name: sq\ntitle: t\ndescription: d\ndatasets:\n  - {name: squad_v2, n: 2}\n"
                    "conditions: [bare]\nmodels: [test-fake]\n")
    before = table_counts(sqlite_url)
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "enqueue", str(spec), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: {path} line 3: bytes that are not UTF-8" in result.output and "Hint:" in result.output
    assert table_counts(sqlite_url) == before


def test_limit_is_a_cap_with_a_warning_and_can_be_per_dataset(sqlite_url, tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text("name: two\ntitle: t\ndescription: d\ndatasets:\n  - {name: squad_v2}\n  - {name: hotpot_qa}\n"
                    "conditions: [bare]\nmodels: [test-fake]\n")
    usable = {"squad_v2": 6, "hotpot_qa": 3}  # the fixtures' usable rows (test_datasets.py)
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "enqueue", str(spec), "--data-dir", str(FIXTURES),
                                      "--limit", "squad_v2=2", "--limit", "5", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dataset squad_v2: 8 rows read, 6 usable, 2 skipped by its filters" in result.output
    assert "2 taken" in result.output
    assert "Warning: dataset hotpot_qa has 3 usable rows (5 read), fewer than the 5 asked for (--limit 5)" \
        in result.output
    report = enqueue(load_spec(str(spec)), db=sqlite_url, data_dir=str(FIXTURES), limit={"squad_v2": 2, "*": 5},
                     dry_run=True)
    assert {d["dataset"]: d["taken"] for d in report.datasets} == {"squad_v2": 2, "hotpot_qa": usable["hotpot_qa"]}
    assert report.samples_total == 2 + usable["hotpot_qa"]
    bad = CliRunner().invoke(cli, ["--db", sqlite_url, "enqueue", str(spec), "--data-dir", str(FIXTURES),
                                   "--limit", "trivia_qa=2", "--dry-run"])
    assert bad.exit_code == 1 and "Error: --limit names trivia_qa, which two does not use." in bad.output


def test_a_spec_n_beyond_the_usable_rows_is_an_error_naming_both(sqlite_url, tmp_path):
    spec = tmp_path / "big.yaml"
    spec.write_text("name: big\ntitle: t\ndescription: d\ndatasets:\n  - {name: squad_v2, n: 50}\n"
                    "conditions: [bare]\nmodels: [test-fake]\n")
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "enqueue", str(spec), "--data-dir", str(FIXTURES)])
    assert result.exit_code == 1
    assert "Error: Dataset squad_v2 has 6 usable rows (8 read, 2 skipped by its filters); the spec asks for n=50." \
        in result.output
    assert "--limit squad_v2=6" in result.output


def test_describe_names_every_dataset_choice():
    result = CliRunner().invoke(cli, ["experiments", "--describe", "exp03"])
    assert result.exit_code == 0
    out = result.output
    for name in ("ms_marco", "squad_v2", "trivia_qa", "hotpot_qa"):
        assert all(choice in out for choice in ds.DATASET_CHOICES[name])
    assert "this spec: yes/no questions skipped (skip_yes_no: True)" in out
