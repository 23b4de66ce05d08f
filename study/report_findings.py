"""The report's findings: short claims, each with its numbers and a verdict computed from them.

A finding is only made when the data has the groups it needs (both scopes of a method, a
capacity and its dropless twin, ...). Verdicts never go beyond the numbers:

- a directional claim (``global_batch`` gives purer experts than ``micro_batch``) *holds* when
  the difference is positive and its 95 % interval excludes 0, *does not hold* when the interval
  lies wholly below 0 (the opposite is shown), and is *not shown* otherwise (including n=1,
  where there is no interval);
- a two-sided comparison (capacity vs dropless) says *higher* / *lower* only when the interval
  excludes 0, else *no difference shown*;
- the effect-size comparison (scope vs method) compares ranges of cell means and names the
  larger only when they differ by more than the seed noise of a difference between two cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from study import naming
from study.report_data import RunRecord
from study.report_stats import (
    CellKey, Estimate, capacity_label, difference_ci, group_cells, mean_ci,
)

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
NOT_SHOWN = "not shown"
SCOPE_PAIRS = (("global_batch", "micro_batch"), ("micro_batch", "sequence"))
"""Wider balancing scope first: the literature's claim is that it gives purer experts."""


@dataclass(frozen=True)
class Finding:
    topic: str
    context: str
    text: str
    verdict: str

    def markdown(self) -> str:
        context = f" ({self.context})" if self.context else ""
        return f"- **{self.topic}**{context}: {self.text}: **{self.verdict}**"


def _f(x: float) -> str:
    return f"{x:.3f}"


def _interval(est: Estimate) -> str:
    if est.half_width is None:
        return "no interval (n=1)"
    return f"95% CI [{_f(est.low)}, {_f(est.high)}]"


def directional_verdict(est: Estimate) -> str:
    if est.half_width is None:
        return f"{NOT_SHOWN} (n=1, no interval)"
    if est.low > 0:
        return HOLDS
    if est.high < 0:
        return f"{DOES_NOT_HOLD} (the opposite is shown)"
    return NOT_SHOWN


def two_sided_verdict(est: Estimate, label: str) -> str:
    if est.half_width is None:
        return f"{NOT_SHOWN} (n=1, no interval)"
    if est.low > 0:
        return f"higher with {label}"
    if est.high < 0:
        return f"lower with {label}"
    return "no difference shown"


class _Labels:
    """Names a group by the dimensions that vary in this study (the others go unsaid)."""

    def __init__(self, cells: Sequence[CellKey]):
        self.capacity_varies = len({c.capacity for c in cells}) > 1
        self.dpmb_varies = len({c.domains_per_micro_batch for c in cells}) > 1

    def __call__(self, *, method: str | None = None, scope: str | None = None,
                 capacity: float | None = None, dpmb: str | None = None) -> str:
        parts = [p for p in (method, scope) if p]
        if capacity is not None and self.capacity_varies:
            parts.append(f"capacity {capacity_label(capacity)}")
        if dpmb is not None and self.dpmb_varies:
            parts.append(f"{dpmb} domain(s)/micro-batch")
        return ", ".join(parts)


def findings(trials: Sequence[RunRecord], reference: RunRecord | None,
             metric: str = naming.PURITY) -> list[Finding]:
    """Every finding the full-length ``trials`` support (see the module docstring)."""
    cells = group_cells(trials)
    values = {k: [r.metric(metric) for r in runs] for k, runs in cells.items()}
    labels = _Labels(list(cells))
    out: list[Finding] = []
    out += scope_findings(values, labels, metric)
    out += effect_size_finding(values, metric)
    out += capacity_findings(values, labels, metric)
    out += layout_findings(values, labels, metric)
    out += window_findings(values, labels, metric)
    out += reference_finding(trials, reference, metric)
    return out


