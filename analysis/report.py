"""Per-experiment reports: a plan dict and the results rows in, tables out.

:func:`build_report` is pure (DataFrames in, :class:`AnalysisReport` out) so it is tested
without a database; :func:`analyze_experiment` adds the SQL loading.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from analysis import load, stats, tables
from analysis.provenance import score_digest
from analysis.render import render_report
from analysis.report_data import ReportData, frame_records
from analysis.tables import EFFECT_COLUMNS, HARDNESS_COLUMNS, Settings
from analysis.views import ModeView, build_views
from tracker.specs.plan import AnalysisPlan, normalize_plan

CONVENTIONS = (
    "delta = NLL(reference) - NLL(C), positive = C helps; d = mean(delta)/sd(delta, ddof=1); "
    "win = share with NLL(C) < NLL(reference), ties no win; marks from the uncorrected two-sided "
    "paired t-test (*** <0.001, ** <0.01, * <0.05); p_holm = Holm across the conditions of one "
    "table and dataset; Wilcoxon two-sided, zeros dropped; pooled = all datasets' per-sample "
    "deltas concatenated; CI = BCa bootstrap of d, withheld below n=10 or when the bootstrap degenerates; only complete pairs count."
)


class AnalysisReport(ReportData):
    """A report as ``tracker analyze`` prints it: the data plus its text rendering."""

    def render_text(self) -> str:
        return render_report(self)


__all__ = ["AnalysisReport", "analyze_experiment", "build_report", "frame_records", "relabel_datasets"]


def _frame(rows: list[dict], columns: list[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns) if columns else pd.DataFrame(rows)
    return frame


def _effect_pairs(view: ModeView, plan: AnalysisPlan) -> list[tuple[str, str]]:
    """Each own condition against the reference, then against every further reference."""
    pairs = []
    for ref in (plan.reference, *plan.references):
        if ref not in view.nll and view.resolve(ref) is None:
            continue
        pairs += [(c, ref) for c in view.conditions if c != ref and c not in view.borrowed]
    return pairs


def _model_arms(view: ModeView, plan: AnalysisPlan) -> dict[str, str]:
    """Every scored (condition, mode) of the view's model -> its table label.

    A condition scored in one mode only keeps its plain name; one scored in several modes
    is shown as ``condition@mode``. The reference comes first, then the plan's order.
    """
    modes_of: dict[str, list[str]] = {}
    for arm in view.arms:
        cond, mode = arm.split("@", 1)
        modes_of.setdefault(cond, []).append(mode)
    order = [plan.reference, *plan.conditions]
    conds = sorted(modes_of, key=lambda c: (order.index(c) if c in order else len(order), c))
    return {
        f"{c}@{m}": c if len(modes_of[c]) == 1 else f"{c}@{m}" for c in conds for m in sorted(modes_of[c])
    }


def _modes_label(view: ModeView) -> str:
    modes = sorted({arm.split("@", 1)[1] for arm in view.arms})
    return modes[0] if len(modes) == 1 else "*"


def _independent_hardness(view: ModeView, plan: AnalysisPlan, parity: pd.DataFrame | None) -> tuple[str, np.ndarray, dict] | None:
    """(measure, hardness, deltas) measured independently of the evaluated NLL, or None."""
    ref = plan.reference
    choice = plan.hardness_independent
    conds = [c for c in view.conditions if c not in (ref, "bare_nl")]
    if choice in ("auto", "bare_nl") and "bare_nl" in view.nll and ref in view.nll:
        deltas = {c: view.nll[ref] - view.nll[c] for c in conds}
        return "bare_nl", view.nll["bare_nl"], deltas
    if choice in ("auto", "odd_even") and parity is not None and not parity.empty and ref in view.nll:
        odd = parity.set_index("score_id")["nll_odd"]
        even = parity.set_index("score_id")["nll_even"]

        def per_sample(series: pd.Series, cond: str) -> np.ndarray:
            return series.reindex(view.score_id[cond]).to_numpy(dtype=float)  # [samples], NaN = none

        ref_even = per_sample(even, ref)
        deltas = {c: ref_even - per_sample(even, c) for c in conds if c in view.score_id}
        return "odd_even", per_sample(odd, ref), deltas
    return None


@dataclass
class _Collector:
    """Rows of every table, gathered view by view."""

    rows: dict[str, list[dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    done: set = field(default_factory=set)
    ranked: set = field(default_factory=set)

    def add(self, name: str, rows: list[dict]) -> None:
        self.rows.setdefault(name, []).extend(rows)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _hardness_tables(view: ModeView, plan: AnalysisPlan, out: _Collector, parity) -> None:
    """d per quintile of the reference NLL, and per quintile of an independent hardness."""
    ref = plan.reference
    own = [c for c in view.conditions if c != ref]
    deltas = {c: view.nll[ref] - view.nll[c] for c in own}
    out.add("hardness", tables.hardness_rows(
        view, measure=ref, reference=ref, hardness=view.nll[ref], deltas=deltas, bins=plan.hardness_bins
    ))
    independent = _independent_hardness(view, plan, parity)
    if independent is not None:
        measure, hardness, ind_deltas = independent
        out.add("hardness", tables.hardness_rows(
            view, measure=measure, reference=ref, hardness=hardness, deltas=ind_deltas, bins=plan.hardness_bins
        ))
    elif plan.hardness_independent != "none":
        out.note(f"{view.model}/{view.mode}: no independent hardness (no bare_nl scores and no token NLLs).")


def _ranking_table(view: ModeView, plan: AnalysisPlan, out: _Collector) -> None:
    """One ranking per model over every condition of every mode.

    The seed ranks oracle_full (scored in the full-cache mode) among the two-phase conditions.
    """
    if not plan.ranking or view.model in out.ranked:
        return
    out.ranked.add(view.model)
    arms = _model_arms(view, plan)
    if len(arms) >= 2:
        out.add("ranking", tables.ranking_rows(view, list(arms), labels=arms, mode=_modes_label(view)))


def _hard_tables(view, plan, out, settings, pairs, selections) -> np.ndarray | None:
    """The hard-example mask (stored selection or computed) and effects on it; None without one."""
    if plan.hard_selection is None:
        return None
    by = plan.hard_selection.by
    if view.resolve(by) is None:
        out.note(f"{view.model}/{view.mode}: hard selection by '{by}' impossible: no such scores.")
        return None
    stored = None
    if selections is not None and not selections.empty:
        stored = selections[selections["stage"] == plan.hard_selection.stage]
    mask, selection_rows = tables.hard_mask(view, by, plan.hard_selection.fraction, stored)
    out.add("hard_selection", selection_rows)
    out.add("effects", tables.effect_rows(view, pairs, table="hard", population="hard", mask=mask, settings=settings))
    return mask


def _semantic_table(view, plan, out, settings, population: str, mask) -> None:
    """Semantic delta(C) = NLL(semantic reference) - NLL(C), on the hard samples when selected."""
    sem = plan.semantic_reference
    if not sem:
        return
    if view.resolve(sem) is None:
        out.note(f"{view.model}/{view.mode}: semantic reference '{sem}' has no scores.")
        return
    pairs = [(c, sem) for c in view.conditions if c not in (plan.reference, sem) and c not in view.borrowed]
    out.add("effects", tables.effect_rows(view, pairs, table="semantic", population=population, mask=mask, settings=settings))


def _gradient_tables(view, plan, out, population: str, mask) -> None:
    if not plan.gradient:
        return
    order = [c for c in plan.gradient if view.resolve(c) is not None]
    absent = [c for c in plan.gradient if c not in order]
    if absent:
        out.note(f"{view.model}/{view.mode}: gradient conditions without scores: {', '.join(absent)}.")
    if len(order) >= 2 and view.resolve(plan.reference) is not None:
        summary, values = tables.gradient_rows(view, order, plan.reference, population=population, mask=mask)
        out.add("gradient", summary)
        out.add("gradient_values", values)


def _structural_arms(view: ModeView, plan: AnalysisPlan, out: _Collector) -> tuple[str, str] | None:
    """(random, oracle) when all three arms are scored; the default pair is tried silently."""
    arms = plan.structural or ("random_tokens", "oracle")
    if all(view.resolve(x) is not None for x in (plan.reference, *arms)):
        return arms
    if plan.structural is not None and "structural" in plan.raw:
        out.note(f"{view.model}/{view.mode}: structural fraction needs scores of {plan.reference}, {arms[0]} and {arms[1]}.")
    return None


def _comparison_table(view, plan, out, settings) -> None:
    contrasts = tables.comparison_pairs(view, plan.contrasts)
    skipped = [f"{a} vs {b}" for a, b in plan.contrasts if (a, b) not in contrasts]
    if skipped:
        out.note(f"{view.model}/{view.mode}: comparisons without scores on both sides: {', '.join(skipped)}.")
    if contrasts:
        out.add("effects", tables.effect_rows(view, contrasts, table="comparison", settings=settings))


def _factorial_tables(view, plan, out, settings) -> None:
    for design in plan.factorials:
        # a design whose cells all name condition@mode spans modes: compute it once per model
        spans_modes = all("@" in name for row in design.cells for name in row)
        if spans_modes and (view.model, design.name) in out.done:
            continue
        rows = tables.factorial_rows(view, design, settings=settings)
        if not rows:
            continue
        if spans_modes:
            out.done.add((view.model, design.name))
            for row in rows:
                row["mode"] = "*"
        out.add("factorial", rows)


def _mode_effect_tables(view, plan, out, settings) -> None:
    """Each planned mode effect (e.g. d_dec_q) once per model: condition@with vs condition@without."""
    for effect in plan.mode_effects:
        if (view.model, "mode_effect", effect.name) in out.done:
            continue
        pairs = [(a, b) for a, b in effect.pairs() if view.resolve(a) is not None and view.resolve(b) is not None]
        if not pairs:
            continue
        out.done.add((view.model, "mode_effect", effect.name))
        absent = [a.split("@")[0] for a, b in effect.pairs() if (a, b) not in pairs]
        if absent:
            out.note(f"{view.model}: {effect.name} lacks scores in both modes for {', '.join(absent)}.")
        rows = tables.effect_rows(view, pairs, table=effect.name, settings=settings)
        for row in rows:  # one block per effect: condition in `with`, reference = the same condition in `without`
            row["mode"] = f"{effect.with_mode} vs {effect.without_mode}"
            row["condition"] = row["condition"].split("@", 1)[0]
            row["reference"] = effect.without_mode
        out.add("effects", rows)


def _decomposition_tables(view, plan, out, settings) -> None:
    """d(part)/d(whole) per planned decomposition, like the structural fraction."""
    for dec in plan.decompositions:
        if any(view.resolve(x) is None for x in (plan.reference, dec.part, dec.whole)):
            out.note(f"{view.model}/{view.mode}: decomposition {dec.name} needs scores of {plan.reference}, "
                     f"{dec.part} and {dec.whole}.")
            continue
        rows = tables.structural_rows(view, plan.reference, dec.part, dec.whole, settings=settings,
                                      extra={"decomposition": dec.name})
        for row in rows:
            row["part"], row["whole"] = row.pop("random"), row.pop("oracle")
            row["d_part"], row["d_whole"] = row.pop("d_random"), row.pop("d_oracle")
        out.add("decomposition", rows)


def _length_tables(view, plan, out, settings, pairs, structural) -> None:
    """Effects (and structural fractions) per answer-length bin; no CIs (many small bins)."""
    if not plan.length_bins or plan.reference not in view.nll:
        return
    for label, mask in tables.length_bin_masks(view, plan.length_bins):
        rows = tables.effect_rows(
            view, pairs, table=f"length {label}", population=label, mask=mask, settings=Settings(0, settings.seed)
        )
        for row in rows:
            row["answer_words"] = label
        out.add("answer_length", rows)
        if structural:
            out.add("answer_length_structural", tables.structural_rows(
                view, plan.reference, *structural, settings=settings, mask=mask, extra={"answer_words": label}
            ))


def _analyse_view(view: ModeView, plan: AnalysisPlan, out: _Collector, settings: Settings, *, parity, selections) -> None:
    """Every table the plan asks for, for one (model, mode)."""
    if plan.reference not in view.nll:
        out.note(f"{view.model}/{view.mode}: no '{plan.reference}' scores, so no comparisons against it.")
    pairs = _effect_pairs(view, plan)
    out.add("effects", tables.effect_rows(view, pairs, table="main", settings=settings))
    if plan.reference in view.nll:
        _hardness_tables(view, plan, out, parity)
    _ranking_table(view, plan, out)
    hard = _hard_tables(view, plan, out, settings, pairs, selections)
    population = "all" if hard is None else "hard"
    _semantic_table(view, plan, out, settings, population, hard)
    _gradient_tables(view, plan, out, population, hard)
    structural = _structural_arms(view, plan, out)
    if structural:
        out.add("structural", tables.structural_rows(view, plan.reference, *structural, settings=settings))
    _comparison_table(view, plan, out, settings)
    _factorial_tables(view, plan, out, settings)
    _mode_effect_tables(view, plan, out, settings)
    _decomposition_tables(view, plan, out, settings)
    _length_tables(view, plan, out, settings, pairs, structural)


def build_report(
    results: pd.DataFrame,
    plan: Mapping | AnalysisPlan | None,
    *,
    experiment: str,
    run_id: int | None = None,
    token_parity: pd.DataFrame | None = None,
    selections: pd.DataFrame | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    attention: pd.DataFrame | None = None,
) -> AnalysisReport:
    """Analyse the ``results`` rows of one experiment run as the plan says.

    ``results`` has the ``results`` view's columns plus ``answer``; ``token_parity`` is
    :func:`analysis.load.load_token_parity`'s frame, ``selections`` :func:`load.load_selections`',
    ``attention`` :func:`load.load_attention`'s (probing runs).
    """
    plan = normalize_plan(plan)
    return _build_report(results, plan, experiment, run_id, token_parity, selections, int(bootstrap), int(seed),
                         attention)


def _build_report(
    results: pd.DataFrame,
    plan: AnalysisPlan,
    experiment: str,
    run_id: int | None,
    token_parity: pd.DataFrame | None,
    selections: pd.DataFrame | None,
    bootstrap: int,
    seed: int,
    attention: pd.DataFrame | None = None,
) -> AnalysisReport:
    settings = Settings(bootstrap=bootstrap, seed=seed)
    frame = load.normalize_results(results) if len(results) else load.normalize_results(
        pd.DataFrame(columns=load.RESULT_COLUMNS)
    )
    kept, versions = load.keep_newest_scorer(frame)
    views, duplicates = build_views(
        kept, reference=plan.reference, condition_order=plan.conditions, dataset_order=plan.datasets,
        pool=plan.pooled,
    )
    out = _Collector()
    if plan.unknown_keys:
        out.note(f"Analysis plan keys not used: {', '.join(plan.unknown_keys)}.")
    for row in versions.itertuples():
        if row.rows_dropped:
            out.note(
                f"{row.model}/{row.mode}: analysed scorer version {row.scorer_version!r}; dropped "
                f"{row.rows_dropped} rows ({row.scores_dropped} scores) of older versions {row.older_versions}."
            )
    if duplicates:
        out.note(f"{duplicates} duplicate scores of one (sample, condition) dropped; the latest was kept.")
    if not views:
        out.note("No scores yet: nothing to analyse.")
    for view in views:
        _analyse_view(view, plan, out, settings, parity=token_parity, selections=selections)

    effects = _frame(out.rows.get("effects", []), EFFECT_COLUMNS)
    missing = _frame(tables.missing_rows(kept, views, plan.reference))
    result_tables: dict[str, pd.DataFrame] = {"effects": effects}
    for name, rows in out.rows.items():
        if name == "effects":
            continue
        result_tables[name] = _frame(rows, HARDNESS_COLUMNS if name == "hardness" else None)
    if plan.attention:
        _attention_tables(kept, attention, plan, result_tables, out)
    consistency = tables.sign_consistency_rows(effects) if not effects.empty else []
    if consistency:
        result_tables["sign_consistency"] = _frame(consistency)
        _consistency_notes(result_tables["sign_consistency"], out)
    result_tables["missing"] = missing
    result_tables["scorer_versions"] = versions
    _missing_notes(missing, plan.reference, out)
    for text in trust_notes(result_tables):
        out.note(text)

    datasets = sorted({ds for v in views for ds in v.datasets}, key=lambda d: (plan.datasets.index(d) if d in plan.datasets else len(plan.datasets), d))
    per_ds = kept.groupby("dataset")["sample_id"].nunique().to_dict() if len(kept) else {}
    info = {
        "reference": plan.reference,
        "models": sorted(kept["model"].unique().tolist()) if len(kept) else [],
        "modes": sorted(kept["mode"].unique().tolist()) if len(kept) else [],
        "datasets": datasets,
        "conditions": sorted(kept["condition"].unique().tolist()) if len(kept) else [],
        "n_samples": int(kept["sample_id"].nunique()) if len(kept) else 0,
        "n_per_dataset": {str(k): int(v) for k, v in per_ds.items()},
        "n_scores": int(kept["nll"].notna().sum()) if len(kept) else 0,
        "scores_sha256": score_digest(kept),
        "n_jobs": int(len(kept)),
        "scorer_versions": {f"{r.model}/{r.mode}": r.scorer_version for r in versions.itertuples()},
        "bootstrap": settings.bootstrap,
        "seed": settings.seed,
        "conventions": CONVENTIONS,
        "plan": plan.raw,
    }
    return AnalysisReport(
        experiment=experiment, run_id=run_id, tables=result_tables, effects=effects, missing=missing, notes=out.notes, info=info
    )


def _attention_tables(kept: pd.DataFrame, attention: pd.DataFrame | None, plan: AnalysisPlan,
                      result_tables: dict[str, pd.DataFrame], out: _Collector) -> None:
    """``attention`` (mean over layers) and ``attention_by_layer``, from the analysed scores only."""
    if attention is None or attention.empty:
        out.note("No attention shares stored: the plan asks for them, but no probing (`*_probe`) scores exist yet.")
        return
    attention = attention[attention["score_id"].isin(kept["score_id"].dropna().astype("int64"))]
    rows = tables.attention_rows(attention, dataset_order=plan.datasets, pooled=plan.pooled)
    frame = _frame(rows, tables.ATTENTION_COLUMNS)
    result_tables["attention"] = frame[frame["layer"] == -1].reset_index(drop=True)
    result_tables["attention_by_layer"] = frame[frame["layer"] != -1].reset_index(drop=True)
    if (frame["softmax"] != "merged").any():
        out.note("Attention: self and cross shares of T5/BART-style models come from separate softmaxes (each "
                 "sums to 1 alone), so no cross/self split is defined for them; T5Gemma 2's merged softmax has one.")


def _consistency_notes(table: pd.DataFrame, out: _Collector) -> None:
    for (name, model, mode, ref), group in table.groupby(["table", "model", "mode", "reference"], sort=False):
        n_ds = int(group["n_datasets"].max())
        out.note(
            f"{name} vs {ref} ({model}/{mode}): {int(group['consistent'].sum())}/{len(group)} conditions have the "
            f"same sign across all {n_ds} datasets."
        )


TRUST_RULES = (
    (stats.NOTE_SMALL_N, f"Small samples: fewer than {stats.MIN_N_CI} pairs, so the CI is withheld and d and p "
                         "can swing with a single sample; do not read these as findings"),
    (stats.NOTE_DEGENERATE, "Degenerate bootstrap (resamples with sd 0 or undefined bounds), so the CI is withheld"),
    ("denominator d includes 0", "Ratio CI withheld: its denominator d may be 0, so the ratio is unbounded"),
    (stats.NOTE_LARGE_D, f"|d| >= {stats.LARGE_D:g} from an sd near 0: not an effect size to compare"),
)
TRUST_LISTED = 6  # rows named per rule before "and N more"


def trust_notes(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """One sentence per rule that some rows break: what cannot be trusted, and where."""
    notes = []
    for marker, sentence in TRUST_RULES:
        hits = []
        for name, table in tables.items():
            if table.empty or "note" not in table:
                continue
            flagged = table[table["note"].fillna("").astype(str).str.contains(marker, regex=False)]
            for r in flagged.to_dict("records"):
                label = r.get("condition") or r.get("decomposition") or r.get("contrast") or r.get("random") or ""
                where = "/".join(str(x) for x in (r.get("table", name), r.get("dataset"), label) if x not in (None, ""))
                hits.append(f"{where} (n={r.get('n')})")
        if hits:
            shown = ", ".join(hits[:TRUST_LISTED]) + (f" and {len(hits) - TRUST_LISTED} more" if len(hits) > TRUST_LISTED else "")
            notes.append(f"{sentence}: {shown}.")
    return notes


def _missing_notes(missing: pd.DataFrame, reference: str, out: _Collector) -> None:
    """One line naming, per condition, how many samples were dropped and why."""
    if missing.empty:
        return
    if not (missing["dropped"] > 0).any():
        out.note("Complete: every job is scored and paired with its reference.")
        return
    parts = []
    for (model, mode, cond), group in missing.groupby(["model", "mode", "condition"], sort=False):
        dropped = int(group["dropped"].sum())
        if not dropped:
            continue
        reasons = [f"{int(group[f'unscored_{s}'].sum())} {s}" for s in ("pending", "blocked", "running", "failed")]
        lack = int(group["lacking_reference"].fillna(0).sum())
        if lack:
            reasons.append(f"{lack} without {reference}")
        reasons = [r for r in reasons if not r.startswith("0 ")]
        parts.append(f"{cond} ({mode}) {dropped}/{int(group['jobs'].sum())} [{', '.join(reasons)}]")
    out.note("Incomplete: samples dropped for missing scores: " + "; ".join(parts) + ".")


def analyze_experiment(
    engine: Engine,
    experiment: str,
    plan: Mapping | AnalysisPlan | None,
    *,
    run_id: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> AnalysisReport:
    """Load one run of ``experiment`` (default: its latest) from the database and analyse it."""
    plan = normalize_plan(plan)
    run_id = load.resolve_run_id(engine, experiment, run_id)
    results = load.load_results(engine, experiment, run_id)
    if any(entry.label != entry.name for entry in plan.dataset_entries):
        results = relabel_datasets(results, *load.load_sample_recipes(engine, run_id), plan)
    parity = None
    if plan.hardness_independent in ("auto", "odd_even") and not _has_condition(results, "bare_nl", plan):
        parity = load.load_token_parity(engine, run_id)
    selections = load.load_selections(engine, run_id) if plan.hard_selection is not None else None
    attention = None
    if plan.attention:
        attention = load.load_attention(engine, experiment, run_id)
        labels = dict(zip(results["sample_id"], results["dataset"]))
        attention["dataset"] = attention["sample_id"].map(labels).fillna(attention["dataset"])
    report = build_report(
        results, plan, experiment=experiment, run_id=run_id, token_parity=parity, selections=selections,
        bootstrap=bootstrap, seed=seed, attention=attention,
    )
    waiting = {s: n for s, n in load.load_selection_jobs(engine, run_id).items() if s != "done"}
    if waiting:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(waiting.items()))
        report.notes.append(
            f"Incomplete: {sum(waiting.values())} stage selections not made yet ({counts}); "
            "the jobs of the stages after them do not exist yet and are not counted as missing."
        )
    return report


def relabel_datasets(results: pd.DataFrame, samples: pd.DataFrame, recipes: dict[str, dict],
                     plan: AnalysisPlan) -> pd.DataFrame:
    """Show each sample under the label of the spec's dataset entry whose recipe it was prepared by.

    An entry matches a sample of its dataset when every recipe option it sets has that value
    in the sample's stored recipe (``tokenizer: scoring`` matches any tokenizer); the most
    specific match wins. Samples no entry matches keep their dataset name.
    """
    label_of: dict[int, str] = {}
    for row in samples.itertuples():
        recipe = recipes.get(str(row.recipe_hash), {})
        best = None
        for entry in plan.dataset_entries:
            if entry.name == row.dataset and all(_recipe_matches(recipe, k, v) for k, v in entry.recipe):
                if best is None or len(entry.recipe) > len(best.recipe):
                    best = entry
        if best is not None:
            label_of[int(row.sample_id)] = best.label
    results = results.copy()
    results["dataset"] = results["sample_id"].map(label_of).fillna(results["dataset"]).astype(str)
    return results


def _recipe_matches(recipe: Mapping, key: str, value) -> bool:
    if key == "tokenizer" and value == "scoring":
        return key in recipe
    return recipe.get(key) == value


def _has_condition(results: pd.DataFrame, name: str, plan: AnalysisPlan) -> bool:
    """bare_nl scored for every (model, mode) that has the reference: no token data needed."""
    if plan.hardness_independent == "odd_even":
        return False
    scored = results[results["nll"].notna()]
    with_ref = scored.loc[scored["condition"] == plan.reference, ["model", "mode"]].drop_duplicates()
    with_nl = scored.loc[scored["condition"] == name, ["model", "mode"]].drop_duplicates()
    return len(with_ref) > 0 and len(with_ref.merge(with_nl)) == len(with_ref)
