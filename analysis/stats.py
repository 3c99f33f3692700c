"""The seed's statistics, one small function each, on plain numpy arrays.

Conventions (fixed so that results are comparable across runs):

- ``delta = NLL(reference) - NLL(C)``: positive means C helps.
- Cohen's d of paired deltas = mean / sd (ddof=1).
- Win rate = share of samples with NLL(C) < NLL(reference); ties are no win.
- Marks come from the uncorrected two-sided paired t-test p; Holm-corrected p beside it.
- Wilcoxon: two-sided, zero differences dropped (``zero_method="wilcox"``), scipy's
  default exact/normal choice.

Degenerate inputs (n < 3, all-equal deltas, all-zero deltas) give ``None`` and a ``note``
saying why, never a crash or a silent NaN. Bootstrap CIs are BCa (``scipy.stats.bootstrap``)
and are withheld, with a note, below :data:`MIN_N_CI` samples or when the bootstrap
degenerates; a |d| of :data:`LARGE_D` or more carries a note.
"""
from __future__ import annotations

import contextlib
import gc
import math
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import special
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from tracker.specs.plan import DEFAULT_LENGTH_BINS
from tracker.specs.schema import hardest_count

MIN_N = 3
NOTE_N = "n<3"
NOTE_SD0 = "sd=0"
NOTE_ALL_ZERO = "all deltas zero"
# Below this many samples a bootstrap CI is withheld: n samples have only C(2n-1, n) distinct
# resamples (126 at n=5, 92,378 at n=10), many with a near-zero sd, so the resampled d's
# (and BCa's jackknife acceleration) are dominated by a few extreme draws.
MIN_N_CI = 10
NOTE_SMALL_N = f"n<{MIN_N_CI}: CI withheld"
NOTE_DEGENERATE = "bootstrap degenerate: CI withheld"
# |d| at least this large comes from an sd that is tiny next to the mean (d=-37.5 at n=3):
# the point estimate is real arithmetic but not an effect size to compare.
LARGE_D = 5.0
NOTE_LARGE_D = f"|d|>={LARGE_D:g}: sd near 0, d unstable"

# Answer-length bins of the seed's exp06 (inclusive word counts; None = open end).


@dataclass(frozen=True)
class PairedEffect:
    """Summary of one set of paired deltas (one condition against one reference)."""

    n: int
    mean_delta: float | None
    sd_delta: float | None
    d: float | None
    t: float | None
    p_ttest: float | None
    p_wilcoxon: float | None
    win_rate: float | None
    mark: str
    note: str

    def as_dict(self) -> dict:
        return asdict(self)


def _clean(x: float | np.floating | None) -> float | None:
    """A plain float, or None for None/NaN/inf (never a silent NaN in a table)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _join_notes(*notes: str) -> str:
    seen: list[str] = []
    for note in notes:
        for part in note.split("; ") if note else ():
            if part and part not in seen:
                seen.append(part)
    return "; ".join(seen)


def complete_pairs(nll_reference: np.ndarray, nll_condition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Only the samples where both NLLs exist."""
    ref = np.asarray(nll_reference, dtype=float)
    cond = np.asarray(nll_condition, dtype=float)
    keep = np.isfinite(ref) & np.isfinite(cond)
    return ref[keep], cond[keep]


def paired_deltas(nll_reference: np.ndarray, nll_condition: np.ndarray) -> np.ndarray:
    """``NLL(reference) - NLL(C)`` over complete pairs; positive = C helps."""
    ref, cond = complete_pairs(nll_reference, nll_condition)
    return ref - cond


def mean_delta(deltas: np.ndarray) -> float | None:
    deltas = np.asarray(deltas, dtype=float)
    return _clean(deltas.mean()) if deltas.size else None


CONSTANT_RTOL = 1e-12


