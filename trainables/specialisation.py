"""Specialisation metrics that separate what routing *learned* from what the token gives away.

Raw purity mixes three things: what the current byte alone tells (Chinese UTF-8 bytes >= 0x80
never occur in the other default domains, so any linear router separates them from the first
step), what the initial router happens to do, and what training taught it. The metrics here
control for the first two; the step-0 evaluation of every trial (``<metric>_init``,
``<metric>_lift``) controls for initialisation.

Inputs, all counts of routed slots on the evaluation set (a token with top-k routing gives k
slots; capacity drops included, as in ``trainables.metrics``):

- ``n_XED[x, e, d]``: slots of byte value ``x`` (the current token) of domain ``d`` sent to
  expert ``e``, one table per MoE layer;
- ``n_QE[q, e]``: slots of evaluation sequence ``q`` sent to expert ``e``, with ``domain_Q[q]``
  the sequence's domain.

Legend: X byte values (256), E experts, D domains, Q evaluation sequences.

Metrics (each in ``SPECIALISATION_METRICS``):

- ``cmi``: conditional mutual information I(E; D | X), chance-adjusted and normalised so the
  reference router scores 1 and a router that only follows the byte scores ~0 (may go slightly
  below 0, as an adjusted Rand index does);
- ``shared_purity`` (and ``shared_coverage``): purity over the byte values no domain dominates;
- ``excess_purity`` (and ``excess_purity_null_sd``): purity minus its mean under a null that
  shuffles domain labels across evaluation sequences;
- ``nmi_domain``: I(E; D) / H(D), the share of the domain's entropy the expert choice explains
  (reference router = 1, unlike ``nmi``'s geometric normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainables import metric_names as names
from trainables.metric_names import (  # noqa: F401 - the names these functions report under
    AUXILIARY_METRIC_NAMES, LIFT_METRIC_NAMES, SPECIALISATION_METRIC_NAMES, baseline_names,
)
from trainables.metrics import as_numpy, purity

SHARED_TOKEN_MAX_SHARE = 0.5
"""A byte value is shared when no domain holds more than this share of its occurrences."""
NULL_PERMUTATIONS = 200
"""Domain-label shuffles for the null of ``excess_purity`` (its mean has an error of about
null_sd / 14, well below the seed-to-seed spread)."""


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of a (possibly unnormalised, all-zero) count matrix."""
    total = p.sum(axis=-1, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p, dtype=np.float64), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, -q * np.log(q), 0.0)
    return terms.sum(axis=-1)


def conditional_mi_terms(n_XED) -> tuple[float, float, float]:
    """Plug-in I(E; D | X) and H(D | X) in nats, and the expected plug-in I under independence.

    Per byte value x with N_x slots: I_x = H_x(D) + H_x(E) - H_x(E, D), averaged with weights
    N_x / N. The bias term is the first-order expectation of the plug-in mutual information of
    an R_x x C_x table when E and D are independent given x, (R_x - 1)(C_x - 1) / (2 N_x)
    (Miller-Madow; R_x, C_x the experts and domains that occur with x), weighted the same way.
    Slots of one token go to k distinct experts, which makes cell counts slightly *less*
    variable than N_x independent slots, so the term is, if anything, a slight overestimate.
    """
    n_XED = as_numpy(n_XED)
    if n_XED.ndim != 3:
        raise ValueError(f"expected counts [X, E, D], got shape {n_XED.shape}")
    n_X = n_XED.sum(axis=(1, 2))
    total = n_X.sum()
    if total == 0:
        return float("nan"), float("nan"), float("nan")
    h_D = _entropy_rows(n_XED.sum(axis=1))
    h_E = _entropy_rows(n_XED.sum(axis=2))
    h_ED = _entropy_rows(n_XED.reshape(n_XED.shape[0], -1))
    weight = n_X / total
    mi = float((weight * (h_D + h_E - h_ED)).sum())
    rows = (n_XED.sum(axis=2) > 0).sum(axis=1)
    cols = (n_XED.sum(axis=1) > 0).sum(axis=1)
    present = n_X > 0
    bias = np.zeros_like(n_X, dtype=np.float64)
    bias[present] = (rows[present] - 1) * (cols[present] - 1) / (2.0 * n_X[present])
    return max(mi, 0.0), float((weight * h_D).sum()), float((weight * bias).sum())


def normalised_cmi(n_XED) -> float:
    """``(I(E; D | X) - B) / (H(D | X) - B)``, B the expected plug-in I under independence.

    The reference router's expert determines the domain, so I = H(D | X) and it scores exactly
    1; a router that is a function of the byte (or of anything independent of the domain given
    the byte) has I ~ B and scores ~0. This is chance adjustment in the manner of adjusted
    mutual information (Vinh et al., 2010), with the analytic first-order expectation for B.
    ``nan`` when the byte already tells the domain (H(D | X) <= B: nothing left to learn).
    """
    mi, h_cond, bias = conditional_mi_terms(n_XED)
    if not np.isfinite(mi) or h_cond - bias <= 0:
        return float("nan")
    return float((mi - bias) / (h_cond - bias))


def shared_tokens(n_XED, max_share: float = SHARED_TOKEN_MAX_SHARE) -> np.ndarray:
    """Boolean [X]: byte values that occur and of whose occurrences no domain holds more than
    ``max_share`` (counted in slots, which are k per token, so the shares are the tokens')."""
    occ_XD = as_numpy(n_XED).sum(axis=1)
    total_X = occ_XD.sum(axis=1)
    return (total_X > 0) & (occ_XD.max(axis=1) <= max_share * total_X)


