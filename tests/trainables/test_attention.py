"""The blocked causal attention against PyTorch's SDPA, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainables import attention
from trainables.attention import blocked_path_fits, causal_attention


@pytest.fixture
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _qkv(B, H, L, Dh, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, Dh, generator=gen, dtype=dtype, requires_grad=True) for _ in range(3)]


# L: one block, several whole blocks, a partial last block, a single position
@pytest.mark.parametrize("L", [1, 16, 32, 50, 128])
def test_matches_sdpa_with_gradients(one_thread, L):
    q, k, v = _qkv(2, 3, L, 8, torch.float64)
    upstream = torch.randn(2, 3, L, 8, dtype=torch.float64)
    assert blocked_path_fits(q)
    ours = causal_attention(q, k, v)
    grads = torch.autograd.grad(ours, (q, k, v), upstream)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref_grads = torch.autograd.grad(ref, (q, k, v), upstream)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_float32_on_attention_views(one_thread):
    """q, k contiguous (after rotary), v a permuted view of the qkv projection, as in the model."""
    B, L, H, Dh = 4, 128, 4, 32
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, L, 3, H, Dh, generator=gen, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    q, k = q.contiguous(), k.contiguous()
    upstream = torch.randn(B, H, L, Dh, generator=gen)
    (ours,) = torch.autograd.grad(causal_attention(q, k, v), qkv, upstream)
    (ref,) = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), qkv, upstream)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_gradcheck(one_thread):
    q, k, v = _qkv(1, 2, 40, 4, torch.float64, seed=2)
    assert torch.autograd.gradcheck(causal_attention, (q, k, v))


def test_sdpa_is_kept_elsewhere(one_thread, monkeypatch):
    q = torch.zeros(1, 1, 8, 4)
    assert blocked_path_fits(q)
    assert not blocked_path_fits(q.to(torch.bfloat16))
    assert not blocked_path_fits(torch.zeros(1, 1, attention.MAX_BLOCKED_LEN + 1, 4))
    monkeypatch.setattr(attention, "IMPLEMENTATION", "sdpa")
    assert not blocked_path_fits(q)
    monkeypatch.setattr(attention, "IMPLEMENTATION", "auto")
    torch.set_num_threads(2)
    assert not blocked_path_fits(q)
