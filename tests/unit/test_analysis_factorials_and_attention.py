"""`tracker analyze` on completed tiny runs of the tracks: factorials, mode effects, attention, decompositions.

Every number checked here is recomputed from the stored scores and attention shares with
plain pandas (not the analysis package).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers.dataset_fixtures import FIXTURES, drain
from helpers.synth import write_synthetic_data_dir
from sqlalchemy import text

from analysis.mlflow_log import report_metrics  # noqa: E402
from analysis.report import analyze_experiment  # noqa: E402
from tracker.cli import cli  # noqa: E402
from tracker.datasets import clear_cache  # noqa: E402
from tracker.db import get_engine  # noqa: E402
from tracker.planning import enqueue  # noqa: E402
from tracker.specs import load_spec  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

N = 6



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(write_synthetic_data_dir(tmp_path_factory.mktemp("tracks_data"), 12, ("ms_marco",)))


def run(url: str, name: str, model: str, data_dir: str) -> None:
    clear_cache()
    enqueue(name, db=url, models=[model], limit=N, data_dir=data_dir, device="cpu", tokenizers=load_tokenizer)
    drain(url, model=model)


def nll_table(url: str, experiment: str) -> pd.DataFrame:
    """sample x (condition, mode) NLLs straight from the results view."""
    with get_engine(url).connect() as conn:
        rows = conn.execute(text("SELECT sample_id, condition, mode, nll FROM results WHERE experiment = :e"),
                            {"e": experiment}).all()
    frame = pd.DataFrame(rows, columns=["sample_id", "condition", "mode", "nll"])
    return frame.pivot(index="sample_id", columns=["condition", "mode"], values="nll")


def analyze_json(url: str, name: str, out: Path | None = None) -> dict:
    args = ["--db", url, "analyze", name, "--no-mlflow", "--format", "json", "--bootstrap", "50"]
    result = CliRunner().invoke(cli, args + (["--out", str(out)] if out else []))
    assert result.exit_code == 0, result.output
    assert "tables and figures written" not in result.stdout  # notes go to stderr: stdout is one JSON document
    return json.loads(result.stdout)


def cohens_d(x: np.ndarray) -> float:
    return float(x.mean() / x.std(ddof=1))


def test_ed08_analysis_has_the_2x3_interactions_mode_effects_and_attention_table(sqlite_url, data_dir, tmp_path):
    run(sqlite_url, "ed08", "tiny-random-t5gemma", data_dir)
    report = analyze_json(sqlite_url, "ed08", tmp_path / "out")
    nll = nll_table(sqlite_url, "ed08")
    cell = {(c, m): nll[(c, f"encdec_{m}_probe")].to_numpy() for c in ("bare", "oracle") for m in ("nq", "rq", "q")}

    factorial = [r for r in report["tables"]["factorial"] if r["contrast"] == "interaction"]
    assert {r["step"] for r in factorial} == {"nq->rq", "rq->q", "nq->q"}
    for row in factorial:
        a, b = row["step"].split("->")
        interaction = (cell[("bare", a)] - cell[("bare", b)]) - (cell[("oracle", a)] - cell[("oracle", b)])
        assert row["n"] == N and row["mean_delta"] == pytest.approx(interaction.mean(), abs=1e-9)
        assert row["d"] == pytest.approx(cohens_d(interaction), abs=1e-9)
    shares = {r["step"]: r["share_of_total"] for r in factorial}
    assert shares["nq->rq"] + shares["rq->q"] == pytest.approx(1.0)  # length + semantics = the whole interaction

    d_dec_q = [r for r in report["effects"] if r["table"] == "d_dec_q"]
    assert {r["condition"] for r in d_dec_q} == {"bare", "oracle"}
    for row in d_dec_q:
        delta = cell[(row["condition"], "nq")] - cell[(row["condition"], "q")]
        assert row["reference"] == "encdec_nq_probe" and row["mean_delta"] == pytest.approx(delta.mean(), abs=1e-9)

    with get_engine(sqlite_url).connect() as conn:
        raw = pd.DataFrame(conn.execute(text("""
            SELECT r.condition, r.mode, a.score_id, a.target, a.layer, a.share FROM attention_shares a
            JOIN results r ON r.score_id = a.score_id WHERE r.experiment = 'ed08'""")).all(),
            columns=["condition", "mode", "score_id", "target", "layer", "share"])
    per_score = raw.groupby(["condition", "mode", "target", "layer", "score_id"])["share"].mean()
    expected = per_score.groupby(["condition", "mode", "target", "layer"]).mean()
    table = report["tables"]["attention"]
    assert {r["layer"] for r in table} == {-1} and {r["softmax"] for r in table} == {"merged"}
    assert len(table) == 2 * 3 * 7  # cells x merged targets
    for row in table:
        assert row["n"] == N
        assert row["mean_share"] == pytest.approx(expected[(row["condition"], row["mode"], row["target"], -1)], abs=1e-9)
    by_layer = report["tables"]["attention_by_layer"]
    assert len(by_layer) == 2 * 3 * 7 * 2  # two decoder layers
    assert all(r["mean_share"] == pytest.approx(expected[(r["condition"], r["mode"], r["target"], r["layer"])], abs=1e-9)
               for r in by_layer)
    figures = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert {"attention_shares_tiny-random-t5gemma.png", "attention_by_layer_tiny-random-t5gemma.png"} <= figures
    assert (tmp_path / "out" / "tables" / "attention.csv").is_file()
    text_report = (tmp_path / "out" / "report.txt").read_text()
    assert "Attention shares of answer tokens" in text_report and "d_dec_q" in text_report


def test_separate_softmax_families_say_the_split_is_undefined(sqlite_url, data_dir):
    run(sqlite_url, "ed07", "tiny-random-bart", data_dir)
    spec = load_spec("ed07")
    from analysis.from_spec import plan_from_spec

    report = analyze_experiment(get_engine(sqlite_url), "ed07", plan_from_spec(spec), bootstrap=0)
    table = report.tables["attention"]
    assert set(table["softmax"]) == {"self", "cross"}
    assert set(zip(table["softmax"], table["target"])) == {
        ("self", "start"), ("self", "query"), ("self", "answer"), ("cross", "prefix"), ("cross", "doc")}
    assert all("undefined" in note for note in table["note"])
    assert any("no cross/self split" in note for note in report.notes)
    metrics = report_metrics(report)
    assert any(k.startswith("encdec_q_probe.attention.ms_marco.bare.cross.doc") for k in metrics)


def test_ed04_vocabulary_decomposition_and_ed06_answer_length_bins(sqlite_url, data_dir):
    run(sqlite_url, "ed04", "tiny-random-t5", data_dir)
    report = analyze_json(sqlite_url, "ed04")
    nll = nll_table(sqlite_url, "ed04")
    bare = nll[("bare", "encdec_q")].to_numpy()
    d = {c: cohens_d(bare - nll[(c, "encdec_q")].to_numpy()) for c in ("wrong_kw10", "kw10", "oracle")}
    rows = {r["decomposition"]: r for r in report["tables"]["decomposition"]}
    assert rows["vocabulary"]["fraction"] == pytest.approx(d["wrong_kw10"] / d["kw10"], abs=1e-9)
    assert rows["oracle_share"]["fraction"] == pytest.approx(d["kw10"] / d["oracle"], abs=1e-9)
    assert (rows["vocabulary"]["part"], rows["vocabulary"]["whole"]) == ("wrong_kw10", "kw10")

    run(sqlite_url, "ed06", "tiny-random-t5", str(FIXTURES))  # real answers of 1 to 6 words
    report = analyze_json(sqlite_url, "ed06")
    with get_engine(sqlite_url).connect() as conn:
        answers = conn.execute(text("SELECT DISTINCT s.id, s.answer FROM samples s JOIN results r ON r.sample_id = s.id "
                                    "WHERE r.experiment = 'ed06'")).all()
    bins = [("1-2", 1, 2), ("3-5", 3, 5), ("6-20", 6, 20), ("21+", 21, 10**6)]
    expected = {label: sum(lo <= len(a.split()) <= hi for _, a in answers) for label, lo, hi in bins}
    assert sum(v > 0 for v in expected.values()) >= 3  # the fixture spans three bins
    oracle = {r["answer_words"]: r["n"] for r in report["tables"]["answer_length"] if r["condition"] == "oracle"}
    assert oracle == expected
    structural = {r["answer_words"] for r in report["tables"]["answer_length_structural"]}
    assert structural == {label for label, _, _ in bins}


def test_ed09_gives_d_dec_q_and_the_factorial_per_model(sqlite_url, data_dir):
    clear_cache()
    models = ["tiny-random-t5", "tiny-random-bart"]
    enqueue("ed09", db=sqlite_url, models=models, limit=N, data_dir=data_dir, device="cpu", tokenizers=load_tokenizer)
    drain(sqlite_url, model=None)
    report = analyze_json(sqlite_url, "ed09")
    d_dec_q = [r for r in report["effects"] if r["table"] == "d_dec_q"]
    assert sorted((r["model"], r["condition"]) for r in d_dec_q) == sorted(
        (m, c) for m in models for c in ("bare", "oracle", "random_tokens", "surr_doc"))
    with get_engine(sqlite_url).connect() as conn:
        rows = conn.execute(text("SELECT model, sample_id, mode, nll FROM results "
                                 "WHERE experiment = 'ed09' AND condition = 'bare'")).all()
    frame = pd.DataFrame(rows, columns=["model", "sample_id", "mode", "nll"])
    for row in (r for r in d_dec_q if r["condition"] == "bare"):
        wide = frame[frame["model"] == row["model"]].pivot(index="sample_id", columns="mode", values="nll")
        assert row["d"] == pytest.approx(cohens_d((wide["encdec_nq"] - wide["encdec_q"]).to_numpy()), abs=1e-9)
    factorial = report["tables"]["factorial"]
    assert {(r["model"], r["step"]) for r in factorial if r["contrast"] == "interaction"} == {
        (m, s) for m in models for s in ("nq->rq", "rq->q", "nq->q")}
