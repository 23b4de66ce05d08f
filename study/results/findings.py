"""The report's findings: short claims, each with its numbers and a verdict computed from them.

A finding is only made when the data has the groups it needs (both scopes of a method, a
capacity and its dropless twin, ...). Findings are made for raw ``purity`` and for what
controls it: ``purity_lift`` (final - the same trial at step 0), ``cmi`` (token-controlled) and
``cmi_lift``. Verdicts never go beyond the numbers:

- arms share seeds (same init, same data), so a difference is taken **per seed** (paired
  t-interval, and how many seeds agree in sign); without shared seeds, Welch's interval;
- p-values are **Holm-adjusted** within each metric (the family is one metric's findings: each
  metric is its own question), and a claim is called only when its adjusted p < 0.05;
- a directional claim (``global_batch`` gives purer experts than ``micro_batch``) *holds* when
  the difference is positive and shown, *does not hold* when it is negative and shown, and is
  *not shown* otherwise;
- a two-sided comparison (capacity vs dropless) says *higher* / *lower* when shown, *equivalent
  within ±margin* only through an equivalence test (paired TOST, p < 0.05, margin stated in the
  report, ``report.equivalence_margin`` in the spec), else *not shown*;
- "scope vs method" comes from a two-way decomposition (method, scope, seed as block) with F
  tests and partial eta squared, not from ranges of cell means (ranges grow with the number of
  levels); its method x scope interaction is tested with them, and the verdict says when it is
  shown (then the scope effect differs by method, and the main effects alone mislead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from study import naming
from trainables.metric_names import GAPS
from study.results.paired_stats import holm, paired_difference, tost_paired, two_way_effects
from study.results.records import RunRecord
from study.results.stats import CellKey, Estimate, capacity_label, difference_ci, group_cells, layer_count, mean_ci

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
NOT_SHOWN = "not shown"
ALPHA = 0.05
DEFAULT_EQUIVALENCE_MARGIN = 0.01
"""Differences within ±this (in the metric's units) count as equivalent, if TOST shows it."""
INTERACTION_TERM = "method x scope"
EFFECT_TERMS = ("scope", "method", INTERACTION_TERM)
"""The terms of the two-way decomposition, in the order of an ``effects`` finding's p-values."""
INTERACTION_SHOWN = "the interaction is shown"
"""What an ``effects`` verdict says when the method x scope interaction is shown."""
FINDING_METRICS = (naming.PURITY, naming.lift_of(naming.PURITY), naming.CMI, naming.lift_of(naming.CMI))


def finding_metrics(trials: Sequence[RunRecord], objective: str = "") -> tuple[str, ...]:
    """FINDING_METRICS, plus the last layer's ``cmi_lift`` when the model has several layers (the
    first layer's router sees mostly the current byte, so the mean over layers can hide what the
    last layer learned: docs/calibration.md finds the learned routing there), plus the study's
    ``objective`` when the trials report it (a gap is judged on its metric, which ranks alike)."""
    n_layers = layer_count(trials)
    out = list(FINDING_METRICS)
    if n_layers >= 2:
        out.append(naming.per_layer(naming.lift_of(naming.CMI), n_layers - 1))
    judged = next((metric for gap, metric, _ in GAPS if gap == objective), objective)
    if judged and judged not in out and any(np.isfinite(t.metric(judged)) for t in trials):
        out.append(judged)
    return tuple(out)


SCOPE_PAIRS = (("global_batch", "micro_batch"), ("micro_batch", "sequence"))
"""Wider balancing scope first: the literature's claim is that it gives purer experts."""

SeedValues = dict[str, float]
"""A cell's values by seed (a seed repeated in a cell, which pools other params, is averaged)."""


@dataclass(frozen=True)
class Comparison:
    """A difference between two arms with what its verdict needs."""

    estimate: Estimate
    p_value: float | None
    paired: bool
    agree: int | None = None
    differences: tuple[float, ...] = ()

    def text(self) -> str:
        e = self.estimate
        if e.half_width is None:
            interval = "no interval (n=1)"
        else:
            interval = f"95% CI [{e.low:.3f}, {e.high:.3f}]"
        kind = (f"paired over {e.n} seeds, {self.agree} of {e.n} agree in sign" if self.paired
                else "unpaired (no shared seeds), Welch")
        return f"difference {e.mean:.3f}, {interval} ({kind})"


@dataclass(frozen=True)
class Finding:
    topic: str
    context: str
    text: str
    verdict: str
    metric: str = naming.PURITY
    comparison: Comparison | None = None
    kind: str = ""
    """``directional``, ``two-sided``, ``effects`` or empty (a verdict of its own)."""
    p_values: tuple[float | None, ...] = ()
    """Raw p-values (a comparison has one; ``effects`` has one per EFFECT_TERMS entry)."""
    p_adjusted: tuple[float | None, ...] = ()
    partial_eta: tuple[float | None, ...] = ()

    def markdown(self) -> str:
        context = f" ({self.context})" if self.context else ""
        shown = [p for p in self.p_adjusted if p is not None]
        p = ""
        if self.kind == "effects" and shown:
            p = "; Holm-adjusted p: " + ", ".join(
                f"{name} {q:.3g}" for name, q in zip(EFFECT_TERMS, self.p_adjusted) if q is not None)
        elif shown:
            p = f", Holm-adjusted p = {shown[0]:.3g}"
        return f"- **{self.topic}**{context}, `{self.metric}`: {self.text}{p}: **{self.verdict}**"


def _f(x: float) -> str:
    return f"{x:.3f}"


def compare(a: SeedValues, b: SeedValues) -> Comparison | None:
    """``a - b``: paired by seed when they share at least two seeds, else Welch."""
    paired = paired_difference(a, b)
    if paired is not None and paired.n >= 2:
        return Comparison(paired.estimate, paired.p_value, True, paired.agree, paired.differences)
    est = difference_ci(list(a.values()), list(b.values()))
    if est is None:
        return None
    p = None
    if est.half_width is not None and est.half_width > 0:
        p = float(stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).pvalue)
    return Comparison(est, p, False)


