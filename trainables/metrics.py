"""Specialisation and utilisation metrics of a routing, as pure functions of a count table.

Everything here is computed from ``n_ED[e, d]``: how many routed slots of domain ``d`` went to
expert ``e`` on the evaluation set (one token with top-k routing contributes k slots). ``n_LED``
stacks one such table per MoE layer. Counts are the router's *assignments*: with a capacity, a
slot the router chose for an expert but the capacity then dropped still counts in ``n`` (the
choice is what reveals specialisation), and the drops are reported on their own by
``dropped_fraction``.

Conventions shared by every function:

- Inputs may be numpy arrays, nested lists or torch tensors (converted with ``.detach().cpu()``);
  counts must be finite and non-negative.
- A table with no routed slots at all gives ``nan``: nothing was measured.
- "Worse than the reference" is positive in every gap (``gaps``).

Legend: E experts, D domains, L MoE layers, G experts per reference group (default ``E // D``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from trainables import metric_names as names
from trainables.metric_names import GAPS as _GAPS
from trainables.metric_names import LAYER_METRIC_NAMES  # noqa: F401 - the names computed here

DEFAULT_DEAD_THRESHOLD = 0.1
"""An expert is dead when its load share is below this fraction of the fair share ``1/E``."""


def as_numpy(counts) -> np.ndarray:
    """Counts as a float64 numpy array (torch tensors are detached and moved to the CPU)."""
    if hasattr(counts, "detach"):  # torch.Tensor, without importing torch here
        counts = counts.detach().cpu().numpy()
    array = np.asarray(counts, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("routing counts must be finite")
    if np.any(array < 0):
        raise ValueError("routing counts must be non-negative")
    return array


def _table(n_ED) -> np.ndarray:
    n_ED = as_numpy(n_ED)
    if n_ED.ndim != 2 or n_ED.shape[0] == 0 or n_ED.shape[1] == 0:
        raise ValueError(f"expected an expert x domain table [E, D], got shape {n_ED.shape}")
    return n_ED


def _entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats of a probability vector (0 log 0 = 0)."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def purity(n_ED) -> float:
    """Share of routed slots that landed on their expert's majority domain.

    ``sum_e max_d n[e, d] / sum n``. The reference router scores 1; a router blind to domains
    scores about the largest domain share (1/D on a balanced mix).
    """
    n_ED = _table(n_ED)
    total = n_ED.sum()
    if total == 0:
        return float("nan")
    return float(n_ED.max(axis=1).sum() / total)


def nmi(n_ED) -> float:
    """Normalised mutual information between domain and expert, in [0, 1].

    The joint distribution is ``p[e, d] = n[e, d] / sum n``. Normalisation is the geometric mean
    of the marginal entropies, ``I(E; D) / sqrt(H(E) H(D))`` (the convention of Strehl & Ghosh):
    1 when expert and domain determine each other, 0 when they are independent.

    Note that with more experts than domains the reference router does *not* reach 1: spreading
    each domain uniformly over its G experts gives ``I = H(D) = log D`` and ``H(E) = log(D G)``,
    so ``nmi = sqrt(log D / log(D G))`` (about 0.75 for 6 domains x 4 experts each), although
    the expert tells the domain perfectly: compare against the reference run (``gap_nmi``).

    Degenerate cases: if both marginals have zero entropy (one expert and one domain in use) the
    labels agree perfectly and the result is 1; if exactly one has zero entropy, knowing one says
    nothing about the other and the result is 0 (as in scikit-learn).
    """
    n_ED = _table(n_ED)
    total = n_ED.sum()
    if total == 0:
        return float("nan")
    p_ED = n_ED / total
    p_E = p_ED.sum(axis=1)
    p_D = p_ED.sum(axis=0)
    h_E, h_D = _entropy(p_E), _entropy(p_D)
    if h_E == 0 and h_D == 0:
        return 1.0
    if h_E == 0 or h_D == 0:
        return 0.0
    nonzero = p_ED > 0
    independent_ED = np.outer(p_E, p_D)
    mutual_information = float(
        (p_ED[nonzero] * np.log(p_ED[nonzero] / independent_ED[nonzero])).sum()
    )
    # Rounding can push I a hair outside [0, sqrt(H(E) H(D))].
    return float(np.clip(mutual_information / np.sqrt(h_E * h_D), 0.0, 1.0))


def reference_agreement(n_ED, experts_per_group: int | None = None) -> float:
    """Share of routed slots inside the expert group the reference router gives their domain.

    The reference router gives domain d its own group of G experts (``experts_per_group``,
    default ``E // D``). Learned experts carry no domain names, so they are first matched to the
    groups optimally: each group becomes G columns of an ``E x (D*G)`` assignment problem whose
    value for expert e in a column of domain d is ``n[e, d]``, solved exactly (Hungarian method,
    ``scipy.optimize.linear_sum_assignment``) to maximise the matched slots. Experts beyond
    ``D*G`` (when D does not divide E) belong to no group, so their slots never agree.

    Reference routing scores 1.0 whatever the numbering of its experts.
    """
    n_ED = _table(n_ED)
    n_experts, n_domains = n_ED.shape
    group_size = n_experts // n_domains if experts_per_group is None else int(experts_per_group)
    if group_size < 1 or group_size * n_domains > n_experts:
        raise ValueError(
            f"reference groups of {group_size} experts for {n_domains} domains do not fit in "
            f"{n_experts} experts (need 1 <= experts_per_group <= E // D = "
            f"{n_experts // n_domains})"
        )
    total = n_ED.sum()
    if total == 0:
        return float("nan")
    # Column j of the assignment problem is seat j % G of domain j // G's group.
    slots_E_DG = np.repeat(n_ED, group_size, axis=1)
    experts, seats = linear_sum_assignment(slots_E_DG, maximize=True)
    return float(slots_E_DG[experts, seats].sum() / total)


def load_distribution(n_ED) -> np.ndarray:
    """Each expert's share of all routed slots, shape [E] (all ``nan`` if nothing was routed)."""
    n_ED = _table(n_ED)
    load_E = n_ED.sum(axis=1)
    total = load_E.sum()
    if total == 0:
        return np.full(load_E.shape, np.nan)
    return load_E / total


def load_entropy(n_ED) -> float:
    """Normalised entropy of the expert load, ``H(load) / log E``: 1 = uniform, 0 = one expert.

    A layer with a single expert is trivially uniform and scores 1.
    """
    share_E = load_distribution(n_ED)
    if np.isnan(share_E).any():
        return float("nan")
    if share_E.size == 1:
        return 1.0
    return float(np.clip(_entropy(share_E) / np.log(share_E.size), 0.0, 1.0))


def max_vio(n_ED) -> float:
    """Maximal load violation ``(max load - mean load) / mean load``: 0 = perfectly balanced.

    With E experts it ranges from 0 to E - 1 (everything on one expert).
    """
    share_E = load_distribution(n_ED)
    if np.isnan(share_E).any():
        return float("nan")
    mean_share = 1.0 / share_E.size
    return float((share_E.max() - mean_share) / mean_share)


def dead_expert_fraction(n_ED, threshold: float = DEFAULT_DEAD_THRESHOLD) -> float:
    """Fraction of experts that receive (almost) no load.

    An expert is dead when its share of the routed slots is strictly below
    ``threshold * (1 / E)``, i.e. below ``threshold`` times the share it would get under perfect
    balance. The default ``threshold = 0.1`` calls an expert dead when it gets less than a tenth
    of its fair share (with 24 experts: less than 0.42 % of the slots). ``threshold = 0`` counts
    nothing as dead; a tiny positive threshold (e.g. 1e-9) counts only experts that got no slot.
    """
    if threshold < 0:
        raise ValueError(f"dead-expert threshold must be >= 0, got {threshold}")
    share_E = load_distribution(n_ED)
    if np.isnan(share_E).any():
        return float("nan")
    return float(np.mean(share_E < threshold / share_E.size))


def dropped_fraction(dropped: float, routed: float) -> float:
    """Share of routed slots that a capacity limit dropped.

    ``routed`` counts every slot the router assigned (tokens x k, i.e. ``n.sum()``), including
    those later dropped; ``dropped`` counts the dropped ones. 0 for a dropless layer; ``nan`` if
    nothing was routed.
    """
    dropped, routed = float(dropped), float(routed)
    if dropped < 0 or routed < 0:
        raise ValueError(f"slot counts must be non-negative (dropped={dropped}, routed={routed})")
    if dropped > routed:
        raise ValueError(
            f"dropped slots ({dropped}) exceed routed slots ({routed}): count drops among the "
            "router's assignments"
        )
    if routed == 0:
        return float("nan")
    return dropped / routed


def layer_metrics(
    n_ED,
    *,
    experts_per_group: int | None = None,
    dropped: float = 0.0,
    dead_threshold: float = DEFAULT_DEAD_THRESHOLD,
) -> dict[str, float]:
    """All routing metrics of one MoE layer, keyed by their user-facing names."""
    n_ED = _table(n_ED)
    return {
        names.PURITY: purity(n_ED),
        names.NMI: nmi(n_ED),
        names.REFERENCE_AGREEMENT: reference_agreement(n_ED, experts_per_group),
        names.LOAD_ENTROPY: load_entropy(n_ED),
        names.MAX_VIO: max_vio(n_ED),
        names.DEAD_EXPERT_FRACTION: dead_expert_fraction(n_ED, dead_threshold),
        names.DROPPED_FRACTION: dropped_fraction(dropped, n_ED.sum()),
    }


def routing_metrics(
    n_LED,
    dropped_L: Sequence[float] | None = None,
    experts_per_group: int | None = None,
    dead_threshold: float = DEFAULT_DEAD_THRESHOLD,
) -> dict[str, float]:
    """Metrics of every layer as ``<name>/layer<i>`` (i from 0) plus their mean as ``<name>``.

    ``n_LED`` is one count table per MoE layer, shape [L, E, D]; ``dropped_L`` the dropped slots
    per layer (default none). The mean is the plain mean over layers, so a layer that measured
    nothing (``nan``) makes the mean ``nan`` too rather than hiding it.
    """
    n_LED = as_numpy(n_LED)
    if n_LED.ndim != 3 or n_LED.shape[0] == 0:
        raise ValueError(f"expected count tables [L, E, D] with L >= 1, got shape {n_LED.shape}")
    n_layers = n_LED.shape[0]
    if dropped_L is None:
        dropped_L = [0.0] * n_layers
    dropped_L = as_numpy(dropped_L).reshape(-1)
    if dropped_L.shape[0] != n_layers:
        raise ValueError(f"dropped_L has {dropped_L.shape[0]} entries for {n_layers} layers")

    per_layer = [
        layer_metrics(
            n_LED[i], experts_per_group=experts_per_group, dropped=dropped_L[i],
            dead_threshold=dead_threshold,
        )
        for i in range(n_layers)
    ]
    metrics: dict[str, float] = {}
    for name in LAYER_METRIC_NAMES:
        values = [layer[name] for layer in per_layer]
        metrics[name] = float(np.mean(values))
        for i, value in enumerate(values):
            metrics[f"{name}/layer{i}"] = value
    return metrics


def gaps(metrics: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """Gaps of a run to the reference-router run; positive = worse than the reference.

    ``gap_loss = val_loss - reference val_loss``; ``gap_purity``, ``gap_nmi`` and
    ``gap_reference_agreement`` are ``reference value - value``. A gap is left out when either
    side lacks its metric (e.g. a run that logged no loss still gets its purity gap).
    """
    result: dict[str, float] = {}
    for gap_name, metric_name, sign in _GAPS:
        if metric_name in metrics and metric_name in reference:
            result[gap_name] = sign * (float(metrics[metric_name]) - float(reference[metric_name]))
    return result