def scope_findings(values: Mapping[CellKey, list[float]], labels: _Labels, metric: str) -> list[Finding]:
    out = []
    for wide, narrow in SCOPE_PAIRS:
        for (method, cap, dpmb), by_scope in _split(values, "scope").items():
            if wide not in by_scope or narrow not in by_scope:
                continue
            a, b = mean_ci(by_scope[wide]), mean_ci(by_scope[narrow])
            diff = difference_ci(by_scope[wide], by_scope[narrow])
            if a is None or b is None or diff is None:
                continue
            out.append(Finding(
                topic=f"{wide} vs {narrow}",
                context=labels(method=method, capacity=cap, dpmb=dpmb),
                text=(f"mean {metric} {_f(a.mean)} vs {_f(b.mean)} (n={a.n} vs {b.n}), "
                      f"difference {_f(diff.mean)}, {_interval(diff)}"),
                verdict=directional_verdict(diff),
            ))
    return out


def effect_size_finding(values: Mapping[CellKey, list[float]], metric: str) -> list[Finding]:
    """Scope effect (range over scopes within a method) vs method effect (over methods).

    Which is larger is only said when the two effects differ by more than the seed noise of a
    difference between two cells: the mean 95 % half-width of the cells' means times sqrt(2)
    (cells with n >= 2). Otherwise, or with no cell of n >= 2, the verdict is "not shown".
    """
    means = {k: float(np.mean(v)) for k, v in values.items() if v}
    scope_ranges = _ranges(means, vary="scope")
    method_ranges = _ranges(means, vary="method")
    if not scope_ranges or not method_ranges:
        return []
    scope_effect = float(np.mean(list(scope_ranges.values())))
    method_effect = float(np.mean(list(method_ranges.values())))
    half_widths = [e.half_width for e in (mean_ci(v) for v in values.values())
                   if e is not None and e.half_width is not None]
    text = (f"largest difference between scopes within a method, averaged over "
            f"{len(scope_ranges)} method(s): {_f(scope_effect)}; largest difference between "
            f"methods within a scope, averaged over {len(method_ranges)} scope(s): "
            f"{_f(method_effect)}")
    if not half_widths:
        return [Finding("scope effect vs method effect", f"mean {metric} per cell", text,
                        f"{NOT_SHOWN} (n=1 cells: no estimate of the seed noise)")]
    noise = float(np.mean(half_widths)) * math.sqrt(2)
    text += f"; seed noise of a difference between two cells ±{_f(noise)}"
    if abs(scope_effect - method_effect) <= noise:
        verdict = f"{NOT_SHOWN} (the effects differ by {_f(abs(scope_effect - method_effect))}, within the noise)"
    elif scope_effect > method_effect:
        verdict = "scope matters more than method"
    else:
        verdict = "method matters more than scope"
    return [Finding("scope effect vs method effect", f"mean {metric} per cell", text, verdict)]


def capacity_findings(values: Mapping[CellKey, list[float]], labels: _Labels, metric: str) -> list[Finding]:
    out = []
    for (method, scope, dpmb), by_cap in _split(values, "capacity").items():
        if 0.0 not in by_cap:
            continue
        for cap in sorted(c for c in by_cap if c > 0):
            diff = difference_ci(by_cap[cap], by_cap[0.0])
            if diff is None:
                continue
            a, b = mean_ci(by_cap[cap]), mean_ci(by_cap[0.0])
            out.append(Finding(
                topic=f"capacity {capacity_label(cap)} vs dropless",
                context=labels(method=method, scope=scope, dpmb=dpmb),
                text=(f"mean {metric} {_f(a.mean)} vs {_f(b.mean)} (n={a.n} vs {b.n}), "
                      f"difference {_f(diff.mean)}, {_interval(diff)}"),
                verdict=two_sided_verdict(diff, f"capacity {capacity_label(cap)}"),
            ))
    return out


