"""Balanced assignment (BA, BASE layers) by a vectorised auction algorithm.

Problem: give every token K distinct experts, expert e at most ``capacity_E[e]`` tokens, and
maximise the total score. It is a bipartite b-matching (a transportation problem with unit
edges), so its linear relaxation is integral and an auction solves it approximately.

Algorithm: a direct K-slot forward auction, Jacobi style (all bids of a round at once), rather
than K rounds of top-1 auctions (which can paint a late round into a corner). Tokens are the
bidders. Each expert has one price: 0 while it has room, else the lowest bid among the tokens it
holds. A token still short of u experts values every expert it does not hold at
``score - price``, bids on its best u, and offers for each ``price + (value - w) + eps`` with w
the value of its (u+1)-th best: the most it can pay before its next choice is as good. Each
expert keeps its ``capacity`` highest bids, holders included (holders win ties); the dropped
tokens bid again next round. Without creep (below) this is a textbook auction: the result is
within T*K*eps of the optimum (eps-complementary slackness, free experts at price 0).

Price creep (``price_creep=True``, the default): after every round each held bid grows by eps, as
in BASE layers' implementation (fairseq ``balanced_assignment`` raises the price of every token
that stays with its expert by eps per round). Prices of full experts then climb steadily, so the
last unplaced tokens soon prefer experts with room instead of displacing each other in long
chains: after about (max - min) / eps rounds every full expert costs more than any score
difference. On 768 x 24 problems (random, skewed, clustered scores; K = 1 and 4) this cut the
rounds 2-10x (to 6-17) and stayed within 0.9% of the LP optimum (0.13% without creep).

BASE layers ran the mirror image (experts bid for tokens, equal capacities only) with at most 100
rounds and eps = (max - min) / 50; those are the defaults here. After ``n_iters`` rounds the
leftovers are placed greedily: each takes its best-scoring experts that still have room. With
K > 1 a token can be left short when every expert with room is one it already holds; the
auction then goes on with an eps beyond the whole score range, so that such a token displaces a
holder, who moves on to an expert with room. An auction finishes for every feasible problem.

Groups (``group_ids_T``): tokens of different groups never compete, each group is balanced on
its own (the ``sequence`` scope: one group per sequence), yet all groups run in one auction.
Internally the auction's objects are then pools, one per (group, expert) pair.

Shapes: T tokens, E experts, K experts per token, G groups, P = G * E pools, C slots of a pool,
A bidding tokens, M ranked experts per bidder, N bids, X pools that received bids.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The fallback phase is an auction too, which is guaranteed to finish for a feasible problem;
# this cap only turns an (unexpected) endless loop into an error.
_FALLBACK_ROUNDS_PER_SLOT = 8


class _Auction:
    """State of one auction. Per pool (group, expert) a row of held slots, sorted by bid, best
    first; an empty slot holds bid -inf and the dummy token id T, so updates need no masks."""

    def __init__(self, scores_TE: Tensor, k: int, group_T: Tensor, capacity_GE: Tensor):
        self.scores_TE = scores_TE
        self.k = k
        self.n_tokens, self.n_experts = scores_TE.shape
        self.group_T = group_T
        self.capacity_P = capacity_GE.reshape(-1)
        self.n_pools = self.capacity_P.numel()
        width = max(int(self.capacity_P.max()), 1)
        device = scores_TE.device
        self.slot_bid_PC = torch.full((self.n_pools, width), -math.inf, dtype=scores_TE.dtype, device=device)
        self.slot_token_PC = torch.full((self.n_pools, width), self.n_tokens, dtype=torch.long, device=device)
        # One extra row for the dummy token: writes through empty slots land there.
        self.held_TE = torch.zeros(self.n_tokens + 1, self.n_experts, dtype=torch.bool, device=device)
        self.n_held_T = torch.zeros(self.n_tokens + 1, dtype=torch.long, device=device)
        self.n_holders_P = torch.zeros(self.n_pools, dtype=torch.long, device=device)
        self.pool_ids_P = torch.arange(self.n_pools, device=device)
        self.unusable_PC = torch.arange(width, device=device)[None, :] >= self.capacity_P[:, None]
        self.spread = float(scores_TE.max() - scores_TE.min())

    def short_tokens(self) -> Tensor:
        return torch.nonzero(self.n_held_T[: self.n_tokens] < self.k).squeeze(1)

    def pools_of(self, tokens_A: Tensor) -> Tensor:
        """``pool_AE``: the pool id of every expert, as seen from each token's group."""
        first_A = self.group_T.index_select(0, tokens_A) * self.n_experts
        return first_A[:, None] + torch.arange(self.n_experts, device=tokens_A.device)

    def prices(self) -> Tensor:
        """0 while a pool has room, then the lowest bid it holds; +inf without capacity."""
        last_P = (self.capacity_P - 1).clamp_min(0)
        lowest_P = self.slot_bid_PC[self.pool_ids_P, last_P]
        price_P = torch.where(self.n_holders_P >= self.capacity_P, lowest_P, 0.0)
        return price_P.masked_fill(self.capacity_P == 0, math.inf)

    def run_round(self, eps: float, creep: float = 0.0) -> bool:
        """One Jacobi round; returns True when every token already holds K experts.
        ``creep`` is added to every held bid afterwards (see the module docstring)."""
        bidders_A = self.short_tokens()
        if bidders_A.numel() == 0:
            return True
        pool_AE = self.pools_of(bidders_A)
        price_AE = self.prices()[pool_AE]
        value_AE = self.scores_TE.index_select(0, bidders_A) - price_AE
        value_AE.masked_fill_(self.held_TE.index_select(0, bidders_A), -math.inf)
        n_ranked = min(self.k + 1, self.n_experts)
        top_value_AM, top_expert_AM = value_AE.topk(n_ranked, dim=1)
        need_A = self.k - self.n_held_T.index_select(0, bidders_A)
        # w: value of the best expert the token does not bid on, its (need+1)-th best.
        next_value_A = top_value_AM.gather(1, need_A.clamp(max=n_ranked - 1)[:, None]).squeeze(1)
        next_value_A = torch.where(need_A < n_ranked, next_value_A, -math.inf)
        # A token with no alternative left must take what it bids on: outbid any score difference.
        margin_AM = torch.where(
            torch.isfinite(next_value_A)[:, None], top_value_AM - next_value_A[:, None], self.spread
        )
        bid_AM = price_AE.gather(1, top_expert_AM) + margin_AM + eps
        rank_M = torch.arange(n_ranked, device=need_A.device)
        bids_AM = (rank_M[None, :] < need_A[:, None]) & torch.isfinite(top_value_AM)
        bidder_AM = bidders_A[:, None].expand_as(bids_AM)
        self.accept(bidder_AM, pool_AE.gather(1, top_expert_AM), bid_AM, bids_AM)
        if creep:
            self.slot_bid_PC += creep  # empty slots stay at -inf
        return False

    def greedy_round(self) -> bool:
        """Leftover placement: tokens take their best experts that still have room, by score,
        without displacing anyone. Returns True when no token can be placed this way."""
        bidders_A = self.short_tokens()
        if bidders_A.numel() == 0:
            return True
        pool_AE = self.pools_of(bidders_A)
        open_AE = ~self.held_TE.index_select(0, bidders_A) & (self.n_holders_P < self.capacity_P)[pool_AE]
        score_AE = self.scores_TE.index_select(0, bidders_A).masked_fill(~open_AE, -math.inf)
        top_score_AM, top_expert_AM = score_AE.topk(self.k, dim=1)
        need_A = self.k - self.n_held_T.index_select(0, bidders_A)
        rank_M = torch.arange(self.k, device=need_A.device)
        bids_AM = (rank_M[None, :] < need_A[:, None]) & torch.isfinite(top_score_AM)
        if not bool(bids_AM.any()):
            return True
        # Ranked by score: a pool with room fills it with its best-scoring bidders.
        bidder_AM = bidders_A[:, None].expand_as(bids_AM)
        self.accept(bidder_AM, pool_AE.gather(1, top_expert_AM), top_score_AM, bids_AM, fill_only=True)
        return False

    def accept(
        self, token_N: Tensor, pool_N: Tensor, bid_N: Tensor, valid_N: Tensor, fill_only: bool = False
    ) -> None:
        """Every pool that got bids keeps its ``capacity`` best among holders and new bids
        (``fill_only``: new bids only take free slots, holders are never displaced)."""
        keep_N = torch.nonzero(valid_N.reshape(-1)).squeeze(1)
        if keep_N.numel() == 0:
            return
        token_N = token_N.reshape(-1).index_select(0, keep_N)
        pool_N = pool_N.reshape(-1).index_select(0, keep_N)
        bid_N = bid_N.reshape(-1).index_select(0, keep_N)
        # Group by pool, best bid first inside a group: one sort on a composite key (float64
        # keeps bids exact next to the pool offset; stable, so ties keep token order).
        span = (bid_N.max() - bid_N.min()).double() + 1.0
        order_N = torch.sort(pool_N.double() * span - bid_N.double(), stable=True).indices
        pool_N = pool_N.index_select(0, order_N)
        n_bids_P = torch.bincount(pool_N, minlength=self.n_pools)
        touched_X = torch.nonzero(n_bids_P).squeeze(1)
        row_of_P = torch.zeros_like(n_bids_P)
        row_of_P[touched_X] = torch.arange(touched_X.numel(), device=touched_X.device)
        first_bid_P = torch.cumsum(n_bids_P, 0) - n_bids_P
        column_N = torch.arange(pool_N.numel(), device=pool_N.device) - first_bid_P[pool_N]
        width = self.slot_bid_PC.shape[1]
        width_new = int(n_bids_P.max())
        n_rows = touched_X.numel()
        new_bid_XW = self.slot_bid_PC.new_full((n_rows, width_new), -math.inf)
        new_token_XW = self.slot_token_PC.new_full((n_rows, width_new), self.n_tokens)
        new_bid_XW[row_of_P[pool_N], column_N] = bid_N.index_select(0, order_N)
        new_token_XW[row_of_P[pool_N], column_N] = token_N.index_select(0, order_N)
        old_bid_XC = self.slot_bid_PC.index_select(0, touched_X)
        old_token_XC = self.slot_token_PC.index_select(0, touched_X)
        unusable_XC = self.unusable_PC.index_select(0, touched_X)

        if fill_only:
            # Holders stay where they are; the best new bids go into the free slots after them.
            n_held_X = self.n_holders_P.index_select(0, touched_X)
            column_XC = torch.arange(width, device=touched_X.device)[None, :] - n_held_X[:, None]
            free_XC = column_XC >= 0
            source_XC = column_XC.clamp(0, width_new - 1)
            in_new_XC = free_XC & (column_XC < width_new)
            placed_XC = in_new_XC & torch.isfinite(new_bid_XW.gather(1, source_XC)) & ~unusable_XC
            # A placed token paid the price of a pool with room, 0: below every auction bid
            # (those are > 0), so rows stay sorted best first.
            slot_bid_XC = torch.where(placed_XC, 0.0, torch.where(free_XC, -math.inf, old_bid_XC))
            emptied_XC = torch.where(free_XC, self.n_tokens, old_token_XC)
            slot_token_XC = torch.where(placed_XC, new_token_XW.gather(1, source_XC), emptied_XC)
        else:
            # Holders come first in the concatenation, so a stable sort lets them win ties.
            # (Cheaper on CPU than merging the two sorted lists with searchsorted.)
            sorted_bid_XY, order_XY = torch.sort(
                torch.cat([old_bid_XC, new_bid_XW], dim=1), dim=1, descending=True, stable=True
            )
            slot_bid_XC = sorted_bid_XY[:, :width].masked_fill(unusable_XC, -math.inf)
            slot_token_XC = (
                torch.cat([old_token_XC, new_token_XW], dim=1)
                .gather(1, order_XY[:, :width])
                .masked_fill(unusable_XC, self.n_tokens)
            )

        expert_XC = (touched_X % self.n_experts)[:, None].expand(-1, width)
        self.held_TE[old_token_XC.reshape(-1), expert_XC.reshape(-1)] = False
        self.held_TE[slot_token_XC.reshape(-1), expert_XC.reshape(-1)] = True
        self.n_held_T.index_add_(0, old_token_XC.reshape(-1), torch.full_like(old_token_XC.reshape(-1), -1))
        self.n_held_T.index_add_(0, slot_token_XC.reshape(-1), torch.ones_like(slot_token_XC.reshape(-1)))
        self.n_holders_P[touched_X] = (slot_token_XC < self.n_tokens).sum(1)
        self.slot_bid_PC[touched_X] = slot_bid_XC
        self.slot_token_PC[touched_X] = slot_token_XC


