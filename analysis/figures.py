"""Figures for a report: forest plots of d, hardness heatmaps and the per-experiment plots.

Built with matplotlib's object API on the Agg canvas (``matplotlib.figure.Figure``), so no
pyplot state or GUI backend is touched and figures are safe in workers and tests.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.report_data import ReportData
from analysis.views import POOLED

DPI = 200
FORMATS = ("png", "pdf", "svg")
# Luminance below which white text has more contrast than black (WCAG contrast ratios:
# (1.05) / (L + 0.05) against white vs (L + 0.05) / 0.05 against black are equal here).
DARK_LUMINANCE = 0.179


def _new_figure(width: float, height: float, dpi: int = DPI) -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def relative_luminance(rgba) -> float:
    """WCAG relative luminance of an sRGB colour (0 = black, 1 = white)."""
    channels = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]


def text_colour(rgba) -> str:
    """White on dark cells, black on light ones: whichever contrasts more with the cell."""
    return "white" if relative_luminance(rgba) < DARK_LUMINANCE else "black"


def robust_limits(points: np.ndarray, lows: np.ndarray, highs: np.ndarray, *, include_zero: bool = True) -> tuple[float, float]:
    """Axis limits that show every point estimate and the CIs that are of a reasonable size.

    The span of the point estimates (at least 0.5 wide) may be extended by twice itself on
    each side to fit CI bounds; a bound beyond that is clipped (and drawn as an arrow), so one
    degenerate CI of -50 cannot squeeze every other row into a pixel.
    """
    pts = np.asarray(points, dtype=float)
    pts = pts[np.isfinite(pts)]
    base = np.concatenate([pts, [0.0]]) if include_zero else pts
    if base.size == 0:
        return -1.0, 1.0
    a, b = float(base.min()), float(base.max())
    span = max(b - a, 0.5)
    far_low, far_high = a - 2 * span, b + 2 * span
    bounds = np.concatenate([np.asarray(lows, dtype=float), np.asarray(highs, dtype=float)])
    bounds = bounds[np.isfinite(bounds) & (bounds >= far_low) & (bounds <= far_high)]
    lo, hi = min(a, *bounds) if bounds.size else a, max(b, *bounds) if bounds.size else b
    pad = 0.05 * max(hi - lo, 0.5)
    return max(lo - pad, far_low), min(hi + pad, far_high)


def _draw_intervals(ax, centre: np.ndarray, pos: np.ndarray, lows: np.ndarray, highs: np.ndarray,
                    limits: tuple[float, float], *, color, vertical: bool = False) -> None:
    """CI bars clipped to ``limits``; a clipped end gets an arrow head, a withheld CI no bar."""
    lim_lo, lim_hi = limits
    for c, p, lo, hi in zip(centre, pos, lows, highs):
        if not (np.isfinite(c) and np.isfinite(lo) and np.isfinite(hi)):
            continue
        a, b = max(lo, lim_lo), min(hi, lim_hi)
        if vertical:
            ax.vlines(p, a, b, color=color, lw=1.0)
        else:
            ax.hlines(p, a, b, color=color, lw=1.0)
        for end, clipped, arrow in ((a, lo < lim_lo, "v" if vertical else "<"), (b, hi > lim_hi, "^" if vertical else ">")):
            marker = arrow if clipped else ("_" if vertical else "|")
            xy = (p, end) if vertical else (end, p)
            ax.plot(*xy, marker=marker, color=color, ms=6 if clipped else 5, clip_on=False)


def _fit(fig: Figure, *, left_labels=(), bottom: float = 0.6, top: float = 0.4, right: float = 0.25, wspace: float | None = None) -> None:
    """Margins from the label lengths (in inches); much cheaper than ``tight_layout``."""
    width, height = fig.get_size_inches()
    left = 0.3 + 0.085 * max((len(str(label)) for label in left_labels), default=4)
    fig.subplots_adjust(
        left=min(left / width, 0.6), right=1 - right / width, bottom=min(bottom / height, 0.45),
        top=1 - min(top / height, 0.3), wspace=wspace,
    )


def _slug(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)).strip("-") for p in parts if p)


def _scopes(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(model, mode, rows) per scope; a scope suffix is only needed when there are several."""
    if frame.empty:
        return []
    return [(str(model), str(mode), group) for (model, mode), group in frame.groupby(["model", "mode"], sort=False)]


