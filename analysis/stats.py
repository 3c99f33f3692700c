"""The seed's statistics, one small function each, on plain numpy arrays.

Conventions (fixed so that results are comparable across runs):

- ``delta = NLL(reference) - NLL(C)``: positive means C helps.
- Cohen's d of paired deltas = mean / sd (ddof=1).
- Win rate = share of samples with NLL(C) < NLL(reference); ties are no win.
- Marks come from the uncorrected two-sided paired t-test p; Holm-corrected p beside it.
- Wilcoxon: two-sided, zero differences dropped (``zero_method="wilcox"``), scipy's
  default exact/normal choice.

Degenerate inputs (n < 3, all-equal deltas, all-zero deltas) give ``None`` and a ``note``
saying why, never a crash or a silent NaN.
"""
from __future__ import annotations

import contextlib
import functools
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

MIN_N = 3
NOTE_N = "n<3"
NOTE_SD0 = "sd=0"
NOTE_ALL_ZERO = "all deltas zero"

# Answer-length bins of the seed's exp06 (inclusive word counts; None = open end).
DEFAULT_LENGTH_BINS: tuple[tuple[int, int | None], ...] = ((1, 2), (3, 5), (6, 20), (21, None))


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
        note=_join_notes(note_d, note_t, note_w) if n else "n=0",
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
    the two d's of a structural fraction) then sees the same draws: reproducible, and
    generated once (see :func:`resample_weights`' cache).
    """
    return (int(seed), zlib.crc32(np.ascontiguousarray(sample_ids, dtype=np.int64).tobytes()))


def resample_weights(n: int, resamples: int, seed: int | tuple[int, ...] | np.random.SeedSequence) -> np.ndarray:
    """Bootstrap draws as counts: row b says how often each of the n samples was drawn.

    Equivalent to indexing with ``rng.integers(0, n, (resamples, n))``, but lets the mean
    and sd of every draw for many columns at once come from one matrix product.
    """
    if isinstance(seed, tuple):
        return _cached_weights(n, resamples, seed)
    return _draw_weights(n, resamples, seed)


def _draw_weights(n: int, resamples: int, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))  # [resamples, n]
    flat = idx + (np.arange(resamples, dtype=np.int64) * n)[:, None]
    counts = np.bincount(flat.ravel(), minlength=resamples * n).reshape(resamples, n)
    weights = counts.astype(np.uint16 if n < 2**16 else np.int64)  # compact while cached
    weights.flags.writeable = False
    return weights


@functools.lru_cache(maxsize=16)
def _cached_weights(n: int, resamples: int, seed: tuple[int, ...]) -> np.ndarray:
    return _draw_weights(n, resamples, np.random.SeedSequence(list(seed)))


def clear_resample_cache() -> None:
    """Drop cached bootstrap draws (a report build clears them when done)."""
    _cached_weights.cache_clear()


def weighted_d(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Cohen's d of every bootstrap draw: weights [resamples, n] x values [n, k] -> [resamples, k].

    NaN where a draw's sd is 0 in substance (e.g. one sample drawn n times).
    """
    values = np.asarray(values, dtype=float).reshape(values.shape[0], -1)  # [n, k]
    n, k = values.shape
    center = values.mean(axis=0)  # [k]
    x = values - center  # centred for a stable variance
    sums = weights.astype(float) @ np.hstack([x, x * x])  # [resamples, 2k], one pass over the draws
    s1, s2 = sums[:, :k], sums[:, k:]
    mean_c = s1 / n
    var = (s2 - n * mean_c * mean_c) / (n - 1)
    scale = np.maximum(1.0, np.abs(values).max(axis=0))  # [k]
    valid = var > (CONSTANT_RTOL * scale) ** 2
    sd = np.sqrt(np.where(valid, var, 1.0))
    return np.where(valid, (mean_c + center) / sd, np.nan)


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float | None, float | None, str]:
    finite = values[np.isfinite(values)]
    if finite.size < max(10, values.size // 2):
        return None, None, "bootstrap degenerate"
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return _clean(lo), _clean(hi), ""


def bootstrap_d_cis(
    deltas: np.ndarray, *, resamples: int = 1000, seed: int | tuple[int, ...] = 0, level: float = 0.95
) -> list[tuple[float | None, float | None, str]]:
    """Percentile bootstrap CIs of Cohen's d for k columns of deltas [n, k] over the same samples.

    All columns share the resampled samples (one draw of n samples per resample).
    """
    deltas = np.asarray(deltas, dtype=float)
    if deltas.ndim == 1:
        deltas = deltas[:, None]  # [n, 1]; (reshape(n, -1) cannot infer k when n == 0: an empty length bin)
    n, k = deltas.shape
    if resamples <= 0:
        return [(None, None, "")] * k
    if n < MIN_N:
        return [(None, None, NOTE_N)] * k
    ds = weighted_d(resample_weights(n, resamples, seed), deltas)  # [resamples, k]
    out = []
    for j in range(k):
        if is_constant(deltas[:, j]):
            out.append((None, None, NOTE_SD0))
        else:
            out.append(_percentile_ci(ds[:, j], level))
    return out


def bootstrap_d_ci(
    deltas: np.ndarray, *, resamples: int = 1000, seed: int | tuple[int, ...] = 0, level: float = 0.95
) -> tuple[float | None, float | None, str]:
    """Percentile bootstrap CI of Cohen's d (resampling samples with replacement)."""
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


def structural_fraction(
    nll_reference: np.ndarray,
    nll_random: np.ndarray,
    nll_oracle: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int | tuple[int, ...] = 0,
    level: float = 0.95,
) -> StructuralFraction:
    """Structural fraction d(random)/d(oracle) with a paired bootstrap CI.

    Samples lacking any of the three NLLs are dropped. Both d's of one bootstrap draw use
    the same resampled samples, so the CI reflects their correlation; a ratio of two noisy
    d's is unstable, which the CI shows.
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
        ds = weighted_d(resample_weights(n, resamples, seed), np.column_stack([ref - rnd, ref - orc]))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = ds[:, 0] / ds[:, 1]  # [resamples]
        lo, hi, note_ci = _percentile_ci(ratios, level)
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
    """ceil(fraction * n), robust to float noise (0.4 * 15 is 6, not 7)."""
    return min(n, math.ceil(round(fraction * n, 9)))


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
