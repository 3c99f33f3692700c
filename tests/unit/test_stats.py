"""Each statistic against values worked out here by hand (formulas, not the library the code calls)."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from analysis import stats

# ------------------------------------------------------------------ hand helpers

def hand_sd(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def student_t_two_sided_p(t: float, df: int, steps: int = 20000) -> float:
    """1 - 2 * integral_0^|t| of the Student t density (Simpson's rule)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    f = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    a, b = 0.0, abs(t)
    h = (b - a) / steps
    total = f(a) + f(b) + sum((4 if i % 2 else 2) * f(a + i * h) for i in range(1, steps))
    return 1 - 2 * total * h / 3


def hand_holm(ps):
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, ps[i] * (len(ps) - rank)))
        out[i] = running
    return out


def hand_quantile(sorted_values, q):
    """numpy's default (linear) quantile, by hand."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


REF = np.array([2.0, 3.0, 4.0, 5.0, 6.0])
DELTAS = [1.0, 2.0, 3.0, 4.0, 5.0]
COND = REF - np.array(DELTAS)


# ------------------------------------------------------------------ paired effect

def test_paired_effect_matches_hand_formulas():
    eff = stats.paired_effect(REF, COND)
    sd = hand_sd(DELTAS)  # sqrt(2.5)
    assert sd == pytest.approx(math.sqrt(2.5))
    assert eff.n == 5
    assert eff.mean_delta == pytest.approx(3.0)
    assert eff.sd_delta == pytest.approx(sd)
    assert eff.d == pytest.approx(3.0 / sd)  # 1.8974
    t = 3.0 / (sd / math.sqrt(5))  # 4.2426
    assert eff.t == pytest.approx(t)
    assert eff.p_ttest == pytest.approx(student_t_two_sided_p(t, 4), abs=1e-7)
    assert eff.p_ttest == pytest.approx(0.01324, abs=1e-4)  # t table, df=4
    assert eff.mark == "*"
    assert eff.win_rate == 1.0
    # all five deltas positive: exact Wilcoxon two-sided p = 2 * (1 / 2**5)
    assert eff.p_wilcoxon == pytest.approx(2 / 32)
    assert eff.note == ""


def test_delta_sign_positive_means_condition_helps():
    eff = stats.paired_effect([1.0, 2.0, 3.0, 4.0], [2.0, 2.5, 3.9, 4.2])  # condition has higher NLL
    assert eff.mean_delta == pytest.approx(-0.65)
    assert eff.d < 0
    assert eff.win_rate == 0.0


def test_win_rate_counts_ties_as_no_win():
    ref = [1.0, 2.0, 3.0, 4.0]
    cond = [0.5, 2.0, 3.5, 3.0]  # win, tie, loss, win
    assert stats.win_rate(stats.paired_deltas(ref, cond)) == 0.5


def test_incomplete_pairs_are_dropped():
    ref = [1.0, np.nan, 3.0, 4.0, 5.0]
    cond = [0.0, 1.0, np.nan, 3.0, 3.0]
    deltas = stats.paired_deltas(ref, cond)
    assert deltas.tolist() == [1.0, 1.0, 2.0]
    assert stats.paired_effect(ref, cond).n == 3


def test_wilcoxon_exact_with_one_negative_by_hand():
    # |d| ranks 1..5, the negative one has rank 1: W- = 1. P(W- <= 1) = 2/32 (sums 0 and 1).
    p, note = stats.wilcoxon_p(np.array([-1.0, 2.0, 3.0, 4.0, 5.0]))
    assert p == pytest.approx(2 * 2 / 32)
    assert note == ""


def test_small_sample_wilcoxon_equals_scipys_default_with_ties_and_zeros():
    from scipy.stats import wilcoxon  # the reference: scipy's own default method

    rng = np.random.default_rng(9)
    cases = [
        np.array([1.0, 1.0, 2.0, -3.0]),  # ties -> scipy permutes
        np.array([0.0, 0.5, 0.5, -0.5, 1.0, 2.0]),  # zeros and ties
        np.array([-1.0, 2.0, 3.0, 4.0, 5.0]),  # no ties -> scipy's exact distribution
        np.array([0.0, 0.0, 1.0]),
    ]
    cases += [np.round(rng.normal(0.3, 1.0, size=n), 1) for n in (5, 7, 9, 10)]
    for deltas in cases:
        ours, _ = stats.wilcoxon_p(deltas)
        theirs = wilcoxon(deltas, zero_method="wilcox", alternative="two-sided").pvalue
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12), deltas


def test_small_sample_wilcoxon_with_ties_by_hand():
    # |d| = 1, 1, 2 -> ranks 1.5, 1.5, 3; signs +, +, -: W+ = 3. Sign patterns (8): W+ in
    # {0, 1.5, 1.5, 3, 3, 4.5, 4.5, 6}; P(W+ <= 3) = 5/8, P(W+ >= 3) = 5/8 -> p = min(1, 2 * 5/8) = 1
    assert stats.signed_rank_permutation_p(np.array([1.0, 1.0, -2.0])) == 1.0
    # +1, +1, +2: W+ = 6, only the all-plus pattern reaches it -> p = 2/8
    assert stats.signed_rank_permutation_p(np.array([1.0, 1.0, 2.0])) == pytest.approx(0.25)


def test_wilcoxon_drops_zero_differences():
    p_with_zero, _ = stats.wilcoxon_p(np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]))
    assert p_with_zero == pytest.approx(2 / 32)


def test_wilcoxon_normal_approximation_by_hand_and_batched_equals_single():
    rng = np.random.default_rng(3)
    cols = [rng.normal(0.2, 1.0, size=80) for _ in range(3)] + [rng.normal(0, 1, size=60)]
    x = cols[0]
    n = x.size
    order = np.argsort(np.abs(x))
    ranks = np.empty(n)
    ranks[order] = np.arange(1, n + 1)  # no ties in continuous data
    w_plus = ranks[x > 0].sum()
    z = (w_plus - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    p_hand = math.erfc(abs(z) / math.sqrt(2))
    effects = stats.effects_of_columns(cols)
    assert effects[0].p_wilcoxon == pytest.approx(p_hand, rel=1e-9)
    for col, eff in zip(cols, effects):
        assert eff.p_wilcoxon == pytest.approx(stats.wilcoxon_p(col)[0], rel=1e-12)
        assert eff == stats.effect_of_deltas(col)


@pytest.mark.parametrize(
    "p, mark",
    [(0.0009, "***"), (0.001, "**"), (0.0099, "**"), (0.01, "*"), (0.0499, "*"), (0.05, "ns"), (0.7, "ns"), (None, "n/a")],
)
def test_significance_marks(p, mark):
    assert stats.significance_mark(p) == mark


def test_holm_by_hand_on_three_p_values():
    # sorted: 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> monotone max 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx(hand_holm([0.01, 0.04, 0.03]))


def test_holm_keeps_none_and_caps_at_one():
    out = stats.holm([0.01, None, 0.04, 0.6])
    assert out[1] is None
    assert out[0] == pytest.approx(0.03)
    assert out[2] == pytest.approx(0.08)
    assert out[3] == pytest.approx(0.6)  # 0.6 * 1, already above the running max 0.08
    assert stats.holm([0.4, 0.5, 0.6]) == pytest.approx([1.0, 1.0, 1.0])  # 1.2 capped at 1
    assert stats.holm([None, None]) == [None, None]
    assert stats.holm_families([[0.02, 0.01], [0.5]]) == [pytest.approx([0.02, 0.02]), pytest.approx([0.5])]


# ------------------------------------------------------------------ edge cases

def _no_nan(eff: stats.PairedEffect) -> None:
    for value in eff.as_dict().values():
        if isinstance(value, float):
            assert math.isfinite(value)


def test_fewer_than_three_pairs_gives_none_with_note():
    eff = stats.paired_effect([1.0, 2.0], [0.5, 1.0])
    assert eff.n == 2
    assert eff.d is None and eff.p_ttest is None and eff.p_wilcoxon is None
    assert eff.mean_delta == pytest.approx(0.75)
    assert eff.win_rate == 1.0
    assert eff.mark == "n/a"
    assert "n<3" in eff.note
    _no_nan(eff)


def test_no_pairs_at_all():
    eff = stats.paired_effect([np.nan, 1.0], [1.0, np.nan])
    assert eff.n == 0 and eff.mean_delta is None and eff.win_rate is None and eff.d is None
    assert eff.note == "n=0"


def test_all_equal_deltas_sd_zero():
    eff = stats.effect_of_deltas(np.array([0.5, 0.5, 0.5, 0.5]))
    assert eff.d is None and eff.t is None and eff.p_ttest is None
    assert "sd=0" in eff.note
    assert eff.mean_delta == pytest.approx(0.5)
    assert eff.win_rate == 1.0
    # Wilcoxon is defined here: four positive deltas, exact p = 2/16
    assert eff.p_wilcoxon == pytest.approx(2 / 16)
    _no_nan(eff)


def test_constant_deltas_up_to_float_rounding_are_sd_zero():
    ref = np.array([1.1, 2.2, 3.3, 4.4])
    cond = np.array([1.0, 2.1, 3.2, 4.3])  # deltas 0.1 +- 1e-16
    assert np.std(ref - cond) > 0  # rounding noise really is there
    eff = stats.paired_effect(ref, cond)
    assert eff.d is None and "sd=0" in eff.note


def test_all_zero_deltas():
    eff = stats.effect_of_deltas(np.zeros(5))
    assert eff.mean_delta == 0.0
    assert eff.win_rate == 0.0
    assert eff.d is None and eff.p_wilcoxon is None
    assert "sd=0" in eff.note and "all deltas zero" in eff.note
    _no_nan(eff)


def test_ties_in_deltas_are_handled():
    eff = stats.effect_of_deltas(np.array([1.0, 1.0, 2.0, 2.0, -1.0, 3.0]))
    assert eff.p_wilcoxon is not None and 0 < eff.p_wilcoxon <= 1
    assert eff.d == pytest.approx(np.mean([1, 1, 2, 2, -1, 3]) / hand_sd([1, 1, 2, 2, -1, 3]))


# ------------------------------------------------------------------ bootstrap

def hand_bca(deltas, idx, level=0.95):
    """Efron & Tibshirani's BCa interval of d from given resample indices, by hand (sec. 14.3)."""
    normal = NormalDist()
    d = lambda xs: (sum(xs) / len(xs)) / hand_sd(xs)  # noqa: E731
    theta = d(list(deltas))
    boot = sorted(d(list(deltas[row])) for row in idx)
    below = sum(b < theta for b in boot) + sum(b <= theta for b in boot)
    z0 = normal.inv_cdf(below / (2 * len(boot)))
    jack = [d([x for j, x in enumerate(deltas) if j != i]) for i in range(len(deltas))]
    jmean = sum(jack) / len(jack)
    u = [(len(deltas) - 1) * (jmean - j) for j in jack]
    n = len(deltas)
    a = (sum(v ** 3 for v in u) / n ** 3) / (6 * (sum(v ** 2 for v in u) / n ** 2) ** 1.5)
    out = []
    for z in (normal.inv_cdf((1 - level) / 2), normal.inv_cdf((1 + level) / 2)):
        out.append(hand_quantile(boot, normal.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))))
    return out