def is_constant(deltas: np.ndarray) -> bool:
    """All deltas equal up to float rounding, so sd is 0 in substance.

    ``[1.1, 2.2] - [1.0, 2.1]`` differ in the 16th digit; dividing by that sd would turn
    rounding noise into a d of 1e15.
    """
    deltas = np.asarray(deltas, dtype=float)
    if deltas.size == 0:
        return False
    spread = float(deltas.max() - deltas.min())
    return spread <= CONSTANT_RTOL * max(1.0, float(np.abs(deltas).max()))


def cohens_d(deltas: np.ndarray) -> tuple[float | None, str]:
    """Cohen's d of paired deltas, mean / sd(ddof=1), with a note when undefined."""
    deltas = np.asarray(deltas, dtype=float)
    if deltas.size < MIN_N:
        return None, NOTE_N
    if is_constant(deltas):
        return None, NOTE_SD0
    return _clean(deltas.mean() / deltas.std(ddof=1)), ""


def paired_ttest(deltas: np.ndarray) -> tuple[float | None, float | None, str]:
    """Two-sided paired t-test of the deltas against 0: (t, p, note)."""
    deltas = np.asarray(deltas, dtype=float)
    n = deltas.size
    if n < MIN_N:
        return None, None, NOTE_N
    if is_constant(deltas):
        return None, None, NOTE_SD0
    t = deltas.mean() / (deltas.std(ddof=1) / math.sqrt(n))
    p = 2.0 * special.stdtr(n - 1, -abs(t))  # Student t CDF; scipy.stats.t.sf without its overhead
    return _clean(t), _clean(p), ""


SMALL_WILCOXON_N = 13  # scipy's default switches to an exact permutation test up to here


def signed_rank_permutation_p(deltas: np.ndarray) -> float:
    """Exact two-sided p of the Wilcoxon signed-rank test by enumerating all sign flips.

    Zeros are dropped and tied |deltas| get average ranks, as in scipy. This is the p that
    scipy's default gives for n <= 13 (its exact test without ties, its exhaustive
    permutation test with ties or zeros), computed by convolution over doubled integer
    ranks instead of enumerating up to 2**13 sign patterns one by one.
    """
    nz = np.asarray(deltas, dtype=float)
    nz = nz[nz != 0]
    ranks2 = np.rint(2 * sps.rankdata(np.abs(nz))).astype(np.int64)  # doubled average ranks
    counts = np.zeros(int(ranks2.sum()) + 1)
    counts[0] = 1.0
    for r in ranks2:  # distribution of sum(rank_i * s_i), s_i in {0, 1} equally likely
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[: counts.size - r]
        counts = counts + shifted
    observed = int(ranks2[nz > 0].sum())
    total = counts.sum()
    p_less = counts[: observed + 1].sum() / total
    p_greater = counts[observed:].sum() / total
    return float(min(1.0, 2 * min(p_less, p_greater)))


def wilcoxon_p(deltas: np.ndarray) -> tuple[float | None, str]:
    """Wilcoxon signed-rank p: two-sided, zeros dropped, scipy's default method."""
    deltas = np.asarray(deltas, dtype=float)
    if deltas.size < MIN_N:
        return None, NOTE_N
    if not np.any(deltas != 0):
        return None, NOTE_ALL_ZERO
    if deltas.size <= SMALL_WILCOXON_N:
        # same p as scipy's default, without its seconds-long permutation loop on ties/zeros
        return signed_rank_permutation_p(deltas), ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        res = sps.wilcoxon(deltas, zero_method="wilcox", alternative="two-sided")
    p = _clean(res.pvalue)
    return p, "" if p is not None else "wilcoxon undefined"


def win_rate(deltas: np.ndarray) -> float | None:
    """Share of samples with NLL(C) < NLL(reference), i.e. delta > 0; ties are no win."""
    deltas = np.asarray(deltas, dtype=float)
    return _clean(np.mean(deltas > 0)) if deltas.size else None


