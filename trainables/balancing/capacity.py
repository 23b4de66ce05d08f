"""Expert capacity: token dropping for top-k routing, and expert-choice routing."""

from __future__ import annotations

import torch
from torch import Tensor

DROP_POLICIES = ("probs", "position")


def rank_within_group(group_N: Tensor, priority_order_N: Tensor, n_groups: int) -> Tensor:
    """For items listed in ``priority_order_N`` (a permutation, first = most important), the rank
    of each item among the items of its own group: 0 for the group's most important item."""
    group_in_order = group_N[priority_order_N]
    # A stable sort by group keeps the priority order inside every group.
    by_group = torch.sort(group_in_order, stable=True).indices
    items_sorted = priority_order_N[by_group]
    sizes_G = torch.bincount(group_N, minlength=n_groups)
    starts_G = torch.cumsum(sizes_G, 0) - sizes_G
    rank_sorted = torch.arange(group_N.numel(), device=group_N.device) - starts_G[group_N[items_sorted]]
    rank_N = torch.empty_like(rank_sorted)
    rank_N[items_sorted] = rank_sorted
    return rank_N


def capacity_keep_mask(
    topk_ids_TK: Tensor,
    topk_scores_TK: Tensor,
    n_experts: int,
    capacity: int,
    policy: str,
) -> Tensor:
    """``keep_TK``: which assignments survive when every expert takes at most ``capacity``.

    ``policy="probs"`` drops an over-full expert's lowest-score assignments (Megatron's default);
    ``"position"`` drops its latest ones: highest token index, and within a token the later k slot.
    Ties in score are broken by position, so the result is deterministic.
    """
    if policy not in DROP_POLICIES:
        raise ValueError(f"drop policy {policy!r} is not one of {DROP_POLICIES}")
    if capacity < 0:
        raise ValueError(f"capacity={capacity} must be >= 0")
    ids_N = topk_ids_TK.reshape(-1).long()
    if policy == "probs":
        # Flat index order is position order, and a stable sort keeps it among equal scores.
        order_N = torch.sort(topk_scores_TK.detach().reshape(-1), descending=True, stable=True).indices
    else:
        order_N = torch.arange(ids_N.numel(), device=ids_N.device)
    rank_N = rank_within_group(ids_N, order_N, n_experts)
    return (rank_N < capacity).reshape(topk_ids_TK.shape)


def expert_choice(scores_TE: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    """Expert-choice routing (Zhou et al. 2022): every expert takes its ``capacity`` best tokens.

    Returns ``(token_ids_EC, gate_scores_EC)``, each row ordered best first; the gate scores keep
    their gradient. A token may be picked by several experts or by none. Leading batch dimensions
    choose independently (``(B, L, E)`` scores give ``(B, E, C)``). In a causal LM this looks at
    every token of the scope at once, so it leaks future tokens (docs/design.md, "Balancing
    methods", EC).
    """
    n_tokens = scores_TE.shape[-2]
    if not 0 <= capacity <= n_tokens:
        raise ValueError(f"capacity={capacity} must be between 0 and the number of tokens {n_tokens}")
    gate_scores_EC, token_ids_EC = scores_TE.transpose(-1, -2).topk(capacity, dim=-1)
    return token_ids_EC, gate_scores_EC