def test_bootstrap_ci_is_bca_computed_by_hand():
    rng = np.random.default_rng(11)
    deltas = rng.normal(0.3, 1.0, size=40)
    resamples, seed = 300, 123
    idx = np.random.default_rng(seed).integers(0, deltas.size, size=(resamples, deltas.size))
    lo, hi, note = stats.bootstrap_d_ci(deltas, resamples=resamples, seed=seed)
    assert note == ""
    hand_lo, hand_hi = hand_bca(deltas, idx)
    assert lo == pytest.approx(hand_lo, rel=1e-9)
    assert hi == pytest.approx(hand_hi, rel=1e-9)
    percentile = sorted(float(np.mean(deltas[row]) / hand_sd(list(deltas[row]))) for row in idx)
    assert (lo, hi) != pytest.approx((hand_quantile(percentile, 0.025), hand_quantile(percentile, 0.975)))


def test_bootstrap_is_seeded_and_covers_known_effect():
    rng = np.random.default_rng(5)
    deltas = rng.normal(0.5, 1.0, size=2000)  # true d = 0.5
    a = stats.bootstrap_d_ci(deltas, resamples=500, seed=1)
    b = stats.bootstrap_d_ci(deltas, resamples=500, seed=1)
    c = stats.bootstrap_d_ci(deltas, resamples=500, seed=2)
    assert a == b and a != c
    assert a[0] < 0.5 < a[1]
    assert a[1] - a[0] < 0.15
    d, _ = stats.cohens_d(deltas)
    assert a[0] < d < a[1]