def _per_model(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return [] if frame.empty else [(str(m), g) for m, g in frame.groupby("model", sort=False)]


def _summary(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["dataset"] == POOLED] if (frame["dataset"] == POOLED).any() else frame


def forest_order(effects: pd.DataFrame) -> list[str]:
    """Conditions by descending d (pooled d when there is one, else the mean over datasets); no d last."""
    summary = _summary(effects)
    d = summary.groupby("condition", sort=False)["d"].apply(lambda x: pd.to_numeric(x, errors="coerce").mean())
    known = list(dict.fromkeys(effects["condition"]))
    return sorted(known, key=lambda c: (-d.get(c) if pd.notna(d.get(c, np.nan)) else np.inf, known.index(c)))


def forest_plot(effects: pd.DataFrame, title: str) -> Figure:
    """d with its bootstrap CI per condition, sorted by d, one marker per dataset (pooled a
    diamond), each row labelled with its significance mark and n; withheld CIs draw no bar."""
    conditions = forest_order(effects)
    datasets = list(dict.fromkeys(effects["dataset"]))
    fig = _new_figure(8.0, 0.9 + 0.38 * len(conditions) * max(1, min(len(datasets), 3)) ** 0.5)
    ax = fig.add_subplot()
    d_all = pd.to_numeric(effects["d"], errors="coerce").to_numpy(dtype=float)
    limits = robust_limits(d_all, pd.to_numeric(effects["ci_low"], errors="coerce").to_numpy(dtype=float),
                           pd.to_numeric(effects["ci_high"], errors="coerce").to_numpy(dtype=float))
    step = 0.8 / max(len(datasets), 1)
    for k, ds in enumerate(datasets):
        rows = effects[effects["dataset"] == ds].set_index("condition").reindex(conditions)
        y = np.arange(len(conditions)) + (k - (len(datasets) - 1) / 2) * step
        d = pd.to_numeric(rows["d"], errors="coerce").to_numpy(dtype=float)
        lo = pd.to_numeric(rows["ci_low"], errors="coerce").to_numpy(dtype=float)
        hi = pd.to_numeric(rows["ci_high"], errors="coerce").to_numpy(dtype=float)
        pooled = ds == POOLED
        colour = "black" if pooled else f"C{k % 10}"
        _draw_intervals(ax, d, y, lo, hi, limits, color=colour)
        ax.plot(np.clip(d, *limits), y, "D" if pooled else "o", ms=6 if pooled else 4, color=colour, label=ds, ls="none")
        for yi, mark, n in zip(y, rows["mark"], rows["n"]):
            if isinstance(mark, str):
                label = f"{mark} n={int(n)}" if pd.notna(n) else mark
                ax.annotate(label, (1.0, yi), xycoords=("axes fraction", "data"), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=6, color=colour)
    ax.set_xlim(*limits)
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(conditions)), conditions)
    ax.invert_yaxis()
    ax.set_xlabel("Cohen's d of paired deltas (positive = condition helps), 95% BCa bootstrap CI\n"
                  "(arrow: CI runs past the axis; no bar: CI withheld)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    _fit(fig, left_labels=conditions, right=0.95, bottom=0.8)
    return fig


def heatmap(matrix: pd.DataFrame, title: str, xlabel: str, ax=None, fig: Figure | None = None) -> Figure:
    """Diverging heatmap of d (rows conditions, columns bins), value printed in each cell."""
    standalone = ax is None
    if ax is None:
        fig = _new_figure(2.5 + 0.9 * matrix.shape[1], 1.2 + 0.35 * matrix.shape[0])
        ax = fig.add_subplot()
    values = matrix.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-vmax or -1, vmax=vmax or 1, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns])
    ax.set_yticks(range(matrix.shape[0]), [str(r) for r in matrix.index])
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7,
                    color=text_colour(image.cmap(image.norm(v))))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8, label="d")
    if standalone:
        _fit(fig, left_labels=matrix.index, right=0.2)
    return fig


