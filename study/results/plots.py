"""The report's study-level figures (``moe-study report``): Pareto front, learning curves,
interval bars, the balance-window curve. Routing heatmaps live in ``study.run.heatmaps`` (the
tracker draws one per trial); figures are built on ``matplotlib.figure.Figure`` with an Agg
canvas, never through ``pyplot``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from study import naming
from study.results.records import method_rank, scope_rank
from study.run.heatmaps import new_figure
from trainables.config import METHODS
from trainables.metrics import purity
from trainables.scope import parse_scope_label

# -- study-level plots of the report (``moe-study report``) -----------------------------------
_SCOPE_MARKERS = {"sequence": "s", "micro_batch": "o", "global_batch": "^", "window": "P"}
_SCOPE_COLOURS = {"sequence": "tab:green", "micro_batch": "tab:orange", "global_batch": "tab:blue",
                  "window": "tab:purple"}
"""Per scope name; a window cell (``window 8``) takes the ``window`` style."""


def method_color(method: str):
    """A fixed colour per routing method (same method, same colour in every figure)."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    index, _ = method_rank(method)
    if method not in METHODS:  # unknown methods: a stable colour of their own
        index += sum(map(ord, method))
    return palette[index % len(palette)]


def _scope_marker(scope: str) -> str:
    return _SCOPE_MARKERS.get(parse_scope_label(scope)[0], "D")


def _method_scope_legends(ax, methods: Sequence[str], scopes: Sequence[str], extra=()) -> None:
    from matplotlib.lines import Line2D

    colour_handles = [Line2D([], [], color=method_color(m), marker="o", linestyle="", label=m)
                      for m in dict.fromkeys(methods)]
    marker_handles = [Line2D([], [], color="0.3", marker=_scope_marker(s), linestyle="", label=s)
                      for s in dict.fromkeys(scopes)]
    # figure legends placed "outside" are the ones constrained layout makes room for
    fig = ax.get_figure()
    fig.legend(handles=colour_handles + list(extra), title="method", loc="outside right upper",
               fontsize=8)
    fig.legend(handles=marker_handles, title="scope", loc="outside right lower", fontsize=8)


