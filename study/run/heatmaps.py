"""Routing heatmaps: which experts each domain's slots went to (drawn for every trial by the
tracker, and side by side in the report).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through
``pyplot``: no global figure registry to leak memory across the many trials of a study, no
dependence on a display, and safe to call from worker processes.

Cells are *column-normalised*: cell (e, d) is the share of domain d's routed slots that went to
expert e, so every domain column sums to 1 and domains of different size compare directly.
Experts (rows) are ordered by their majority domain, strongest first within a domain, so a
specialised routing shows as a block diagonal; experts that got no slot come last. Row labels
keep the experts' original indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainables.metrics import as_numpy, purity

_CMAP = "viridis"
_MAX_LABELLED_EXPERTS = 64  # beyond this, row labels would overlap: label every n-th row


def domain_shares(n_ED) -> np.ndarray:
    """Column-normalised shares [E, D]: each domain's routed slots split over the experts."""
    n_ED = as_numpy(n_ED)
    totals_D = n_ED.sum(axis=0, keepdims=True)
    return np.divide(n_ED, totals_D, out=np.zeros_like(n_ED), where=totals_D > 0)


def expert_order(n_ED) -> np.ndarray:
    """Expert indices sorted by majority domain, then by share of that domain (descending).

    Experts that received no slot at all are put last.
    """
    shares_ED = domain_shares(n_ED)
    majority_E = shares_ED.argmax(axis=1)
    strength_E = shares_ED.max(axis=1)
    unused_E = as_numpy(n_ED).sum(axis=1) == 0
    # np.lexsort sorts by the last key first.
    return np.lexsort((-strength_E, majority_E, unused_E))


def _check(n_ED, domains: Sequence[str]) -> np.ndarray:
    n_ED = as_numpy(n_ED)
    if n_ED.ndim != 2:
        raise ValueError(f"expected an expert x domain table [E, D], got shape {n_ED.shape}")
    if len(domains) != n_ED.shape[1]:
        raise ValueError(f"{len(domains)} domain names for {n_ED.shape[1]} domain columns")
    return n_ED


def _draw(ax, n_ED: np.ndarray, domains: Sequence[str], title: str, vmax: float):
    order_E = expert_order(n_ED)
    shares_ED = domain_shares(n_ED)[order_E]
    image = ax.imshow(shares_ED, aspect="auto", cmap=_CMAP, vmin=0.0, vmax=vmax,
                      interpolation="nearest")
    ax.set_xticks(range(len(domains)), labels=list(domains), rotation=45, ha="right")
    step = max(1, int(np.ceil(len(order_E) / _MAX_LABELLED_EXPERTS)))
    rows = range(0, len(order_E), step)
    ax.set_yticks(list(rows), labels=[f"e{order_E[r]}" for r in rows],
                  fontsize=8 if len(order_E) > 16 else 10)
    ax.set_xlabel("domain")
    ax.set_ylabel("expert (sorted by majority domain)")
    p = purity(n_ED)  # nan when nothing was routed
    ax.set_title(f"{title}\npurity {p:.3f}" if np.isfinite(p) else f"{title}\nno routed slots")
    return image


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _size(n_experts: int, n_domains: int) -> tuple[float, float]:
    return 1.5 + 0.5 * n_domains, 2.0 + 0.22 * min(n_experts, 80)


def routing_heatmap(n_ED, domains: Sequence[str], title: str) -> Figure:
    """Heatmap of one layer's routing: experts (rows) x domains (columns), column shares."""
    n_ED = _check(n_ED, domains)
    fig = new_figure(*_size(*n_ED.shape))
    ax = fig.add_subplot()
    vmax = max(float(domain_shares(n_ED).max()), 1e-12)
    image = _draw(ax, n_ED, domains, title, vmax)
    fig.colorbar(image, ax=ax, label="share of the domain's routed slots")
    return fig


def layer_heatmaps(n_LED, domains: Sequence[str]) -> Figure:
    """One run's routing, one panel per MoE layer, each titled with that layer's purity (the
    run's ``purity/layer<i>``) and the figure with their mean (the run's ``purity``). Layers are
    never pooled: expert 3 of layer 0 and expert 3 of layer 1 are different experts."""
    n_LED = as_numpy(n_LED)
    if n_LED.ndim != 3:
        raise ValueError(f"expected a layer x expert x domain table [L, E, D], got shape {n_LED.shape}")
    fig = heatmaps_side_by_side([(f"layer {i}", n_LED[i]) for i in range(n_LED.shape[0])], domains)
    layer_purities = [purity(n_ED) for n_ED in n_LED]
    if all(np.isfinite(layer_purities)):
        fig.suptitle(f"purity {np.mean(layer_purities):.3f} (mean over layers)")
    return fig


def heatmaps_side_by_side(
    tables: Sequence[tuple[str, object]], domains: Sequence[str]
) -> Figure:
    """One heatmap per ``(title, n_ED)`` in a row, on one shared colour scale.

    Each panel orders its own experts (expert numbers are not comparable across runs).
    """
    if not tables:
        raise ValueError("heatmaps_side_by_side needs at least one table")
    checked = [(title, _check(n_ED, domains)) for title, n_ED in tables]
    vmax = max(max(float(domain_shares(n_ED).max()) for _, n_ED in checked), 1e-12)
    width, height = _size(max(n.shape[0] for _, n in checked), len(domains))
    fig = new_figure(width * len(checked) + 1.0, height)
    axes = fig.subplots(1, len(checked), squeeze=False)[0]
    image = None
    for ax, (title, n_ED) in zip(axes, checked):
        image = _draw(ax, n_ED, domains, title, vmax)
    fig.colorbar(image, ax=list(axes), label="share of the domain's routed slots")
    return fig


def save_figure(fig: Figure, path: str | PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` (format from the file suffix, e.g. ``.png``, ``.svg``), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