def hardness_figure(hardness: pd.DataFrame, title: str) -> Figure:
    """One heatmap per hardness measure, side by side (selection-based vs independent)."""
    measures = list(dict.fromkeys(hardness["measure"]))
    conditions = list(dict.fromkeys(hardness["condition"]))
    fig = _new_figure(1.5 + 5.0 * len(measures), 1.4 + 0.35 * len(conditions))
    for k, measure in enumerate(measures):
        rows = _summary(hardness[hardness["measure"] == measure])
        matrix = rows.pivot_table(index="condition", columns="quintile", values="d", aggfunc="first", sort=False)
        matrix = matrix.reindex(conditions)
        ax = fig.add_subplot(1, len(measures), k + 1)
        heatmap(matrix, f"quintiles of {measure} (Q5 hardest)", "hardness quintile", ax=ax, fig=fig)
        if k:
            ax.set_yticklabels([])
    fig.suptitle(title, fontsize=10)
    _fit(fig, left_labels=conditions, top=0.7, wspace=0.15)
    return fig


def gradient_figure(values: pd.DataFrame, summary: pd.DataFrame, title: str) -> Figure:
    """Mean delta along the spec's semantic order, one line per dataset, rho in the legend."""
    fig = _new_figure(7.5, 4.0)
    ax = fig.add_subplot()
    order = list(dict.fromkeys(values.sort_values("position")["condition"]))
    for ds, rows in values.groupby("dataset", sort=False):
        rows = rows.sort_values("position")
        rho = summary.loc[summary["dataset"] == ds, "rho"]
        label = f"{ds} (rho={rho.iloc[0]:+.2f})" if len(rho) and pd.notna(rho.iloc[0]) else str(ds)
        ax.plot(rows["position"], rows["mean_delta"].astype(float), marker="o", label=label)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(1, len(order) + 1), order, rotation=30, ha="right")
    ax.set_ylabel("mean delta vs reference")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    _fit(fig, bottom=1.1)
    return fig


def structural_figure(structural: pd.DataFrame, title: str) -> Figure:
    """Structural fraction d(random)/d(oracle) per dataset with its bootstrap CI."""
    fig = _new_figure(6.0, 3.5)
    ax = fig.add_subplot()
    x = np.arange(len(structural))
    frac = pd.to_numeric(structural["fraction"], errors="coerce").to_numpy(dtype=float)
    lo = pd.to_numeric(structural["ci_low"], errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(structural["ci_high"], errors="coerce").to_numpy(dtype=float)
    limits = robust_limits(np.append(frac, 1.0), lo, hi)
    ax.bar(x, np.clip(np.nan_to_num(frac), *limits), color="#7a9cc6")
    _draw_intervals(ax, frac, x, lo, hi, limits, color="black", vertical=True)
    ax.set_ylim(*limits)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, structural["dataset"].astype(str))
    ax.set_ylabel("d(random) / d(oracle)")
    ax.set_title(title, fontsize=10)
    _fit(fig)
    return fig


def ranking_figure(ranking: pd.DataFrame, title: str) -> Figure:
    """Share of samples where each condition has the lowest NLL (pooled)."""
    rows = _summary(ranking).sort_values("share_best")
    fig = _new_figure(6.0, 1.0 + 0.3 * len(rows))
    ax = fig.add_subplot()
    ax.barh(rows["condition"].astype(str), rows["share_best"].astype(float), color="#8fbf8f")
    ax.set_xlabel("share of samples where best")
    ax.set_title(title, fontsize=10)
    _fit(fig, left_labels=rows["condition"])
    return fig