def significance_mark(p: float | None) -> str:
    """``***`` < 0.001, ``**`` < 0.01, ``*`` < 0.05, ``ns`` otherwise, ``n/a`` without a p."""
    if p is None:
        return "n/a"
    if p < 0.001:
        return "***"
    if p < 0.01:
        return "**"
    if p < 0.05:
        return "*"
    return "ns"


def effect_of_deltas(deltas: np.ndarray, *, wilcoxon: bool = True) -> PairedEffect:
    """All per-table statistics of one vector of paired deltas (NaNs dropped)."""
    deltas = np.asarray(deltas, dtype=float)
    deltas = deltas[np.isfinite(deltas)]
    n = int(deltas.size)
    d, note_d = cohens_d(deltas)
    t, p_t, note_t = paired_ttest(deltas)
    p_w, note_w = wilcoxon_p(deltas) if wilcoxon else (None, "")
    sd = _clean(deltas.std(ddof=1)) if n >= 2 else None
    note_large = NOTE_LARGE_D if d is not None and abs(d) >= LARGE_D else ""
    return PairedEffect(
        n=n,
        mean_delta=mean_delta(deltas),
        sd_delta=sd,
        d=d,
        t=t,
        p_ttest=p_t,
        p_wilcoxon=p_w,
        win_rate=win_rate(deltas),
        mark=significance_mark(p_t),
        note=_join_notes(note_d, note_large, note_t, note_w) if n else "n=0",
    )


WILCOXON_BATCH_MIN_N = 51  # above 50 scipy's default is the normal approximation, column by column


def _wilcoxon_batch(columns: list[np.ndarray]) -> list[float | None]:
    """Wilcoxon p of equal-length columns (n > 50, not all zero) in one scipy call.

    For n > 50 scipy's default method is the normal approximation, computed independently
    per column, so one call on [n, k] equals k calls; smaller samples go one by one
    because scipy's exact/permutation choice looks at ties across the whole input.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.wilcoxon(np.column_stack(columns), zero_method="wilcox", alternative="two-sided", axis=0)
    return [_clean(p) for p in np.atleast_1d(res.pvalue)]


def effects_of_columns(columns: Sequence[np.ndarray]) -> list[PairedEffect]:
    """:func:`effect_of_deltas` of many delta vectors, batching the Wilcoxon tests."""
    cleaned = [np.asarray(c, dtype=float)[np.isfinite(np.asarray(c, dtype=float))] for c in columns]
    effects = [effect_of_deltas(c, wilcoxon=False) for c in cleaned]
    batches: dict[int, list[int]] = {}
    for i, c in enumerate(cleaned):
        if c.size >= WILCOXON_BATCH_MIN_N and np.any(c != 0):
            batches.setdefault(c.size, []).append(i)
    p_w: dict[int, tuple[float | None, str]] = {}
    for members in batches.values():
        for i, p in zip(members, _wilcoxon_batch([cleaned[i] for i in members])):
            p_w[i] = (p, "" if p is not None else "wilcoxon undefined")
    out = []
    for i, (c, eff) in enumerate(zip(cleaned, effects)):
        p, note = p_w[i] if i in p_w else wilcoxon_p(c)
        out.append(replace(eff, p_wilcoxon=p, note=_join_notes(eff.note, note) if eff.n else eff.note))
    return out


def paired_effect(nll_reference: np.ndarray, nll_condition: np.ndarray) -> PairedEffect:
    """Condition C against a reference, paired over samples (complete pairs only)."""
    return effect_of_deltas(paired_deltas(nll_reference, nll_condition))


@contextlib.contextmanager
def _cheap_gc() -> Iterator[None]:
    """Freeze the objects alive now, so a library's ``gc.collect()`` only walks new ones.

    statsmodels' Holm calls ``gc.collect()`` on every use; in a process holding pandas,
    scipy and MLflow that full collection costs ~0.1 s per table family.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-corrected p-values over one family; ``None`` entries stay ``None``."""
    return holm_families([pvalues])[0]


def holm_families(families: Sequence[Sequence[float | None]]) -> list[list[float | None]]:
    """Holm correction applied to each family separately (statsmodels ``multipletests``)."""
    results = []
    with _cheap_gc():
        for pvalues in families:
            idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
            out: list[float | None] = [None] * len(pvalues)
            if idx:
                _, corrected, _, _ = multipletests([pvalues[i] for i in idx], method="holm")
                for i, p in zip(idx, corrected):
                    out[i] = float(p)
            results.append(out)
    return results


def group_seed(seed: int, *labels: object) -> tuple[int, int]:
    """Seed entropy for one resampled sample set, independent of the order cells are computed in."""
    key = "\x1f".join(str(label) for label in labels)
    return (int(seed), zlib.crc32(key.encode()))


def sample_set_seed(seed: int, sample_ids: np.ndarray) -> tuple[int, int]:
    """Seed entropy keyed by the resampled samples themselves.

    Every statistic bootstrapped over the same samples (a condition's d in several tables,
    the two d's of a structural fraction) then sees the same draws, whatever order the
    tables are built in.
    """
    return (int(seed), zlib.crc32(np.ascontiguousarray(sample_ids, dtype=np.int64).tobytes()))


def _d_along(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Cohen's d along ``axis``; NaN where the sd is 0 in substance (e.g. one sample drawn n times)."""
    mean = x.mean(axis=axis)
    sd = x.std(axis=axis, ddof=1)
    scale = np.maximum(1.0, np.abs(x).max(axis=axis))
    valid = sd > CONSTANT_RTOL * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, mean / np.where(valid, sd, 1.0), np.nan)


