"""`tracker compare` on two synthetic runs with a known shift: the same numbers as
compare_experiment, one JSON document, flips marked in the table, a figure."""
from __future__ import annotations

import json

from click.testing import CliRunner
from test_analysis_compare import FIRST, SECOND, second_run

from analysis.compare import compare_experiment
from analysis.synthetic import make_run, write_run
from tracker.cli import cli
from tracker.db import create_tracker_engine


def two_runs(url: str):
    engine = create_tracker_engine(url)
    write_run(engine, make_run(experiment="cmp", datasets=("alpha", "beta"), n_per_dataset=25, effects=FIRST, seed=70))
    write_run(engine, second_run(SECOND))
    return engine


def test_compare_json_is_one_document_equal_to_the_library(sqlite_url, tmp_path):
    engine = two_runs(sqlite_url)
    expected = compare_experiment(engine, "cmp", by="run")
    figure = tmp_path / "cmp.png"
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "compare", "cmp", "--by", "run", "--format", "json",
                                      "--figure", str(figure)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["by"], doc["a"], doc["b"]) == ("run", "1", "2")
    assert len(doc["rows"]) == len(expected) == 9
    for row, (_, want) in zip(doc["rows"], expected.iterrows()):
        assert (row["dataset"], row["condition"], row["n"]) == (want["dataset"], want["condition"], want["n"])
        assert abs(row["d_a"] - want["d_a"]) < 1e-12 and abs(row["d_b"] - want["d_b"]) < 1e-12
        assert row["sign_flip"] == bool(want["sign_flip"])
    assert figure.stat().st_size > 1000


def test_compare_table_marks_the_flipped_conclusions(sqlite_url):
    engine = two_runs(sqlite_url)
    flips = compare_experiment(engine, "cmp", by="run")
    flipped = flips[flips["sign_flip"]]
    assert set(flipped["condition"]) == {"hurts"}  # -0.5 -> +0.5: the known shift
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "compare", "cmp", "--by", "run", "--a", "1", "--b", "2"])
    assert result.exit_code == 0, result.output
    flip_lines = [line for line in result.stdout.splitlines() if line.rstrip().endswith("FLIP")]
    assert len(flip_lines) == len(flipped) and all("hurts" in line for line in flip_lines)
    assert f"{len(flipped)} of {len(flips)} effects flip sign" in result.stdout


def test_compare_errors_name_the_sides(sqlite_url):
    two_runs(sqlite_url)
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "compare", "cmp", "--by", "run", "--a", "1", "--b", "7"])
    assert result.exit_code == 1 and "Error: No scores with run '7'" in result.output and "Hint: run values: 1, 2" \
        in result.output
