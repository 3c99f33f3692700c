"""Experiment specs: the shipped ones, their sizes, and bad specs rejected by field."""
from __future__ import annotations

import copy

import pytest
import yaml
from click.testing import CliRunner
from helpers.dataset_fixtures import FIXTURES, table_counts

from tracker.cli import cli  # noqa: E402
from tracker.errors import SpecError, UnknownExperimentError, UnknownModelError  # noqa: E402
from tracker.planning import enqueue  # noqa: E402
from tracker.specs import list_specs, load_spec, parse_spec, spec_names  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

EXP02_CONDITIONS = ["bare", "random_tokens", "repeat_token", "scrambled_oracle", "unrelated_query", "same_topic",
                    "paraphrase", "oracle", "llm_extract", "llm_question", "llm_summarize", "extractor_matched",
                    "adversarial_matched"]
GOOD = {
    "name": "mine",
    "models": ["test-fake"],
    "datasets": [{"name": "squad_v2", "n": 3}],
    "conditions": ["bare", "oracle", {"name": "llm_extract", "params": {"max_new_tokens": 8}}],
}


def test_shipped_specs_and_their_condition_lists():
    assert spec_names() == ["demo", "ed01", "ed02", "ed03", "ed04", "ed05", "ed06", "ed07", "ed08", "ed09", "ed10",
                            "exp01", "exp02", "exp03", "plm01", "plm02", "plm03"]
    exp01 = load_spec("exp01")
    assert [c.name for c in exp01.conditions] == ["bare", "oracle", "oracle_full", "surr_extractor", "surr_universal",
                                                  "surr_doc", "surr_template", "adversarial", "adv_instruct"]
    assert exp01.condition("oracle_full").mode == "full" and exp01.modes == ("two_phase",)
    assert [m.name for m in exp01.models] == ["google/gemma-3-12b-it"]
    assert [(d.name, d.n, d.seed) for d in exp01.datasets] == [("ms_marco", 400, 42)]
    exp02 = load_spec("exp02")
    assert [c.name for c in exp02.conditions] == EXP02_CONDITIONS
    exp03 = load_spec("exp03")
    assert [c.name for c in exp03.conditions] == EXP02_CONDITIONS
    assert [(d.name, d.n) for d in exp03.datasets] == [("ms_marco", 400), ("squad_v2", 400), ("trivia_qa", 400),
                                                        ("hotpot_qa", 400)]
    assert exp03.stages[0].conditions == ("bare",) and exp03.stages[1].conditions == tuple(EXP02_CONDITIONS[1:])
    assert exp03.stages[1].select.fraction == 0.4 and exp03.stages[1].select.by == "bare"
    # exp03 shares exp02's condition definitions, so MS MARCO jobs are shared
    assert [c.definition_hash() for c in exp03.conditions] == [c.definition_hash() for c in exp02.conditions]
    demo = load_spec("demo")
    assert [c.name for c in demo.conditions] == ["bare", "bare_nl", "random_tokens", "repeat_token",
                                                 "scrambled_oracle", "oracle", "extractor_matched",
                                                 "adversarial_matched", "llm_extract"]
    assert demo.condition("llm_extract").params["max_new_tokens"] == 24
    assert demo.device == "cpu" and [m.name for m in demo.models] == ["smollm2-135m"]


def test_sizes_of_the_shipped_specs():
    sizes = {s.name: s.size() for s in list_specs()}
    assert (sizes["exp01"].score_jobs, sizes["exp01"].generate_jobs) == (400 * 9, 0)
    assert (sizes["exp02"].score_jobs, sizes["exp02"].generate_jobs) == (5_200, 2_000)
    exp03 = sizes["exp03"]
    assert [(s.samples, s.conditions, s.score_jobs) for s in exp03.stages] == [(1600, 1, 1600), (640, 12, 7680)]
    assert exp03.generate_jobs == 640 * 5
    demo = load_spec("demo").size(samples_per_dataset={"tinyqa": 60})
    assert (demo.score_jobs, demo.generate_jobs) == (540, 60)


def test_tracker_experiments_lists_sizes():
    out = CliRunner().invoke(cli, ["experiments"])
    assert out.exit_code == 0, out.output
    assert "400 x 13 x 1 = 5200" in out.output
    assert "1600 x 1 x 1 + 640 x 12 x 1 = 9280" in out.output
    assert "60 x 9 x 1 = 540" in out.output


def test_a_user_spec_file_loads_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    spec = load_spec(str(path))
    assert spec.name == "mine" and spec.source == str(path)
    assert spec.condition("llm_extract").params["max_new_tokens"] == 8
    assert spec.condition("llm_extract").params["generator"] == "scoring"
    with pytest.raises(UnknownExperimentError, match="exp01"):
        load_spec("exp99")
    with pytest.raises(UnknownExperimentError):
        load_spec(str(tmp_path / "missing.yaml"))


def _bad(change) -> dict:
    spec = copy.deepcopy(GOOD)
    change(spec)
    return spec


