"""The MoE feed-forward layer: route, sort slots by expert, run grouped experts, combine.

Shape legend: B batch, L sequence, D model width, T = B*L tokens, E experts, S kept slots,
Dom domains.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.activation import swiglu
from trainables.config import TrialConfig
from trainables.dispatch import combine, dispatch, plan_slots
from trainables.experts import GroupedExperts
from trainables.routers import Assignment, RoutingContext, build_router


class SwiGLU(nn.Module):
    """Dense SwiGLU FFN (shared experts and the dense baseline)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(swiglu(self.gate_up(x)))


class RoutingStats:
    """Counts of the router's assignments on the evaluation set (capacity drops included, as
    trainables.metrics defines n) and how many were dropped: n[e, d] per expert and domain,
    n[x, e, d] also by byte value x (when the context has the tokens) and n[q, e] per
    evaluation sequence q (when it numbers them; ``n_sequences`` of them)."""

    N_BYTES = 256

    def __init__(self, n_experts: int, n_domains: int, n_sequences: int = 0):
        self.n_ED = torch.zeros(n_experts, n_domains, dtype=torch.long)
        self.n_XED = torch.zeros(self.N_BYTES, n_experts, n_domains, dtype=torch.long)
        self.n_QE = torch.zeros(n_sequences, n_experts, dtype=torch.long)
        self.requested = 0
        self.dropped = 0

    def add(self, a: Assignment, ctx: RoutingContext) -> None:
        token_S, expert_S = a.requested if a.requested is not None else (a.token_S, a.expert_S)
        E, Dom = self.n_ED.shape
        ed_S = (expert_S * Dom + ctx.domain_T[token_S]).cpu()
        self.n_ED += torch.bincount(ed_S, minlength=E * Dom).view(E, Dom)
        if ctx.token_T is not None:
            xed_S = ctx.token_T[token_S].cpu().long() * (E * Dom) + ed_S
            self.n_XED += torch.bincount(xed_S, minlength=self.N_BYTES * E * Dom).view(self.N_BYTES, E, Dom)
        if ctx.sequence_T is not None and self.n_QE.shape[0]:
            qe_S = (ctx.sequence_T[token_S] * E + expert_S).cpu()
            self.n_QE += torch.bincount(qe_S, minlength=self.n_QE.numel()).view_as(self.n_QE)
        self.requested += int(expert_S.numel())
        self.dropped += int(expert_S.numel()) - int(a.expert_S.numel())


class MoELayer(nn.Module):
    def __init__(self, cfg: TrialConfig):
        super().__init__()
        m = cfg.model
        self.n_experts, self.n_domains = m.n_experts, len(cfg.data.domains)
        self.router = build_router(cfg)
        self.experts = GroupedExperts(m.n_experts, m.d_model, m.expert_hidden)
        self.shared = SwiGLU(m.d_model, m.expert_hidden * m.n_shared_experts) if m.n_shared_experts else None
        self.stats: RoutingStats | None = None  # set by the evaluator to collect n[e, d]

    def forward(self, x_BLD: torch.Tensor, ctx: RoutingContext) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, D = x_BLD.shape
        x_TD = x_BLD.reshape(B * L, D)
        a = self.router(x_TD, ctx)
        out_TD = self.routed_experts(x_TD, a)
        if self.shared is not None:
            out_TD = out_TD + self.shared(x_TD)
        if self.stats is not None and ctx.domain_T is not None:
            self.stats.add(a, ctx)
        return out_TD.view(B, L, D).to(x_BLD.dtype), a.aux_loss

    def routed_experts(self, x_TD: torch.Tensor, a: Assignment) -> torch.Tensor:
        """Dispatch, expert FFNs, gated combine: sum over a token's slots of gate * expert(x)."""
        plan = plan_slots(a.token_S, a.expert_S, x_TD.shape[0], self.n_experts)
        y_SD = self.experts(dispatch(x_TD, plan), plan.counts_E)
        return combine(y_SD, a.gate_S, plan)
