"""Plain-text rendering of a report: the seed's findings tables, in the seed's wording.

Each effect reads like the seed ("surr_extractor d=+0.264 (***), win=68.0%") and adds the
CI, Holm p and n beside it.
"""
from __future__ import annotations

import pandas as pd

from analysis.report_data import ReportData
from analysis.views import POOLED

TABLE_TITLES = {
    "main": "Effects vs {ref} (all complete pairs)",
    "hard": "Hard examples: effects vs {ref}",
    "semantic": "Semantic delta vs {ref} ({population})",
    "comparison": "Paired comparisons (delta = NLL(reference) - NLL(condition))",
}


def _num(x, fmt: str = "{:+.3f}") -> str:
    return "n/a" if x is None or pd.isna(x) else fmt.format(x)


def _p(x) -> str:
    if x is None or pd.isna(x):
        return "n/a"
    return f"{x:.1e}" if x < 0.001 else f"{x:.3f}"


def _ci(low, high, note, fmt: str = "{:+.3f}") -> str:
    """``[low, high]``; ``[CI withheld]`` where the statistics withheld it; blank without a bootstrap."""
    if low is not None and not pd.isna(low):
        return f"[{_num(low, fmt)}, {_num(high, fmt)}]"
    return "[CI withheld]" if isinstance(note, str) and "withheld" in note else ""


def effect_line(row) -> str:
    """One effect in the seed's words, with CI, p's and n."""
    ci = _ci(row.ci_low, row.ci_high, row.note)
    win = _num(row.win_rate, "{:.1%}")
    note = f"  ({row.note})" if isinstance(row.note, str) and row.note else ""
    return (
        f"{row.condition:<24} d={_num(row.d)} {ci:<17} ({row.mark}), win={win:<6} "
        f"mean={_num(row.mean_delta, '{:+.4f}')}  p={_p(row.p_ttest)} p_holm={_p(row.p_holm)} "
        f"p_wilcoxon={_p(row.p_wilcoxon)} n={row.n}{note}"
    )


def _scope(model: str, mode: str, multi: bool) -> str:
    return f" [{model} / {mode}]" if multi else ""


def _effects_section(report: ReportData, multi: bool) -> list[str]:
    lines: list[str] = []
    eff = report.effects
    if eff.empty:
        return lines
    for (table, population, model, mode, ref), group in eff.groupby(
        ["table", "population", "model", "mode", "reference"], sort=False
    ):
        title = TABLE_TITLES.get(table, table).format(ref=ref, population=population)
        lines.append(f"\n== {title}{_scope(model, mode, multi)} ==")
        for dataset, rows in group.groupby("dataset", sort=False):
            lines.append(f"-- {dataset} --")
            lines.extend("  " + effect_line(r) for r in rows.itertuples())
    return lines


def _pivot_lines(frame: pd.DataFrame, index: str, columns: str, values: str, fmt: str = "{:+.3f}") -> list[str]:
    table = frame.pivot_table(index=index, columns=columns, values=values, aggfunc="first", sort=False)
    if table.empty:
        return ["  (no values: too few samples)"]
    shown = table.map(lambda x: _num(x, fmt))
    return ["  " + line for line in shown.to_string().splitlines()]


def _summary_dataset(frame: pd.DataFrame) -> pd.DataFrame:
    """The pooled rows when there are several datasets, else the only dataset's."""
    return frame[frame["dataset"] == POOLED] if (frame["dataset"] == POOLED).any() else frame


def _structural_section(report: ReportData) -> list[str]:
    table = report.tables.get("structural")
    if table is None or table.empty:
        return []
    lines = ["\n== Structural fraction d(random)/d(oracle) =="]
    for r in table.itertuples():
        lines.append(
            f"  {r.dataset:<12} fraction={_num(r.fraction, '{:.0%}')} {_ci(r.ci_low, r.ci_high, r.note, '{:.0%}')}"
            f"  d_random={_num(r.d_random)} d_oracle={_num(r.d_oracle)}  semantic (random - oracle) "
            f"d={_num(r.semantic_d)} p={_p(r.semantic_p)} n={r.n}" + (f"  ({r.note})" if r.note else "")
        )
    return lines


def _ranking_section(report: ReportData) -> list[str]:
    table = report.tables.get("ranking")
    if table is None or table.empty:
        return []
    lines = ["\n== Ranking (1 = lowest NLL) =="]
    multi = table["model"].nunique() > 1
    for (model, mode, dataset), group in _summary_dataset(table).groupby(["model", "mode", "dataset"], sort=False):
        lines.append(f"-- {dataset} (n={group['n'].iloc[0]}){f' [{model}]' if multi else ''} --")
        for r in group.sort_values("mean_rank").itertuples():
            lines.append(f"  {r.condition:<24} mean rank {_num(r.mean_rank, '{:.2f}')}  best in {_num(r.share_best, '{:.1%}')}")
    return lines