def shared_token_purity(n_XED, max_share: float = SHARED_TOKEN_MAX_SHARE) -> tuple[float, float]:
    """Purity over the slots of shared byte values, and the share of all slots they are.

    On these bytes the token cannot tell the domain, so routing them by domain needs context.
    ``(nan, 0.0)`` when no byte value is shared.
    """
    n_XED = as_numpy(n_XED)
    shared = shared_tokens(n_XED, max_share)
    total = n_XED.sum()
    covered = n_XED[shared].sum()
    if total == 0:
        return float("nan"), float("nan")
    if covered == 0:
        return float("nan"), 0.0
    return purity(n_XED[shared].sum(axis=0)), float(covered / total)


def excess_purity(n_QE, domain_Q: Sequence[int], n_domains: int,
                  n_permutations: int = NULL_PERMUTATIONS, seed: int = 0) -> tuple[float, float, float]:
    """Purity minus its mean under shuffled domain labels, the null's mean and its spread.

    The null permutes the domain labels across evaluation *sequences*: each sequence keeps its
    own routing (so a router that sends whole sequences to few experts keeps that clumping),
    and only the link between sequence and domain is broken. Uniformly random routing scores
    0 in expectation; the reference router scores 1 - null mean.
    """
    n_QE = as_numpy(n_QE)
    domain_Q = np.asarray(domain_Q, dtype=np.int64)
    if n_QE.ndim != 2 or domain_Q.shape != (n_QE.shape[0],):
        raise ValueError(f"expected counts [Q, E] and Q domain labels, got {n_QE.shape}, {domain_Q.shape}")
    if n_QE.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    observed = purity(_by_domain(n_QE, domain_Q[None, :], n_domains)[0])
    rng = np.random.default_rng(seed)
    shuffled_PQ = np.stack([rng.permutation(domain_Q) for _ in range(n_permutations)])
    n_PED = _by_domain(n_QE, shuffled_PQ, n_domains)
    null_P = n_PED.max(axis=2).sum(axis=1) / n_QE.sum()
    return float(observed - null_P.mean()), float(null_P.mean()), float(null_P.std(ddof=1))


def _by_domain(n_QE: np.ndarray, domain_PQ: np.ndarray, n_domains: int) -> np.ndarray:
    """n[p, e, d]: the sequences' counts summed per domain, for each labelling p."""
    onehot_PQD = np.eye(n_domains)[domain_PQ]
    return np.einsum("qe,pqd->ped", n_QE, onehot_PQD)


def domain_nmi(n_ED) -> float:
    """``I(E; D) / H(D)``: 1 when the expert determines the domain (the reference router), 0
    when independent. (``trainables.metrics.nmi`` divides by sqrt(H(E) H(D)) instead, which the
    reference router does not reach with several experts per domain.)"""
    n_ED = as_numpy(n_ED)
    total = n_ED.sum()
    if total == 0:
        return float("nan")
    h_D = float(_entropy_rows(n_ED.sum(axis=0)[None, :])[0])
    if h_D == 0:
        return float("nan")
    h_E = float(_entropy_rows(n_ED.sum(axis=1)[None, :])[0])
    h_ED = float(_entropy_rows(n_ED.reshape(1, -1))[0])
    return float(np.clip((h_D + h_E - h_ED) / h_D, 0.0, 1.0))


def layer_specialisation(n_XED, n_QE, domain_Q: Sequence[int]) -> dict[str, float]:
    """Every metric of this module for one layer, keyed by its user-facing name."""
    n_XED = as_numpy(n_XED)
    shared, coverage = shared_token_purity(n_XED)
    excess, _, null_sd = excess_purity(n_QE, domain_Q, n_XED.shape[2])
    return {
        names.CMI: normalised_cmi(n_XED),
        names.SHARED_PURITY: shared,
        names.EXCESS_PURITY: excess,
        names.NMI_DOMAIN: domain_nmi(n_XED.sum(axis=0)),
        names.SHARED_COVERAGE: coverage,
        names.EXCESS_PURITY_NULL_SD: null_sd,
    }


def specialisation_metrics(n_LXED, n_LQE, domain_Q: Sequence[int]) -> dict[str, float]:
    """Per layer as ``<name>/layer<i>`` and the mean over layers as ``<name>``."""
    n_LXED, n_LQE = as_numpy(n_LXED), as_numpy(n_LQE)
    per_layer = [layer_specialisation(n_LXED[i], n_LQE[i], domain_Q) for i in range(n_LXED.shape[0])]
    out: dict[str, float] = {}
    for name in (*SPECIALISATION_METRIC_NAMES, *AUXILIARY_METRIC_NAMES):
        values = [layer[name] for layer in per_layer]
        out[name] = float(np.mean(values))
        out.update({f"{name}/layer{i}": v for i, v in enumerate(values)})
    return out


# -- step-0 baselines ---------------------------------------------------------------------------
def baseline_metrics(metrics: dict[str, float], init: dict[str, float]) -> dict[str, float]:
    """``<name>_init`` and ``<name>_lift`` for every lift metric (mean and per layer) that both
    the current and the step-0 evaluation have."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if name.partition("/")[0] in LIFT_METRIC_NAMES and name in init:
            init_name, lift_name = baseline_names(name)
            out[init_name] = float(init[name])
            out[lift_name] = float(value) - float(init[name])
    return out