def directional_verdict(c: Comparison, p_adjusted: float | None) -> str:
    if c.estimate.half_width is None or p_adjusted is None:
        return f"{NOT_SHOWN} (n=1, no interval)" if c.estimate.half_width is None else NOT_SHOWN
    if p_adjusted < ALPHA:
        return HOLDS if c.estimate.mean > 0 else f"{DOES_NOT_HOLD} (the opposite is shown)"
    return NOT_SHOWN


def two_sided_verdict(c: Comparison, p_adjusted: float | None, label: str, margin: float) -> str:
    if c.estimate.half_width is None:
        return f"{NOT_SHOWN} (n=1, no interval)"
    if p_adjusted is not None and p_adjusted < ALPHA:
        return f"higher with {label}" if c.estimate.mean > 0 else f"lower with {label}"
    if c.paired and len(c.differences) >= 2:
        tost = tost_paired(c.differences, margin)
        if tost.equivalent:
            return f"equivalent within ±{margin:g} (TOST p = {tost.p_value:.3g})"
    return NOT_SHOWN


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


def seed_values(runs: Sequence[RunRecord], metric: str) -> SeedValues:
    by_seed: dict[str, list[float]] = {}
    for r in runs:
        v = r.metric(metric)
        if np.isfinite(v):
            by_seed.setdefault(r.seed, []).append(v)
    return {s: float(np.mean(v)) for s, v in by_seed.items()}


def findings(trials: Sequence[RunRecord], reference: RunRecord | None,
             metrics: Sequence[str] = FINDING_METRICS,
             margin: float = DEFAULT_EQUIVALENCE_MARGIN) -> list[Finding]:
    """Every finding the full-length ``trials`` support, for each metric they report, with
    p-values Holm-adjusted over all of them (see the module docstring)."""
    cells = group_cells(trials)
    labels = _Labels(list(cells))
    out: list[Finding] = []
    for metric in metrics:
        values = {k: seed_values(runs, metric) for k, runs in cells.items()}
        values = {k: v for k, v in values.items() if v}
        if not values:
            continue
        out += scope_findings(values, labels, metric)
        out += window_findings(values, labels, metric)
        out += capacity_findings(values, labels, metric)
        out += layout_findings(values, labels, metric)
        out += effect_size_finding(values, metric)
    out = _adjust(out, margin)
    out += reference_finding(trials, reference, naming.PURITY)
    return out


