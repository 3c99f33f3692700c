"""Table builders: each turns one :class:`~analysis.views.ModeView` into rows of one table.

Every builder returns a list of plain dicts (one per table row); :mod:`analysis.report`
concatenates them into DataFrames. Per-dataset rows come first, then ``pooled`` (the
per-sample deltas of all datasets concatenated) when there are several datasets.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import stats
from analysis.views import POOLED, ModeView
from tracker.specs.plan import Factorial

EFFECT_COLUMNS = [
    "table", "population", "model", "mode", "dataset", "condition", "reference", "n", "mean_delta",
    "sd_delta", "d", "ci_low", "ci_high", "t", "p_ttest", "mark", "p_holm", "p_wilcoxon", "win_rate", "note",
]
HARDNESS_COLUMNS = [
    "measure", "model", "mode", "dataset", "quintile", "condition", "reference", "n", "hardness_low",
    "hardness_high", "mean_delta", "d", "p_ttest", "mark", "p_wilcoxon", "win_rate", "note",
]


@dataclass(frozen=True)
class Settings:
    """Resampling settings shared by every table of one report."""

    bootstrap: int = 1000
    seed: int = 0
    level: float = 0.95


def _meta(view: ModeView) -> dict:
    return {"model": view.model, "mode": view.mode}


def _effect_fields(eff: stats.PairedEffect) -> dict:
    fields = eff.as_dict()
    return {k: fields[k] for k in ("n", "mean_delta", "sd_delta", "d", "t", "p_ttest", "mark", "p_wilcoxon", "win_rate", "note")}


def _bootstrap_by_sample_set(
    masks: list[np.ndarray], deltas: list[np.ndarray], sample_ids: np.ndarray, settings: Settings
) -> list[tuple[float | None, float | None, str]]:
    """Bootstrap CIs of d for several delta vectors; vectors over the same samples share draws."""
    out: list[tuple[float | None, float | None, str]] = [(None, None, "")] * len(masks)
    groups: dict[bytes, list[int]] = {}
    for i, mask in enumerate(masks):
        groups.setdefault(np.packbits(mask).tobytes(), []).append(i)
    for members in groups.values():
        seed = stats.sample_set_seed(settings.seed, sample_ids[masks[members[0]]])
        matrix = np.column_stack([deltas[i] for i in members])  # [n, k]
        cis = stats.bootstrap_d_cis(matrix, resamples=settings.bootstrap, seed=seed, level=settings.level)
        for i, ci in zip(members, cis):
            out[i] = ci
    return out


def add_holm(rows: list[dict], family_keys: Sequence[str] = ("table", "model", "mode", "dataset")) -> None:
    """Fill ``p_holm`` in place: Holm across the conditions of one table and dataset."""
    families: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        families.setdefault(tuple(row.get(k) for k in family_keys), []).append(i)
    members_list = list(families.values())
    corrected = stats.holm_families([[rows[i]["p_ttest"] for i in members] for members in members_list])
    for members, ps in zip(members_list, corrected):
        for i, p in zip(members, ps):
            rows[i]["p_holm"] = p


def effect_rows(
    view: ModeView,
    pairs: Sequence[tuple[str, str]],
    *,
    table: str,
    settings: Settings,
    population: str = "all",
    mask: np.ndarray | None = None,
) -> list[dict]:
    """Paired effects of each (condition, reference) pair per dataset and pooled, with CI and Holm p."""
    rows: list[dict] = []
    for dataset, group in view.groups(mask):
        masks, deltas = [], []
        for cond, ref in pairs:
            a, b = view.resolve(ref), view.resolve(cond)
            both = group & np.isfinite(a) & np.isfinite(b)
            masks.append(both)
            deltas.append((a - b)[both])
        group_rows = [
            {
                "table": table, "population": population, **_meta(view), "dataset": dataset,
                "condition": view.label(cond), "reference": view.label(ref), **_effect_fields(eff),
            }
            for (cond, ref), eff in zip(pairs, stats.effects_of_columns(deltas))
        ]
        cis = _bootstrap_by_sample_set(masks, deltas, view.sample_id, settings)
        for row, (lo, hi, note) in zip(group_rows, cis):
            row["ci_low"], row["ci_high"] = lo, hi
            row["note"] = stats._join_notes(row["note"], note)
        rows.extend(group_rows)
    add_holm(rows)
    return [{c: r.get(c) for c in EFFECT_COLUMNS} for r in rows]


def bin_labels(view: ModeView, hardness: np.ndarray, bins: int) -> np.ndarray:
    """Per-dataset equal-count bins (1..bins, bins = hardest) of ``hardness``; 0 = no value."""
    labels = np.zeros(view.n, dtype=np.int64)
    for ds in view.datasets:
        valid = (view.dataset == ds) & np.isfinite(hardness)
        if valid.any():
            labels[valid] = stats.quantile_bins(hardness[valid], view.sample_id[valid], bins)
    return labels


def hardness_rows(
    view: ModeView,
    *,
    measure: str,
    reference: str,
    hardness: np.ndarray,
    deltas: dict[str, np.ndarray],
    bins: int = 5,
) -> list[dict]:
    """d per hardness bin per condition; bins are per-dataset quantiles of ``hardness``.

    ``deltas[c]`` is [samples] with NaN where the pair is incomplete; pooled rows gather the
    same bin of every dataset.
    """
    labels = bin_labels(view, hardness, bins)
    rows = []
    for dataset, group in view.groups():
        for q in range(1, bins + 1):
            in_bin = group & (labels == q)
            h = hardness[in_bin]
            effects = stats.effects_of_columns([delta[in_bin] for delta in deltas.values()])
            for cond, eff in zip(deltas, effects):
                rows.append(
                    {
                        "measure": measure, **_meta(view), "dataset": dataset, "quintile": q,
                        "condition": view.label(cond), "reference": view.label(reference),
                        "hardness_low": float(h.min()) if h.size else None,
                        "hardness_high": float(h.max()) if h.size else None,
                        **{k: v for k, v in _effect_fields(eff).items() if k in HARDNESS_COLUMNS},
                    }
                )
    return [{c: r.get(c) for c in HARDNESS_COLUMNS} for r in rows]


def ranking_rows(
    view: ModeView,
    conditions: Sequence[str],
    *,
    labels: dict[str, str] | None = None,
    mode: str | None = None,
    population: str = "all",
    mask: np.ndarray | None = None,
) -> list[dict]:
    """Mean rank (1 = lowest NLL) and share of samples where each condition is best.

    ``conditions`` are names :meth:`ModeView.resolve` knows (``cond@mode`` for arms of
    other modes), shown as ``labels[name]``. Only samples scored under every listed
    condition take part.
    """
    conditions = list(conditions)
    labels = labels or {c: view.label(c) for c in conditions}
    meta = {"model": view.model, "mode": mode if mode is not None else view.mode}
    matrix = np.column_stack([view.resolve(c) for c in conditions])  # [samples, conditions]
    complete = np.all(np.isfinite(matrix), axis=1)
    rows = []
    for dataset, group in view.groups(mask):
        sel = group & complete
        mean_rank, share_best = stats.rank_conditions(matrix[sel])
        n = int(sel.sum())
        for j, cond in enumerate(conditions):
            rows.append(
                {
                    "population": population, **meta, "dataset": dataset, "condition": labels[cond], "n": n,
                    "mean_rank": stats._clean(mean_rank[j]) if n else None,
                    "share_best": stats._clean(share_best[j]) if n else None,
                    "note": "" if n else "no complete samples",
                }
            )
    return rows


def gradient_rows(
    view: ModeView, order: Sequence[str], reference: str, *, population: str = "all", mask: np.ndarray | None = None
) -> tuple[list[dict], list[dict]]:
    """Spearman rho of the given condition order vs mean deltas, per dataset; plus the values.

    Samples scored under the reference and every gradient condition take part. Returns
    (one row per dataset plus a "mean" row = mean of per-dataset rhos, per-condition values).
    """
    ref = view.resolve(reference)
    matrix = np.column_stack([view.resolve(c) for c in order])  # [samples, k]
    complete = np.isfinite(ref) & np.all(np.isfinite(matrix), axis=1)
    summary, values = [], []
    rhos = []
    for dataset, group in view.groups(mask):
        if dataset == POOLED:
            continue
        sel = group & complete
        deltas = ref[sel][:, None] - matrix[sel]  # [n, k]
        means = [stats.mean_delta(deltas[:, j]) for j in range(len(order))]
        rho, p, note = stats.spearman_gradient(means)
        rhos.append(rho)
        summary.append(
            {
                "population": population, **_meta(view), "dataset": dataset, "n": int(sel.sum()), "k": len(order),
                "rho": rho, "p": p, "mark": stats.significance_mark(p), "monotonic": rho == 1.0 if rho is not None else None,
                "note": note,
            }
        )
        for j, cond in enumerate(order):
            d, _ = stats.cohens_d(deltas[:, j])
            values.append(
                {
                    "population": population, **_meta(view), "dataset": dataset, "position": j + 1,
                    "condition": view.label(cond), "reference": view.label(reference), "n": int(sel.sum()),
                    "mean_delta": means[j], "d": d,
                }
            )
    valid = [r for r in rhos if r is not None]
    if len(view.datasets) > 1:
        summary.append(
            {
                "population": population, **_meta(view), "dataset": "mean", "n": sum(r["n"] for r in summary),
                "k": len(order), "rho": float(np.mean(valid)) if valid else None, "p": None, "mark": "n/a",
                "monotonic": None,
                "note": f"mean of {len(valid)} per-dataset rhos; {sum(bool(r['monotonic']) for r in summary)}"
                f"/{len(summary)} monotonic; {sum((r['p'] or 1) < 0.05 for r in summary)} significant",
            }
        )
    return summary, values


def hard_mask(
    view: ModeView, by: str, fraction: float, stored: pd.DataFrame | None
) -> tuple[np.ndarray, list[dict]]:
    """The hard examples: stored selection members per dataset when present, else computed.

    Computed = ceil(fraction n) highest NLL under ``by`` per dataset, ties by sample id.
    Stored members are matched by sample id (a selection's dataset label may differ from the
    samples' dataset name). Returns (mask, one row per dataset saying where the selection
    came from and whether the stored one agrees with a recomputation under its own rule).
    """
    values = view.resolve(by)
    mask = np.zeros(view.n, dtype=bool)
    has_stored = stored is not None and not stored.empty
    rows = []
    for ds in view.datasets:
        in_ds = view.dataset == ds
        candidates = in_ds & np.isfinite(values) if values is not None else np.zeros(view.n, dtype=bool)
        members = stored[stored["sample_id"].isin(view.sample_id[in_ds])] if has_stored else None
        if members is not None and not members.empty:
            chosen = in_ds & np.isin(view.sample_id, members["sample_id"].to_numpy())
            source = "stored selection " + ",".join(str(int(i)) for i in sorted(members["selection_id"].unique()))
            n_stored = int(len(members))
            rule = members["rule"].iloc[0] if "rule" in members else {}
            rule_fraction = float(rule.get("fraction", fraction)) if isinstance(rule, dict) else fraction
        else:
            chosen, source, n_stored, rule_fraction = None, "computed", None, fraction
        computed = np.zeros(view.n, dtype=bool)
        if candidates.any():
            computed[candidates] = stats.select_hardest(values[candidates], view.sample_id[candidates], rule_fraction)
        agrees = None if chosen is None else bool(np.array_equal(chosen, computed))
        chosen = computed if chosen is None else chosen
        mask |= chosen
        picked = values[chosen] if values is not None else np.array([])
        picked = picked[np.isfinite(picked)]
        rows.append(
            {
                **_meta(view), "dataset": ds, "by": view.label(by), "fraction": rule_fraction, "source": source,
                "n_candidates": int(candidates.sum()), "n_selected": int(chosen.sum()), "n_stored": n_stored,
                "threshold": float(picked.min()) if picked.size else None, "agrees_with_recomputed": agrees,
            }
        )
    return mask, rows


def structural_rows(
    view: ModeView,
    reference: str,
    random: str,
    oracle: str,
    *,
    settings: Settings,
    population: str = "all",
    mask: np.ndarray | None = None,
    extra: dict | None = None,
) -> list[dict]:
    """Structural fraction d(random)/d(oracle) with bootstrap CI, and the semantic split."""
    ref, rnd, orc = view.resolve(reference), view.resolve(random), view.resolve(oracle)
    rows = []
    for dataset, group in view.groups(mask):
        complete = group & np.isfinite(ref) & np.isfinite(rnd) & np.isfinite(orc)
        seed = stats.sample_set_seed(settings.seed, view.sample_id[complete])
        res = stats.structural_fraction(
            ref[complete], rnd[complete], orc[complete], resamples=settings.bootstrap, seed=seed, level=settings.level
        )
        rows.append(
            {
                "population": population, **(extra or {}), **_meta(view), "dataset": dataset,
                "random": view.label(random), "oracle": view.label(oracle), "reference": view.label(reference),
                **res.as_dict(),
            }
        )
    return rows


def comparison_pairs(view: ModeView, contrasts: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The contrasts whose two conditions both resolve in this view."""
    return [(a, b) for a, b in contrasts if view.resolve(a) is not None and view.resolve(b) is not None]


