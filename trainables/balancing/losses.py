"""Auxiliary balancing losses and the expert-bias update (LBL, z-loss, EB).

LBL is the Switch/GShard loss ``E * sum_i f_i * P_i`` without its coefficient alpha (the router
multiplies). ``f`` is a fraction of routed slots and may come from a wider scope than ``P``
(counts accumulated over micro-batches and workers, arXiv 2501.11873 Algorithm 1), so it is
passed in as counts and never carries gradient; ``P`` is the local mean router probability and is
where the gradient flows.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expert_counts(topk_ids_TK: Tensor, n_experts: int, keep_TK: Tensor | None = None) -> Tensor:
    """Routed slots per expert as float ``counts_E`` (only kept slots when ``keep_TK`` is given)."""
    ids = topk_ids_TK.reshape(-1).long()
    ones = torch.ones_like(ids) if keep_TK is None else keep_TK.reshape(-1).long()
    counts_E = torch.zeros(n_experts, dtype=torch.long, device=ids.device).scatter_add_(0, ids, ones)
    return counts_E.float()


def lbl_loss(probs_TE: Tensor, counts_E: Tensor, k: int) -> Tensor:
    """Load-balancing loss ``E * sum_i f_i * P_i`` (alpha not included).

    f_i = counts_E[i] / counts_E.sum(): the share of routed slots of expert i, counted over the
    caller's scope (no gradient). P_i = probs_TE.mean(0): local and differentiable. Because f is
    normalised by its own sum, the value does not depend on k (routing k slots per token gives
    the same f); ``k`` is checked only, so callers state what they routed. Uniform routing gives
    exactly 1; any imbalance that the router's probabilities follow gives more.
    """
    n_experts = probs_TE.shape[-1]
    if not 1 <= k <= n_experts:
        raise ValueError(f"k={k} must be between 1 and the number of experts {n_experts}")
    if counts_E.shape != (n_experts,):
        raise ValueError(f"counts_E has shape {tuple(counts_E.shape)}, expected ({n_experts},)")
    counts_E = counts_E.detach().to(probs_TE.dtype)
    total = counts_E.sum()
    # No slot routed anywhere in scope (e.g. empty batch): a zero loss that keeps the graph.
    f_E = counts_E / total.clamp_min(1.0)
    P_E = probs_TE.mean(0)
    return n_experts * (f_E * P_E).sum()


def lbl_loss_per_sequence(probs_BLE: Tensor, topk_ids_BLK: Tensor) -> Tensor:
    """Sequence-scope LBL: f and P computed within each sequence, then the mean over sequences."""
    n_seq, seq_len, n_experts = probs_BLE.shape
    k = topk_ids_BLK.shape[-1]
    ids_BN = topk_ids_BLK.reshape(n_seq, seq_len * k).long()
    counts_BE = torch.zeros(n_seq, n_experts, dtype=probs_BLE.dtype, device=probs_BLE.device)
    counts_BE.scatter_add_(1, ids_BN, torch.ones_like(ids_BN, dtype=probs_BLE.dtype))
    f_BE = counts_BE / (seq_len * k)
    P_BE = probs_BLE.mean(1)
    return n_experts * (f_BE * P_BE).sum(1).mean()


def z_loss(logits_TE: Tensor) -> Tensor:
    """Router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2; keeps logits small."""
    return torch.logsumexp(logits_TE.float(), dim=-1).square().mean()


def expert_bias_update(load_E: Tensor, rate: float, center: bool = False) -> Tensor:
    """Aux-loss-free bias step (arXiv 2408.15664): ``delta_b = rate * sign(mean(load) - load)``.

    Underloaded experts get +rate, overloaded ones -rate, exactly balanced ones 0. The caller adds
    the delta to its bias once per optimizer step, with load counted over its scope.
    ``center=True`` subtracts the mean delta (torchtitan's variant): top-k ranking is unchanged,
    but the bias cannot drift as a whole.
    """
    load_E = load_E.detach().float()
    delta_E = rate * torch.sign(load_E.mean() - load_E)
    if center:
        delta_E = delta_E - delta_E.mean()
    return delta_E