def _adjust(items: list[Finding], margin: float) -> list[Finding]:
    """Holm over the p-values of each metric's findings (one family per metric: each metric is
    its own question, and ``purity`` / ``purity_lift`` differences between arms that share
    their step-0 router are the same numbers, which one joint family would count twice), then
    each verdict from its adjusted p."""
    per_item: list[list[float | None]] = [[] for _ in items]
    for metric in dict.fromkeys(f.metric for f in items):
        flat = [(i, p) for i, f in enumerate(items) if f.metric == metric for p in f.p_values]
        for (i, _), q in zip(flat, holm([p for _, p in flat])):
            per_item[i].append(q)
    out = []
    for f, qs in zip(items, per_item):
        f = replace(f, p_adjusted=tuple(qs))
        first = qs[0] if qs else None
        if f.kind == "directional":
            f = replace(f, verdict=directional_verdict(f.comparison, first))
        elif f.kind == "two-sided":
            f = replace(f, verdict=two_sided_verdict(f.comparison, first, f.verdict, margin))
        elif f.kind == "effects":
            f = replace(f, verdict=_effects_verdict_of(f))
        out.append(f)
    return out


def _comparison_finding(topic: str, context: str, metric: str, a: SeedValues, b: SeedValues,
                        kind: str, label: str = "") -> Finding | None:
    c = compare(a, b)
    if c is None:
        return None
    ma, mb = mean_ci(a.values()), mean_ci(b.values())
    text = f"mean {_f(ma.mean)} vs {_f(mb.mean)} (n={ma.n} vs {mb.n}), {c.text()}"
    # for a two-sided finding the verdict field carries its label until the adjustment
    return Finding(topic, context, text, label, metric, c, kind, (c.p_value,))


def scope_findings(values: Mapping[CellKey, SeedValues], labels: _Labels, metric: str) -> list[Finding]:
    out = []
    for wide, narrow in SCOPE_PAIRS:
        for (method, cap, dpmb), by_scope in _split(values, "scope").items():
            if wide in by_scope and narrow in by_scope:
                f = _comparison_finding(f"{wide} vs {narrow}", labels(method=method, capacity=cap, dpmb=dpmb),
                                        metric, by_scope[wide], by_scope[narrow], "directional")
                out += [f] if f else []
    return out


def window_findings(values: Mapping[CellKey, SeedValues], labels: _Labels, metric: str) -> list[Finding]:
    """Balance-window sweep: the widest window against the narrowest (wider should be purer)."""
    out = []
    for (method, cap, dpmb), by_scope in _split(values, "scope").items():
        sizes = {int(s.split()[1]): v for s, v in by_scope.items()
                 if s.startswith("window ") and s.split()[1].isdigit()}
        if len(sizes) >= 2:
            wide, narrow = max(sizes), min(sizes)
            f = _comparison_finding(f"window {wide} vs window {narrow} sequences",
                                    labels(method=method, capacity=cap, dpmb=dpmb), metric,
                                    sizes[wide], sizes[narrow], "directional")
            out += [f] if f else []
    return out


def capacity_findings(values: Mapping[CellKey, SeedValues], labels: _Labels, metric: str) -> list[Finding]:
    out = []
    for (method, scope, dpmb), by_cap in _split(values, "capacity").items():
        if 0.0 not in by_cap:
            continue
        for cap in sorted(c for c in by_cap if c > 0):
            f = _comparison_finding(f"capacity {capacity_label(cap)} vs dropless",
                                    labels(method=method, scope=scope, dpmb=dpmb), metric,
                                    by_cap[cap], by_cap[0.0], "two-sided", f"capacity {capacity_label(cap)}")
            out += [f] if f else []
    return out


def layout_findings(values: Mapping[CellKey, SeedValues], labels: _Labels, metric: str) -> list[Finding]:
    """Other values of ``data.domains_per_micro_batch`` against 1 (one domain per micro-batch)."""
    out = []
    for (method, scope, cap), by_dpmb in _split(values, "domains_per_micro_batch").items():
        base = "1" if "1" in by_dpmb else sorted(by_dpmb)[0]
        for other in sorted(d for d in by_dpmb if d != base):
            f = _comparison_finding(f"domains_per_micro_batch {other} vs {base}",
                                    labels(method=method, scope=scope, capacity=cap), metric,
                                    by_dpmb[other], by_dpmb[base], "two-sided",
                                    f"domains_per_micro_batch {other}")
            out += [f] if f else []
    return out