def _factorial_cells(view: ModeView, design: Factorial) -> list[list[np.ndarray]] | None:
    cells = [[view.resolve(name) for name in row] for row in design.cells]
    return None if any(c is None for row in cells for c in row) else cells


def factorial_steps(cols: Sequence[str]) -> list[tuple[int, int]]:
    """Adjacent column steps, plus first-to-last when there are more than two columns."""
    steps = [(j, j + 1) for j in range(len(cols) - 1)]
    if len(cols) > 2:
        steps.append((0, len(cols) - 1))
    return steps


def factorial_rows(view: ModeView, design: Factorial, *, settings: Settings) -> list[dict]:
    """Interaction (difference of differences) and per-row simple effects of a 2 x k design.

    Simple effect of a step a -> b in row r: NLL(r, a) - NLL(r, b) (positive = the step helps).
    Interaction: simple effect in row 1 minus simple effect in row 2. Only samples scored
    in every cell count, so the steps' shares of the first-to-last total add up.
    """
    cells = _factorial_cells(view, design)
    if cells is None:
        return []
    stacked = np.vstack([c for row in cells for c in row])  # [2k, samples]
    complete = np.all(np.isfinite(stacked), axis=0)
    rows = []
    k = len(design.cols)
    total = (0, k - 1)
    for dataset, group in view.groups(complete):
        contrasts: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
        for a, b in factorial_steps(design.cols):
            r0 = cells[0][a][group] - cells[0][b][group]
            r1 = cells[1][a][group] - cells[1][b][group]
            contrasts[("interaction", (a, b))] = stats.difference_of_differences(
                cells[0][a][group], cells[0][b][group], cells[1][a][group], cells[1][b][group]
            )
            contrasts[(f"simple: {design.rows[0]}", (a, b))] = r0
            contrasts[(f"simple: {design.rows[1]}", (a, b))] = r1
        keys = list(contrasts)
        cis = _bootstrap_by_sample_set(
            [np.ones(int(group.sum()), dtype=bool)] * len(keys), [contrasts[key] for key in keys], view.sample_id[group], settings
        )
        effects = stats.effects_of_columns([contrasts[key] for key in keys])
        for key, (lo, hi, note), eff in zip(keys, cis, effects):
            kind, (a, b) = key
            tot = stats.mean_delta(contrasts[(kind, total)]) if k > 2 else None
            share = None if tot in (None, 0.0) or eff.mean_delta is None else eff.mean_delta / tot
            rows.append(
                {
                    "factorial": design.name, **_meta(view), "dataset": dataset, "contrast": kind,
                    "step": f"{design.cols[a]}->{design.cols[b]}",
                    "cells": f"{design.cells[0][a]},{design.cells[0][b]} | {design.cells[1][a]},{design.cells[1][b]}",
                    **_effect_fields(eff), "ci_low": lo, "ci_high": hi, "share_of_total": share,
                    "note": stats._join_notes(eff.note, note),
                }
            )
    return rows


