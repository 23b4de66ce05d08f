"""The ``window`` scope (Qwen-style balance-window sweep): LBL over every n consecutive sequences.

Window 1 must be the sequence scope, a window of the whole step the global batch, and values in
between the mean of the per-window losses computed by hand.
"""

from __future__ import annotations

import pytest
import torch

from trainables import balancing
from trainables.config import TrialConfig
from trainables.errors import ConfigError
from trainables.routers import RoutingContext, build_router, runs_whole_step_forward

from tests.trainables.helpers import tiny_config

L = 16
STEP_SEQUENCES = 8  # tiny_config: micro_batch_size 4 x grad_accum 2


def _router(scope: str, window: int = 0):
    cfg = tiny_config(**{"router.method": "lbl", "router.scope": scope, "router.lbl_coef": 1.0,
                         "router.balance_window": window})
    torch.manual_seed(0)  # the same gate weights for every scope
    return cfg, build_router(cfg).train()


def _step_tokens(cfg: TrialConfig) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(STEP_SEQUENCES * L, cfg.model.d_model)


def test_window_of_one_sequence_is_the_sequence_scope():
    cfg, window = _router("window", 1)
    _, sequence = _router("sequence")
    x = _step_tokens(cfg)
    ctx = RoutingContext(seq_len=L)
    assert torch.allclose(window(x, ctx).aux_loss, sequence(x, ctx).aux_loss)


def test_window_of_the_whole_step_is_the_global_batch():
    cfg, window = _router("window", STEP_SEQUENCES)
    _, glob = _router("global_batch")
    x = _step_tokens(cfg)
    ctx = RoutingContext(seq_len=L)
    a_window, a_glob = window(x, ctx), glob(x, ctx)
    assert torch.allclose(a_window.aux_loss, a_glob.aux_loss)
    g_window = torch.autograd.grad(a_window.aux_loss, window.gate.weight)[0]
    g_glob = torch.autograd.grad(a_glob.aux_loss, glob.gate.weight)[0]
    assert torch.allclose(g_window, g_glob, atol=1e-7)


def test_intermediate_window_is_the_mean_of_per_window_losses():
    cfg, router = _router("window", 2)
    x = _step_tokens(cfg)
    got = router(x, RoutingContext(seq_len=L)).aux_loss
    with torch.no_grad():
        probs = router.gate(x).softmax(-1)
        ids = probs.topk(cfg.model.top_k, -1).indices
        per_window = []
        for w in range(STEP_SEQUENCES // 2):
            rows = slice(w * 2 * L, (w + 1) * 2 * L)
            counts = torch.bincount(ids[rows].reshape(-1), minlength=cfg.model.n_experts).float()
            per_window.append(balancing.lbl_loss(probs[rows], counts, cfg.model.top_k))
    assert torch.allclose(got, torch.stack(per_window).mean())
    # and it sits between the narrowest and widest windows' views of the same tokens
    assert not torch.allclose(got, _router("window", 1)[1](x, RoutingContext(seq_len=L)).aux_loss)


def test_window_runs_the_step_as_one_forward_pass_so_windows_can_span_micro_batches():
    cfg, _ = _router("window", 8)
    assert runs_whole_step_forward(cfg)
    assert cfg.balance_window_tokens() == 8 * L


@pytest.mark.parametrize("overrides, fragment", [
    ({"router.scope": "window", "router.balance_window": 3}, "does not divide the step's 8 sequences"),
    ({"router.scope": "window", "router.balance_window": 0}, "router.balance_window: must be >= 1"),
    ({"router.scope": "window", "router.balance_window": 2, "router.method": "eb"},
     "window is implemented for router.method lbl only"),
    ({"router.scope": "micro_batch", "router.balance_window": 2}, "only used with router.scope: window"),
])
def test_bad_windows_are_named(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        tiny_config(**{"router.method": "lbl", **overrides})
    assert fragment in str(err.value)
