"""Expert-parallel CPU matmuls equal the per-expert products and leave torch's threading as found."""

from __future__ import annotations

import threading

import pytest
import torch

from trainables import expert_threads
from trainables.experts import GroupedExperts


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(expert_threads, "ENABLED", True)  # opt-in (MOE_EXPERT_THREADS=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


COUNTS = [5, 0, 17, 1, 0, 9]  # empty experts, uneven loads
DOMINANT = [2, 40, 0, 3, 1, 4]  # one expert with more than half of the rows (runs unsplit first)


def _inputs(k=6, n=7, counts=COUNTS):
    g = torch.Generator().manual_seed(0)
    S = sum(counts)
    return torch.randn(S, k, generator=g), torch.randn(len(counts), k, n, generator=g), torch.randn(S, n, generator=g)


@pytest.mark.parametrize("counts", [COUNTS, DOMINANT], ids=["uneven", "one-dominant"])
def test_rows_and_weight_grads_equal_per_expert_products(two_threads, counts):
    a, b, grad = _inputs(counts=counts)
    out = expert_threads.grouped_mm_rows(a, b, counts)
    wgrad = expert_threads.grouped_mm_weight_grad(a, grad, counts)
    start = 0
    for e, rows in enumerate(counts):
        sl = slice(start, start + rows)
        torch.testing.assert_close(out[sl], a[sl] @ b[e])
        torch.testing.assert_close(wgrad[e], a[sl].T @ grad[sl])
        start += rows
    empty = counts.index(0)
    assert torch.equal(wgrad[empty], torch.zeros_like(wgrad[empty]))  # an expert without rows


def test_transposed_weights_view(two_threads):
    a, b, _ = _inputs(k=7, n=6)
    b_t = b.transpose(1, 2)  # [E, 6, 7] viewed as the backward uses it
    a6 = a[:, :6].contiguous()
    out = expert_threads.grouped_mm_rows(a6, b_t, COUNTS)
    start = 0
    for e, rows in enumerate(COUNTS):
        torch.testing.assert_close(out[start : start + rows], a6[start : start + rows] @ b[e].T)
        start += rows


def test_off_unless_enabled(monkeypatch):
    monkeypatch.setattr(expert_threads, "ENABLED", False)
    assert not expert_threads.worth_threading(torch.zeros(4096, 512), 512)
    monkeypatch.setattr(expert_threads, "ENABLED", True)
    assert expert_threads.worth_threading(torch.zeros(4096, 512), 512) == (torch.get_num_threads() > 1)


def test_ranges_are_contiguous_balanced_and_cover_every_expert():
    tasks = list(range(6))
    chunks = expert_threads._balanced_ranges(tasks, [10, 10, 10, 10, 10, 10], 2)
    assert chunks == [[0, 1, 2], [3, 4, 5]]
    skewed = expert_threads._balanced_ranges(tasks, [50, 1, 1, 1, 1, 1], 2)
    assert skewed == [[0], [1, 2, 3, 4, 5]]
    assert expert_threads._balanced_ranges(tasks, [0] * 6, 3) == [[0], [1], [2, 3, 4, 5]]


def test_workers_run_single_threaded_and_other_threads_keep_the_default(two_threads):
    a, b, _ = _inputs()
    expert_threads.grouped_mm_rows(a, b, COUNTS)  # makes the pool
    pool = expert_threads._pool()
    inside = pool.executor.submit(torch.get_num_threads).result()
    assert inside == 1
    assert torch.get_num_threads() == 2
    seen = {}
    t = threading.Thread(target=lambda: seen.setdefault("n", torch.get_num_threads()))
    t.start()
    t.join()
    assert seen["n"] == 2  # a thread started later still gets the process default


def test_grouped_experts_threaded_path_matches_loop(two_threads, monkeypatch):
    monkeypatch.setattr(expert_threads, "MIN_FLOPS", 0)  # thread even these small products
    torch.manual_seed(0)
    experts = GroupedExperts(6, 8, 12)
    counts_E = torch.tensor(COUNTS)
    x = torch.randn(sum(COUNTS), 8, requires_grad=True)
    upstream = torch.randn(sum(COUNTS), 8)
    results = []
    for forward in (experts._forward_grouped, experts._forward_loop):
        forward(x, counts_E).backward(upstream)
        results.append([x.grad.clone(), *(p.grad.clone() for p in experts.parameters())])
        x.grad = None
        experts.zero_grad(set_to_none=True)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