ATTENTION_COLUMNS = [
    "model", "mode", "dataset", "condition", "softmax", "target", "layer", "n", "mean_share", "sd_share",
    "ci_low", "ci_high", "median_share", "note",
]
SOFTMAX_NOTES = {
    "merged": "one softmax over decoder and encoder positions (T5Gemma 2): decoder + encoder = 1, so the "
              "self/cross split is meaningful",
    "self": "decoder self-attention, its own softmax (sums to 1 alone); a self/cross split is undefined",
    "cross": "cross-attention, its own softmax (sums to 1 alone); a self/cross split is undefined",
}


def attention_rows(frame: pd.DataFrame, *, dataset_order: Sequence[str] = (), pooled: bool = True) -> list[dict]:
    """Attention shares per (model, mode, dataset, condition, softmax, target, layer) over samples.

    ``frame`` holds one row per (score, layer, softmax, target) with ``share`` = the mean over
    that score's answer tokens (:func:`analysis.load.load_attention`); each sample counts
    once. The CI is the t interval of the mean (95%).
    """
    if frame.empty:
        return []
    keys = ["model", "mode", "condition", "softmax", "target", "layer"]
    datasets = list(dict.fromkeys([*[d for d in dataset_order if d in set(frame["dataset"])],
                                   *sorted(frame["dataset"].unique())]))
    parts = [(ds, frame[frame["dataset"] == ds]) for ds in datasets]
    if pooled and len(datasets) > 1:
        parts.append((POOLED, frame))
    rows = []
    for dataset, part in parts:
        for key, group in part.groupby(keys, sort=False):
            values = group["share"].to_numpy(dtype=float)
            mean, sd, lo, hi = _mean_ci(values)
            rows.append({**dict(zip(keys, key)), "dataset": dataset, "n": int(values.size), "mean_share": mean,
                         "sd_share": sd, "ci_low": lo, "ci_high": hi, "median_share": float(np.median(values)),
                         "note": SOFTMAX_NOTES.get(key[3], "")})
    return [{c: r.get(c) for c in ATTENTION_COLUMNS} for r in rows]


