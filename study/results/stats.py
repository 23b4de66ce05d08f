"""Statistics of the report: means with t-intervals over seeds, differences between groups.

Pure functions of plain numbers (no MLflow), so every value the report prints can be checked
by hand. Intervals are two-sided at ``confidence`` (95 % by default) with Student's t: over
the seeds of one cell for a mean, Welch's unequal-variance interval for a difference of two
cells. With a single value there is no interval (``half_width is None``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from study import naming
from study.results.records import RunRecord, method_rank, scope_rank

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean (or difference of means) with the half-width of its confidence interval."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or wholly below 0."""
        return self.half_width is not None and (self.low > 0 or self.high < 0)


def finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate | None:
    """Mean and t-interval half-width ``t_{(1+c)/2, n-1} * s / sqrt(n)``; None if no value."""
    x = np.asarray(finite(values))
    n = len(x)
    if n == 0:
        return None
    if n == 1:
        return Estimate(float(x[0]), None, 1)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    return Estimate(float(x.mean()), t * sem, n)


def difference_ci(a: Iterable[float], b: Iterable[float], confidence: float = CONFIDENCE
                  ) -> Estimate | None:
    """``mean(a) - mean(b)`` with Welch's t-interval; no interval unless both have n >= 2.

    ``n`` of the result is the smaller group size.
    """
    xa, xb = np.asarray(finite(a)), np.asarray(finite(b))
    if len(xa) == 0 or len(xb) == 0:
        return None
    diff = float(xa.mean() - xb.mean())
    n = min(len(xa), len(xb))
    if n < 2:
        return Estimate(diff, None, n)
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0.0:  # both cells constant: the difference is exact
        return Estimate(diff, 0.0, n)
    df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    return Estimate(diff, float(stats.t.ppf(0.5 + confidence / 2, df)) * se, n)


# -- cells of the method x scope table --------------------------------------------------------
@dataclass(frozen=True, order=True)
class CellKey:
    """The comparison the paper makes: a method at a scope, capacity and data layout."""

    method: str
    scope: str
    capacity: float
    domains_per_micro_batch: str

    def sort_key(self) -> tuple:
        return (method_rank(self.method), scope_rank(self.scope), self.capacity,
                _dpmb_rank(self.domains_per_micro_batch))


def capacity_label(capacity: float) -> str:
    return "dropless" if capacity == 0 else f"{capacity:g}"


def _dpmb_rank(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def cell_key(run: RunRecord) -> CellKey:
    return CellKey(run.method, run.scope, run.capacity, run.domains_per_micro_batch)


def group_cells(runs: Iterable[RunRecord]) -> dict[CellKey, list[RunRecord]]:
    """Runs per cell, cells in the order method, scope, capacity, domains per micro-batch."""
    cells: dict[CellKey, list[RunRecord]] = {}
    for run in runs:
        cells.setdefault(cell_key(run), []).append(run)
    return {k: cells[k] for k in sorted(cells, key=CellKey.sort_key)}


def layer_count(runs: Sequence[RunRecord]) -> int:
    """MoE layers the runs report per-layer metrics for (0 for runs logged without them)."""
    n = 0
    while any(math.isfinite(r.metric(naming.per_layer(naming.PURITY, n))) for r in runs):
        n += 1
    return n


def cell_estimates(runs: Sequence[RunRecord], metrics: Sequence[str]) -> dict[str, Estimate | None]:
    return {m: mean_ci(r.metric(m) for r in runs) for m in metrics}


def varying_params(runs: Sequence[RunRecord], ignore: Iterable[str] = ()) -> list[str]:
    """Params whose value differs between the runs (a cell pooling more than seeds)."""
    skip = set(ignore)
    keys = sorted({k for r in runs for k in r.params} - skip)
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


# -- Pareto front -----------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (both minimised).

    A point is dominated when another is <= in both and < in one. Returned sorted by x.
    """
    idx = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    front = [
        i for i in idx
        if not any(
            points[j][0] <= points[i][0] and points[j][1] <= points[i][1]
            and (points[j][0] < points[i][0] or points[j][1] < points[i][1])
            for j in idx
        )
    ]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))