def factorial_figure(factorial: pd.DataFrame, title: str) -> Figure:
    """d of every factorial contrast and step (pooled), with CIs."""
    rows = _summary(factorial)
    labels = [f"{r.factorial}: {r.contrast} {r.step}" for r in rows.itertuples()]
    fig = _new_figure(7.0, 1.0 + 0.32 * len(rows))
    ax = fig.add_subplot()
    d = pd.to_numeric(rows["d"], errors="coerce").to_numpy(dtype=float)
    lo = pd.to_numeric(rows["ci_low"], errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(rows["ci_high"], errors="coerce").to_numpy(dtype=float)
    limits = robust_limits(d, lo, hi)
    y = np.arange(len(rows))
    _draw_intervals(ax, d, y, lo, hi, limits, color="C0")
    ax.plot(np.clip(d, *limits), y, "o", color="C0", ls="none")
    ax.set_xlim(*limits)
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("d")
    ax.set_title(title, fontsize=10)
    _fit(fig, left_labels=labels)
    return fig


def attention_figure(attention: pd.DataFrame, title: str) -> Figure:
    """Mean share (95% CI) of each target per cell (condition@mode), one panel per softmax."""
    rows = _summary(attention).copy()
    rows["cell"] = rows["condition"].astype(str) + "@" + rows["mode"].astype(str)
    softmaxes = list(dict.fromkeys(rows["softmax"]))
    cells = list(dict.fromkeys(rows["cell"]))
    fig = _new_figure(2.0 + 4.5 * len(softmaxes), 3.8)
    width = 0.8 / max(len(cells), 1)
    for k, softmax in enumerate(softmaxes):
        ax = fig.add_subplot(1, len(softmaxes), k + 1)
        part = rows[rows["softmax"] == softmax]
        targets = list(dict.fromkeys(part["target"]))
        x = np.arange(len(targets))
        for j, cell in enumerate(cells):
            values = part[part["cell"] == cell].set_index("target").reindex(targets)
            mean = values["mean_share"].astype(float).to_numpy()
            err = np.vstack([np.nan_to_num(mean - values["ci_low"].astype(float).to_numpy()),
                             np.nan_to_num(values["ci_high"].astype(float).to_numpy() - mean)])
            ax.bar(x + (j - (len(cells) - 1) / 2) * width, np.nan_to_num(mean), width, yerr=err, capsize=2,
                   label=cell)
        ax.set_xticks(x, targets, rotation=30, ha="right")
        ax.set_title(f"{softmax} softmax", fontsize=9)
        ax.set_ylabel("mean share of answer-token attention" if k == 0 else "")
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _fit(fig, bottom=1.0, top=0.6, wspace=0.3)
    return fig


def attention_layer_figure(by_layer: pd.DataFrame, title: str) -> Figure:
    """Mean share per decoder layer, one panel per (softmax, target), one line per cell."""
    rows = _summary(by_layer).copy()
    rows["cell"] = rows["condition"].astype(str) + "@" + rows["mode"].astype(str)
    panels = list(dict.fromkeys(zip(rows["softmax"], rows["target"])))
    cols = min(4, len(panels))
    n_rows = -(-len(panels) // cols)
    fig = _new_figure(1.0 + 3.2 * cols, 0.8 + 2.6 * n_rows)
    for k, (softmax, target) in enumerate(panels):
        ax = fig.add_subplot(n_rows, cols, k + 1)
        part = rows[(rows["softmax"] == softmax) & (rows["target"] == target)]
        for cell, line in part.groupby("cell", sort=False):
            line = line.sort_values("layer")
            ax.plot(line["layer"], line["mean_share"].astype(float), marker=".", label=cell)
        ax.set_title(f"{softmax}: {target}", fontsize=8)
        ax.set_xlabel("layer", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    _fit(fig, top=0.6, wspace=0.35)
    fig.subplots_adjust(hspace=0.55)
    return fig


def make_figures(report: ReportData) -> dict[str, Figure]:
    """Every figure the report's tables support, keyed by file name (``*.png``)."""
    figs: dict[str, Figure] = {}
    multi = len(report.info.get("models", [])) > 1 or len(report.info.get("modes", [])) > 1
    name = report.experiment

    def key(kind: str, model: str = "", mode: str = "") -> str:
        return _slug(kind, *((model, mode) if multi else ())) + ".png"

    effects = report.effects
    for (table, model, mode, ref), rows in (
        effects.groupby(["table", "model", "mode", "reference"], sort=False) if not effects.empty else []
    ):
        suffix = "" if ref == report.info.get("reference") or table == "comparison" else f"_vs_{ref}"
        figs[key(f"forest_{table}{suffix}", model, mode)] = forest_plot(rows, f"{name}: {table} effects vs {ref}")
    for model, mode, rows in _scopes(report.tables.get("hardness", pd.DataFrame())):
        if np.isfinite(rows["d"].astype(float)).any():  # too few samples leave every bin without a d
            figs[key("hardness_heatmap", model, mode)] = hardness_figure(rows, f"{name}: d by hardness quintile")
    gradient = report.tables.get("gradient", pd.DataFrame())
    for model, mode, rows in _scopes(report.tables.get("gradient_values", pd.DataFrame())):
        summary = gradient[(gradient["model"] == model) & (gradient["mode"] == mode)]
        figs[key("semantic_gradient", model, mode)] = gradient_figure(rows, summary, f"{name}: semantic gradient")
    for model, mode, rows in _scopes(report.tables.get("structural", pd.DataFrame())):
        figs[key("structural_fraction", model, mode)] = structural_figure(rows, f"{name}: structural fraction")
    for model, mode, rows in _scopes(report.tables.get("ranking", pd.DataFrame())):
        figs[key("ranking", model, mode)] = ranking_figure(rows, f"{name}: share best")
    for model, mode, rows in _scopes(report.tables.get("factorial", pd.DataFrame())):
        figs[key("factorial", model, mode)] = factorial_figure(rows, f"{name}: factorial contrasts")
    for model, rows in _per_model(report.tables.get("attention", pd.DataFrame())):
        figs[_slug("attention_shares", model) + ".png"] = attention_figure(rows, f"{name}: attention shares ({model})")
    for model, rows in _per_model(report.tables.get("attention_by_layer", pd.DataFrame())):
        figs[_slug("attention_by_layer", model) + ".png"] = attention_layer_figure(
            rows, f"{name}: attention shares per layer ({model})")
    length = report.tables.get("answer_length", pd.DataFrame())
    for model, mode, rows in _scopes(length[length["reference"] == report.info.get("reference")] if not length.empty else length):
        matrix = _summary(rows).pivot_table(index="condition", columns="answer_words", values="d", aggfunc="first", sort=False)
        figs[key("answer_length_heatmap", model, mode)] = heatmap(matrix, f"{name}: d by answer length", "answer words")
    return figs


def save_figures(report: ReportData, directory: str | Path, *, formats: tuple[str, ...] = FORMATS,
                 dpi: int = DPI) -> list[Path]:
    """Write every figure into ``directory`` once per format (PNG, PDF, SVG); returns the paths.

    ``dpi`` sets the PNG's resolution (PDF and SVG are vector, their text stays text).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, fig in make_figures(report).items():
        for fmt in formats:
            path = directory / Path(filename).with_suffix(f".{fmt}").name
            fig.savefig(path, dpi=dpi, format=fmt)
            paths.append(path)
    return paths