def _mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float | None, float | None, float | None]:
    """Mean, sd (ddof=1) and the t confidence interval of the mean."""
    from scipy import stats as sps

    mean = float(values.mean())
    if values.size < 2:
        return mean, None, None, None
    sd = float(values.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, values.size - 1)) * sd / float(np.sqrt(values.size))
    return mean, sd, mean - half, mean + half


def length_bin_masks(view: ModeView, bins: Sequence[tuple[int, int | None]]) -> list[tuple[str, np.ndarray]]:
    labels = stats.length_bins(view.words, bins)
    return [(stats.length_bin_label(lo, hi), labels == stats.length_bin_label(lo, hi)) for lo, hi in bins]


def sign_consistency_rows(effects: pd.DataFrame) -> list[dict]:
    """Per (table, model, mode, condition, reference): does d keep one sign across datasets?"""
    per_ds = effects[(effects["dataset"] != POOLED)]
    rows = []
    keys = ["table", "population", "model", "mode", "condition", "reference"]
    for key, group in per_ds.groupby(keys, sort=False):
        if group["dataset"].nunique() < 2:
            continue
        values = [d if d is not None and not pd.isna(d) else m for d, m in zip(group["d"], group["mean_delta"])]
        values = [None if v is None or pd.isna(v) else float(v) for v in values]
        rows.append({**dict(zip(keys, key)), **stats.sign_consistency(values)})
    return rows


