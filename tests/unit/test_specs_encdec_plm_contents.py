"""The encoder-decoder (ed01-ed10) and prefix-LM (plm01-plm03) specs: contents, sizes, plans.

Full-size dry runs use synthetic hub-shaped datasets with the shipped hub models (no model
or tokenizer is loaded, except ed02's, whose hub tokenizer is unreachable here and must say so).
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers.dataset_fixtures import table_counts
from helpers.synth import write_synthetic_data_dir

from analysis.from_spec import plan_from_spec  # noqa: E402
from tracker import datasets  # noqa: E402
from tracker.catalogue import resolve_model  # noqa: E402
from tracker.cli import cli  # noqa: E402
from tracker.errors import DatasetError  # noqa: E402
from tracker.planning import enqueue  # noqa: E402
from tracker.specs import load_spec, spec_names  # noqa: E402
from tracker.specs.plan import normalize_plan  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

ED01 = ["bare", "oracle", "random_tokens", "surr_doc", "surr_template"]
EXP02 = ["bare", "random_tokens", "repeat_token", "scrambled_oracle", "unrelated_query", "same_topic", "paraphrase",
         "oracle", "llm_extract", "llm_question", "llm_summarize", "extractor_matched", "adversarial_matched"]
PLM = ("prefix_lm_causal", "prefix_lm_bidir")
NQ_RQ_Q = ("encdec_nq", "encdec_rq", "encdec_q")
T5GEMMA = ["google/t5gemma-2-4b-4b"]
# name: (conditions, modes, models, (dataset, n) per entry, score jobs)
EXPECTED = {
    "ed01": (ED01, ("encdec_q",), T5GEMMA, [("ms_marco", 400)], 2_000),
    "ed02": (["bare", "oracle", "random_tokens", "surr_doc"], ("encdec_q",), T5GEMMA, [("ms_marco", 400)] * 6, 9_600),
    "ed03": (ED01, ("encdec_q",), T5GEMMA, [("neural_bridge", 400)], 2_000),
    "ed04": (["bare", "oracle", "random_tokens", "kw5", "kw10", "kw20", "wrong_kw10", "first_sentence"], ("encdec_q",),
             T5GEMMA, [("ms_marco", 400)], 3_200),
    "ed05": (["bare", "oracle", "first_sentence", "shuffled_sentence", "wrong_sentence", "shuffled_wrong_sentence"],
             ("encdec_q",), T5GEMMA, [("ms_marco", 400)], 2_400),
    "ed06": (ED01, ("encdec_q",), T5GEMMA, [("ms_marco", 400)], 2_000),
    "ed07": (["bare", "oracle"], ("encdec_nq_probe", "encdec_q_probe"), T5GEMMA, [("ms_marco", 500)], 2_000),
    "ed08": (["bare", "oracle"], ("encdec_nq_probe", "encdec_rq_probe", "encdec_q_probe"), T5GEMMA,
             [("ms_marco", 500)], 3_000),
    "ed09": (["bare", "oracle", "random_tokens", "surr_doc"], NQ_RQ_Q,
             ["google/flan-t5-base", "google/flan-t5-large", "google/flan-t5-xl", "facebook/bart-large"],
             [("ms_marco", 400)], 19_200),
    "ed10": (["bare", "oracle", "random_tokens", "surr_doc"], NQ_RQ_Q, ["t5-small", "t5-base", "t5-large", "t5-3b"],
             [("ms_marco", 400)], 19_200),
    "plm01": (["bare", "oracle", "random_tokens", "surr_doc"], PLM, ["google/gemma-3-12b-it"], [("ms_marco", 400)], 3_200),
    "plm02": (EXP02, PLM, ["google/gemma-3-12b-it"], [("ms_marco", 400)], 10_400),
    "plm03": (["bare", "oracle", "random_tokens", "kw5", "kw10", "kw20", "wrong_kw10", "first_sentence",
               "wrong_sentence", "surr_template"], PLM, ["google/gemma-3-12b-it"], [("ms_marco", 400)], 8_000),
}


def test_the_track_specs_exist_with_their_conditions_modes_models_and_sizes():
    assert set(EXPECTED) <= set(spec_names())
    for name, (conditions, modes, models, data, jobs) in EXPECTED.items():
        spec = load_spec(name)
        assert [c.name for c in spec.conditions] == conditions, name
        assert spec.modes == modes and [m.name for m in spec.models] == models, name
        assert [(d.name, d.n) for d in spec.datasets] == data and {d.seed for d in spec.datasets} == {42}, name
        assert spec.size().score_jobs == jobs, name
        family = "decoder" if name.startswith("plm") else "encdec"
        assert all(resolve_model(m).family == family for m in models), name


def test_ed02_levels_are_exact_token_lengths_of_the_same_samples():
    spec = load_spec("ed02")
    assert [d.key for d in spec.datasets] == ["len98", "len256", "len512", "len1024", "len2048", "len4096"]
    assert [d.recipe for d in spec.datasets] == [
        {"pad_to_tokens": n, "max_doc_tokens": 98, "tokenizer": "scoring"} for n in (98, 256, 512, 1024, 2048, 4096)]


def test_shared_designs_share_condition_identities():
    """ed06 is ed01's work; ed08's nq/q cells are ed07's; kw10 builds surr_doc's prefix under its own name."""
    ed01, ed06 = load_spec("ed01"), load_spec("ed06")
    assert ed01.hashed_dict()["conditions"] == ed06.hashed_dict()["conditions"]
    assert ed01.hashed_dict()["datasets"] == ed06.hashed_dict()["datasets"] and ed01.modes == ed06.modes
    ed07, ed08 = load_spec("ed07"), load_spec("ed08")
    assert ed07.hashed_dict()["conditions"] == ed08.hashed_dict()["conditions"] and set(ed07.modes) < set(ed08.modes)
    plm02, exp02 = load_spec("plm02"), load_spec("exp02")
    assert [c.definition_hash() for c in plm02.conditions] == [c.definition_hash() for c in exp02.conditions]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_analysis_plans_name_only_what_the_spec_scores(name):
    spec = load_spec(name)
    plan = normalize_plan(plan_from_spec(spec))
    assert plan.unknown_keys == ()
    conditions, modes = {c.name for c in spec.conditions}, set(spec.modes)
    arms = {f"{c}@{m}" for c in conditions for m in modes}
    for design in plan.factorials:
        assert all(cell in conditions | arms for row in design.cells for cell in row), design
    for effect in plan.mode_effects:
        assert {effect.with_mode, effect.without_mode} <= modes and set(effect.conditions) <= conditions
    for dec in plan.decompositions:
        assert {dec.part, dec.whole} <= conditions
    assert {a for pair in plan.contrasts for a in pair} <= conditions
    assert plan.structural is None or set(plan.structural) <= conditions


def test_the_seed_silent_choices_are_written_into_the_descriptions():
    def text(name: str) -> str:
        return " ".join(load_spec(name).description.split())

    assert all(x in text("plm01") for x in ("look-ahead", "+0.452", "-0.362", "measures these effects correctly"))
    assert "max_doc_tokens: 98" in text("ed02") and "partner order" in text("ed02")
    assert "by analogy with decoder-only Exp 02" in text("plm02")
    assert "by analogy with encoder-decoder Exp 04" in text("plm03")
    assert "we add the fourth" in text("ed05") and "Q vocabulary ids" in text("ed01")


def test_tracker_experiments_lists_the_tracks():
    out = CliRunner().invoke(cli, ["experiments"])
    assert out.exit_code == 0, out.output
    assert "2400 x 4 x 1 = 9600" in out.output  # ed02: six levels of 400
    assert "500 x 2 x 1 x 3 = 3000" in out.output  # ed08
    assert "400 x 4 x 4 x 3 = 19200" in out.output  # ed09 / ed10
    assert "400 x 13 x 1 x 2 = 10400" in out.output  # plm02


@pytest.fixture(scope="module")
def data500(tmp_path_factory) -> str:
    return str(write_synthetic_data_dir(tmp_path_factory.mktemp("data500"), 500, ("ms_marco", "neural_bridge")))


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"ed02"}))
def test_full_size_dry_run_on_the_shipped_models(sqlite_url, data500, name):
    datasets.clear_cache()
    before = table_counts(sqlite_url)
    report = enqueue(name, db=sqlite_url, data_dir=data500, dry_run=True, tokenizers=load_tokenizer)
    assert report.stage(1).score.created == EXPECTED[name][4]
    assert report.stage(1).generate.created == (2_000 if name == "plm02" else 0)
    assert table_counts(sqlite_url) == before


def test_ed02_on_its_hub_model_without_the_hub_names_the_tokenizer(sqlite_url, data500, monkeypatch):
    datasets.clear_cache()
    monkeypatch.setattr("workers.tokenizers.hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DatasetError, match="google/t5gemma-2-4b-4b") as err:
        enqueue("ed02", db=sqlite_url, data_dir=data500, dry_run=True, tokenizers=load_tokenizer)
    assert "--model" in err.value.hint