def test_bootstrap_edge_cases():
    assert stats.bootstrap_d_ci(np.array([1.0, 2.0]), resamples=100) == (None, None, "n<3")
    assert stats.bootstrap_d_ci(np.full(12, 1.0), resamples=100) == (None, None, "sd=0")
    assert stats.bootstrap_d_ci(np.array([1.0, 2.0, 4.0]), resamples=0) == (None, None, "")


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_small_n_withholds_the_ci_but_keeps_d_and_p(n):
    deltas = np.linspace(0.1, 0.9, n) ** 2
    eff = stats.effect_of_deltas(deltas)
    lo, hi, note = stats.bootstrap_d_ci(deltas, resamples=200, seed=1)
    assert (lo, hi) == (None, None)
    if n < 3:
        assert note == "n<3" and eff.d is None and "n<3" in eff.note
    else:
        assert note == f"n<{stats.MIN_N_CI}: CI withheld"
        assert eff.d == pytest.approx(np.mean(deltas) / hand_sd(list(deltas)))
        assert eff.p_ttest is not None and 0 < eff.p_ttest < 1


@pytest.mark.parametrize("n", [3, 5, 30])
def test_constant_deltas_withhold_d_and_ci_at_any_n(n):
    deltas = np.full(n, 0.25)
    eff = stats.effect_of_deltas(deltas)
    assert eff.d is None and eff.mean_delta == pytest.approx(0.25)
    assert "sd=0" in eff.note
    expected = "sd=0" if n >= stats.MIN_N_CI else f"n<{stats.MIN_N_CI}: CI withheld"
    assert stats.bootstrap_d_ci(deltas, resamples=200, seed=1) == (None, None, expected)


