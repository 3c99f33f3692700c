"""Results rows -> aligned per-sample arrays, one view per (model, scoring mode).

All statistics work on numpy arrays aligned by sample: ``view.nll[condition][i]`` is the
NLL of sample ``i`` (NaN when that score is missing), so a paired comparison is one
subtraction and "complete pairs" is one ``isfinite`` mask.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.stats import answer_word_count

POOLED = "pooled"
KEY = ["dataset", "sample_id"]


@dataclass
class ModeView:
    """The scores of one model under one scoring mode, aligned by sample."""

    model: str
    mode: str
    dataset: np.ndarray  # [samples] dataset name
    sample_id: np.ndarray  # [samples]
    words: np.ndarray  # [samples] answer word count
    nll: dict[str, np.ndarray]  # condition -> [samples] NLL, NaN = missing
    score_id: dict[str, np.ndarray]  # condition -> [samples] score id, -1 = missing
    conditions: list[str]  # this mode's own conditions, display order
    datasets: list[str]
    arms: dict[str, np.ndarray] = field(default_factory=dict)  # "condition@mode" -> NLL, whole model
    borrowed: dict[str, str] = field(default_factory=dict)  # condition -> mode it was taken from
    pool: bool = True  # add the pooled rows when there are several datasets

    @property
    def n(self) -> int:
        return int(self.sample_id.size)

    def groups(self, mask: np.ndarray | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(dataset, row mask) per dataset, then ("pooled", all rows) when there are several."""
        base = np.ones(self.n, dtype=bool) if mask is None else mask
        for ds in self.datasets:
            yield ds, base & (self.dataset == ds)
        if self.pool and len(self.datasets) > 1:
            yield POOLED, base.copy()

    def label(self, condition: str) -> str:
        """A condition's name in tables: ``name@mode`` when borrowed from another mode."""
        return f"{condition}@{self.borrowed[condition]}" if condition in self.borrowed else condition

    def resolve(self, name: str) -> np.ndarray | None:
        """NLL array of ``name`` (a condition of this mode, or ``condition@mode`` of the model)."""
        if name in self.nll:
            return self.nll[name]
        if name in self.arms:
            return self.arms[name]
        matches = [arm for arm in self.arms if arm.split("@", 1)[0] == name]
        return self.arms[matches[0]] if len(matches) == 1 else None


def _ordered(found: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """``preferred`` order first (those present), then the rest sorted."""
    present = set(found)
    head = [x for x in preferred if x in present]
    return head + sorted(present.difference(head))


def dedupe_scores(scored: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One score per (model, mode, dataset, sample, condition): the latest score id wins."""
    keys = ["model", "mode", "dataset", "sample_id", "condition"]
    ordered = scored.sort_values("score_id", kind="stable")
    deduped = ordered.drop_duplicates(keys, keep="last")
    return deduped, int(len(scored) - len(deduped))


def build_views(
    frame: pd.DataFrame,
    *,
    reference: str = "bare",
    condition_order: Sequence[str] = (),
    dataset_order: Sequence[str] = (),
    pool: bool = True,
) -> tuple[list[ModeView], int]:
    """Per (model, mode) views of the scored rows; returns (views, duplicate scores dropped).

    A mode without its own reference borrows the reference of the model's other mode when
    exactly one other mode has it (e.g. a prefix-LM mode compared against two-phase bare).
    """
    scored, duplicates = dedupe_scores(frame[frame["nll"].notna()])
    words = (
        frame.drop_duplicates("sample_id").set_index("sample_id")["answer"].map(answer_word_count)
        if "answer" in frame
        else pd.Series(dtype="int64")
    )
    views: list[ModeView] = []
    for model, mframe in scored.groupby("model", sort=True):
        nll = mframe.pivot(index=KEY, columns=["mode", "condition"], values="nll").sort_index()
        sid = mframe.pivot(index=KEY, columns=["mode", "condition"], values="score_id").reindex(nll.index)
        datasets = _ordered(nll.index.get_level_values("dataset").unique(), dataset_order)
        ds_arr = nll.index.get_level_values("dataset").to_numpy().astype(str)
        sample_arr = nll.index.get_level_values("sample_id").to_numpy().astype("int64")
        word_arr = words.reindex(sample_arr).fillna(0).to_numpy().astype("int64")
        modes = sorted(nll.columns.get_level_values("mode").unique())
        arms = {f"{c}@{m}": nll[(m, c)].to_numpy(dtype=float) for m, c in nll.columns}
        arm_ids = {f"{c}@{m}": _ids(sid[(m, c)]) for m, c in nll.columns}
        for mode in modes:
            conds = _ordered(nll[mode].columns, condition_order)
            view = ModeView(
                model=str(model),
                mode=str(mode),
                dataset=ds_arr,
                sample_id=sample_arr,
                words=word_arr,
                nll={c: arms[f"{c}@{mode}"] for c in conds},
                score_id={c: arm_ids[f"{c}@{mode}"] for c in conds},
                conditions=conds,
                datasets=datasets,
                arms=arms,
                pool=pool,
            )
            if reference not in view.nll:
                donors = [m for m in modes if m != mode and f"{reference}@{m}" in arms]
                if len(donors) == 1:
                    view.nll[reference] = arms[f"{reference}@{donors[0]}"]
                    view.score_id[reference] = arm_ids[f"{reference}@{donors[0]}"]
                    view.borrowed[reference] = donors[0]
            views.append(view)
    return views, duplicates


def _ids(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").fillna(-1).to_numpy().astype("int64")
