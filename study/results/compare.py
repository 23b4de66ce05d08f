"""``moe-study report EXP --compare OTHER``: does a study's ranking hold in another study?

The question the paper leaves open: when the model grows, or the domain mix is skewed, do the
same methods and scopes come out on top? For every cell (method, scope, capacity, domains per
micro-batch) the two studies share, the section lists the mean purity of each with its
interval, the difference (Welch), and the cell's rank in each; Kendall's tau between the two
rankings of the shared cells says whether the order holds (tau near 1) or not. The reference
routers of both are listed, so a gap in absolute purity is read against its upper bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from study import naming
from study.results.paired_stats import kendall_tau_exact
from study.results.records import RunRecord, StudyRuns, distinct_configs
from study.results.stats import CellKey, Estimate, capacity_label, difference_ci, group_cells, mean_ci

COMPARE_METRIC = naming.PURITY


def _cell_means(trials: Sequence[RunRecord], metric: str) -> dict[CellKey, tuple[Estimate, list[float]]]:
    out = {}
    for key, members in group_cells(trials).items():
        values = [r.metric(metric) for r in members]
        est = mean_ci(values)
        if est is not None:
            out[key] = (est, values)
    return out


def _ranks(means: dict[CellKey, float], descending: bool) -> dict[CellKey, int]:
    order = sorted(means, key=lambda k: -means[k] if descending else means[k])
    return {k: i + 1 for i, k in enumerate(order)}


def _fmt(e: Estimate) -> str:
    return f"{e.mean:.3f}" + (f" ± {e.half_width:.3f}" if e.half_width is not None else " (n=1)")


def _hashes(runs: StudyRuns) -> str:
    return ", ".join(f"`{h}`" for h in runs.mix_hashes) or "not recorded"


def compare_metrics(this: StudyRuns) -> tuple[str, ...]:
    """Purity, and the study's objective when it is another metric the trials report."""
    objective = this.objective
    if objective and objective != COMPARE_METRIC and any(
            math.isfinite(r.metric(objective)) for r in this.full_length_trials):
        return (COMPARE_METRIC, objective)
    return (COMPARE_METRIC,)


def compare_markdown(this: StudyRuns, other: StudyRuns, metric: str = COMPARE_METRIC) -> str:
    """The comparison section of ``this`` study's report against ``other``."""
    mine, _ = distinct_configs(this.full_length_trials)
    theirs, _ = distinct_configs(other.full_length_trials)
    a, b = _cell_means(mine, metric), _cell_means(theirs, metric)
    shared = [k for k in a if k in b]
    title = f"## Against `{other.experiment}`" + ("" if metric == COMPARE_METRIC else f", on `{metric}`")
    warning = []
    if this.mix_hashes != other.mix_hashes:
        warning = [
            f"**Warning: the two studies trained on different text** (data mix content hashes "
            f"{_hashes(this)} here, {_hashes(other)} in `{other.experiment}`): a difference below "
            "mixes the settings with the data.", "",
        ]
    if len(shared) < 2:
        return "\n".join([title, "", *warning,
                          f"Fewer than two cells (method, scope, capacity, domains per "
                          f"micro-batch) in common with `{other.experiment}`: nothing to compare."])
    descending = naming.metric_mode(metric) == "max"
    rank_a = _ranks({k: a[k][0].mean for k in shared}, descending)
    rank_b = _ranks({k: b[k][0].mean for k in shared}, descending)
    rows = []
    for k in sorted(shared, key=lambda k: rank_a[k]):
        diff = difference_ci(a[k][1], b[k][1])
        diff_text = "-" if diff is None else (
            f"{diff.mean:+.3f}" + (f" [{diff.low:+.3f}, {diff.high:+.3f}]" if diff.half_width is not None else ""))
        rows.append([k.method, k.scope, capacity_label(k.capacity), k.domains_per_micro_batch,
                     _fmt(a[k][0]), _fmt(b[k][0]), diff_text, str(rank_a[k]), str(rank_b[k])])
    tau = kendall_tau_exact([rank_a[k] for k in shared], [rank_b[k] for k in shared])
    p_kind = "exact permutation p" if tau.exact else "permutation p from 200,000 shuffles"
    p_text = "no p-value" if tau.p_value is None else f"{p_kind} = {tau.p_value:.3f}"
    refs = []
    for study in (this, other):
        ref = study.reference
        value = ref.metric(metric) if ref is not None else math.nan
        refs.append(f"`{study.experiment}` {value:.3f}" if math.isfinite(value)
                    else f"`{study.experiment}` {'none' if ref is None else 'not reported'}")
    header = ["method", "scope", "capacity", "domains/micro-batch", f"{metric} here",
              f"{metric} in {other.experiment}", "difference (95% CI)", "rank here",
              f"rank in {other.experiment}"]
    lines = [
        title, "", *warning,
        f"Mean `{metric}` of the cells both studies ran (95% intervals over seeds; difference "
        f"with Welch's interval: the studies share no seeds' init), ranked within each study. "
        f"Kendall's tau between the two rankings of these {len(shared)} cells: "
        f"**{tau.tau:.2f}** ({p_text}; 1 = the same order, 0 = unrelated; with {len(shared)} cells "
        f"the smallest possible p is {2 / math.factorial(len(shared)):.3g}). "
        f"Reference router {metric}: {', '.join(refs)}.", "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    return "\n".join(lines)