def test_resamples_with_zero_variance_withhold_the_ci():
    deltas = np.array([0.0] * 28 + [1.0, 2.0])  # 12% of resamples draw only zeros
    lo, hi, note = stats.bootstrap_d_ci(deltas, resamples=500, seed=4)
    assert (lo, hi) == (None, None)
    assert note.startswith("bootstrap degenerate: CI withheld") and "sd=0" in note
    assert stats.effect_of_deltas(deltas).d == pytest.approx(np.mean(deltas) / hand_sd(list(deltas)))


def test_thirty_well_behaved_samples_carry_no_note():
    deltas = np.random.default_rng(8).normal(0.4, 1.0, size=30)
    eff = stats.effect_of_deltas(deltas)
    lo, hi, note = stats.bootstrap_d_ci(deltas, resamples=1000, seed=2)
    assert eff.note == "" and note == ""
    assert lo < eff.d < hi and hi - lo < 1.5


def test_a_huge_d_from_a_tiny_sd_carries_a_note():
    eff = stats.effect_of_deltas(np.array([-1.0, -1.01, -1.02]))  # d = -101 at n=3
    assert eff.d == pytest.approx(-1.01 / 0.01)
    assert eff.mark == "***"  # the t-test is arithmetic, and it stays
    assert stats.NOTE_LARGE_D in eff.note
    assert stats.NOTE_LARGE_D not in stats.effect_of_deltas(np.array([1.0, 2.0, 3.5])).note


