"""global_batch scope: equals micro_batch for one micro-batch on one worker, accumulates over
micro-batches, and all-reduces counts across real gloo processes."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainables import balancing
from trainables.routers import RoutingContext, build_router
from trainables.distributed import DistributedGroup

from tests.trainables.helpers import tiny_config

L = 16


def _lbl_router(scope: str, seed: int = 0):
    cfg = tiny_config(**{"router.method": "lbl", "router.scope": scope, "router.lbl_coef": 1.0})
    torch.manual_seed(seed)
    return cfg, build_router(cfg).train()


def test_global_equals_micro_with_one_micro_batch_and_one_worker():
    _, micro = _lbl_router("micro_batch")
    _, glob = _lbl_router("global_batch")
    x = torch.randn(64, micro.gate.in_features)
    ctx = RoutingContext(seq_len=L)
    a_micro, a_glob = micro(x, ctx), glob(x, ctx)
    assert torch.equal(a_micro.expert_S, a_glob.expert_S)
    assert torch.allclose(a_micro.aux_loss, a_glob.aux_loss)
    g_micro = torch.autograd.grad(a_micro.aux_loss, micro.gate.weight)[0]
    g_glob = torch.autograd.grad(a_glob.aux_loss, glob.gate.weight)[0]
    assert torch.allclose(g_micro, g_glob)


def test_global_accumulates_counts_over_micro_batches():
    cfg, glob = _lbl_router("global_batch")
    ctx = RoutingContext(seq_len=L)
    x1, x2 = torch.randn(64, cfg.model.d_model), torch.randn(64, cfg.model.d_model) + 1.0
    glob(x1, ctx)
    a2 = glob(x2, ctx)
    with torch.no_grad():
        def counts(x):
            ids = glob.gate(x).softmax(-1).topk(cfg.model.top_k, -1).indices
            return torch.bincount(ids.reshape(-1), minlength=cfg.model.n_experts).float()
        both = counts(x1) + counts(x2)
        assert torch.equal(glob.counts.step_counts_E, both)
        probs2 = glob.gate(x2).softmax(-1)
        assert torch.allclose(a2.aux_loss, balancing.lbl_loss(probs2, both, cfg.model.top_k))
    glob.post_step()
    assert glob.counts.step_counts_E.sum() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg, router = _lbl_router("global_batch", seed=0)  # same weights on both workers
        router.dist = DistributedGroup()
        g = torch.Generator().manual_seed(100 + rank)  # different tokens per worker
        x = torch.randn(64, cfg.model.d_model, generator=g)
        a = router(x, RoutingContext(seq_len=L))
        grad = torch.autograd.grad(a.aux_loss, router.gate.weight)[0]
        result = (rank, x, router.counts.step_counts_E.clone(), a.aux_loss.detach(), grad)
        torch.save(result, f"{out_dir}/rank{rank}.pt")  # files: tensors outlive the worker
    finally:
        dist.destroy_process_group()


def test_global_scope_all_reduces_counts_across_two_gloo_workers(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    (_, x0, c0, loss0, grad0), (_, x1, c1, loss1, grad1) = results
    cfg, ref = _lbl_router("global_batch", seed=0)
    with torch.no_grad():
        ids = ref.gate(torch.cat([x0, x1])).softmax(-1).topk(cfg.model.top_k, -1).indices
        both = torch.bincount(ids.reshape(-1), minlength=cfg.model.n_experts).float()
    # both workers hold the counts of both: the window spans the two workers
    assert torch.equal(c0, both) and torch.equal(c1, both)
    # each worker's loss uses the global f and its local P, at full strength
    for x, loss, grad in [(x0, loss0, grad0), (x1, loss1, grad1)]:
        local = balancing.lbl_loss(ref.gate(x).softmax(-1), both, cfg.model.top_k)
        assert torch.allclose(loss, local.detach())
        expected = torch.autograd.grad(local, ref.gate.weight)[0]
        assert torch.allclose(grad, expected, atol=1e-6)