def _centered_d(center: np.ndarray, scale: np.ndarray):
    """:func:`_d_along` of ``y + center`` for data centred per column ([k, n] -> [k]): the
    bootstrap's statistic, in two passes over each resample (sums of y and of y*y)."""

    def statistic(y: np.ndarray, axis: int = -1) -> np.ndarray:
        n = y.shape[axis]
        y = np.moveaxis(y, axis, -1)
        s1 = y.sum(axis=-1)
        s2 = np.einsum("...i,...i->...", y, y)
        shape = center.shape + (1,) * (s1.ndim - center.ndim)
        c, tol = center.reshape(shape), (CONSTANT_RTOL * scale).reshape(shape)
        mean_c = s1 / n
        var = np.maximum(s2 - n * mean_c * mean_c, 0.0) / (n - 1)
        valid = var > tol * tol
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(valid, (mean_c + c) / np.sqrt(np.where(valid, var, 1.0)), np.nan)

    return statistic


def _rng(seed: int | tuple[int, ...]) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(seed)) if isinstance(seed, tuple) else seed)


def _batch(columns: int, n: int) -> int:
    """Resamples per scipy batch: about 4 million floats in memory at a time."""
    return max(1, int(4_000_000 // max(1, columns * n)))


def _bca(data: tuple[np.ndarray, ...], statistic, *, resamples: int, seed, level: float, paired: bool = False):
    """scipy's seeded BCa bootstrap along the last axis: (low, high, bootstrap distribution) arrays."""
    columns = int(np.prod(data[0].shape[:-1])) or 1
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # DegenerateDataWarning: judged below from the numbers themselves
        res = sps.bootstrap(
            data, statistic, n_resamples=resamples, batch=_batch(columns * len(data), data[0].shape[-1]),
            vectorized=True, paired=paired, axis=-1, confidence_level=level, method="BCa", rng=_rng(seed),
        )
    return (np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high),
            np.atleast_2d(res.bootstrap_distribution))


def _withheld_reason(low: float, high: float, draws: np.ndarray) -> str:
    """Why a bootstrap CI cannot be trusted ("" when it can)."""
    if not np.all(np.isfinite(draws)):
        share = float(np.mean(~np.isfinite(draws)))
        return f"{NOTE_DEGENERATE} ({share:.1%} of resamples have sd=0)"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{NOTE_DEGENERATE} (BCa bounds undefined)"
    return ""


def bootstrap_d_cis(
    deltas: np.ndarray, *, resamples: int = 1000, seed: int | tuple[int, ...] = 0, level: float = 0.95
) -> list[tuple[float | None, float | None, str]]:
    """BCa bootstrap CIs of Cohen's d (``scipy.stats.bootstrap``) for k columns of deltas [n, k].

    All columns share the resampled samples (one draw of n samples per resample). The CI
    is withheld (None, None, why) below :data:`MIN_N_CI` samples, for constant deltas, and
    when the bootstrap degenerates: a resample with sd 0, or BCa bounds that are not finite.
    """
    deltas = np.asarray(deltas, dtype=float)
    if deltas.ndim == 1:
        deltas = deltas[:, None]  # [n, 1]; (reshape(n, -1) cannot infer k when n == 0: an empty length bin)
    n, k = deltas.shape
    if resamples <= 0:
        return [(None, None, "")] * k
    if n < MIN_N:
        return [(None, None, NOTE_N)] * k
    if n < MIN_N_CI:
        return [(None, None, NOTE_SMALL_N)] * k
    out: list[tuple[float | None, float | None, str]] = [(None, None, NOTE_SD0)] * k
    varying = [j for j in range(k) if not is_constant(deltas[:, j])]
    if not varying:
        return out
    columns = deltas[:, varying].T  # [k', n]
    center = columns.mean(axis=1)
    scale = np.maximum(1.0, np.abs(columns).max(axis=1))
    low, high, draws = _bca((columns - center[:, None],), _centered_d(center, scale), resamples=resamples, seed=seed,
                            level=level)  # [k'], [k'], [k', resamples]
    for i, j in enumerate(varying):
        reason = _withheld_reason(float(low[i]), float(high[i]), draws[i])
        out[j] = (None, None, reason) if reason else (_clean(low[i]), _clean(high[i]), "")
    return out


def bootstrap_d_ci(
    deltas: np.ndarray, *, resamples: int = 1000, seed: int | tuple[int, ...] = 0, level: float = 0.95
) -> tuple[float | None, float | None, str]:
    """BCa bootstrap CI of Cohen's d (resampling samples with replacement), or why it is withheld."""
    deltas = np.asarray(deltas, dtype=float)
    deltas = deltas[np.isfinite(deltas)]
    return bootstrap_d_cis(deltas[:, None], resamples=resamples, seed=seed, level=level)[0]


@dataclass(frozen=True)
class StructuralFraction:
    """d(random) / d(oracle) and the structural/semantic split of the oracle's benefit."""

    n: int
    d_random: float | None
    d_oracle: float | None
    fraction: float | None
    ci_low: float | None
    ci_high: float | None
    mean_delta_random: float | None
    mean_delta_oracle: float | None
    structural_share: float | None   # mean_delta(random) / mean_delta(oracle)
    semantic_mean_delta: float | None  # mean of NLL(random) - NLL(oracle)
    semantic_d: float | None
    semantic_p: float | None
    note: str

    def as_dict(self) -> dict:
        return asdict(self)


def _ratio(num: float | None, den: float | None, what: str) -> tuple[float | None, str]:
    if num is None or den is None:
        return None, f"{what} undefined"
    if den == 0:
        return None, f"{what}: denominator 0"
    return _clean(num / den), ""


def _ratio_of_d(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return _d_along(x, axis) / _d_along(y, axis)


def _fraction_ci(
    delta_part: np.ndarray, delta_whole: np.ndarray, *, resamples: int, seed, level: float
) -> tuple[float | None, float | None, str]:
    """BCa CI of d(part)/d(whole), withheld when d(whole)'s own CI reaches 0 (the ratio is unbounded)."""
    if delta_part.size < MIN_N_CI:
        return None, None, NOTE_SMALL_N
    w_lo, w_hi, w_note = bootstrap_d_ci(delta_whole, resamples=resamples, seed=seed, level=level)
    if w_lo is None or w_hi is None:
        return None, None, w_note or NOTE_DEGENERATE
    if w_lo <= 0.0 <= w_hi:
        return None, None, "CI withheld: the CI of the denominator d includes 0, so the ratio is unbounded"
    low, high, draws = _bca((delta_part, delta_whole), _ratio_of_d, resamples=resamples, seed=seed, level=level,
                            paired=True)
    reason = _withheld_reason(float(low[0]), float(high[0]), draws[0])
    return (None, None, reason) if reason else (_clean(low[0]), _clean(high[0]), "")


def structural_fraction(
    nll_reference: np.ndarray,
    nll_random: np.ndarray,
    nll_oracle: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int | tuple[int, ...] = 0,
    level: float = 0.95,
) -> StructuralFraction:
    """Structural fraction d(random)/d(oracle) with a paired BCa bootstrap CI.

    Samples lacking any of the three NLLs are dropped. Both d's of one bootstrap draw use
    the same resampled samples, so the CI reflects their correlation. A ratio whose
    denominator may be 0 has no finite CI: it is withheld when d(oracle)'s own CI includes 0.
    """
    ref = np.asarray(nll_reference, dtype=float)
    rnd = np.asarray(nll_random, dtype=float)
    orc = np.asarray(nll_oracle, dtype=float)
    keep = np.isfinite(ref) & np.isfinite(rnd) & np.isfinite(orc)
    ref, rnd, orc = ref[keep], rnd[keep], orc[keep]
    n = int(ref.size)
    d_r, note_r = cohens_d(ref - rnd)
    d_o, note_o = cohens_d(ref - orc)
    fraction, note_f = _ratio(d_r, d_o, "fraction")
    mdr, mdo = mean_delta(ref - rnd), mean_delta(ref - orc)
    share, note_s = _ratio(mdr, mdo, "structural share")
    sem = effect_of_deltas(rnd - orc)
    lo = hi = None
    note_ci = ""
    if fraction is not None and resamples > 0:
        lo, hi, note_ci = _fraction_ci(ref - rnd, ref - orc, resamples=resamples, seed=seed, level=level)
    notes = [f"random: {note_r}" if note_r else "", f"oracle: {note_o}" if note_o else "", note_f, note_s, note_ci]
    return StructuralFraction(
        n=n,
        d_random=d_r,
        d_oracle=d_o,
        fraction=fraction,
        ci_low=lo,
        ci_high=hi,
        mean_delta_random=mdr,
        mean_delta_oracle=mdo,
        structural_share=share,
        semantic_mean_delta=sem.mean_delta,
        semantic_d=sem.d,
        semantic_p=sem.p_ttest,
        note=_join_notes(*notes),
    )


def quantile_bins(values: np.ndarray, tie_keys: np.ndarray, bins: int = 5) -> np.ndarray:
    """Bin label 1..bins by ascending value (bin ``bins`` = highest), ties by ``tie_keys``.

    Bins are equal-count: the sample at sorted position i gets ``i * bins // n + 1``.
    """
    values = np.asarray(values, dtype=float)
    n = values.size
    order = np.lexsort((np.asarray(tie_keys), values))
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    return position * bins // max(n, 1) + 1


def top_fraction_size(n: int, fraction: float) -> int:
    """ceil(fraction * n), the rule stage selections use (:func:`tracker.specs.schema.hardest_count`)."""
    return hardest_count(n, fraction)


def select_hardest(values: np.ndarray, tie_keys: np.ndarray, fraction: float = 0.4) -> np.ndarray:
    """Boolean mask of the ceil(fraction n) highest values; ties go to the lower tie key."""
    values = np.asarray(values, dtype=float)
    k = top_fraction_size(values.size, fraction)
    order = np.lexsort((np.asarray(tie_keys), -values))
    mask = np.zeros(values.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def rank_conditions(nll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ranking of conditions by NLL (1 = lowest NLL = best).

    ``nll`` is [samples, conditions] without gaps. Returns (mean rank, share best): ties
    get the average rank, and a tie for best splits that sample's credit equally, so the
    shares sum to 1.
    """
    nll = np.asarray(nll, dtype=float)
    if nll.size == 0:
        k = nll.shape[1] if nll.ndim == 2 else 0
        return np.full(k, np.nan), np.full(k, np.nan)
    ranks = sps.rankdata(nll, axis=1, method="average")  # [samples, conditions]
    best = nll == nll.min(axis=1, keepdims=True)  # [samples, conditions]
    credit = best / best.sum(axis=1, keepdims=True)
    return ranks.mean(axis=0), credit.mean(axis=0)


def spearman_gradient(values_in_order: Sequence[float | None]) -> tuple[float | None, float | None, str]:
    """Spearman rho (and p) between a given condition order (1..k) and per-condition values."""
    vals = np.array([np.nan if v is None else v for v in values_in_order], dtype=float)
    pos = np.arange(1, vals.size + 1, dtype=float)
    keep = np.isfinite(vals)
    vals, pos = vals[keep], pos[keep]
    if vals.size < MIN_N:
        return None, None, NOTE_N
    if is_constant(vals):
        return None, None, "constant values"
    res = sps.spearmanr(pos, vals)
    return _clean(res.statistic), _clean(res.pvalue), ""


def sign_consistency(values: Sequence[float | None]) -> dict:
    """Whether per-dataset effects share one nonzero sign: counts and the verdict."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    n_pos = sum(v > 0 for v in vals)
    n_neg = sum(v < 0 for v in vals)
    consistent = bool(vals) and (n_pos == len(vals) or n_neg == len(vals))
    sign = "+" if consistent and n_pos else "-" if consistent else ""
    return {
        "n_datasets": len(vals),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "n_zero": len(vals) - n_pos - n_neg,
        "consistent": consistent,
        "sign": sign,
    }


def difference_of_differences(
    row0_a: np.ndarray, row0_b: np.ndarray, row1_a: np.ndarray, row1_b: np.ndarray
) -> np.ndarray:
    """Per-sample interaction contrast of a 2-row factorial step a -> b.

    ``[NLL(r0,a) - NLL(r0,b)] - [NLL(r1,a) - NLL(r1,b)]``: how much more the step from column
    a to column b helps in row 0 than in row 1 (positive = larger benefit in row 0).
    Samples missing any cell are dropped.
    """
    cells = np.vstack([np.asarray(x, dtype=float) for x in (row0_a, row0_b, row1_a, row1_b)])  # [4, samples]
    keep = np.all(np.isfinite(cells), axis=0)
    c = cells[:, keep]
    return (c[0] - c[1]) - (c[2] - c[3])


def answer_word_count(answer: str | None) -> int:
    """Whitespace word count of an answer (the seed's answer-length measure)."""
    return len(answer.split()) if answer else 0


def length_bin_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def length_bins(word_counts: np.ndarray, bins: Sequence[Sequence[int | None]] = DEFAULT_LENGTH_BINS) -> np.ndarray:
    """Bin label per word count ("1-2", "3-5", ..., "21+"); None outside every bin."""
    counts = np.asarray(word_counts)
    out = np.full(counts.shape, None, dtype=object)
    for lo, hi in bins:
        inside = counts >= lo if hi is None else (counts >= lo) & (counts <= hi)
        out[inside & (out == None)] = length_bin_label(int(lo), None if hi is None else int(hi))  # noqa: E711
    return out
