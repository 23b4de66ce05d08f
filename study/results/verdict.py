"""The report's opening verdict: which setting is best, by how much, whether the difference is
real and what the learning curves say, in four lines computed from the tables and findings.

It claims nothing the findings do not: "real" is a finding's verdict (paired over seeds,
Holm-adjusted), and a best cell with a single run is called best only "as measured".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from study import naming
from study.results.findings import DOES_NOT_HOLD, HOLDS, Finding
from study.results.cost import StudyMoney, study_money
from study.results.records import RunRecord
from study.spec.types import CostSpec
from trainables.metric_names import GAPS
from study.results.stats import CellKey, Estimate, capacity_label, group_cells, mean_ci

History = Mapping[str, Sequence[tuple[int, float]]]
"""(step, value) points of the ranking metric per run id."""
CALLED_VERDICTS = (HOLDS, DOES_NOT_HOLD, "equivalent", "higher", "lower")
"""Verdicts that call a comparison (the rest are "not shown" or verdicts of their own)."""
SAME_NUMBERS = 1e-9
"""Two findings' differences closer than this are the same numbers (one comparison)."""
FLAT_SHARE = 0.1
"""The curve is "flat" at the end when its last interval moved it by less than this share of
its whole change from the first evaluation."""


def cell_name(key: CellKey) -> str:
    extra = f" (capacity {capacity_label(key.capacity)})" if key.capacity else ""
    return f"`{key.method}` at `{key.scope}`{extra}"


def ranked_cells(trials: Sequence[RunRecord], by: str, ascending: bool
                 ) -> list[tuple[CellKey, Estimate, list[RunRecord]]]:
    """Cells with an estimate of ``by``, best first."""
    out = []
    for key, members in group_cells(trials).items():
        est = mean_ci(r.metric(by) for r in members)
        if est is not None:
            out.append((key, est, members))
    out.sort(key=lambda c: c[1].mean if ascending else -c[1].mean)
    return out


def _estimate_text(e: Estimate) -> str:
    if e.half_width is None:
        return f"{e.mean:+.3f} (one run)"
    return f"{e.mean:+.3f} ± {e.half_width:.3f} (n={e.n})"


def best_line(cells, by: str) -> str:
    key, est, _ = cells[0]
    line = f"- **Best setting** by `{by}`: {cell_name(key)}, {_estimate_text(est)}"
    if len(cells) > 1:
        next_key, next_est, _ = cells[1]
        line += (f"; next {cell_name(next_key)}, {_estimate_text(next_est)}; "
                 f"{len(cells)} settings in all")
    return line + "."


def finding_metric(by: str) -> str:
    """The metric whose findings judge a ranking by ``by``: a gap to the reference ranks exactly
    as its metric does (the reference value is one constant)."""
    return next((metric for gap, metric, _ in GAPS if gap == by), by)


def real_line(items: Sequence[Finding], by: str) -> str:
    """Whether the differences on the ranking metric are shown, from the findings on it."""
    judged = finding_metric(by)
    on_metric = [f for f in items if f.metric == judged and f.comparison is not None]
    name = f"`{judged}`" + (f" (which `{by}` ranks by)" if judged != by else "")
    if not on_metric:
        return (f"- **Is it real?** No comparison on {name} could be made (it needs one method at two "
                "scopes, or capacity twins, over shared seeds): the ranking above is as measured."
                + _shown_elsewhere(items, judged))
    called = [f for f in on_metric if f.verdict.startswith((HOLDS, DOES_NOT_HOLD))]
    counts = (f"holds {sum(f.verdict.startswith(HOLDS) for f in on_metric)}, "
              f"does not hold {sum(f.verdict.startswith(DOES_NOT_HOLD) for f in on_metric)}, "
              f"not shown {len(on_metric) - len(called)}")
    strongest = min(called or on_metric, key=_adjusted_p)
    e = strongest.comparison.estimate
    interval = f"[{e.low:+.3f}, {e.high:+.3f}]" if e.half_width is not None else "(no interval)"
    p = _adjusted_p(strongest)
    p_text = f", Holm p = {p:.2g}" if math.isfinite(p) else ""
    context = f" ({strongest.context})" if strongest.context else ""
    return (f"- **Is it real?** Of {len(on_metric)} comparisons on {name}: {counts}. Clearest: "
            f"{strongest.topic}{context}, difference {e.mean:+.3f} {interval}{p_text}: "
            f"**{strongest.verdict}**." + _shown_elsewhere(items, judged))


