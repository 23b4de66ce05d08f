"""Routers: which experts each token goes to, with which gate weight, and the balancing.

Shape legend: T tokens of the forward pass (B sequences x L positions, flattened), E experts,
K top-k slots per token, S kept (token, expert) assignments.

One base class does scoring, gates, capacity dropping and the z-loss; each method overrides
``select`` (which experts) and, where it needs one, ``post_step`` (what happens after the
optimizer step). Methods are registered by name in ``ROUTERS``: a new method is one class,
one registry line and its test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trainables import balancing
from trainables.config import TrialConfig
from trainables.distributed import DistributedGroup, ScopeCounts
from trainables.scope import scope_of


@dataclass
class RoutingContext:
    """What a router may know besides the hidden states."""

    seq_len: int
    """L: tokens t and t' are in the same sequence iff t // L == t' // L."""
    domain_T: torch.Tensor | None = None
    """Domain label of every token (needed by the reference router and by the metrics)."""
    token_T: torch.Tensor | None = None
    """Byte value of every token (evaluation: the token-controlled metrics count by it)."""
    sequence_T: torch.Tensor | None = None
    """Evaluation-sequence index of every token (evaluation: counts per sequence)."""


@dataclass
class Assignment:
    """Kept (token, expert, gate) triples of one forward pass, plus bookkeeping."""

    token_S: torch.Tensor
    expert_S: torch.Tensor
    gate_S: torch.Tensor
    n_requested: int
    """Assignments the router asked for before capacity dropping (T*K for top-k routers)."""
    aux_loss: torch.Tensor
    """Balancing and z-loss terms, coefficients applied; added to the LM loss."""
    requested: tuple[torch.Tensor, torch.Tensor] | None = None
    """(token, expert) of every assignment before capacity dropping; None when nothing was
    dropped. The metrics count the router's choices, drops included (trainables.metrics)."""


