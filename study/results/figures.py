"""The report's figures, drawn from the runs (``plots`` does the drawing, this module picks).

Each ``*_figure`` function writes its PNG and returns ``(caption, "")``, or ``("", why not)``
when the data cannot support it (no reference run, no count-table artifact, ...), so the report
can say what is missing instead of failing.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from study import naming
from study.results.records import RunRecord, fetch_count_table, fetch_histories
from study.results.stats import CellKey, capacity_label, cell_key, group_cells, mean_ci, pareto_front

PARETO_FILE = "pareto.png"
HEATMAPS_FILE = "heatmaps_layer{layer}.png"
"""One file per MoE layer: expert numbers mean nothing across layers, so layers are not summed."""
MAX_HEATMAP_LAYERS = 8
CURVES_FILE = "learning_curves.png"
BARS_FILE = "cell_bars.png"
"""Mean of the ranking metric (the study objective, else purity) per cell, with intervals."""
WINDOW_FILE = "balance_window.png"
FIGURE_FILES = (PARETO_FILE, CURVES_FILE, BARS_FILE, WINDOW_FILE)
"""The figures every report tries to draw, besides the heatmaps."""
EXPERT_CHOICE = "ec"


def pareto_figure(ranked: Sequence[RunRecord], path: Path) -> tuple[str, str]:
    from study.results.plots import pareto_plot
    from study.run.heatmaps import save_figure

    points = [r for r in ranked if math.isfinite(r.metric(naming.GAP_PURITY))
              and math.isfinite(r.metric(naming.GAP_LOSS))]
    if not points:
        return "", "no trial logged both gap_purity and gap_loss (they need a reference run)"
    xy = [(r.metric(naming.GAP_PURITY), r.metric(naming.GAP_LOSS)) for r in points]
    comparable = [i for i, r in enumerate(points) if r.method != EXPERT_CHOICE]
    front = [comparable[j] for j in pareto_front([xy[i] for i in comparable])]
    fig = pareto_plot([p[0] for p in xy], [p[1] for p in xy], [r.method for r in points],
                      [r.scope for r in points], front,
                      hollow=[r.method == EXPERT_CHOICE for r in points])
    save_figure(fig, path)
    names = ", ".join(f"{points[i].name} ({points[i].method}, {points[i].scope})" for i in front[:10])
    if len(front) > 10:
        names += f" and {len(front) - 10} more"
    caption = (f"Each full-length trial: `gap_loss` against `gap_purity` (both 0 for the "
               f"reference router, the star; lower-left is better). Pareto front: {names or 'none'}.")
    if len(comparable) < len(points):
        caption += " Hollow points are `ec`, left out of the front (its loss is not comparable)."
    return caption, ""


def heatmap_figures(client, reference: RunRecord | None, ranked: Sequence[RunRecord], by: str,
                     out: Path) -> dict[str, tuple[str, str]]:
    """Reference, best and worst trial side by side, one figure per MoE layer."""
    from study.run.heatmaps import heatmaps_side_by_side, save_figure

    scored = [r for r in ranked if math.isfinite(r.metric(by))]
    picks: list[tuple[str, RunRecord]] = []
    if reference is not None:
        picks.append(("reference", reference))
    if scored:
        picks.append((_panel_title("best", scored[0]), scored[0]))
        if len(scored) > 1:
            picks.append((_panel_title("worst", scored[-1]), scored[-1]))
    tables, domains, missing = [], None, []
    with tempfile.TemporaryDirectory(prefix="moe-study-report-") as tmp:
        for i, (title, run) in enumerate(picks):
            got = fetch_count_table(client, run.run_id, Path(tmp) / str(i))
            if got is None:
                missing.append(run.name)
                continue
            n_LED, run_domains = got
            if domains is None:
                domains = run_domains
            if sorted(run_domains) != sorted(domains):
                missing.append(f"{run.name} (other domains)")
                continue
            order = [run_domains.index(d) for d in domains]
            tables.append((title, np.asarray(n_LED, dtype=float)[:, :, order]))
    name = HEATMAPS_FILE.format(layer=0)
    if not tables:
        return {name: ("", "no count_table.parquet artifact on the reference, best or worst run")}
    n_layers = min(n_LED_.shape[0] for _, n_LED_ in tables)
    figures = {}
    for layer in range(min(n_layers, MAX_HEATMAP_LAYERS)):
        name = HEATMAPS_FILE.format(layer=layer)
        panels = [(title, n_LED_[layer]) for title, n_LED_ in tables]
        save_figure(heatmaps_side_by_side(panels, domains), out / name)
        caption = (f"MoE layer {layer}: routing of the evaluation set, as the share of each "
                   "domain's routed slots per expert (experts sorted by majority domain). Best "
                   f"and worst trial by `{by}`.")
        if missing:
            caption += f" No count table for: {', '.join(missing)}."
        figures[name] = (caption, "")
    if n_layers > MAX_HEATMAP_LAYERS:
        figures[HEATMAPS_FILE.format(layer="N")] = (
            "", f"layers {MAX_HEATMAP_LAYERS} to {n_layers - 1} left out (the count tables have them)")
    return figures


def _panel_title(which: str, run: RunRecord) -> str:
    import textwrap

    # a panel is a few domain columns wide: long run names wrap instead of running into the next
    return f"{which}: {textwrap.fill(run.name, 24)}\n{run.method}, {run.scope}"


def curves_figure(client, ranked: Sequence[RunRecord], reference: RunRecord | None, cap: int,
                   path: Path) -> tuple[str, str]:
    from study.results.plots import learning_curves
    from study.run.heatmaps import save_figure

    histories = fetch_histories(client, ranked, naming.PURITY, cap)
    label = _cell_labeller(ranked, sep=", ")
    curves = [(r.method, r.scope, label(cell_key(r), with_method=False),
               [s for s, _ in histories[r.run_id]], [v for _, v in histories[r.run_id]])
              for r in ranked if r.run_id in histories]
    if not curves:
        return "", "no trial logged a purity history"
    ref = reference.metric(naming.PURITY) if reference is not None else None
    save_figure(learning_curves(curves, metric=naming.PURITY, reference=ref), path)
    caption = ("`purity` at each evaluation step, one panel per method: thin lines are runs, bold "
               "lines the mean per scope (and capacity or data layout where those vary); dashed: "
               "the reference router's final purity.")
    if len(ranked) > cap:
        caption += f" The first {cap} of {len(ranked)} ranked trials are drawn."
    return caption, ""


def _cell_labeller(runs: Sequence[RunRecord], sep: str):
    """Labels cells by method, scope and only those other fields that vary in the study."""
    keys = {cell_key(r) for r in runs}
    capacity_varies = len({k.capacity for k in keys}) > 1
    dpmb_varies = len({k.domains_per_micro_batch for k in keys}) > 1

    def label(key: CellKey, with_method: bool = True) -> str:
        parts = ([key.method] if with_method else []) + [key.scope]
        if capacity_varies:
            parts.append(f"cap {capacity_label(key.capacity)}")
        if dpmb_varies:
            parts.append(f"{key.domains_per_micro_batch} dom/mb")
        return sep.join(parts)

    return label


def bars_figure(ranked: Sequence[RunRecord], reference: RunRecord | None, path: Path,
                metric: str = naming.PURITY) -> tuple[str, str]:
    """Mean ``metric`` (the study's objective) per cell with its interval. The reference line
    is drawn only where it leaves the cells' differences readable (purity 1 against cells near
    0.3 would squash them): otherwise its value goes into the caption."""
    from study.results.plots import interval_bars
    from study.run.heatmaps import save_figure

    cells = group_cells(ranked)
    label = _cell_labeller(ranked, sep="\n")
    bars = []
    for key, members in cells.items():
        est = mean_ci(r.metric(metric) for r in members)
        if est is not None:
            bars.append((label(key), key.method, est.mean, est.half_width, est.n))
    if not bars:
        return "", f"no trial logged {metric}"
    ref = reference.metric(metric) if reference is not None else math.nan
    if naming.LIFT_SUFFIX in metric:  # the reference router is one from its first step: lift 0
        ref = math.nan
    highest = max(abs(mean) + (hw or 0.0) for _, _, mean, hw, _ in bars)
    drawn = math.isfinite(ref) and abs(ref) <= REFERENCE_LINE_REACH * highest
    save_figure(interval_bars(bars, ylabel=metric, reference=ref if drawn else None), path)
    note = ("dashed: the reference router." if drawn else
            f"the reference router's `{metric}` is {ref:.3f}, off this axis so that the cells' "
            "differences stay visible." if math.isfinite(ref) else "")
    return (f"Mean `{metric}` per cell with its 95% confidence interval over seeds (no bar for "
            f"n=1); {note}").rstrip("; "), ""


REFERENCE_LINE_REACH = 1.5
"""The reference line is drawn when it is at most this many times the tallest bar."""


def window_series(ranked: Sequence[RunRecord], metric: str = naming.PURITY
                  ) -> dict[str, list[tuple[int, float, float | None, int]]]:
    """Window-scope trials as curves: one per (method, capacity, data layout), a point per window."""
    windowed = [r for r in ranked if r.balance_window is not None]
    label = _cell_labeller(windowed, sep=", ")
    series: dict[str, list[tuple[int, float, float | None, int]]] = {}
    for key, members in group_cells(windowed).items():
        est = mean_ci(r.metric(metric) for r in members)
        if est is None:
            continue
        parts = label(CellKey(key.method, "", key.capacity, key.domains_per_micro_batch)).split(", ")
        name = ", ".join(p for p in parts if p)
        series.setdefault(name, []).append((members[0].balance_window, est.mean, est.half_width, est.n))
    return series


def window_figure(ranked: Sequence[RunRecord], path: Path) -> tuple[str, str]:
    from study.results.plots import window_curve
    from study.run.heatmaps import save_figure

    series = window_series(ranked)
    if not series:
        return "", ""  # not a window sweep: nothing to say
    steps = {int(r.params.get("train.micro_batch_size", 0)) * int(r.params.get("train.grad_accum", 0))
             for r in ranked if r.balance_window is not None}
    save_figure(window_curve(series, step_sequences=max(steps) if len(steps) == 1 else None), path)
    return ("Mean `purity` against the LBL balance window (sequences whose counts one loss term "
            "sees; log scale) with 95% confidence intervals over seeds: 1 is the sequence scope, "
            "the dotted line the global batch. The reference router (purity 1) is off the scale."), ""
