"""Moving routed slots between token order and expert order, and the gated combine.

Shape legend: T tokens, S routed slots (kept (token, expert) pairs), D model width, E experts.

A slot lives in two orders. *Expert order* sorts the slots by expert so every expert's rows are
one contiguous chunk (what the grouped matmuls need). *Bag order* groups the slots by token
(the "bag" of a token is its up to K slots); the routers already emit their slots that way.

Why not ``x[token_S]`` and ``index_add_`` (the usual pair): the backward of an index gather is
an accumulating ``index_put_`` and ``index_add_`` is a scatter too; on CPU they were 1.5-6x
slower than a gather of the same rows (BENCHMARKS.md). Here every step is a gather: dispatch is
``index_select`` forward and a per-token bag sum (``embedding_bag``) backward; combine is the
reverse, with the gate weights folded into the bag sum (``per_sample_weights``), so there is no
separate gate multiply over the [S, D] outputs and no [T, D] zero buffer. Its backward gathers
and scales in one pass and takes the gate gradient from embedding_bag's own fused row dot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


@dataclass
class SlotPlan:
    """Where every slot goes; built once per forward pass and shared by dispatch and combine."""

    counts_E: torch.Tensor
    """Slots per expert (sums to S); the grouped matmuls' chunk sizes."""
    token_of_sorted_S: torch.Tensor
    """Token of every slot, in expert order."""
    sorted_row_of_bag_S: torch.Tensor
    """Row in expert order of every slot, in bag order."""
    bag_of_sorted_S: torch.Tensor
    """Slot (bag order) of every row in expert order: the inverse of sorted_row_of_bag_S."""
    bag_offsets_T: torch.Tensor
    """Start of every token's slots in bag order (tokens with no slot have an empty bag)."""
    token_of_bag_S: torch.Tensor
    """Token of every slot, in bag order (non-decreasing)."""
    bag_order_S: torch.Tensor | None
    """Slot indices (as the router gave them) in bag order; None when they already are."""


def plan_slots(token_S: torch.Tensor, expert_S: torch.Tensor, n_tokens: int, n_experts: int) -> SlotPlan:
    """Sort the slots by expert once; everything the dispatch and the combine need follows."""
    S = token_S.numel()
    device = token_S.device
    bag_order_S = None
    if S > 1 and not bool((token_S[1:] >= token_S[:-1]).all()):
        # not grouped by token (no built-in router does this): bring the slots into bag order
        bag_order_S = torch.argsort(token_S, stable=True)
        token_S, expert_S = token_S[bag_order_S], expert_S[bag_order_S]
    # from here on, slot index = position in bag order
    # stable: expert chunks keep token order; narrow keys sort faster (C3 sizes, 2 threads:
    # int64 0.76 ms, int32 0.41, int16 0.25)
    key_dtype = torch.int16 if n_experts <= torch.iinfo(torch.int16).max else torch.int32
    bag_of_sorted_S = torch.sort(expert_S.to(key_dtype), stable=True).indices
    # inverting the permutation with scatter_, not an index_put_ (0.12 vs 0.86 ms at C3 sizes)
    sorted_row_of_bag_S = torch.empty_like(bag_of_sorted_S).scatter_(
        0, bag_of_sorted_S, torch.arange(S, device=device)
    )
    slots_per_token_T = torch.bincount(token_S, minlength=n_tokens)
    bag_offsets_T = torch.cumsum(slots_per_token_T, 0) - slots_per_token_T
    return SlotPlan(
        counts_E=torch.bincount(expert_S, minlength=n_experts),
        token_of_sorted_S=token_S.index_select(0, bag_of_sorted_S),
        sorted_row_of_bag_S=sorted_row_of_bag_S,
        bag_of_sorted_S=bag_of_sorted_S,
        bag_offsets_T=bag_offsets_T,
        token_of_bag_S=token_S,
        bag_order_S=bag_order_S,
    )


def dispatch(x_TD: torch.Tensor, plan: SlotPlan) -> torch.Tensor:
    """Copies of the token rows, one per slot, in expert order: [S, D]."""
    return _Dispatch.apply(x_TD, plan)


def combine(y_SD: torch.Tensor, gate_S: torch.Tensor, plan: SlotPlan) -> torch.Tensor:
    """out[t] = sum over the slots s of token t of gate[s] * y[s]: [T, D].

    y_SD in expert order (what the experts return); gate_S in the router's slot order.
    """
    if plan.bag_order_S is not None:
        gate_S = gate_S[plan.bag_order_S]
    return _GatedCombine.apply(y_SD, gate_S.to(y_SD.dtype), plan)


def _bag_sum(rows_SD: torch.Tensor, plan: SlotPlan, weights_S: torch.Tensor | None = None) -> torch.Tensor:
    """Per token, the (weighted) sum of its slots' rows, gathered straight from expert order."""
    return F.embedding_bag(
        plan.sorted_row_of_bag_S, rows_SD, plan.bag_offsets_T, mode="sum", per_sample_weights=weights_S
    )


class _Dispatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, plan):
        ctx.plan = plan
        return x_TD.index_select(0, plan.token_of_sorted_S)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_SD):
        # a token's gradient is the sum over its slots: a bag sum, not a scatter-add
        return _bag_sum(grad_SD.contiguous(), ctx.plan), None


class _GatedCombine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_SD, gate_bag_S, plan):
        ctx.plan = plan
        ctx.save_for_backward(y_SD, gate_bag_S)
        return _bag_sum(y_SD, plan, gate_bag_S)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TD):
        y_SD, gate_bag_S = ctx.saved_tensors
        plan = ctx.plan
        grad_TD = grad_TD.contiguous()
        grad_y = grad_gate = None
        if ctx.needs_input_grad[0]:
            # d out[t] / d y[s] = gate[s] * grad_out[t]: gathered and scaled in one pass
            gate_sorted_S = gate_bag_S.index_select(0, plan.bag_of_sorted_S)
            grad_y = F.embedding_bag(
                plan.token_of_sorted_S.unsqueeze(1), grad_TD, mode="sum",
                per_sample_weights=gate_sorted_S.unsqueeze(1),
            )
        if ctx.needs_input_grad[1]:
            # d out[t] / d gate[s] = <grad_out[t], y[s]>: embedding_bag's own per-sample-weight
            # gradient, one row dot per slot without an [S, D] temporary
            grad_gate = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_TD, y_SD, plan.sorted_row_of_bag_S, plan.bag_offsets_T, plan.token_of_bag_S, _MODE_SUM
            )
        return grad_y, grad_gate, None


_MODE_SUM = 0  # embedding_bag's mode code for "sum"