def test_group_seed_does_not_depend_on_call_order():
    a = np.random.default_rng(stats.group_seed(0, "main", "msmarco")).integers(0, 1000, 5)
    b = np.random.default_rng(stats.group_seed(0, "main", "squad")).integers(0, 1000, 5)
    a2 = np.random.default_rng(stats.group_seed(0, "main", "msmarco")).integers(0, 1000, 5)
    assert a.tolist() == a2.tolist() and a.tolist() != b.tolist()


# ------------------------------------------------------------------ structural fraction

def test_structural_fraction_by_hand():
    ref = np.array([3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    rnd = ref - np.array([0.1, 0.3, 0.2, 0.4, 0.3, 0.5])
    orc = ref - np.array([0.2, 0.5, 0.1, 0.6, 0.7, 0.4])
    res = stats.structural_fraction(ref, rnd, orc, resamples=400, seed=3)
    dr = [0.1, 0.3, 0.2, 0.4, 0.3, 0.5]
    do = [0.2, 0.5, 0.1, 0.6, 0.7, 0.4]
    d_r = (sum(dr) / 6) / hand_sd(dr)
    d_o = (sum(do) / 6) / hand_sd(do)
    assert res.n == 6
    assert res.d_random == pytest.approx(d_r)
    assert res.d_oracle == pytest.approx(d_o)
    assert res.fraction == pytest.approx(d_r / d_o)
    assert res.structural_share == pytest.approx(sum(dr) / sum(do))
    sem = [o - r for r, o in zip(dr, do)]  # NLL(random) - NLL(oracle)
    assert res.semantic_mean_delta == pytest.approx(sum(sem) / 6)
    assert res.semantic_d == pytest.approx((sum(sem) / 6) / hand_sd(sem))
    assert (res.ci_low, res.ci_high) == (None, None) and "n<10: CI withheld" in res.note  # n = 6


def test_structural_fraction_ci_is_seeded_and_brackets_the_fraction():
    rng = np.random.default_rng(6)
    ref = rng.normal(3.0, 1.0, 40)
    rnd, orc = ref - rng.normal(0.3, 0.3, 40), ref - rng.normal(0.5, 0.3, 40)
    res = stats.structural_fraction(ref, rnd, orc, resamples=400, seed=3)
    assert res.note == "" and res.ci_low < res.fraction < res.ci_high
    again = stats.structural_fraction(ref, rnd, orc, resamples=400, seed=3)
    assert (again.ci_low, again.ci_high) == (res.ci_low, res.ci_high)


def test_structural_fraction_ci_is_withheld_when_the_oracle_d_may_be_zero():
    rng = np.random.default_rng(7)
    ref = rng.normal(3.0, 1.0, 40)
    res = stats.structural_fraction(ref, ref - rng.normal(0.3, 0.3, 40), ref - rng.normal(0.0, 0.3, 40), seed=3)
    assert res.fraction is not None and (res.ci_low, res.ci_high) == (None, None)
    assert "denominator d includes 0" in res.note


def test_structural_fraction_with_zero_oracle_effect():
    ref = np.array([3.0, 4.0, 5.0, 6.0])
    res = stats.structural_fraction(ref, ref - np.array([0.1, 0.2, 0.3, 0.2]), ref.copy(), resamples=100)
    assert res.fraction is None and res.ci_low is None
    assert "oracle: sd=0" in res.note


def test_structural_fraction_drops_samples_missing_any_arm():
    ref = np.array([3.0, 4.0, np.nan, 6.0, 7.0])
    rnd = np.array([2.9, 3.7, 4.8, np.nan, 6.6])
    orc = np.array([2.8, 3.5, 4.7, 5.6, 6.9])
    assert stats.structural_fraction(ref, rnd, orc, resamples=0).n == 3


# ------------------------------------------------------------------ bins, selection, ranking

def test_quantile_bins_by_hand():
    values = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0, 0.0])
    keys = np.arange(10)
    # sorted ascending: 0(9) 1(1) 2(3) 3(4) 4(2) 5(0) 6(8) 7(7) 8(6) 9(5) -> two per bin
    expected = {9: 1, 1: 1, 3: 2, 4: 2, 2: 3, 0: 3, 8: 4, 7: 4, 6: 5, 5: 5}
    bins = stats.quantile_bins(values, keys, 5)
    assert {i: int(bins[i]) for i in range(10)} == expected