def missing_rows(frame: pd.DataFrame, views: Sequence[ModeView], reference: str) -> list[dict]:
    """Per (model, mode, dataset, condition): jobs, scores, unscored by status, complete pairs.

    ``dropped`` = samples with a job for the condition that take no part in its comparison
    with the reference (unscored, or the reference is missing).
    """
    keys = ["model", "mode", "dataset", "condition"]
    if frame.empty:
        return []
    jobs = frame.groupby(keys)["sample_id"].nunique().rename("jobs")
    scored = frame[frame["nll"].notna()].groupby(keys)["sample_id"].nunique().rename("scored")
    unscored = frame[frame["nll"].isna()]
    status = pd.crosstab([unscored[k] for k in keys], unscored["status"]) if len(unscored) else pd.DataFrame()
    table = pd.concat([jobs, scored], axis=1).fillna(0).astype("int64")
    paired = {}
    for view in views:
        if reference not in view.nll:
            continue
        ref_ok = np.isfinite(view.nll[reference])
        for cond in view.conditions:
            if cond == reference:
                continue
            both = ref_ok & np.isfinite(view.nll[cond])
            counts = pd.Series(both).groupby(view.dataset).sum()
            for ds, count in counts.items():
                paired[(view.model, view.mode, ds, cond)] = int(count)
    rows = []
    for key, rec in zip(table.index, table.itertuples(index=False)):
        model, mode, dataset, cond = key
        pair = paired.get(key)
        if pair is None and cond != reference and any(v.model == model and v.mode == mode for v in views):
            pair = 0  # no score of the condition or of the reference in this dataset
        if cond == reference:
            pair = None
        unscored_by = {
            f"unscored_{st}": int(status.at[key, st]) if st in status.columns and key in status.index else 0
            for st in ("pending", "blocked", "running", "failed", "done")
        }
        rows.append(
            {
                "model": model, "mode": mode, "dataset": dataset, "condition": cond, "jobs": int(rec.jobs),
                "scored": int(rec.scored), "unscored": int(rec.jobs - rec.scored), **unscored_by,
                "paired_with_reference": pair,
                "lacking_reference": None if pair is None else int(rec.scored) - pair,
                "dropped": int(rec.jobs - rec.scored) if pair is None else int(rec.jobs) - pair,
            }
        )
    return rows
