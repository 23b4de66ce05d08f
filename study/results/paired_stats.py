"""Statistics a reviewer accepts: paired differences over seeds, Holm's adjustment, equivalence
tests, Kendall's tau with an exact p-value, and a two-way decomposition of method and scope.

Pure functions of plain numbers (no MLflow), like ``study.results.stats``: arms of a comparison
share seeds (same init and data), so differences are taken per seed; a report makes dozens of
comparisons, so its p-values are adjusted together; "no difference" needs an equivalence test
with a stated margin.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from study.results.records import method_rank, scope_rank
from study.results.stats import CONFIDENCE, Estimate, finite


# -- paired comparisons over seeds ------------------------------------------------------------
@dataclass(frozen=True)
class PairedEstimate:
    """Mean of per-seed differences ``a - b`` with its t-interval, sign agreement and t-test p."""

    estimate: Estimate
    agree: int
    n: int
    p_value: float | None
    differences: tuple[float, ...] = ()
    """The per-seed differences ``a[s] - b[s]``, seeds in sorted order."""


def paired_difference(a: Mapping[str, float], b: Mapping[str, float],
                      confidence: float = CONFIDENCE) -> PairedEstimate | None:
    """Paired difference of two arms over the seeds both have (finite); None if none shared.

    Seeds are paired: a seed fixes the init and the data order in every arm, so the per-seed
    differences ``d_s = a[s] - b[s]`` remove the seed-to-seed variation a Welch interval keeps.
    The interval is ``mean(d) +- t_{(1+c)/2, n-1} * sd(d) / sqrt(n)`` (none for one seed, 0 when
    all differences are equal); ``agree`` counts seeds whose difference has the sign of the
    mean (0 when the mean is 0); ``p_value`` is the two-sided one-sample t-test of ``d`` against
    0 (None for one seed; 0 when all differences are equal and non-zero, 1 when all are 0).
    """
    fa, fb = ({s: v for s, v in m.items() if finite([v])} for m in (a, b))
    seeds = sorted(fa.keys() & fb.keys())
    if not seeds:
        return None
    d = np.array([float(fa[s]) - float(fb[s]) for s in seeds])
    n, mean = len(d), float(d.mean())
    agree = int(np.sum(np.sign(d) == np.sign(mean))) if mean != 0 else 0
    diffs = tuple(float(x) for x in d)
    if n == 1:
        return PairedEstimate(Estimate(mean, None, 1), agree, 1, None, diffs)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return PairedEstimate(Estimate(mean, 0.0, n), agree, n, 0.0 if mean != 0 else 1.0, diffs)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return PairedEstimate(Estimate(mean, half, n), agree, n, p, diffs)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the input order; None entries pass through.

    With the m non-None p-values sorted ascending, the i-th (1-based) becomes
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``: step-down, so adjusted values never decrease
    along the sorted order, and the family-wise error rate is held at alpha for any dependence.
    """
    idx = sorted((i for i, p in enumerate(p_values) if p is not None), key=lambda i: p_values[i])
    m, out, running = len(idx), list(p_values), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


@dataclass(frozen=True)
class TostResult:
    """Equivalence test of a paired mean difference within ``+-margin``."""

    p_value: float | None
    equivalent: bool
    n: int
    margin: float
    mean: float
    low: float | None
    high: float | None


def tost_paired(differences: Sequence[float], margin: float, alpha: float = 0.05) -> TostResult:
    """Two one-sided t-tests (TOST) that the mean paired difference lies within ``+-margin``.

    ``p_lower`` tests H0: mean <= -margin with ``t = (mean + margin) / se``, ``p_upper`` tests
    H0: mean >= +margin with ``t = (mean - margin) / se`` (n-1 df); ``p = max`` of the two and
    the arms are equivalent when ``p < alpha`` -- the same as the ``1 - 2 alpha`` interval
    ``mean +- t_{1-alpha, n-1} * se`` (``low``/``high``) lying inside ``+-margin``. With fewer
    than 2 values there is no test; with zero spread the verdict is ``|mean| < margin``.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    d = np.asarray(finite(differences))
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return TostResult(None, False, n, margin, mean, None, None)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        inside = abs(mean) < margin
        return TostResult(0.0 if inside else 1.0, inside, n, margin, mean, mean, mean)
    se = sd / math.sqrt(n)
    p_lower = float(stats.t.sf((mean + margin) / se, n - 1))
    p_upper = float(stats.t.cdf((mean - margin) / se, n - 1))
    p = max(p_lower, p_upper)
    half = float(stats.t.ppf(1 - alpha, n - 1)) * se
    return TostResult(p, p < alpha, n, margin, mean, mean - half, mean + half)


# -- rank agreement between cells -------------------------------------------------------------
@dataclass(frozen=True)
class KendallResult:
    """Kendall's tau-b with a permutation p-value (``exact`` when all orders were enumerated)."""

    tau: float
    p_value: float | None
    n_cells: int
    exact: bool