def layout_findings(values: Mapping[CellKey, list[float]], labels: _Labels, metric: str) -> list[Finding]:
    """Other values of ``data.domains_per_micro_batch`` against 1 (one domain per micro-batch)."""
    out = []
    for (method, scope, cap), by_dpmb in _split(values, "domains_per_micro_batch").items():
        base = "1" if "1" in by_dpmb else sorted(by_dpmb)[0]
        for other in sorted(d for d in by_dpmb if d != base):
            diff = difference_ci(by_dpmb[other], by_dpmb[base])
            if diff is None:
                continue
            a, b = mean_ci(by_dpmb[other]), mean_ci(by_dpmb[base])
            out.append(Finding(
                topic=f"domains_per_micro_batch {other} vs {base}",
                context=labels(method=method, scope=scope, capacity=cap),
                text=(f"mean {metric} {_f(a.mean)} vs {_f(b.mean)} (n={a.n} vs {b.n}), "
                      f"difference {_f(diff.mean)}, {_interval(diff)}"),
                verdict=two_sided_verdict(diff, f"domains_per_micro_batch {other}"),
            ))
    return out


def window_findings(values: Mapping[CellKey, list[float]], labels: _Labels, metric: str) -> list[Finding]:
    """Balance-window sweep: the widest window against the narrowest (wider should be purer)."""
    out = []
    for (method, cap, dpmb), by_scope in _split(values, "scope").items():
        sizes = {int(s.split()[1]): v for s, v in by_scope.items()
                 if s.startswith("window ") and s.split()[1].isdigit()}
        if len(sizes) < 2:
            continue
        wide, narrow = max(sizes), min(sizes)
        diff = difference_ci(sizes[wide], sizes[narrow])
        if diff is None:
            continue
        a, b = mean_ci(sizes[wide]), mean_ci(sizes[narrow])
        out.append(Finding(
            topic=f"window {wide} vs window {narrow} sequences",
            context=labels(method=method, capacity=cap, dpmb=dpmb),
            text=(f"mean {metric} {_f(a.mean)} vs {_f(b.mean)} (n={a.n} vs {b.n}), "
                  f"difference {_f(diff.mean)}, {_interval(diff)}"),
            verdict=directional_verdict(diff),
        ))
    return out


def reference_finding(trials: Sequence[RunRecord], reference: RunRecord | None, metric: str) -> list[Finding]:
    if reference is None:
        return []
    ref = reference.metric(metric)
    scored = [t for t in trials if np.isfinite(t.metric(metric))]
    if not np.isfinite(ref) or not scored:
        return []
    best = max(scored, key=lambda t: t.metric(metric))
    on_top = ref >= best.metric(metric)
    return [Finding(
        topic="reference router on top",
        context="",
        text=(f"reference {metric} {_f(ref)}, best trial {best.name} ({best.method}, {best.scope}) "
              f"{_f(best.metric(metric))}, difference {_f(ref - best.metric(metric))}"),
        verdict="yes" if on_top else "no",
    )]


# -- grouping helpers -------------------------------------------------------------------------
_FIELDS = ("method", "scope", "capacity", "domains_per_micro_batch")


def _split(values: Mapping[CellKey, list[float]], vary: str) -> dict[tuple, dict]:
    """Cells grouped by all fields but ``vary``: ``{rest: {value of vary: values}}``."""
    out: dict[tuple, dict] = {}
    for key, v in values.items():
        rest = tuple(getattr(key, f) for f in _FIELDS if f != vary)
        out.setdefault(rest, {})[getattr(key, vary)] = v
    return out


def _ranges(means: Mapping[CellKey, float], vary: str) -> dict[tuple, float]:
    """Max - min of the cell means over ``vary``, for every group that has 2+ values of it."""
    groups: dict[tuple, list[float]] = {}
    for key, m in means.items():
        rest = tuple(getattr(key, f) for f in _FIELDS if f != vary)
        groups.setdefault(rest, []).append(m)
    return {k: max(v) - min(v) for k, v in groups.items() if len(v) > 1}


__all__ = ["Finding", "findings", "HOLDS", "DOES_NOT_HOLD", "NOT_SHOWN"]