def _capacities(
    capacity_E: Tensor | None, k: int, n_experts: int, tokens_per_group_G: Tensor, device: torch.device
) -> Tensor:
    """``capacity_GE``, validated: the default is balanced, ceil(T_g * K / E) per expert."""
    n_groups = tokens_per_group_G.numel()
    if capacity_E is None:
        return (-(-tokens_per_group_G * k // n_experts))[:, None].expand(n_groups, n_experts).clone()
    capacity = torch.as_tensor(capacity_E, device=device)
    # Counts kept as floats are fine as long as they are whole numbers.
    valid = capacity.shape in ((n_experts,), (n_groups, n_experts)) and bool(
        ((capacity >= 0) & (capacity == capacity.round())).all()
    )
    if not valid:
        raise ValueError(
            f"capacity_E must hold non-negative whole numbers of shape ({n_experts},) or "
            f"({n_groups}, {n_experts}), got {capacity.tolist()}"
        )
    return capacity.long().expand(n_groups, n_experts).clone()


@torch.no_grad()
def balanced_assignment(
    scores_TE: Tensor,
    k: int,
    capacity_E: Tensor | None = None,
    n_iters: int = 100,
    eps: float | None = None,
    price_creep: bool = True,
    group_ids_T: Tensor | None = None,
) -> Tensor:
    """Balanced top-k assignment: ``topk_ids_TK``, K distinct experts per token, best score first.

    Expert e receives at most ``capacity_E[e]`` tokens; the default is balanced,
    ``ceil(T*K/E)`` each (exactly T*K/E when that divides). Defaults follow BASE layers: at most
    100 auction rounds, eps = (max - min) / 50. With ``price_creep=False`` the total score is
    within T*K*eps of the optimum whenever the auction finishes within ``n_iters`` rounds; the
    default creep trades a little of that for far fewer rounds (module docstring). Leftovers after
    ``n_iters`` are placed greedily. Scores must be finite. Raises ValueError when the capacities
    cannot hold T*K distinct assignments (an expert takes a token at most once).

    ``group_ids_T`` (ids 0..G-1, e.g. the sequence of each token) balances every group on its
    own: capacities then apply per group, ``capacity_E`` of shape (E,) for every group or (G, E),
    default ceil(T_g*K/E) for a group of T_g tokens.
    """
    n_tokens, n_experts = scores_TE.shape
    if not 1 <= k <= n_experts:
        raise ValueError(f"k={k} must be between 1 and the number of experts {n_experts}")
    if n_iters < 0:
        raise ValueError(f"n_iters={n_iters} must be >= 0")
    device = scores_TE.device
    if n_tokens == 0:
        return torch.zeros((0, k), dtype=torch.long, device=device)
    if group_ids_T is None:
        group_T = torch.zeros(n_tokens, dtype=torch.long, device=device)
    else:
        group_T = torch.as_tensor(group_ids_T, device=device).long()
        if group_T.shape != (n_tokens,) or bool((group_T < 0).any()):
            raise ValueError(f"group_ids_T must be {n_tokens} non-negative group ids")
    tokens_per_group_G = torch.bincount(group_T)
    capacity_GE = _capacities(capacity_E, k, n_experts, tokens_per_group_G, device)
    # An expert can take each token only once, so capacity beyond a group's size is unusable.
    capacity_GE = torch.minimum(capacity_GE, tokens_per_group_G[:, None])
    short_G = capacity_GE.sum(1) < tokens_per_group_G * k
    if bool(short_G.any()):
        g = int(torch.nonzero(short_G)[0])
        raise ValueError(
            f"expert capacities {capacity_GE[g].tolist()} (group {g}) hold {int(capacity_GE[g].sum())} "
            f"assignments, fewer than tokens x k = {int(tokens_per_group_G[g])} x {k}"
        )
    scores_TE = scores_TE.detach().to(torch.promote_types(scores_TE.dtype, torch.float32))
    if not bool(torch.isfinite(scores_TE).all()):
        raise ValueError("balanced_assignment needs finite scores")

    auction = _Auction(scores_TE, k, group_T, capacity_GE)
    if eps is None:
        eps = auction.spread / 50 if auction.spread > 0 else 1.0
    if not eps > 0:
        raise ValueError(f"eps={eps} must be > 0")
    finished = False
    for _ in range(n_iters):
        if auction.run_round(eps, creep=eps if price_creep else 0.0):
            finished = True
            break
    if not finished:
        while not auction.greedy_round():
            pass
        # Only with K > 1 can a token be left short: every expert with room is one it already
        # holds. Displacing holders is then unavoidable; a coarse auction does it quickly.
        coarse_eps = 2 * auction.spread + eps
        for _ in range(_FALLBACK_ROUNDS_PER_SLOT * n_tokens * k + auction.n_pools):
            if auction.run_round(coarse_eps):
                finished = True
                break
    if not finished:  # pragma: no cover - the auction finishes for every feasible problem
        raise RuntimeError("balanced_assignment: the auction did not finish")
    masked_TE = scores_TE.masked_fill(~auction.held_TE[:n_tokens], -math.inf)
    return masked_TE.topk(k, dim=1).indices