def _hardness_section(report: ReportData) -> list[str]:
    table = report.tables.get("hardness")
    if table is None or table.empty:
        return []
    lines = []
    multi = table[["model", "mode"]].drop_duplicates().shape[0] > 1
    for (model, mode, measure), group in table.groupby(["model", "mode", "measure"], sort=False):
        lines.append(f"\n== d by hardness quintile of {measure} (Q5 hardest){_scope(model, mode, multi)} ==")
        lines += _pivot_lines(_summary_dataset(group), "condition", "quintile", "d")
    return lines


def _gradient_section(report: ReportData) -> list[str]:
    table = report.tables.get("gradient")
    if table is None or table.empty:
        return []
    lines = ["\n== Semantic gradient (Spearman rho of the spec's order vs mean delta) =="]
    for r in table.itertuples():
        lines.append(f"  {r.dataset:<12} rho={_num(r.rho)} p={_p(r.p)} ({r.mark}) n={r.n}" + (f"  {r.note}" if r.note else ""))
    return lines


def _factorial_section(report: ReportData) -> list[str]:
    table = report.tables.get("factorial")
    if table is None or table.empty:
        return []
    lines = ["\n== Factorial contrasts =="]
    rows = _summary_dataset(table)
    multi = rows["dataset"].nunique() > 1 or rows["model"].nunique() > 1
    for r in rows.itertuples():
        share = f" share={_num(r.share_of_total, '{:.0%}')}" if r.share_of_total is not None and not pd.isna(r.share_of_total) else ""
        scope = f" [{r.model} / {r.dataset}]" if multi else ""
        lines.append(f"  {r.factorial} {r.contrast:<20} {r.step:<16} d={_num(r.d)} ({r.mark}) n={r.n}{share}{scope}")
    return lines


def _decomposition_section(report: ReportData) -> list[str]:
    table = report.tables.get("decomposition")
    if table is None or table.empty:
        return []
    lines = ["\n== Decompositions d(part)/d(whole) =="]
    for r in table.itertuples():
        lines.append(
            f"  {r.decomposition} [{r.mode}] {r.dataset:<12} {r.part}/{r.whole} fraction={_num(r.fraction, '{:.0%}')} "
            f"{_ci(r.ci_low, r.ci_high, r.note, '{:.0%}')} d_part={_num(r.d_part)} "
            f"d_whole={_num(r.d_whole)} n={r.n}" + (f"  ({r.note})" if r.note else "")
        )
    return lines


def _attention_section(report: ReportData) -> list[str]:
    """Mean share (over samples, of each score's mean over answer tokens; mean over layers) per cell."""
    table = report.tables.get("attention")
    if table is None or table.empty:
        return []
    lines = []
    rows = _summary_dataset(table).copy()
    rows["cell"] = rows["condition"] + "@" + rows["mode"]
    for (model, softmax), group in rows.groupby(["model", "softmax"], sort=False):
        lines.append(f"\n== Attention shares of answer tokens, mean over layers [{model} / {softmax} softmax] ==")
        lines += _pivot_lines(group, "cell", "target", "mean_share", "{:.3f}")
    return lines


def _length_section(report: ReportData) -> list[str]:
    table = report.tables.get("answer_length")
    if table is None or table.empty:
        return []
    lines = []
    multi = table[["model", "mode"]].drop_duplicates().shape[0] > 1
    for (model, mode, ref), group in table.groupby(["model", "mode", "reference"], sort=False):
        lines.append(f"\n== d vs {ref} by answer length (words){_scope(model, mode, multi)} ==")
        lines += _pivot_lines(_summary_dataset(group), "condition", "answer_words", "d")
    return lines


def render_report(report: ReportData) -> str:
    """The whole report as text: header, notes, effects and the other tables' summaries."""
    info = report.info
    multi = len(info.get("models", [])) > 1 or len(info.get("modes", [])) > 1
    per_ds = ", ".join(f"{k} {v}" for k, v in info.get("n_per_dataset", {}).items())
    versions = ", ".join(f"{k}: {v or '-'}" for k, v in info.get("scorer_versions", {}).items())
    lines = [
        f"{report.experiment} run {report.run_id}: {info.get('n_samples', 0)} samples ({per_ds}); "
        f"models {', '.join(info.get('models', []))}; scorer {versions}; bootstrap {info.get('bootstrap')} seed {info.get('seed')}",
        f"Conventions: {info.get('conventions', '')}",
    ]
    lines += [f"Note: {n}" for n in report.notes]
    lines += _effects_section(report, multi)
    lines += _structural_section(report)
    lines += _gradient_section(report)
    lines += _ranking_section(report)
    lines += _hardness_section(report)
    lines += _factorial_section(report)
    lines += _decomposition_section(report)
    lines += _attention_section(report)
    lines += _length_section(report)
    return "\n".join(lines) + "\n"
