"""Sorted dispatch and gated combine equal the plain gather / gate multiply / index_add."""

from __future__ import annotations

import pytest
import torch

from trainables.dispatch import combine, dispatch, plan_slots


def test_plan_of_a_hand_worked_example():
    # slots (token, expert): (0,2) (0,0) (1,0) (1,1); expert order (stable): slots 1, 2, 3, 0
    plan = plan_slots(torch.tensor([0, 0, 1, 1]), torch.tensor([2, 0, 0, 1]), n_tokens=3, n_experts=4)
    assert plan.counts_E.tolist() == [2, 1, 1, 0]
    assert plan.token_of_sorted_S.tolist() == [0, 1, 1, 0]
    assert plan.sorted_row_of_bag_S.tolist() == [3, 0, 1, 2]
    assert plan.bag_of_sorted_S.tolist() == [1, 2, 3, 0]
    assert plan.bag_offsets_T.tolist() == [0, 2, 4]  # token 2 has an empty bag
    assert plan.bag_order_S is None


@pytest.mark.parametrize("n_experts", [4, 40_000])  # int16 sort keys, and int32 beyond their range
def test_plan_sorts_expert_ids_of_any_width(n_experts):
    expert_S = torch.tensor([n_experts - 1, 0, 32_767 % n_experts, 1, n_experts - 1, 2])
    token_S = torch.tensor([0, 0, 1, 1, 2, 2])
    plan = plan_slots(token_S, expert_S, n_tokens=3, n_experts=n_experts)
    sorted_experts = expert_S[plan.bag_of_sorted_S]
    assert sorted_experts.tolist() == sorted(expert_S.tolist())
    # the two permutations are inverses, and ties keep token order (stable)
    assert plan.sorted_row_of_bag_S[plan.bag_of_sorted_S].tolist() == list(range(6))
    for e in set(expert_S.tolist()):
        tokens = plan.token_of_sorted_S[sorted_experts == e].tolist()
        assert tokens == sorted(tokens)


def _reference(x_TD, token_S, expert_S, gate_S, weight_ED):
    """Textbook path: gather by token, per-slot 'expert' (a row scaling), gate, index_add."""
    y_SD = x_TD[token_S] * weight_ED[expert_S]
    return torch.zeros_like(x_TD).index_add(0, token_S, y_SD * gate_S.unsqueeze(1))


def _sorted_path(x_TD, token_S, expert_S, gate_S, weight_ED):
    plan = plan_slots(token_S, expert_S, x_TD.shape[0], weight_ED.shape[0])
    x_SD = dispatch(x_TD, plan)
    expert_sorted_S = torch.repeat_interleave(torch.arange(weight_ED.shape[0]), plan.counts_E)
    return combine(x_SD * weight_ED[expert_sorted_S], gate_S, plan)


def _routings():
    g = torch.Generator().manual_seed(0)
    T, E, K = 10, 5, 2
    ids_TK = torch.rand(T, E, generator=g).topk(K, dim=-1).indices
    token_TK = torch.arange(T).unsqueeze(1).expand(T, K)
    keep_TK = torch.rand(T, K, generator=g) > 0.4
    keep_TK[3] = False  # a token with no slot at all
    shuffle = torch.randperm(T * K, generator=g)
    return {
        "dropless-topk": (token_TK.reshape(-1), ids_TK.reshape(-1)),
        "dropped-slots": (token_TK[keep_TK], ids_TK[keep_TK]),
        "not-grouped-by-token": (token_TK.reshape(-1)[shuffle], ids_TK.reshape(-1)[shuffle]),
        "no-slots": (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)),
    }


@pytest.mark.parametrize("name", list(_routings()))
def test_sorted_path_matches_reference_on_values_and_gradients(name):
    token_S, expert_S = _routings()[name]
    T, E, D = 10, 5, 6
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, D, generator=g, dtype=torch.float64, requires_grad=True)
    gate = torch.rand(token_S.numel(), generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(E, D, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(T, D, generator=g, dtype=torch.float64)

    outs, grads = [], []
    for path in (_reference, _sorted_path):
        out = path(x, token_S, expert_S, gate, w)
        (out * upstream).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad.clone() for t in (x, gate, w)])
        for t in (x, gate, w):
            t.grad = None
    torch.testing.assert_close(outs[1], outs[0])
    for got, want, what in zip(grads[1], grads[0], ("x", "gate", "weights")):
        torch.testing.assert_close(got, want, msg=what)
    if token_S.numel():
        assert outs[0].abs().sum() > 0  # the comparison is not between two zero tensors


def test_tokens_without_slots_get_zero_output_and_zero_gradient():
    token_S, expert_S = torch.tensor([0, 0, 2]), torch.tensor([1, 0, 1])
    x = torch.randn(3, 4, requires_grad=True)
    plan = plan_slots(token_S, expert_S, n_tokens=3, n_experts=2)
    out = combine(dispatch(x, plan), torch.ones(3), plan)
    out.sum().backward()
    assert torch.equal(out[1], torch.zeros(4))
    torch.testing.assert_close(out[0], 2 * x[0].detach())
    assert torch.equal(x.grad[1], torch.zeros(4))
    assert torch.equal(x.grad[0], torch.full((4,), 2.0))


def test_gradcheck_dispatch_and_combine():
    token_S, expert_S = _routings()["dropped-slots"]
    plan = plan_slots(token_S, expert_S, 10, 5)
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    gate = torch.rand(token_S.numel(), dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x_, g_: combine(dispatch(x_, plan) ** 2, g_, plan), (x, gate))