class Router(nn.Module):
    """Top-k router; subclasses change how the K experts are selected."""

    solver_based = False
    """True where selection solves an assignment over the scope's tokens (SH, BA, EC): at
    global scope the training loop then runs the whole step in one forward pass."""

    def __init__(self, cfg: TrialConfig):
        super().__init__()
        m, r = cfg.model, cfg.router
        self.n_experts, self.top_k, self.score_fn = m.n_experts, m.top_k, m.score_fn
        self.scope = scope_of(cfg)
        self.window_sequences = self.scope.window_sequences(cfg) if self.scope.per_window else 0
        self.capacity_factor, self.drop_policy = r.capacity_factor, r.drop_policy
        self.z_loss_coef = r.z_loss_coef
        self.gate = nn.Linear(m.d_model, m.n_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=1.0 / math.sqrt(m.d_model))
        self.counts = ScopeCounts(m.n_experts)
        self.dist = DistributedGroup()

    # -- the pipeline shared by every top-k router ------------------------------------------
    def forward(self, x_TD: torch.Tensor, ctx: RoutingContext) -> Assignment:
        logits_TE = self.gate(x_TD).float()  # routing decisions in fp32 even under autocast
        scores_TE = self.scores(logits_TE)
        topk_ids_TK, aux = self.select(logits_TE, scores_TE, ctx)
        gates_TK = scores_TE.gather(1, topk_ids_TK)
        gates_TK = gates_TK / gates_TK.sum(-1, keepdim=True).clamp_min(1e-9)
        keep_TK = self.capacity_mask(topk_ids_TK, gates_TK)
        T, K = topk_ids_TK.shape
        token_TK = torch.arange(T, device=x_TD.device).unsqueeze(1).expand(T, K)
        token_all, expert_all = token_TK.reshape(-1), topk_ids_TK.reshape(-1)
        if keep_TK is None:
            return Assignment(token_all, expert_all, gates_TK.reshape(-1), T * K, aux + self.z_loss(logits_TE))
        return Assignment(
            token_TK[keep_TK], topk_ids_TK[keep_TK], gates_TK[keep_TK], T * K,
            aux + self.z_loss(logits_TE), requested=(token_all, expert_all),
        )

    def scores(self, logits_TE: torch.Tensor) -> torch.Tensor:
        return logits_TE.softmax(-1) if self.score_fn == "softmax" else logits_TE.sigmoid()

    def probs(self, scores_TE: torch.Tensor) -> torch.Tensor:
        """Scores as a distribution over experts (sigmoid scores are normalised per token)."""
        if self.score_fn == "softmax":
            return scores_TE
        return scores_TE / scores_TE.sum(-1, keepdim=True).clamp_min(1e-9)

    def select(self, logits_TE, scores_TE, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        return scores_TE.topk(self.top_k, dim=-1).indices, scores_TE.new_zeros(())

    def capacity_mask(self, topk_ids_TK, gates_TK) -> torch.Tensor | None:
        if self.capacity_factor <= 0:
            return None  # dropless
        T, K = topk_ids_TK.shape
        capacity = max(1, math.ceil(self.capacity_factor * T * K / self.n_experts))
        return balancing.capacity_keep_mask(
            topk_ids_TK, gates_TK.detach(), self.n_experts, capacity, self.drop_policy
        )

    def z_loss(self, logits_TE: torch.Tensor) -> torch.Tensor:
        if self.z_loss_coef <= 0 or not self.training:
            return logits_TE.new_zeros(())
        return self.z_loss_coef * balancing.z_loss(logits_TE)

    # -- scope helpers ------------------------------------------------------------------------
    def counts_of(self, topk_ids_TK: torch.Tensor) -> torch.Tensor:
        return torch.bincount(topk_ids_TK.reshape(-1), minlength=self.n_experts).float()

    def window_tokens(self, ctx: RoutingContext) -> int:
        """Tokens per window of a per-window scope (``sequence``, ``window``); 0 otherwise."""
        return self.window_sequences * ctx.seq_len

    def solve_over_scope(self, solver, x_TE: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
        """Apply a per-token solver (rows in, rows out) over the tokens of the scope
        (``trainables.scope.Scope.solve``)."""
        return self.scope.solve(solver, x_TE, self.window_tokens(ctx), self.dist)

    def pooled_counts(self, topk_ids_TK: torch.Tensor) -> torch.Tensor:
        """Expert counts over the scope's tokens (a pooled scope: micro- or global batch)."""
        return self.scope.pooled_counts(self.counts_of(topk_ids_TK), self.counts, self.dist)

    def post_step(self) -> None:
        """Called once after every optimizer step."""
        self.counts.reset()


class NoBalancingRouter(Router):
    """Plain top-k on the router scores."""


class LoadBalancingLossRouter(Router):
    """LBL: alpha * E * sum_i f_i P_i with f over the scope and P local."""

    def __init__(self, cfg: TrialConfig):
        super().__init__(cfg)
        self.coef = cfg.router.lbl_coef

    def select(self, logits_TE, scores_TE, ctx):
        topk_ids_TK = scores_TE.topk(self.top_k, dim=-1).indices
        if not self.training or self.coef == 0:
            return topk_ids_TK, scores_TE.new_zeros(())
        probs_TE = self.probs(scores_TE)
        if self.scope.per_window:
            # a window of n sequences is n*L consecutive tokens: the per-sequence loss applies
            W = self.window_tokens(ctx)
            loss = balancing.lbl_loss_per_sequence(
                probs_TE.view(-1, W, self.n_experts), topk_ids_TK.view(-1, W, self.top_k)
            )
        else:
            loss = balancing.lbl_loss(probs_TE, self.pooled_counts(topk_ids_TK), self.top_k)
        return topk_ids_TK, self.coef * loss


class ExpertBiasRouter(Router):
    """EB (aux-loss-free): select on score + bias, gate on the unbiased score, update b after the step."""

    def __init__(self, cfg: TrialConfig):
        super().__init__(cfg)
        self.rate = cfg.router.bias_update_rate
        self.register_buffer("expert_bias_E", torch.zeros(cfg.model.n_experts))

    def select(self, logits_TE, scores_TE, ctx):
        topk_ids_TK = (scores_TE + self.expert_bias_E).topk(self.top_k, dim=-1).indices
        if self.training:
            self._count_load(topk_ids_TK, ctx)
        return topk_ids_TK, scores_TE.new_zeros(())

    def _count_load(self, topk_ids_TK, ctx) -> None:
        if self.scope.spans_step:  # the step's counts, updated from after the step
            self.pooled_counts(topk_ids_TK)
            return
        if self.scope.per_window:
            ids_BLK = topk_ids_TK.view(-1, self.window_tokens(ctx) * self.top_k)
            load_BE = torch.zeros(ids_BLK.shape[0], self.n_experts, device=ids_BLK.device)
            load_BE.scatter_add_(1, ids_BLK, torch.ones_like(ids_BLK, dtype=load_BE.dtype))
        else:
            load_BE = self.counts_of(topk_ids_TK).unsqueeze(0)
        # one sign vector per balance window; their mean becomes the step's update direction
        signs_BE = torch.sign(load_BE.mean(-1, keepdim=True) - load_BE)
        self.counts.eb_delta_E = self.counts.eb_delta_E.to(signs_BE.device) + signs_BE.sum(0)
        self.counts.eb_windows += signs_BE.shape[0]

    @torch.no_grad()
    def post_step(self) -> None:
        if self.scope.spans_step:
            delta_E = balancing.expert_bias_update(self.counts.step_counts_E, self.rate)
        else:
            total = self.dist.all_reduce_sum(self.counts.eb_delta_E.detach().float())
            windows = self.dist.all_reduce_sum(torch.tensor([float(self.counts.eb_windows)]))
            delta_E = self.rate * total / windows.clamp_min(1.0)
        self.expert_bias_E += delta_E.to(self.expert_bias_E.device)
        super().post_step()


class SinkhornRouter(Router):
    """SH: top-k on the Sinkhorn-balanced matrix over the scope in training; plain top-k in eval."""

    solver_based = True

    def __init__(self, cfg: TrialConfig):
        super().__init__(cfg)
        self.iters = cfg.router.sinkhorn_iters

    def select(self, logits_TE, scores_TE, ctx):
        if not self.training:
            return super().select(logits_TE, scores_TE, ctx)
        balanced_TE = self.solve_over_scope(
            lambda l_nE: balancing.sinkhorn(l_nE, n_iters=self.iters), logits_TE.detach(), ctx
        )
        return balanced_TE.topk(self.top_k, dim=-1).indices, scores_TE.new_zeros(())


class BalancedAssignmentRouter(Router):
    """BA: balanced token->expert assignment (auction) over the scope in training; greedy top-k in eval."""

    solver_based = True

    def __init__(self, cfg: TrialConfig):
        super().__init__(cfg)
        self.iters = cfg.router.auction_iters

    def select(self, logits_TE, scores_TE, ctx):
        if not self.training:
            return super().select(logits_TE, scores_TE, ctx)
        ids_TK = self.solve_over_scope(
            lambda l_nE: balancing.balanced_assignment(l_nE, self.top_k, n_iters=self.iters),
            logits_TE.detach(),
            ctx,
        )
        return ids_TK, scores_TE.new_zeros(())


class ReferenceRouter(Router):
    """The upper bound: every domain owns a group of E/D experts; top-k within the token's group."""

    def __init__(self, cfg: TrialConfig):
        super().__init__(cfg)
        self.group_size = cfg.model.n_experts // len(cfg.data.domains)

    def select(self, logits_TE, scores_TE, ctx):
        if ctx.domain_T is None:
            raise ValueError("the reference router needs the domain label of every token")
        group_E = torch.arange(self.n_experts, device=logits_TE.device) // self.group_size
        in_group_TE = group_E.unsqueeze(0) == ctx.domain_T.unsqueeze(1)
        masked_TE = scores_TE.masked_fill(~in_group_TE, float("-inf"))
        return masked_TE.topk(self.top_k, dim=-1).indices, scores_TE.new_zeros(())


class ExpertChoiceRouter(Router):
    """EC: every expert picks its top-C tokens of the scope (C = cf * T * K / E, cf 1 by default).

    Leaks future tokens in a causal LM (a token's routing depends on later tokens of the scope):
    its validation loss is not comparable with token-choice methods.
    """

    solver_based = True

    def forward(self, x_TD: torch.Tensor, ctx: RoutingContext) -> Assignment:
        logits_TE = self.gate(x_TD).float()
        scores_TE = self.scores(logits_TE)
        cf = self.capacity_factor if self.capacity_factor > 0 else 1.0
        picked_TE = self.solve_over_scope(lambda s_nE: self._pick(s_nE, cf), scores_TE.detach(), ctx)
        token_S, expert_S = picked_TE.nonzero(as_tuple=True)
        gate_S = scores_TE[token_S, expert_S]
        T = x_TD.shape[0]
        return Assignment(token_S, expert_S, gate_S, T * self.top_k, self.z_loss(logits_TE))

    def _pick(self, scores_nE: torch.Tensor, cf: float) -> torch.Tensor:
        n = scores_nE.shape[0]
        capacity = min(n, max(1, math.ceil(cf * n * self.top_k / self.n_experts)))
        token_ids_EC, _ = balancing.expert_choice(scores_nE, capacity)
        picked_nE = torch.zeros_like(scores_nE, dtype=torch.bool)
        picked_nE[token_ids_EC, torch.arange(self.n_experts, device=scores_nE.device).unsqueeze(1)] = True
        return picked_nE


ROUTERS: dict[str, type[Router]] = {
    "none": NoBalancingRouter,
    "lbl": LoadBalancingLossRouter,
    "eb": ExpertBiasRouter,
    "sh": SinkhornRouter,
    "ba": BalancedAssignmentRouter,
    "ec": ExpertChoiceRouter,
    "reference": ReferenceRouter,
}


def build_router(cfg: TrialConfig) -> Router:
    return ROUTERS[cfg.router.method](cfg)


def runs_whole_step_forward(cfg: TrialConfig) -> bool:
    """Whether the training loop runs the optimizer step's micro-batches as one forward pass.

    Averaging the micro-batch losses and running them concatenated give the same gradient; only
    memory differs. Solver-based methods (SH, BA, EC) at global scope need it to solve over every
    token of the step. LBL at global scope uses it when ``router.global_counts`` is ``exact``:
    f is then the step's full count vector for every token, where the accumulating buffer
    (``running``, Megatron/Qwen style) gives the step's first micro-batches partial counts.
    """
    exact_counts = cfg.router.method == "lbl" and cfg.router.global_counts == "exact"
    return scope_of(cfg).needs_whole_step(ROUTERS[cfg.router.method].solver_based, exact_counts)