def test_quantile_bins_ties_broken_by_key():
    bins = stats.quantile_bins(np.ones(5), np.array([50, 40, 30, 20, 10]), 5)
    assert bins.tolist() == [5, 4, 3, 2, 1]


def test_hard_selection_count_and_ties():
    assert stats.top_fraction_size(15, 0.4) == 6  # 0.4 * 15 = 6.000000000000001 in floats
    assert stats.top_fraction_size(400, 0.4) == 160
    assert stats.top_fraction_size(7, 0.4) == 3  # ceil(2.8)
    values = np.array([3.0, 3.0, 3.0, 1.0, 2.0])
    keys = np.array([30, 10, 20, 1, 2])
    mask = stats.select_hardest(values, keys, 0.4)  # k = 2: the tied 3.0s with keys 10 and 20
    assert mask.tolist() == [False, True, True, False, False]


def test_rank_conditions_by_hand():
    nll = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    mean_rank, share_best = stats.rank_conditions(nll)
    # ranks: [1,2,3], [3,1.5,1.5], [2,2,2]
    assert mean_rank == pytest.approx([6 / 3, 5.5 / 3, 6.5 / 3])
    # best: row1 c0; row2 c1,c2 split; row3 all three split
    assert share_best == pytest.approx([(1 + 1 / 3) / 3, (0.5 + 1 / 3) / 3, (0.5 + 1 / 3) / 3])
    assert share_best.sum() == pytest.approx(1.0)


def test_spearman_gradient_by_hand():
    rho, p, note = stats.spearman_gradient([0.1, 0.3, 0.2, 0.4])
    # ranks [1,3,2,4] vs [1,2,3,4]: sum d^2 = 2 -> rho = 1 - 6*2/(4*15) = 0.8
    assert rho == pytest.approx(0.8)
    t = 0.8 * math.sqrt(2 / (1 - 0.64))
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t))  # Student t with 2 df, two-sided
    assert note == ""
    assert stats.spearman_gradient([1.0, 2.0, 3.0])[0] == pytest.approx(1.0)
    assert stats.spearman_gradient([1.0, 2.0]) == (None, None, "n<3")
    assert stats.spearman_gradient([1.0, 1.0, 1.0]) == (None, None, "constant values")
    assert stats.spearman_gradient([3.0, None, 2.0, 1.0])[0] == pytest.approx(-1.0)


def test_sign_consistency():
    assert stats.sign_consistency([0.1, 0.2, None, 0.3]) == {
        "n_datasets": 3, "n_positive": 3, "n_negative": 0, "n_zero": 0, "consistent": True, "sign": "+",
    }
    mixed = stats.sign_consistency([0.1, -0.1])
    assert not mixed["consistent"] and mixed["sign"] == ""
    assert stats.sign_consistency([-1.0, -2.0])["sign"] == "-"
    assert not stats.sign_consistency([])["consistent"]


def test_difference_of_differences_by_hand():
    r0a = np.array([3.0, 4.0, 5.0, np.nan])
    r0b = np.array([2.0, 3.5, 4.0, 1.0])
    r1a = np.array([3.0, 4.0, 5.0, 1.0])
    r1b = np.array([2.5, 4.0, 4.5, 1.0])
    # (1 - 0.5), (0.5 - 0), (1 - 0.5); the 4th sample misses a cell
    assert stats.difference_of_differences(r0a, r0b, r1a, r1b).tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_answer_length_bins():
    counts = np.array([1, 2, 3, 5, 6, 20, 21, 100, 0])
    assert stats.length_bins(counts).tolist() == ["1-2", "1-2", "3-5", "3-5", "6-20", "6-20", "21+", "21+", None]
    assert stats.answer_word_count("  the  big\tcat \n") == 3
    assert stats.answer_word_count("") == 0