def _shown_elsewhere(items: Sequence[Finding], judged: str, most: int = 3) -> str:
    """Comparisons shown on the other metrics (a difference on raw purity is not one on the
    objective, but it is a difference): the reader should not have to dig for them."""
    shown = [f for f in items if f.metric != judged and f.comparison is not None
             and f.comparison.estimate.half_width is not None and f.verdict.startswith((HOLDS, DOES_NOT_HOLD))]
    if not shown:
        return ""
    parts = []
    for f in sorted(shown, key=_adjusted_p)[:most]:
        e = f.comparison.estimate
        context = f" ({f.context})" if f.context else ""
        parts.append(f"{f.topic}{context} on `{f.metric}`, {e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}]: {f.verdict}")
    more = f" and {len(shown) - most} more" if len(shown) > most else ""
    return " Shown on other metrics: " + "; ".join(parts) + more + " (Findings, below)."


def _adjusted_p(f: Finding) -> float:
    shown = [p for p in f.p_adjusted if p is not None]
    return shown[0] if shown else math.inf


def baseline_line(cells, by: str, reference: RunRecord | None) -> str:
    """The best cell against its baselines: its own untrained router (the lift) and the
    reference router (the upper bound)."""
    key, est, members = cells[0]
    parts = []
    if naming.LIFT_SUFFIX in by:
        if est.half_width is None:
            parts.append(f"one run, so whether training added to `{by.replace(naming.LIFT_SUFFIX, '')}` "
                         "is not shown")
        elif est.low > 0:
            parts.append("its interval lies above 0: training added what the untrained router lacked")
        else:
            parts.append("its interval reaches 0: training is not shown to have added anything")
    purity = mean_ci(r.metric(naming.PURITY) for r in members)
    untrained = mean_ci(r.metric(naming.init_of(naming.PURITY)) for r in members)
    if reference is not None and purity is not None and math.isfinite(reference.metric(naming.PURITY)):
        step0 = (f" (its untrained router's {untrained.mean:.3f}, from the bytes alone)"
                 if untrained is not None else "")
        parts.append(f"purity {purity.mean:.3f}{step0} against the reference router's "
                     f"{reference.metric(naming.PURITY):.3f} (each domain on its own experts)")
    cmi = mean_ci(r.metric(naming.CMI) for r in members)
    if cmi is not None:
        parts.append(f"`cmi` {cmi.mean:.3f}, where a router that sees only the current byte scores ~0 "
                     "and the reference 1")
    if not parts:
        return ""
    return f"- **Against its baselines**, {cell_name(key)}: " + "; ".join(parts) + "."


def curve_line(cells, by: str, histories: History) -> str:
    """What the best cell's learning curve of ``by`` did: rose, fell, still moving at the end."""
    key, _, members = cells[0]
    by_step: dict[int, list[float]] = {}
    for run in members:
        for step, value in histories.get(run.run_id, ()):
            if math.isfinite(value):
                by_step.setdefault(int(step), []).append(value)
    steps = sorted(s for s in by_step if s > 0)
    if len(steps) < 2:
        return ""
    mean = {s: sum(by_step[s]) / len(by_step[s]) for s in steps}
    first, before_last, last = mean[steps[0]], mean[steps[-2]], mean[steps[-1]]
    whole, end = last - first, last - before_last
    if abs(whole) < 1e-12:
        shape = "did not move"
    else:
        shape = "rose" if whole > 0 else "fell"
        moving = abs(end) >= FLAT_SHARE * abs(whole)
        shape += (f", still moving at the end ({end:+.3f} over the last {steps[-1] - steps[-2]} steps): "
                  "more steps may change the ranking") if moving else ", flat at the end"
    return (f"- **Learning curve** of {cell_name(key)}: `{by}` {shape}, from {first:+.3f} at step "
            f"{steps[0]} to {last:+.3f} at step {steps[-1]} (mean over its runs).")


