"""Balancing algorithms checked against hand-computed values, exact optima and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment, linprog
from scipy.sparse import identity, kron

from trainables.balancing import (
    balanced_assignment,
    capacity_keep_mask,
    expert_bias_update,
    expert_choice,
    expert_counts,
    lbl_loss,
    lbl_loss_per_sequence,
    sinkhorn,
    z_loss,
)

# ---------------------------------------------------------------------------------------------
# LBL, z-loss, expert bias


def test_lbl_loss_is_one_for_uniform_routing():
    # Powers of two are exact in floating point, so uniform routing over 4 experts gives exactly 1.
    assert lbl_loss(torch.full((6, 4), 0.25), torch.full((4,), 3.0), k=2).item() == 1.0
    probs_TE = torch.full((6, 3), 1 / 3)
    assert lbl_loss(probs_TE, torch.full((3,), 4.0), k=2).item() == pytest.approx(1.0, abs=1e-6)


def test_lbl_loss_two_expert_hand_example():
    # P = (0.7, 0.3); f = (3, 1) / 4 -> 2 * (0.75 * 0.7 + 0.25 * 0.3) = 1.2
    probs_TE = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    counts_E = torch.tensor([3.0, 1.0])
    assert lbl_loss(probs_TE, counts_E, k=1).item() == pytest.approx(1.2, abs=1e-6)
    # f normalises by its own sum: counts from a wider scope (or k slots) give the same value.
    assert lbl_loss(probs_TE, counts_E * 7, k=2).item() == pytest.approx(1.2, abs=1e-6)


def test_lbl_loss_gradient_flows_to_probs_only():
    probs_TE = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.5, 0.5]], requires_grad=True)
    counts_E = torch.tensor([3.0, 1.0], requires_grad=True)
    lbl_loss(probs_TE, counts_E, k=1).backward()
    # d/dp[t, i] of E * sum_i f_i * mean_t p[t, i] = E * f_i / T
    expected = torch.tensor([2 * 0.75 / 3, 2 * 0.25 / 3]).expand(3, 2)
    torch.testing.assert_close(probs_TE.grad, expected)
    assert counts_E.grad is None


def test_lbl_loss_with_no_routed_slots_is_zero_and_rejects_bad_k():
    probs_TE = torch.rand(4, 3, requires_grad=True)
    loss = lbl_loss(probs_TE, torch.zeros(3), k=1)
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="k=4"):
        lbl_loss(probs_TE, torch.ones(3), k=4)


def test_lbl_loss_per_sequence_matches_single_sequence_and_averages():
    torch.manual_seed(0)
    probs_BLE = torch.rand(3, 5, 4).softmax(-1)
    topk_ids_BLK = torch.randint(0, 4, (3, 5, 2))
    per_seq = [
        lbl_loss(probs_BLE[b], expert_counts(topk_ids_BLK[b], 4), k=2) for b in range(3)
    ]
    single = lbl_loss_per_sequence(probs_BLE[:1], topk_ids_BLK[:1])
    torch.testing.assert_close(single, per_seq[0])
    torch.testing.assert_close(lbl_loss_per_sequence(probs_BLE, topk_ids_BLK), torch.stack(per_seq).mean())


def test_lbl_loss_per_sequence_differs_from_batch_scope():
    # Each sequence routes to its own expert: balanced over the batch, skewed within sequences.
    probs_BLE = torch.tensor([[[0.9, 0.1]] * 2, [[0.1, 0.9]] * 2])
    topk_ids_BLK = torch.tensor([[[0]] * 2, [[1]] * 2])
    # per sequence: 2 * (1 * 0.9) = 1.8 for both; batch: f = (0.5, 0.5), P = (0.5, 0.5) -> 1.0
    assert lbl_loss_per_sequence(probs_BLE, topk_ids_BLK).item() == pytest.approx(1.8, abs=1e-6)
    batch = lbl_loss(probs_BLE.reshape(4, 2), expert_counts(topk_ids_BLK.reshape(4, 1), 2), k=1)
    assert batch.item() == pytest.approx(1.0, abs=1e-6)


def test_z_loss_hand_example():
    # logsumexp: ln 2 and ln(3 + 1) = 2 ln 2 -> mean of squares = 2.5 ln^2 2
    logits_TE = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert z_loss(logits_TE).item() == pytest.approx(2.5 * math.log(2) ** 2, rel=1e-6)


def test_expert_bias_update_moves_toward_underloaded_experts():
    load_E = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3
    delta_E = expert_bias_update(load_E, rate=1e-3)
    torch.testing.assert_close(delta_E, torch.tensor([1e-3, 1e-3, 0.0, -1e-3]))
    assert torch.all(expert_bias_update(torch.full((5,), 7.0), rate=1e-3) == 0)
    centred_E = expert_bias_update(load_E, rate=1e-3, center=True)
    assert centred_E.sum().abs().item() < 1e-9
    assert torch.equal(torch.argsort(centred_E), torch.argsort(delta_E))


def test_expert_counts_with_and_without_keep_mask():
    topk_ids_TK = torch.tensor([[0, 2], [2, 1], [2, 0]])
    torch.testing.assert_close(expert_counts(topk_ids_TK, 4), torch.tensor([2.0, 1.0, 3.0, 0.0]))
    keep_TK = torch.tensor([[True, False], [True, True], [False, True]])
    torch.testing.assert_close(expert_counts(topk_ids_TK, 4, keep_TK), torch.tensor([2.0, 1.0, 1.0, 0.0]))


# ---------------------------------------------------------------------------------------------
# Sinkhorn


@pytest.mark.parametrize("n_tokens,n_experts", [(96, 8), (101, 7)])
def test_sinkhorn_marginals_uniform_target(n_tokens, n_experts):
    torch.manual_seed(1)
    logits_TE = torch.randn(n_tokens, n_experts) * 2
    plan_TE = sinkhorn(logits_TE, n_iters=500, tol=1e-5)
    torch.testing.assert_close(plan_TE.sum(1), torch.ones(n_tokens))
    col_error = (plan_TE.sum(0) - n_tokens / n_experts).abs().max().item()
    assert col_error < 1e-5 * n_tokens / n_experts * 1.01
    assert (plan_TE >= 0).all()


def test_sinkhorn_non_uniform_target_is_relative():
    torch.manual_seed(2)
    logits_TE = torch.randn(60, 4)
    target_E = torch.tensor([1.0, 2.0, 3.0, 0.0])  # rescaled to 60 tokens: 10, 20, 30, 0
    plan_TE = sinkhorn(logits_TE, n_iters=500, tol=1e-6, col_target_E=target_E)
    torch.testing.assert_close(plan_TE.sum(1), torch.ones(60))
    torch.testing.assert_close(plan_TE.sum(0), torch.tensor([10.0, 20.0, 30.0, 0.0]), atol=1e-3, rtol=0)


def test_sinkhorn_zero_iterations_is_softmax_and_has_no_grad():
    logits_TE = torch.randn(5, 3, requires_grad=True)
    plan_TE = sinkhorn(logits_TE, n_iters=0)
    torch.testing.assert_close(plan_TE, logits_TE.detach().softmax(-1))
    assert not plan_TE.requires_grad


def test_sinkhorn_keeps_argmax_of_already_balanced_input():
    torch.manual_seed(3)
    n_experts = 6
    preferred_T = torch.arange(48) % n_experts  # every expert preferred by 8 tokens
    logits_TE = 0.3 * torch.randn(48, n_experts) + 3.0 * torch.nn.functional.one_hot(preferred_T, n_experts)
    plan_TE = sinkhorn(logits_TE)
    assert torch.equal(plan_TE.argmax(1), preferred_T)


def test_sinkhorn_moves_mass_away_from_a_popular_expert():
    torch.manual_seed(4)
    logits_TE = torch.randn(64, 4) + torch.tensor([4.0, 0.0, 0.0, 0.0])
    plan_TE = sinkhorn(logits_TE, n_iters=200)
    torch.testing.assert_close(plan_TE.sum(0), torch.full((4,), 16.0), atol=1e-2, rtol=0)
    top1_before_E = torch.bincount(logits_TE.argmax(1), minlength=4)
    top1_after_E = torch.bincount(plan_TE.argmax(1), minlength=4)
    assert top1_after_E.max() < top1_before_E.max()


def test_sinkhorn_stays_finite_when_an_expert_underflows():
    torch.manual_seed(5)
    logits_TE = torch.randn(40, 4)
    logits_TE[:, 0] -= 200.0  # exp() of expert 0 underflows for every token
    plan_TE = sinkhorn(logits_TE)
    assert torch.isfinite(plan_TE).all()
    torch.testing.assert_close(plan_TE.sum(1), torch.ones(40))
    torch.testing.assert_close(plan_TE.sum(0), torch.tensor([0.0, 40 / 3, 40 / 3, 40 / 3]), atol=1e-2, rtol=0)


def test_sinkhorn_batch_dimensions_are_balanced_independently():
    torch.manual_seed(6)
    logits_BTE = torch.randn(3, 20, 4)
    target_BE = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 2.0], [4.0, 3.0, 2.0, 1.0]])
    plan_BTE = sinkhorn(logits_BTE, n_iters=300, tol=1e-6, col_target_E=target_BE)
    for b in range(3):
        single_TE = sinkhorn(logits_BTE[b], n_iters=300, tol=1e-6, col_target_E=target_BE[b])
        torch.testing.assert_close(plan_BTE[b], single_TE, atol=1e-4, rtol=0)
        torch.testing.assert_close(plan_BTE[b].sum(0), 20 * target_BE[b] / target_BE[b].sum(), atol=1e-3, rtol=0)


def test_sinkhorn_rejects_bad_target():
    with pytest.raises(ValueError, match="non-negative"):
        sinkhorn(torch.randn(4, 2), col_target_E=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="shape"):
        sinkhorn(torch.randn(4, 2), col_target_E=torch.ones(3))


# ---------------------------------------------------------------------------------------------
# Balanced assignment (auction)


def assert_valid_assignment(topk_ids_TK: torch.Tensor, k: int, capacity_E: torch.Tensor) -> torch.Tensor:
    assert topk_ids_TK.shape[1] == k and topk_ids_TK.dtype == torch.long
    sorted_TK = topk_ids_TK.sort(1).values
    assert (sorted_TK[:, 1:] != sorted_TK[:, :-1]).all(), "a token got the same expert twice"
    counts_E = torch.bincount(topk_ids_TK.reshape(-1), minlength=capacity_E.numel())
    assert (counts_E <= capacity_E).all(), (counts_E, capacity_E)
    return counts_E


def optimum_k1(scores_TE: torch.Tensor, capacity: int) -> float:
    """Exact optimum for K = 1: each expert replicated ``capacity`` times, then Hungarian."""
    replicated = np.repeat(scores_TE.double().numpy(), capacity, axis=1)
    rows, cols = linear_sum_assignment(replicated, maximize=True)
    return float(replicated[rows, cols].sum())


def optimum_lp(scores_TE: torch.Tensor, k: int, capacity_E: torch.Tensor) -> float:
    """Exact optimum for any K: the b-matching LP is totally unimodular, so its optimum is integral."""
    n_tokens, n_experts = scores_TE.shape
    per_token = kron(identity(n_tokens), np.ones((1, n_experts)))
    per_expert = kron(np.ones((1, n_tokens)), identity(n_experts))
    result = linprog(
        -scores_TE.double().numpy().ravel(),
        A_ub=per_expert,
        b_ub=capacity_E.double().numpy(),
        A_eq=per_token,
        b_eq=np.full(n_tokens, k),
        bounds=(0, 1),
        method="highs",
    )
    assert result.status == 0, result.message
    return -float(result.fun)


def total_score(scores_TE: torch.Tensor, topk_ids_TK: torch.Tensor) -> float:
    return float(scores_TE.double().gather(1, topk_ids_TK).sum())


@pytest.mark.parametrize("n_tokens,n_experts,k", [(48, 8, 1), (48, 8, 2), (50, 8, 3), (37, 6, 4), (24, 4, 4)])
def test_balanced_assignment_invariants(n_tokens, n_experts, k):
    torch.manual_seed(n_tokens * 10 + k)
    scores_TE = torch.randn(n_tokens, n_experts)
    topk_ids_TK = balanced_assignment(scores_TE, k)
    capacity = math.ceil(n_tokens * k / n_experts)
    counts_E = assert_valid_assignment(topk_ids_TK, k, torch.full((n_experts,), capacity))
    if n_tokens * k % n_experts == 0:
        assert (counts_E == n_tokens * k // n_experts).all()
    # Best score first within each token.
    picked_TK = scores_TE.gather(1, topk_ids_TK)
    assert (picked_TK[:, :-1] >= picked_TK[:, 1:]).all()


@pytest.mark.parametrize("seed", range(6))
def test_balanced_assignment_near_optimal_k1(seed):
    generator = torch.Generator().manual_seed(seed)
    n_tokens, n_experts = 30 + 3 * seed, 4 + seed % 3
    scores_TE = torch.randn(n_tokens, n_experts, generator=generator)
    capacity = math.ceil(n_tokens / n_experts)
    best = optimum_k1(scores_TE, capacity)
    eps = float(scores_TE.max() - scores_TE.min()) / 50  # the default
    # Textbook auction: within T * eps of the optimum (eps-complementary slackness).
    exact_ids = balanced_assignment(scores_TE, 1, price_creep=False)
    assert_valid_assignment(exact_ids, 1, torch.full((n_experts,), capacity))
    assert best - total_score(scores_TE, exact_ids) <= n_tokens * eps + 1e-4
    # Default (price creep): measured within 0.35 T * eps on 200 random problems; allow T * eps.
    default_ids = balanced_assignment(scores_TE, 1)
    assert best - total_score(scores_TE, default_ids) <= n_tokens * eps + 1e-4
    # A fine eps gets close to the exact optimum.
    fine_ids = balanced_assignment(scores_TE, 1, n_iters=3000, eps=eps / 100, price_creep=False)
    assert best - total_score(scores_TE, fine_ids) <= n_tokens * eps / 100 + 1e-4


@pytest.mark.parametrize("k", [2, 3])
def test_balanced_assignment_near_optimal_top_k(k):
    generator = torch.Generator().manual_seed(10 + k)
    n_tokens, n_experts = 40, 6
    scores_TE = torch.randn(n_tokens, n_experts, generator=generator)
    capacity_E = torch.full((n_experts,), math.ceil(n_tokens * k / n_experts))
    best = optimum_lp(scores_TE, k, capacity_E)
    eps = float(scores_TE.max() - scores_TE.min()) / 50
    ids = balanced_assignment(scores_TE, k, price_creep=False)
    assert_valid_assignment(ids, k, capacity_E)
    assert best - total_score(scores_TE, ids) <= n_tokens * k * eps + 1e-4
    ids = balanced_assignment(scores_TE, k)
    assert best - total_score(scores_TE, ids) <= n_tokens * k * eps + 1e-4


@pytest.mark.parametrize("k", [1, 2, 4])
def test_balanced_assignment_balances_when_every_token_prefers_one_expert(k):
    torch.manual_seed(5)
    n_tokens, n_experts = 64, 8
    scores_TE = torch.randn(n_tokens, n_experts) + 10.0 * (torch.arange(n_experts) == 0)
    ids = balanced_assignment(scores_TE, k)
    counts_E = assert_valid_assignment(ids, k, torch.full((n_experts,), n_tokens * k // n_experts))
    assert (counts_E == n_tokens * k // n_experts).all()
    # ... and still maximises the score under that balance.
    best = optimum_lp(scores_TE, k, torch.full((n_experts,), n_tokens * k // n_experts))
    eps = float(scores_TE.max() - scores_TE.min()) / 50
    assert best - total_score(scores_TE, ids) <= n_tokens * k * eps + 1e-4


def test_balanced_assignment_custom_capacities_with_slack():
    torch.manual_seed(6)
    scores_TE = torch.randn(30, 5)
    capacity_E = torch.tensor([0, 4, 20, 30, 30])  # 84 slots for 60 assignments; expert 0 closed
    ids = balanced_assignment(scores_TE, 2, capacity_E)
    assert_valid_assignment(ids, 2, capacity_E)
    best = optimum_lp(scores_TE, 2, capacity_E.clamp(max=30))
    eps = float(scores_TE.max() - scores_TE.min()) / 50
    assert best - total_score(scores_TE, ids) <= 60 * eps + 1e-4


def test_balanced_assignment_leftovers_are_placed_when_iterations_run_out():
    torch.manual_seed(7)
    scores_TE = torch.randn(50, 6) + torch.linspace(3, 0, 6)
    for k in (1, 3):
        for n_iters in (0, 1, 2):
            ids = balanced_assignment(scores_TE, k, n_iters=n_iters)
            counts_E = assert_valid_assignment(ids, k, torch.full((6,), math.ceil(50 * k / 6)))
            assert counts_E.sum() == 50 * k


def test_balanced_assignment_fallback_displaces_when_greedy_is_stuck():
    # Every token ranks experts 0 > 1 > 2; token 2 ranks lowest. With no auction rounds, the greedy
    # fill gives experts 0 and 1 to tokens 0 and 1, and token 2 is left with expert 2 only: the
    # fallback has to move somebody to expert 2 to give token 2 a second, distinct expert.
    scores_TE = torch.tensor([[3.0, 2.0, 0.0], [3.0, 2.0, 0.0], [1.0, 0.5, 0.0]])
    ids = balanced_assignment(scores_TE, 2, torch.tensor([2, 2, 2]), n_iters=0)
    counts_E = assert_valid_assignment(ids, 2, torch.tensor([2, 2, 2]))
    assert counts_E.tolist() == [2, 2, 2]


def test_balanced_assignment_groups_balance_each_group_like_separate_calls():
    torch.manual_seed(8)
    lengths = [12, 9, 16]
    scores_TE = torch.randn(sum(lengths), 4) + torch.tensor([2.0, 0.0, 0.0, 0.0])
    group_ids_T = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))
    eps = 0.05  # fixed, so that every call runs the same auction
    ids = balanced_assignment(scores_TE, 2, eps=eps, group_ids_T=group_ids_T)
    start = 0
    for length in lengths:
        part = slice(start, start + length)
        alone = balanced_assignment(scores_TE[part], 2, eps=eps)
        assert torch.equal(ids[part], alone)
        assert_valid_assignment(ids[part], 2, torch.full((4,), math.ceil(length * 2 / 4)))
        start += length


def test_balanced_assignment_groups_with_per_group_capacities():
    torch.manual_seed(9)
    scores_TE = torch.randn(10, 3)
    group_ids_T = torch.tensor([0] * 4 + [1] * 6)
    capacity_GE = torch.tensor([[4, 0, 0], [2, 2, 2]])
    ids = balanced_assignment(scores_TE, 1, capacity_GE, group_ids_T=group_ids_T)
    assert (ids[:4] == 0).all()
    assert torch.bincount(ids[4:, 0], minlength=3).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="group 0"):
        balanced_assignment(scores_TE, 1, torch.tensor([[3, 0, 0], [2, 2, 2]]), group_ids_T=group_ids_T)


def test_balanced_assignment_edge_cases_and_errors():
    assert balanced_assignment(torch.zeros(0, 4), 2).shape == (0, 2)
    ids = balanced_assignment(torch.zeros(8, 4), 1)  # all scores equal
    assert_valid_assignment(ids, 1, torch.full((4,), 2))
    ids = balanced_assignment(torch.randn(5, 3), 3)  # k == E: every token gets every expert
    assert (ids.sort(1).values == torch.arange(3)).all()
    with pytest.raises(ValueError, match="k=5"):
        balanced_assignment(torch.randn(4, 4), 5)
    with pytest.raises(ValueError, match="fewer than tokens x k"):
        balanced_assignment(torch.randn(10, 4), 2, torch.tensor([5, 5, 5, 4]))
    with pytest.raises(ValueError, match="fewer than tokens x k"):  # capacity beyond T is unusable
        balanced_assignment(torch.randn(3, 3), 2, torch.tensor([9, 0, 0]))
    with pytest.raises(ValueError, match="whole numbers"):
        balanced_assignment(torch.randn(4, 2), 1, torch.tensor([2.5, 2.0]))
    ids = balanced_assignment(torch.randn(4, 2), 1, torch.tensor([3.0, 1.0]))  # float counts work
    assert_valid_assignment(ids, 1, torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="finite"):
        balanced_assignment(torch.tensor([[0.0, math.inf]]), 1)


# ---------------------------------------------------------------------------------------------
# Capacity (token dropping) and expert choice

IDS_TK = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
SCORES_TK = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3], [0.6, 0.4]])


def test_capacity_keep_mask_drops_lowest_scores():
    # expert 0 gets .9 .5 .7 .4 -> keeps .9 .7; expert 1 gets .1 .3 .6 -> keeps .6 .3; expert 2 keeps .5
    keep_TK = capacity_keep_mask(IDS_TK, SCORES_TK, n_experts=3, capacity=2, policy="probs")
    expected = torch.tensor([[True, False], [False, True], [True, True], [True, False]])
    assert torch.equal(keep_TK, expected)


def test_capacity_keep_mask_drops_latest_positions():
    # expert 0: t0 t1 kept, t2 t3 dropped; expert 1: t0 t2 kept, t3 dropped; expert 2: t1 kept
    keep_TK = capacity_keep_mask(IDS_TK, SCORES_TK, n_experts=3, capacity=2, policy="position")
    expected = torch.tensor([[True, True], [True, True], [False, True], [False, False]])
    assert torch.equal(keep_TK, expected)


def test_capacity_keep_mask_position_orders_k_slots_within_a_token():
    # Expert 0 appears in token 0's second slot and token 1's first slot: token 0 comes first.
    keep_TK = capacity_keep_mask(
        torch.tensor([[1, 0], [0, 1]]), torch.ones(2, 2), n_experts=2, capacity=1, policy="position"
    )
    assert torch.equal(keep_TK, torch.tensor([[True, True], [False, False]]))


def test_capacity_keep_mask_breaks_score_ties_by_position_and_handles_extremes():
    ids_TK = torch.tensor([[0], [0], [0]])
    keep_TK = capacity_keep_mask(ids_TK, torch.tensor([[0.5], [0.5], [0.5]]), 1, capacity=2, policy="probs")
    assert keep_TK.reshape(-1).tolist() == [True, True, False]
    assert not capacity_keep_mask(IDS_TK, SCORES_TK, 3, capacity=0, policy="probs").any()
    assert capacity_keep_mask(IDS_TK, SCORES_TK, 3, capacity=8, policy="position").all()
    with pytest.raises(ValueError, match="drop policy"):
        capacity_keep_mask(IDS_TK, SCORES_TK, 3, capacity=2, policy="random")


def test_expert_choice_picks_each_experts_best_tokens():
    scores_TE = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.6], [0.3, 0.4]], requires_grad=True)
    token_ids_EC, gate_scores_EC = expert_choice(scores_TE, capacity=2)
    assert token_ids_EC.tolist() == [[1, 2], [0, 2]]
    torch.testing.assert_close(gate_scores_EC, torch.tensor([[0.8, 0.5], [0.9, 0.6]]))
    gate_scores_EC.sum().backward()
    expected_grad = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(scores_TE.grad, expected_grad)
    with pytest.raises(ValueError, match="capacity=5"):
        expert_choice(scores_TE, capacity=5)


def test_expert_choice_batch_dimensions_choose_independently():
    torch.manual_seed(10)
    scores_BTE = torch.randn(2, 6, 3)
    token_ids_BEC, gate_scores_BEC = expert_choice(scores_BTE, capacity=2)
    assert token_ids_BEC.shape == (2, 3, 2)
    for b in range(2):
        token_ids_EC, gate_scores_EC = expert_choice(scores_BTE[b], capacity=2)
        assert torch.equal(token_ids_BEC[b], token_ids_EC)
        torch.testing.assert_close(gate_scores_BEC[b], gate_scores_EC)
