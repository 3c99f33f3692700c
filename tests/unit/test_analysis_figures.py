"""Figures: every format on disk at the asked dpi, readable heatmap text, a forest plot that a bad CI cannot wreck."""
from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection

from analysis.figures import (
    forest_plot,
    heatmap,
    make_figures,
    robust_limits,
    save_figures,
    text_colour,
)
from analysis.report import build_report
from analysis.synthetic import make_run

EFFECTS = pd.DataFrame({
    "condition": ["a", "b", "c", "d"],
    "dataset": ["x"] * 4,
    "d": [0.2, -0.5, 1.2, 0.1],
    "ci_low": [0.0, -50.0, None, 0.05],  # b: a degenerate CI; c: withheld
    "ci_high": [0.4, 0.1, None, 0.15],
    "mark": ["*", "ns", "***", "ns"],
    "n": [5, 6, 7, 8],
})


@pytest.fixture(scope="module")
def report():
    run = make_run(datasets=("alpha", "beta"), n_per_dataset=20, effects={"helps": 0.8, "hurts": -0.5}, seed=60)
    return build_report(run.results_frame(), {}, experiment="syn", bootstrap=100)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_every_figure_is_written_as_png_pdf_and_svg_at_the_given_dpi(report, tmp_path):
    figures = make_figures(report)
    paths = save_figures(report, tmp_path, dpi=50)
    assert len(paths) == 3 * len(figures)
    for filename, fig in figures.items():
        stem = filename.removesuffix(".png")
        assert (tmp_path / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
        assert b"<svg" in (tmp_path / f"{stem}.svg").read_bytes()[:2000]
        width, height = fig.get_size_inches()
        assert png_size(tmp_path / f"{stem}.png") == pytest.approx((width * 50, height * 50), abs=1)


def test_default_dpi_is_200(report, tmp_path):
    save_figures(report, tmp_path, formats=("png",))
    width, _ = make_figures(report)["forest_main.png"].get_size_inches()
    assert png_size(tmp_path / "forest_main.png")[0] == pytest.approx(width * 200, abs=1)
    assert not list(tmp_path.glob("*.svg"))


def test_forest_rows_are_sorted_by_d_and_carry_mark_and_n():
    ax = forest_plot(EFFECTS, "t").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["c", "a", "d", "b"]  # d = 1.2, 0.2, 0.1, -0.5
    labels = {t.get_text() for t in ax.texts}
    assert {"* n=5", "ns n=6", "*** n=7", "ns n=8"} <= labels


def test_a_ci_of_minus_fifty_does_not_blow_up_the_axis():
    ax = forest_plot(EFFECTS, "t").axes[0]
    low, high = ax.get_xlim()
    assert -3.9 <= low <= -0.5 and 1.2 <= high <= 5.0  # d's span 1.7: at most twice it beyond
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars) == 3  # c's CI is withheld: no bar
    arrows = [line for line in ax.lines if line.get_marker() == "<"]
    assert len(arrows) == 1 and arrows[0].get_xdata()[0] == pytest.approx(low)


def test_robust_limits_keep_reasonable_cis_whole():
    assert robust_limits(np.array([0.2, 0.4]), np.array([0.0, 0.1]), np.array([0.5, 0.9])) == pytest.approx((-0.045, 0.945))
    low, high = robust_limits(np.array([0.2]), np.array([-1e6]), np.array([np.nan]))
    assert low == pytest.approx(-0.025) and high == pytest.approx(0.225)  # the absurd bound is ignored


def test_heatmap_text_is_white_on_dark_cells_and_black_on_light():
    matrix = pd.DataFrame([[-2.0, 0.0, 2.0]], index=["cond"], columns=[1, 2, 3])
    ax = heatmap(matrix, "t", "bin").axes[0]
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours == {"-2.00": "white", "+0.00": "black", "+2.00": "white"}  # RdBu ends are dark
    assert text_colour((0.0, 0.0, 0.0, 1.0)) == "white" and text_colour((1.0, 1.0, 0.8, 1.0)) == "black"