def cost_line(paid: Sequence[RunRecord], items: Sequence[Finding], prices: CostSpec | None = None) -> str:
    """What the study's runs held (every run it paid for: failed, stopped early and the
    reference included), and that over the findings it could call, each distinct comparison
    once (``distinct_comparisons``); in money too when the spec has a price table
    (``study.results.cost``)."""
    cpu_s, gpu_s = (sum(r.metric(m) for r in paid if math.isfinite(r.metric(m)))
                    for m in (naming.COST_CPU_S, naming.COST_GPU_S))
    if not cpu_s and not gpu_s:
        return ""
    shown = [f for f in items if f.verdict.startswith(CALLED_VERDICTS)]
    comparisons = distinct_comparisons(shown)
    called = len(comparisons)
    money = study_money(paid, prices) if prices is not None else None
    total = f"{cpu_s / 3600:.2f} CPU-hours" + (f", {gpu_s / 3600:.2f} GPU-hours" if gpu_s else "")
    if money is not None:
        total += f", {money.amount()}"
    per = (f"; {called} finding(s) shown{_repeats_note(comparisons)}, so {cpu_s / 3600 / called:.2f} CPU-hours"
           + (f" and {gpu_s / 3600 / called:.2f} GPU-hours" if gpu_s else "")
           + (f" and {money.amount(money.total / called)}" if money is not None else "") + " a finding"
           if called else "; no finding shown")
    return f"- **Cost**: {total} over {len(paid)} runs{per}.{_pricing_note(money)}"


def distinct_comparisons(shown: Sequence[Finding]) -> list[list[Finding]]:
    """The shown findings grouped into distinct comparisons: findings of the same claim and
    setting whose paired differences are the same numbers are one comparison seen on several
    metrics. Arms that share their step-0 router (same seed, same init) have the same
    ``purity`` and ``purity_lift`` differences (the lift subtracts the same step-0 value from
    both arms), and counting both would halve the cost of a finding."""
    groups: list[list[Finding]] = []
    for f in shown:
        same = next((g for g in groups if _same_comparison(g[0], f)), None)
        if same is None:
            groups.append([f])
        else:
            same.append(f)
    return groups


def _same_comparison(a: Finding, b: Finding) -> bool:
    if (a.topic, a.context) != (b.topic, b.context) or a.comparison is None or b.comparison is None:
        return False
    ea, eb = a.comparison.estimate, b.comparison.estimate
    if ea.n != eb.n or (ea.half_width is None) != (eb.half_width is None):
        return False
    return _same_number(ea.mean, eb.mean) and (ea.half_width is None
                                               or _same_number(ea.half_width, eb.half_width))


def _same_number(x: float, y: float) -> bool:
    # the two metrics' differences agree up to float rounding of the subtraction, no further
    return math.isclose(x, y, rel_tol=SAME_NUMBERS, abs_tol=SAME_NUMBERS)


def _repeats_note(comparisons: Sequence[Sequence[Finding]]) -> str:
    """Which shown findings repeated another's numbers and were counted once."""
    repeated = [group for group in comparisons if len(group) > 1]
    if not repeated:
        return ""
    metrics = "; ".join(" and ".join(f"`{f.metric}`" for f in group) + f" of {group[0].topic}"
                        + (f" ({group[0].context})" if group[0].context else "") for group in repeated)
    return (f" ({sum(map(len, comparisons))} on their metrics, counted once where the paired "
            f"differences are the same numbers: {metrics})")


def _pricing_note(money: StudyMoney | None) -> str:
    """How the money was priced: by node type (the runs' tags) or per CPU- and GPU-hour."""
    if money is None:
        return ""
    parts = [f"{n} run(s) {how}" for n, how in (
        (money.runs_by_node_type, "at their node type's price"),
        (money.runs_by_resource_hour, "per CPU- and GPU-hour")) if n]
    return f" Priced by the spec's `cost` table: {' and '.join(parts)}." if parts else ""


def verdict_markdown(trials: Sequence[RunRecord], reference: RunRecord | None, items: Sequence[Finding],
                     by: str, ascending: bool, histories: History, paid: Sequence[RunRecord] = (),
                     prices: CostSpec | None = None) -> str:
    cells = ranked_cells(trials, by, ascending)
    if not cells:
        return ""
    lines = [best_line(cells, by), real_line(items, by), baseline_line(cells, by, reference),
             curve_line(cells, by, histories), cost_line(paid, items, prices)]
    return "\n".join(["## Verdict", "", *(line for line in lines if line)])