EXACT_KENDALL_MAX = 8
KENDALL_PERMUTATIONS = 200_000


def _tau_b_rows(x: np.ndarray, y_rows: np.ndarray) -> np.ndarray:
    """Tau-b of ``x`` against each row of ``y_rows``: sum sign(dx) sign(dy) / sqrt(untied pairs)."""
    i, j = np.triu_indices(len(x), k=1)
    sx = np.sign(x[j] - x[i])
    sy = np.sign(y_rows[:, j] - y_rows[:, i])
    return (sy @ sx) / math.sqrt(float(np.sum(sx != 0)) * float(np.sum(sy[0] != 0)))


def kendall_tau_exact(x: Sequence[float], y: Sequence[float]) -> KendallResult:
    """Kendall's tau-b of paired cells with a two-sided permutation p-value.

    The statistic is ``scipy.stats.kendalltau``. With few cells the asymptotic p is poor, so p
    is the share of orderings of ``y`` whose ``|tau| >= |observed tau|`` (1e-12 slack): all
    ``n!`` of them for ``n <= 8`` (``exact``), else 200 000 random ones from
    ``numpy.random.default_rng(0)``. Pairs with a non-finite value are dropped; with fewer than
    2 cells (or a constant side) tau is nan and there is no p.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
    keep = [(float(u), float(v)) for u, v in zip(x, y) if finite([u]) and finite([v])]
    n = len(keep)
    exact = n <= EXACT_KENDALL_MAX
    if n < 2:
        return KendallResult(math.nan, None, n, exact)
    xs, ys = (np.array(c) for c in zip(*keep))
    tau = float(stats.kendalltau(xs, ys).statistic)
    if not math.isfinite(tau):
        return KendallResult(tau, None, n, exact)
    if exact:
        perms = [np.array(list(itertools.permutations(range(n))))]
    else:
        rng, chunk = np.random.default_rng(0), 20_000
        base = np.tile(np.arange(n), (chunk, 1))
        perms = (rng.permuted(base, axis=1) for _ in range(KENDALL_PERMUTATIONS // chunk))
    hits = total = 0
    for p in perms:
        taus = _tau_b_rows(xs, ys[p])
        hits += int(np.sum(np.abs(taus) >= abs(tau) - 1e-12))
        total += len(p)
    return KendallResult(tau, hits / total, n, exact)


# -- two-way decomposition: method x scope, seeds as blocks -----------------------------------
@dataclass(frozen=True)
class Effect:
    """One term of the two-way decomposition.

    ``spread`` is the standard deviation of the level means around the grand mean (for the
    interaction, of the interaction terms); ``range_diff`` is largest minus smallest level mean
    with its interval (None for the interaction).
    """

    name: str
    levels: tuple[str, ...]
    ss: float
    df: int
    ms: float
    f: float | None
    p_value: float | None
    partial_eta_sq: float | None
    range_diff: Estimate | None
    spread: float


@dataclass(frozen=True)
class TwoWayResult:
    """Method, scope and method x scope effects (None where a factor has one level)."""

    method: Effect | None
    scope: Effect | None
    interaction: Effect | None
    df_error: int
    ms_error: float
    n_seeds: int
    seeds: tuple[str, ...]
    ss_seed: float
    ss_total: float


def two_way_effects(values: Mapping[tuple[str, str, str], float],
                    confidence: float = CONFIDENCE) -> TwoWayResult | None:
    """Balanced ANOVA ``y = mu + seed + method + scope + method:scope + error``.

    ``values`` maps ``(method, scope, seed)`` to a metric. The grid is every method and scope
    with a finite value, crossed, over the seeds present in every (method, scope) cell (none
    if a cell is missing); it needs >= 2 methods or >= 2 scopes and >= 2 seeds, else None.
    Seeds are blocks (same init and data in every cell). With A methods, B scopes, S seeds the
    sums of squares are the balanced-layout formulas, e.g. ``SS_method = B S sum_a (m_a - m)^2``
    and ``SS_int = S sum_ab (m_ab - m_a - m_b + m)^2``; the error is the residual
    ``y - m_ab - m_s + m`` (= SS_total minus the rest) on ``(AB - 1)(S - 1)`` df. F tests use
    ``scipy.stats.f.sf``; partial eta^2 is ``SS / (SS + SS_error)``. ``range_diff`` is
    ``max - min`` level mean +- ``t_{(1+c)/2, df_error} sqrt(2 MS_error / n_per_level)``, the
    interval for that one pair (not adjusted for having picked the extremes). F and p are None
    when the residual vanishes (an exact additive fit).
    """
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for (method, scope, seed), v in values.items():
        if finite([v]):
            cells.setdefault((method, scope), {})[str(seed)] = float(v)
    methods = tuple(sorted({m for m, _ in cells}, key=method_rank))
    scopes = tuple(sorted({s for _, s in cells}, key=scope_rank))
    grid = [(m, s) for m in methods for s in scopes]
    seed_sets = [set(cells.get(c, {})) for c in grid]
    seeds = tuple(sorted(set.intersection(*seed_sets))) if seed_sets else ()
    n_a, n_b, n_s = len(methods), len(scopes), len(seeds)
    if (n_a < 2 and n_b < 2) or n_s < 2:
        return None
    y = np.array([[[cells[(m, s)][k] for k in seeds] for s in scopes] for m in methods])
    grand = y.mean()
    m_a, m_b, m_s, m_ab = y.mean(axis=(1, 2)), y.mean(axis=(0, 2)), y.mean(axis=(0, 1)), y.mean(2)
    inter = m_ab - m_a[:, None] - m_b[None, :] + grand
    ss_total = float(np.sum((y - grand) ** 2))
    ss_seed = float(n_a * n_b * np.sum((m_s - grand) ** 2))
    ss_error = float(np.sum((y - m_ab[:, :, None] - m_s[None, None, :] + grand) ** 2))
    df_error = (n_a * n_b - 1) * (n_s - 1)  # >= 1 here: AB >= 2 and S >= 2
    no_error = ss_error <= 1e-12 * ss_total  # a perfect additive fit: rounding only
    ss_error = 0.0 if no_error else ss_error
    ms_error = ss_error / df_error
    t = float(stats.t.ppf(0.5 + confidence / 2, df_error))

    def effect(name, levels, ss, df, spread, level_means, per_level):
        ms = ss / df
        f = None if no_error else ms / ms_error
        p = None if f is None else float(stats.f.sf(f, df, df_error))
        eta = ss / (ss + ss_error) if ss + ss_error > 0 else None
        rng = None
        if level_means is not None:
            rng = Estimate(float(level_means.max() - level_means.min()),
                           t * math.sqrt(2 * ms_error / per_level), per_level)
        return Effect(name, levels, ss, df, ms, f, p, eta, rng, spread)

    def main(name, levels, means, per_level):
        if len(levels) < 2:
            return None
        ss = float(per_level * np.sum((means - grand) ** 2))
        spread = float(math.sqrt(np.mean((means - grand) ** 2)))
        return effect(name, levels, ss, len(levels) - 1, spread, means, per_level)

    interaction = None
    if n_a >= 2 and n_b >= 2:
        interaction = effect("method x scope", tuple(f"{m} x {s}" for m, s in grid),
                             float(n_s * np.sum(inter**2)), (n_a - 1) * (n_b - 1),
                             float(math.sqrt(np.mean(inter**2))), None, n_s)
    return TwoWayResult(main("method", methods, m_a, n_b * n_s),
                        main("scope", scopes, m_b, n_a * n_s), interaction,
                        df_error, ms_error, n_s, seeds, ss_seed, ss_total)