def effect_size_finding(values: Mapping[CellKey, SeedValues], metric: str) -> list[Finding]:
    """Does scope matter more than method? A two-way decomposition of the largest complete grid
    of methods x scopes (at the most common capacity and layout; methods tried at fewer scopes
    left out), seeds as blocks: F tests of method and scope, partial eta squared, and the
    spread (SD) of each factor's level means."""
    common = max(_split(values, "method_scope").items(), key=lambda kv: sum(len(v) for v in kv[1].values()),
                 default=None)
    if common is None:
        return []
    (cap, dpmb), by_cell = common
    scopes_of: dict[str, set] = {}
    for method, scope in by_cell:
        scopes_of.setdefault(method, set()).add(scope)
    methods = [m for m, sc in scopes_of.items() if len(sc) >= 2] or list(scopes_of)
    shared_scopes = set.intersection(*(scopes_of[m] for m in methods))
    grid = {(m, s, seed): v for (m, s), seeds in by_cell.items() if m in methods and s in shared_scopes
            for seed, v in seeds.items()}
    result = two_way_effects(grid)
    if result is None or result.method is None or result.scope is None:
        return []

    def describe(e) -> str:
        f = "F –" if e.f is None else f"F({e.df}, {result.df_error}) = {e.f:.2f}"
        eta = "–" if e.partial_eta_sq is None else f"{e.partial_eta_sq:.2f}"
        return f"{e.name}: spread {_f(e.spread)}, {f}, partial eta² {eta}"

    text = (f"{len(result.method.levels)} methods x {len(result.scope.levels)} scopes x "
            f"{result.n_seeds} seeds; " + "; ".join(
                describe(e) for e in (result.scope, result.method, result.interaction) if e is not None))
    context = f"two-way decomposition, capacity {capacity_label(cap)}, {dpmb} domain(s)/micro-batch"
    # the interaction's p joins the metric's Holm family: it is one more test of the same data
    terms = (result.scope, result.method, result.interaction)
    return [Finding("scope effect vs method effect", context, text, "", metric, kind="effects",
                    p_values=tuple(None if e is None else e.p_value for e in terms),
                    partial_eta=tuple(None if e is None else e.partial_eta_sq for e in terms))]


def _effects_verdict_of(f: Finding) -> str:
    """The verdict of an ``effects`` finding from its adjusted p-values, by term name."""
    p = dict(zip(EFFECT_TERMS, f.p_adjusted))
    eta = dict(zip(EFFECT_TERMS, f.partial_eta))
    return effects_verdict(p_scope=p.get("scope"), p_method=p.get("method"),
                           p_interaction=p.get(INTERACTION_TERM),
                           eta_scope=eta.get("scope"), eta_method=eta.get("method"),
                           eta_interaction=eta.get(INTERACTION_TERM))


def effects_verdict(*, p_scope: float | None, p_method: float | None, p_interaction: float | None = None,
                    eta_scope: float | None = None, eta_method: float | None = None,
                    eta_interaction: float | None = None) -> str:
    """Which factor is shown to matter (adjusted p < 0.05). "More than" is said only when one
    effect is shown and the other is not; when both are, their partial eta squared are given.
    A shown interaction is always said: then the scope effect is not one number but differs
    by method, and "scope matters more" describes an average over methods."""
    if p_scope is None or p_method is None:
        return f"{NOT_SHOWN} (no residual variance to test against)"
    scope, method = p_scope < ALPHA, p_method < ALPHA
    if scope and not method:
        main = "scope matters more than method"
    elif method and not scope:
        main = "method matters more than scope"
    elif scope and method:
        main = (f"both shown (partial eta² scope {eta_scope:.2f}, method {eta_method:.2f}); "
                "which matters more is not tested")
    else:
        main = f"{NOT_SHOWN} (neither main effect shown)"
    return main + _interaction_clause(p_interaction, eta_interaction, also=scope or method)


def _interaction_clause(p_interaction: float | None, eta_interaction: float | None, also: bool) -> str:
    if p_interaction is None or p_interaction >= ALPHA:
        return ""
    eta = "" if eta_interaction is None else f" (partial eta² {eta_interaction:.2f})"
    return (f"; {INTERACTION_SHOWN}{' too' if also else ''}{eta}: the scope effect differs "
            "by method, read the cells")


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


def _split(values: Mapping[CellKey, SeedValues], vary: str) -> dict[tuple, dict]:
    """Cells grouped by all fields but ``vary``: ``{rest: {value of vary: values}}``;
    ``vary="method_scope"`` groups by capacity and layout, keyed by (method, scope)."""
    varied = ("method", "scope") if vary == "method_scope" else (vary,)
    out: dict[tuple, dict] = {}
    for key, v in values.items():
        rest = tuple(getattr(key, f) for f in _FIELDS if f not in varied)
        inner = tuple(getattr(key, f) for f in varied)
        out.setdefault(rest, {})[inner if len(inner) > 1 else inner[0]] = v
    return out


__all__ = ["Finding", "findings", "HOLDS", "DOES_NOT_HOLD", "NOT_SHOWN", "INTERACTION_SHOWN"]