@pytest.mark.parametrize("change, field", [
    (lambda s: s.pop("models"), "`models`"),
    (lambda s: s.pop("datasets"), "`datasets`"),
    (lambda s: s.update(colour="red"), "`colour`"),
    (lambda s: s["conditions"].append("telepathy"), "`conditions[3].name`"),
    (lambda s: s["conditions"].append({"name": "x", "kind": "telepathy"}), "`conditions[3].kind`"),
    (lambda s: s["conditions"].append({"name": "r2", "kind": "random_tokens", "params": {"sed": 1}}),
     "`conditions[3].params.sed`"),
    (lambda s: s["conditions"].append({"name": "t", "kind": "fixed_text"}), "`conditions[3].params.text`"),
    (lambda s: s["conditions"][2]["params"].update(prompt="Answer: {answer}"), "`conditions[2].params.prompt`"),
    (lambda s: s["conditions"][2]["params"].update(surrogate="poem"), "`conditions[2].params.surrogate`"),
    (lambda s: s["conditions"].append("oracle"), "`conditions`"),
    (lambda s: s["datasets"].append({"name": "imagenet"}), "`datasets[1].name`"),
    (lambda s: s["datasets"][0].update(n=0), "`datasets[0].n`"),
    (lambda s: s["datasets"][0].update(n="many"), "`datasets[0].n`"),
    (lambda s: s["datasets"][0].update(recipe={"pad_to_tokens": 512}), "`datasets[0].recipe.pad_to_tokens`"),
    (lambda s: s["datasets"][0].update(recipe={"doc_max_words": 0}), "`datasets[0].recipe.doc_max_words`"),
    (lambda s: s.update(mode="sideways"), "`mode`"),
    (lambda s: s.update(stages=[{"conditions": ["bare"]}, {"conditions": ["oracle", "llm_extract"]}]),
     "`stages[1].select`"),
    (lambda s: s.update(stages=[{"conditions": ["bare"]},
                                {"conditions": ["oracle", "llm_extract"], "select": {"by": "bare", "fraction": 1.5}}]),
     "`stages[1].select.fraction`"),
    (lambda s: s.update(stages=[{"conditions": ["bare", "oracle"]}]), "`stages`"),
    (lambda s: s.update(stages=[{"conditions": ["bare"]},
                                {"conditions": ["oracle", "nope"], "select": {"fraction": 0.4}}]),
     "`stages[1].conditions[1]`"),
    (lambda s: s.update(analysis={"baseline": "oracel"}), "`analysis.baseline`"),
])
def test_bad_specs_name_the_field(change, field):
    with pytest.raises(SpecError) as err:
        parse_spec(_bad(change))
    assert field in str(err.value)


def test_bad_spec_from_the_cli_exits_1_and_writes_nothing(sqlite_url, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_bad(lambda s: s["conditions"].append("telepathy"))))
    before = table_counts(sqlite_url)
    out = CliRunner().invoke(cli, ["--db", sqlite_url, "enqueue", str(path), "--data-dir", str(FIXTURES)])
    assert out.exit_code == 1 and "conditions[3].name" in out.output
    assert table_counts(sqlite_url) == before


def test_unknown_models_are_refused_before_anything_is_written(db_url, tmp_path):
    before = table_counts(db_url)
    spec = parse_spec(_bad(lambda s: s.update(models=["test-fake", "gpt-17"])))
    with pytest.raises(SpecError, match=r"`models\[1\]`.*gpt-17"):
        enqueue(spec, db=db_url, data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    with pytest.raises(UnknownModelError, match="gpt-17"):
        enqueue(parse_spec(GOOD), db=db_url, models=["gpt-17"], data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    gen = parse_spec(_bad(lambda s: s["conditions"][2]["params"].update(generator="gpt-17")))
    with pytest.raises(SpecError, match=r"`conditions\[2\].params.generator`"):
        enqueue(gen, db=db_url, data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    wrong_mode = parse_spec(_bad(lambda s: s.update(mode="encdec_q")))
    with pytest.raises(SpecError, match="cannot score mode 'encdec_q'"):
        enqueue(wrong_mode, db=db_url, models=["tiny-random-llama"], data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    assert table_counts(db_url) == before


def test_spec_hash_follows_the_work_not_the_prose():
    base = parse_spec(GOOD)
    prose = parse_spec({**GOOD, "description": "Some words.", "title": "A title"})
    assert prose.spec_hash() == base.spec_hash()
    prompt = _bad(lambda s: s["conditions"][2]["params"].update(prompt="List the facts: {doc}"))
    assert parse_spec(prompt).spec_hash() != base.spec_hash()
    more = _bad(lambda s: s["datasets"][0].update(n=4))
    assert parse_spec(more).spec_hash() != base.spec_hash()


def test_a_malformed_analysis_plan_is_refused_when_the_spec_is_read():
    """The analysis's own plan vocabulary checks the spec at enqueue, before anything is written."""
    import copy

    data = copy.deepcopy(GOOD)
    data["analysis"] = {"baseline": "bare", "hard_selection": {"stage": 2, "fraction": 2.0, "by": "bare"}}
    with pytest.raises(SpecError, match=r"analysis\.hard_selection\.fraction must be in \(0, 1\]"):
        parse_spec(data)
