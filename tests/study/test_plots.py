"""Routing heatmaps render to real image files without pyplot."""

import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from study.run.heatmaps import (
    domain_shares,
    expert_order,
    heatmaps_side_by_side,
    routing_heatmap,
    save_figure,
)

DOMAINS = ["english", "german", "python"]


def specialised_table() -> np.ndarray:
    # Experts numbered out of domain order, expert 4 unused.
    return np.array([
        [0, 0, 9],   # python
        [8, 1, 0],   # english
        [0, 7, 0],   # german
        [6, 0, 0],   # english
        [0, 0, 0],   # dead
        [0, 2, 5],   # python
    ], dtype=float)


def test_domain_shares_are_column_normalised():
    shares_ED = domain_shares(specialised_table())
    np.testing.assert_allclose(shares_ED.sum(axis=0), [1.0, 1.0, 1.0])
    assert shares_ED[1, 0] == pytest.approx(8 / 14)
    # A domain with no slots gives a zero column, not nan.
    np.testing.assert_array_equal(domain_shares(np.zeros((2, 2))), np.zeros((2, 2)))


def test_experts_ordered_by_majority_domain_into_a_block_diagonal():
    order = expert_order(specialised_table())
    # english: 1 (8/14) before 3 (6/14); german: 2; python: 0 (9/14) before 5; dead expert last.
    assert order.tolist() == [1, 3, 2, 0, 5, 4]
    majority = domain_shares(specialised_table())[order[:-1]].argmax(axis=1)
    assert np.all(np.diff(majority) >= 0)


def test_heatmap_png_is_written(tmp_path):
    fig = routing_heatmap(specialised_table(), DOMAINS, "lbl / global_batch, layer 0")
    assert isinstance(fig, Figure)
    path = save_figure(fig, tmp_path / "figs" / "heatmap.png")
    assert path.stat().st_size > 1000
    pixels = imread(path)
    height, width = pixels.shape[:2]
    assert 200 <= width <= 3000 and 200 <= height <= 3000
    # Not a blank canvas: the heatmap has many distinct colours.
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20


def test_side_by_side_has_one_panel_per_table_and_is_wider(tmp_path):
    reference = np.kron(np.eye(3), np.ones((2, 1))) * 10  # 6 experts, 2 per domain
    tables = [("reference", reference), ("learned", specialised_table()),
              ("collapsed", np.tile([5.0, 5.0, 5.0], (6, 1)))]
    fig = heatmaps_side_by_side(tables, DOMAINS)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.splitlines()[0] for t in titles] == ["reference", "learned", "collapsed"]
    assert "purity 1.000" in titles[0]

    single = imread(save_figure(routing_heatmap(reference, DOMAINS, "r"), tmp_path / "one.png"))
    triple = imread(save_figure(fig, tmp_path / "three.png"))
    assert triple.shape[1] > 2 * single.shape[1]


def test_empty_table_still_renders(tmp_path):
    fig = routing_heatmap(np.zeros((4, 3)), DOMAINS, "nothing routed")
    assert "no routed slots" in fig.axes[0].get_title()
    assert save_figure(fig, tmp_path / "empty.png").stat().st_size > 0


def test_mismatched_domains_are_rejected():
    with pytest.raises(ValueError, match="domain names"):
        routing_heatmap(np.ones((4, 2)), DOMAINS, "x")
    with pytest.raises(ValueError, match="at least one"):
        heatmaps_side_by_side([], DOMAINS)


def test_pyplot_is_not_used():
    routing_heatmap(specialised_table(), DOMAINS, "x")
    assert "matplotlib.pyplot" not in sys.modules or not _pyplot_has_figures()


def _pyplot_has_figures() -> bool:
    import matplotlib.pyplot as plt

    return bool(plt.get_fignums())


def test_a_runs_heatmap_titles_match_its_logged_purities():
    """One panel per layer, never pooled across layers (expert 3 of layer 0 is not expert 3 of
    layer 1): each panel's purity is the run's purity/layer<i>, the figure's their mean, the
    run's purity."""
    from study.run.heatmaps import layer_heatmaps
    from trainables.metrics import purity, routing_metrics

    layer0 = specialised_table()
    layer1 = layer0[::-1, [1, 2, 0]] * 0.5 + 1.0  # other experts, other domains, less pure
    n_LED = np.stack([layer0, layer1])
    logged = routing_metrics(n_LED)
    fig = layer_heatmaps(n_LED, DOMAINS)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"layer {i}\npurity {logged[f'purity/layer{i}']:.3f}" for i in range(2)]
    assert fig._suptitle.get_text() == f"purity {logged['purity']:.3f} (mean over layers)"
    pooled = purity(n_LED.sum(axis=0))
    assert f"{pooled:.3f}" != f"{logged['purity']:.3f}"  # what the pooled title used to say
