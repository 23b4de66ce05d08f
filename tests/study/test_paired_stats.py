"""Paired, multiple-testing, equivalence, rank and two-way statistics of ``study.results.stats``.

Every expected value is worked out here by hand (or by scipy / numpy written differently from
the implementation), so a change in a formula shows up as a number that no longer matches.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from study.results.paired_stats import (
    Effect,
    Estimate,
    KendallResult,
    PairedEstimate,
    TostResult,
    TwoWayResult,
    holm,
    kendall_tau_exact,
    paired_difference,
    tost_paired,
    two_way_effects,
)


# -- paired_difference ------------------------------------------------------------------------
def test_paired_difference_by_hand():
    a = {"0": 0.30, "1": 0.32, "2": 0.31, "7": 0.99}   # seed 7 only in a
    b = {"0": 0.28, "1": 0.29, "2": 0.30, "9": 0.01}   # seed 9 only in b
    r = paired_difference(a, b)
    assert isinstance(r, PairedEstimate)
    # d = [0.02, 0.03, 0.01]: mean 0.02, sd 0.01
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert r.n == 3 and r.estimate.n == 3
    assert r.estimate.mean == pytest.approx(0.02)
    assert r.estimate.half_width == pytest.approx(half)
    assert r.estimate.low == pytest.approx(0.02 - half)
    assert r.agree == 3
    t = 0.02 / (0.01 / math.sqrt(3))
    assert r.p_value == pytest.approx(2 * stats.t.sf(t, 2))
    paired_t = stats.ttest_rel([0.30, 0.32, 0.31], [0.28, 0.29, 0.30])
    assert r.p_value == pytest.approx(paired_t.pvalue)


def test_paired_difference_agree_counts_sign_of_mean():
    r = paired_difference({"0": 1.0, "1": 2.0, "2": 3.0}, {"0": 2.0, "1": 0.0, "2": 0.0})
    # d = [-1, 2, 3]: mean 4/3 > 0, two seeds positive
    assert r.estimate.mean == pytest.approx(4 / 3)
    assert r.agree == 2


def test_paired_difference_edge_cases():
    assert paired_difference({"0": 1.0}, {"1": 1.0}) is None
    assert paired_difference({}, {}) is None
    assert paired_difference({"0": math.nan}, {"0": 1.0}) is None
    one = paired_difference({"0": 1.0, "1": math.nan}, {"0": 0.5, "1": 0.2})
    assert one == PairedEstimate(Estimate(0.5, None, 1), 1, 1, None, (0.5,))  # the nan seed dropped
    const = paired_difference({"0": 1.5, "1": 2.5}, {"0": 1.0, "1": 2.0})
    assert const.estimate == Estimate(0.5, 0.0, 2) and const.differences == (0.5, 0.5)
    assert const.p_value == 0.0 and const.agree == 2
    zero = paired_difference({"0": 1.0, "1": 2.0}, {"0": 1.0, "1": 2.0})
    assert zero.estimate == Estimate(0.0, 0.0, 2)
    assert zero.p_value == 1.0 and zero.agree == 0


def test_paired_difference_confidence():
    r = paired_difference({"0": 0.30, "1": 0.32, "2": 0.31}, {"0": 0.28, "1": 0.29, "2": 0.30},
                          confidence=0.9)
    assert r.estimate.half_width == pytest.approx(stats.t.ppf(0.95, 2) * 0.01 / math.sqrt(3))


# -- holm -------------------------------------------------------------------------------------
def test_holm_by_hand():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.02 0.03 0.06 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_none_passes_through_and_caps_at_one():
    # m = 3: 0.2*3=0.6, 0.3*2=0.6, 0.9*1=0.9
    assert holm([0.3, None, 0.2, 0.9]) == pytest.approx([0.6, None, 0.6, 0.9])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    assert holm([None]) == [None]
    assert holm([0.04]) == pytest.approx([0.04])


# -- tost_paired ------------------------------------------------------------------------------
def test_tost_by_hand():
    d = [0.01, -0.02, 0.00, 0.015, -0.005]
    margin = 0.05
    mean, sd, n = np.mean(d), np.std(d, ddof=1), len(d)
    se = sd / math.sqrt(n)
    p_lower = 1 - stats.t.cdf((mean + margin) / se, n - 1)
    p_upper = stats.t.cdf((mean - margin) / se, n - 1)
    r = tost_paired(d, margin)
    assert isinstance(r, TostResult)
    assert r.p_value == pytest.approx(max(p_lower, p_upper))
    assert r.equivalent and r.p_value < 0.05
    assert r.n == 5 and r.margin == margin and r.mean == pytest.approx(0.0)
    half = stats.t.ppf(0.95, 4) * se
    assert r.low == pytest.approx(mean - half) and r.high == pytest.approx(mean + half)
    assert -margin < r.low and r.high < margin


def test_tost_not_equivalent_when_interval_crosses_margin():
    d = [0.04, 0.06, 0.05]
    r = tost_paired(d, 0.05)
    se = 0.01 / math.sqrt(3)
    # mean 0.05 sits on the margin: upper test t = 0, p = 0.5
    assert r.p_value == pytest.approx(0.5)
    assert r.p_value == pytest.approx(max(stats.t.sf(0.10 / se, 2), stats.t.cdf(0.0, 2)))
    assert not r.equivalent
    assert r.high > 0.05
    # the decision agrees with the 90 % interval inside +-margin
    wide = tost_paired([0.01, -0.03, 0.04, -0.02], 0.02)
    assert wide.equivalent == (-0.02 < wide.low and wide.high < 0.02)
    assert not wide.equivalent


def test_tost_edge_cases():
    with pytest.raises(ValueError):
        tost_paired([0.1, 0.2], 0.0)
    with pytest.raises(ValueError):
        tost_paired([0.1, 0.2], -1.0)
    one = tost_paired([0.01], 0.05)
    assert one.p_value is None and not one.equivalent and one.n == 1 and one.low is None
    empty = tost_paired([], 0.05)
    assert empty.p_value is None and not empty.equivalent and empty.n == 0
    inside = tost_paired([0.01, 0.01, 0.01], 0.05)
    assert inside.p_value == 0.0 and inside.equivalent and inside.low == inside.high == 0.01
    outside = tost_paired([0.1, 0.1], 0.05)
    assert outside.p_value == 1.0 and not outside.equivalent


# -- kendall_tau_exact ------------------------------------------------------------------------
def test_kendall_identical_order_four_cells():
    r = kendall_tau_exact([1, 2, 3, 4], [10, 20, 30, 40])
    assert isinstance(r, KendallResult)
    assert r.tau == pytest.approx(1.0)
    # only the identity and the reversal reach |tau| = 1 among 4! = 24 orders
    assert r.p_value == pytest.approx(2 / 24)
    assert r.n_cells == 4 and r.exact


def test_kendall_identical_order_three_cells_and_reversed():
    assert kendall_tau_exact([1, 2, 3], [5, 6, 7]).p_value == pytest.approx(2 / 6)
    rev = kendall_tau_exact([1, 2, 3, 4], [4, 3, 2, 1])
    assert rev.tau == pytest.approx(-1.0) and rev.p_value == pytest.approx(2 / 24)


def test_kendall_matches_brute_force_with_ties():
    x = [0.1, 0.4, 0.4, 0.2, 0.9]
    y = [1.0, 3.0, 2.0, 2.0, 5.0]
    tau = stats.kendalltau(x, y).statistic
    taus = [stats.kendalltau(x, [y[i] for i in p]).statistic
            for p in itertools.permutations(range(5))]
    expected = sum(abs(t) >= abs(tau) - 1e-12 for t in taus) / 120
    r = kendall_tau_exact(x, y)
    assert r.tau == pytest.approx(tau)
    assert r.p_value == pytest.approx(expected)
    assert r.exact and r.n_cells == 5


def test_kendall_edge_cases():
    one = kendall_tau_exact([1.0], [2.0])
    assert math.isnan(one.tau) and one.p_value is None and one.n_cells == 1
    empty = kendall_tau_exact([], [])
    assert math.isnan(empty.tau) and empty.p_value is None
    dropped = kendall_tau_exact([1, 2, math.nan, 3], [1, 2, 3, 4])
    assert dropped.n_cells == 3 and dropped.p_value == pytest.approx(2 / 6)
    const = kendall_tau_exact([1, 1, 1], [1, 2, 3])
    assert math.isnan(const.tau) and const.p_value is None
    two = kendall_tau_exact([1, 2], [2, 1])
    assert two.tau == pytest.approx(-1.0) and two.p_value == pytest.approx(1.0)
    with pytest.raises(ValueError):
        kendall_tau_exact([1, 2], [1])


def test_kendall_large_n_is_sampled():
    x = list(range(10))
    r = kendall_tau_exact(x, x)
    assert not r.exact and r.n_cells == 10 and r.tau == pytest.approx(1.0)
    # exact p is 2 / 10! ~ 5.5e-7: at most a handful of 200 000 random orders reach |tau| = 1
    assert r.p_value <= 5 / 200_000
    rng = np.random.default_rng(1)
    y = rng.permutation(10)
    s = kendall_tau_exact(x, list(y))
    assert s.p_value == pytest.approx(stats.kendalltau(x, y, method="exact").pvalue, abs=0.01)


# -- two_way_effects --------------------------------------------------------------------------
METHODS = ["lbl", "eb", "ec"]
SCOPES = ["micro_batch", "global_batch"]
SEEDS = ["0", "1", "2", "3"]


def synthetic(interaction: float = 0.0) -> dict[tuple[str, str, str], float]:
    """Method effect +-0.1, scope +-0.02, seed offsets, small fixed residuals."""
    method_eff = {"lbl": -0.1, "eb": 0.0, "ec": 0.1}
    scope_eff = {"micro_batch": -0.02, "global_batch": 0.02}
    seed_eff = {"0": 0.01, "1": -0.005, "2": 0.0, "3": -0.005}
    resid = np.random.default_rng(3).normal(0.0, 0.005, size=(3, 2, 4))
    return {
        (m, s, k): 0.5 + method_eff[m] + scope_eff[s] + seed_eff[k]
        + (interaction if (m, s) == ("ec", "global_batch") else 0.0) + resid[i, j, r]
        for i, m in enumerate(METHODS) for j, s in enumerate(SCOPES) for r, k in enumerate(SEEDS)
    }


def lstsq_rss(values, terms):
    """Residual SS of a least-squares fit on dummy columns for the named terms."""
    keys = list(values)
    y = np.array([values[k] for k in keys])
    cols = [np.ones(len(keys))]
    for term in terms:
        if term == "interaction":
            levels = [(m, s) for m in METHODS for s in SCOPES]
            cols += [np.array([float((k[0], k[1]) == lv) for k in keys]) for lv in levels]
        else:
            pos, levels = {"method": (0, METHODS), "scope": (1, SCOPES), "seed": (2, SEEDS)}[term]
            cols += [np.array([float(k[pos] == lv) for k in keys]) for lv in levels]
    x = np.column_stack(cols)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(np.sum((y - x @ beta) ** 2))


def test_two_way_sums_of_squares_match_least_squares():
    values = synthetic()
    r = two_way_effects(values)
    assert isinstance(r, TwoWayResult)
    assert r.n_seeds == 4 and r.seeds == tuple(SEEDS)
    assert r.method.levels == ("lbl", "eb", "ec")
    assert r.scope.levels == ("micro_batch", "global_batch")
    # main effects: drop in RSS when the factor is removed from the additive model
    additive = ["seed", "method", "scope"]
    rss_add = lstsq_rss(values, additive)
    assert r.method.ss == pytest.approx(lstsq_rss(values, ["seed", "scope"]) - rss_add)
    assert r.scope.ss == pytest.approx(lstsq_rss(values, ["seed", "method"]) - rss_add)
    # interaction: additive model vs seed + a full method:scope cell effect
    rss_full = lstsq_rss(values, ["seed", "interaction"])
    assert r.interaction.ss == pytest.approx(rss_add - rss_full)
    assert r.df_error == (6 - 1) * (4 - 1)
    assert r.ms_error == pytest.approx(rss_full / 15)
    y = np.array(list(values.values()))
    assert r.ss_total == pytest.approx(np.sum((y - y.mean()) ** 2))
    assert r.ss_seed == pytest.approx(lstsq_rss(values, ["method", "scope"]) - rss_add)


def test_two_way_f_tests_and_effect_sizes():
    r = two_way_effects(synthetic())
    ss_error = r.ms_error * r.df_error
    for eff, df in ((r.method, 2), (r.scope, 1), (r.interaction, 2)):
        assert isinstance(eff, Effect)
        assert eff.df == df and eff.ms == pytest.approx(eff.ss / df)
        assert eff.f == pytest.approx(eff.ms / r.ms_error)
        assert eff.p_value == pytest.approx(stats.f.sf(eff.f, df, r.df_error))
        assert eff.partial_eta_sq == pytest.approx(eff.ss / (eff.ss + ss_error))
    assert r.method.partial_eta_sq > r.scope.partial_eta_sq
    assert r.method.p_value < 1e-6 and r.scope.p_value < 1e-3
    assert r.interaction.range_diff is None and r.interaction.name == "method x scope"
    # level means of the method: spread and largest - smallest with its interval
    values = synthetic()
    means = np.array([np.mean([v for k, v in values.items() if k[0] == m]) for m in METHODS])
    grand = np.mean(list(values.values()))
    assert r.method.spread == pytest.approx(math.sqrt(np.mean((means - grand) ** 2)))
    assert r.method.spread == pytest.approx(math.sqrt(2 / 3) * 0.1, rel=0.1)
    rd = r.method.range_diff
    assert rd.mean == pytest.approx(means.max() - means.min())
    assert rd.half_width == pytest.approx(stats.t.ppf(0.975, 15) * math.sqrt(r.ms_error * 2 / 8))
    assert rd.n == 8
    assert r.scope.range_diff.half_width == pytest.approx(
        stats.t.ppf(0.975, 15) * math.sqrt(r.ms_error * 2 / 12))
    assert r.scope.range_diff.mean == pytest.approx(0.04, abs=0.01)


def test_two_way_detects_interaction():
    none_ = two_way_effects(synthetic())
    some = two_way_effects(synthetic(interaction=0.05))
    assert some.interaction.ss > 10 * none_.interaction.ss
    assert some.interaction.p_value < 1e-3


def test_two_way_keeps_complete_grid_only():
    values = synthetic()
    values[("lbl", "micro_batch", "9")] = 0.1   # seed 9 only in one cell: dropped
    values[("eb", "global_batch", "3")] = math.nan  # seed 3 loses a cell: dropped
    r = two_way_effects(values)
    assert r.seeds == ("0", "1", "2") and r.n_seeds == 3
    assert r.df_error == 5 * 2
    sub = {k: v for k, v in synthetic().items() if k[2] != "3"}
    assert r.method.ss == pytest.approx(two_way_effects(sub).method.ss)


def test_two_way_one_factor_and_none_cases():
    values = {k: v for k, v in synthetic().items() if k[1] == "global_batch"}
    r = two_way_effects(values)
    assert r.scope is None and r.interaction is None
    assert r.method.df == 2 and r.df_error == 2 * 3
    # one method and one scope, or one seed: nothing to decompose
    assert two_way_effects({k: v for k, v in values.items() if k[0] == "lbl"}) is None
    assert two_way_effects({k: v for k, v in synthetic().items() if k[2] == "0"}) is None
    assert two_way_effects({}) is None
    # a (method, scope) cell missing entirely leaves no complete grid
    assert two_way_effects({k: v for k, v in synthetic().items() if k[:2] != ("ec", "micro_batch")}
                           ) is None


def test_two_way_exact_additive_fit_has_no_f():
    values = {(m, s, k): (1.0 if m == "eb" else 0.0) + (0.5 if s == "b" else 0.0) + float(k)
              for m in ("lbl", "eb") for s in ("a", "b") for k in ("0", "1")}
    r = two_way_effects(values)
    assert r.df_error == 3 and r.ms_error == 0.0
    assert r.method.f is None and r.method.p_value is None
    assert r.method.ss == pytest.approx(4 * 0.25 * 2)
    assert r.method.partial_eta_sq == pytest.approx(1.0)
    assert r.method.range_diff == Estimate(pytest.approx(1.0), 0.0, 4)
    assert r.interaction.ss == pytest.approx(0.0, abs=1e-20)


def test_two_way_interaction_f_and_p_by_hand():
    """2 methods x 2 scopes x 2 seeds. Cell means 0, 0, 0 and 1 (only eb at global_batch is
    up): grand mean 1/4, every interaction term m_ab - m_a - m_b + m = +-1/4, so
    SS_int = S * 4 * (1/4)^2 = 2 * 1/4 = 1/2 on 1 df. Residuals +-0.1 on two cells, opposite in
    the two seeds (no seed effect): SS_error = 4 * 0.01 = 0.04 on (4 - 1)(2 - 1) = 3 df. So
    F = 0.5 / (0.04 / 3) = 37.5, and for F(1, 3), p = P(|t_3| > sqrt(37.5))."""
    residual = {("lbl", "micro_batch"): -0.1, ("eb", "global_batch"): 0.1}
    values = {(m, s, k): (1.0 if (m, s) == ("eb", "global_batch") else 0.0)
              + residual.get((m, s), 0.0) * (1 if k == "0" else -1)
              for m in ("lbl", "eb") for s in ("micro_batch", "global_batch") for k in ("0", "1")}
    r = two_way_effects(values)
    assert r.df_error == 3 and r.ms_error == pytest.approx(0.04 / 3)
    assert r.ss_seed == pytest.approx(0.0, abs=1e-20)
    i = r.interaction
    assert (i.ss, i.df) == (pytest.approx(0.5), 1)
    assert i.f == pytest.approx(37.5)
    assert i.p_value == pytest.approx(2 * stats.t.sf(math.sqrt(37.5), 3))
    assert i.partial_eta_sq == pytest.approx(0.5 / 0.54)
    assert i.spread == pytest.approx(0.25)
    # the main effects: level means 0 and 1/2 each, SS = (B S = 4) * 2 * (1/4)^2 = 1/2
    assert r.method.f == pytest.approx(37.5) and r.scope.f == pytest.approx(37.5)