def pareto_plot(
    x: Sequence[float],
    y: Sequence[float],
    methods: Sequence[str],
    scopes: Sequence[str],
    front: Sequence[int],
    *,
    hollow: Sequence[bool] | None = None,
    reference: tuple[float, float] | None = (0.0, 0.0),
    xlabel: str = "gap_purity (reference purity - purity)",
    ylabel: str = "gap_loss (val_loss - reference val_loss)",
    title: str = "loss gap vs purity gap (lower-left is better)",
) -> Figure:
    """One point per trial (colour = method, marker = scope), the Pareto front ``front``
    (indices into the points) joined and ringed, the reference router as a star.

    ``hollow`` points (e.g. expert choice, whose loss is not comparable) are drawn unfilled.
    """
    n = len(x)
    if not (len(y) == len(methods) == len(scopes) == n):
        raise ValueError("pareto_plot needs x, y, methods and scopes of the same length")
    hollow = list(hollow) if hollow is not None else [False] * n
    fig = new_figure(9.0, 5.5)
    ax = fig.add_subplot()
    for i in range(n):
        colour = method_color(methods[i])
        ax.scatter([x[i]], [y[i]], marker=_scope_marker(scopes[i]), s=45, zorder=3,
                   facecolors="none" if hollow[i] else [colour], edgecolors=[colour])
    extra = []
    if front:
        from matplotlib.lines import Line2D

        fx, fy = [x[i] for i in front], [y[i] for i in front]
        ax.plot(fx, fy, color="crimson", linewidth=1.2, drawstyle="steps-post", zorder=2)
        ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="crimson", linewidths=1.5, zorder=4)
        extra.append(Line2D([], [], color="crimson", marker="o", markerfacecolor="none",
                            label="Pareto front"))
    if reference is not None:
        from matplotlib.lines import Line2D

        ax.scatter([reference[0]], [reference[1]], marker="*", s=260, color="gold",
                   edgecolors="black", zorder=5)
        extra.append(Line2D([], [], color="gold", marker="*", markeredgecolor="black",
                            markersize=12, linestyle="", label="reference router"))
    if any(hollow):
        from matplotlib.lines import Line2D

        extra.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="",
                            label="loss not comparable"))
    ax.axhline(0.0, color="0.7", linewidth=0.8, zorder=1)
    ax.axvline(0.0, color="0.7", linewidth=0.8, zorder=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _method_scope_legends(ax, methods, scopes, extra)
    return fig


def learning_curves(
    curves: Sequence[tuple[str, str, str, Sequence[int], Sequence[float]]],
    *,
    metric: str = naming.PURITY,
    reference: float | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per method; per series each run thin and the series mean bold.

    ``curves`` holds ``(method, scope, series, steps, values)`` per run; ``series`` names the
    line within the method's panel (the scope, or the scope plus whatever else sets the cell
    apart, e.g. a capacity). Colour is the scope's, the line style tells a scope's series
    apart. The mean at a step averages the runs that logged that step. ``reference`` draws the
    reference router's final value.
    """
    if not curves:
        raise ValueError("learning_curves needs at least one curve")
    methods = sorted({c[0] for c in curves}, key=method_rank)
    columns = min(3, len(methods))
    rows = int(np.ceil(len(methods) / columns))
    fig = new_figure(4.2 * columns + 1.5, 3.3 * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True)
    styles = ("-", "--", ":", "-.")
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, methods):
        mine = [c for c in curves if c[0] == method]
        series = sorted({(c[1], c[2]) for c in mine}, key=lambda k: (scope_rank(k[0]), k))
        used_per_scope: dict[str, int] = {}
        for scope, label in series:
            colour = _SCOPE_COLOURS.get(parse_scope_label(scope)[0], "tab:grey")
            style = styles[used_per_scope.get(scope, 0) % len(styles)]
            used_per_scope[scope] = used_per_scope.get(scope, 0) + 1
            by_step: dict[int, list[float]] = {}
            runs = [c for c in mine if (c[1], c[2]) == (scope, label)]
            for *_, steps, values in runs:
                ax.plot(steps, values, color=colour, alpha=0.3, linewidth=0.8, linestyle=style)
                for step, value in zip(steps, values):
                    by_step.setdefault(int(step), []).append(float(value))
            steps_sorted = sorted(by_step)
            ax.plot(steps_sorted, [np.mean(by_step[k]) for k in steps_sorted], color=colour,
                    linewidth=2.2, linestyle=style, label=f"{label} (n={len(runs)})")
        if reference is not None and np.isfinite(reference):
            ax.axhline(reference, color="black", linestyle="--", linewidth=1.0, label="reference")
        ax.set_title(method)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or f"{metric} during training (thin: runs, bold: mean per series)")
    return fig


def interval_bars(
    bars: Sequence[tuple[str, str, float, float | None, int]],
    *,
    ylabel: str = naming.PURITY,
    reference: float | None = None,
    title: str | None = None,
) -> Figure:
    """Bars of means with confidence-interval error bars, coloured by method.

    ``bars`` holds ``(label, method, mean, half_width, n)``; a bar with no interval (n=1) gets
    no error bar and an ``n=1`` note instead.
    """
    if not bars:
        raise ValueError("interval_bars needs at least one bar")
    fig = new_figure(max(5.0, 0.75 * len(bars) + 2.0), 4.8)
    ax = fig.add_subplot()
    positions = np.arange(len(bars))
    for pos, (label, method, mean, half_width, n) in zip(positions, bars):
        ax.bar([pos], [mean], color=method_color(method), edgecolor="black", linewidth=0.5)
        if half_width is not None:
            ax.errorbar([pos], [mean], yerr=[half_width], color="black", capsize=4, linewidth=1.2)
        top = mean + (half_width or 0.0) if mean >= 0 else mean
        ax.annotate(f"n={n}", (pos, top), textcoords="offset points", xytext=(0, 3),
                    ha="center", fontsize=7)
    if reference is not None and np.isfinite(reference):
        ax.axhline(reference, color="black", linestyle="--", linewidth=1.0)
        ax.annotate("reference router", (1.0, reference), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(-3, 3), ha="right", fontsize=8)
    crowded = len(bars) > 8
    ax.set_xticks(list(positions), labels=[b[0] for b in bars], rotation=45 if crowded else 0,
                  ha="right" if crowded else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"mean {ylabel} per method x scope\n(95% CI over seeds)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def window_curve(
    series: Mapping[str, Sequence[tuple[int, float, float | None, int]]],
    *,
    ylabel: str = naming.PURITY,
    reference: float | None = None,
    step_sequences: int | None = None,
    title: str | None = None,
) -> Figure:
    """The balance-window sweep: the metric against the window size (sequences, log scale).

    ``series`` maps a label (method, and whatever else sets a series apart) to points
    ``(window, mean, half_width, n)``; half_width None draws no error bar (n=1).
    ``step_sequences`` marks the global batch of one worker.
    """
    if not series:
        raise ValueError("window_curve needs at least one series")
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    for label, points in series.items():
        pts = sorted(points)
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [p[1] for p in pts],
                    yerr=[p[2] if p[2] is not None else 0.0 for p in pts],
                    marker="o", capsize=4, linewidth=1.6,
                    label=f"{label} (n={_span(p[3] for p in pts)})")
    ax.set_xscale("log", base=2)
    windows = sorted({p[0] for pts in series.values() for p in pts})
    ax.set_xticks(windows, labels=[str(w) for w in windows])
    if step_sequences:
        ax.axvline(step_sequences, color="0.5", linestyle=":", linewidth=1.0)
        ax.annotate("global batch", (step_sequences, 0.02), xycoords=("data", "axes fraction"),
                    textcoords="offset points", xytext=(-3, 0), ha="right", fontsize=8)
    if reference is not None and np.isfinite(reference):
        ax.axhline(reference, color="black", linestyle="--", linewidth=1.0, label="reference")
    ax.set_xlabel("balance window (sequences; 1 = sequence scope)")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} against the LBL balance window (95% CI over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def _span(values) -> str:
    values = list(values)
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"
