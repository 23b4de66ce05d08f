"""Rotary positions: the complex-multiply form against the rotation written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.model import _pairs_viewable_as_complex, apply_rotary, rotary_tables


def _by_hand(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def test_a_pair_turns_by_its_angle():
    # position 1, one pair at frequency 1 (head width 2): (1, 0) turns by 1 radian
    cos, sin = rotary_tables(seq_len=2, head_dim=2)
    x = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # [B=1, H=1, L=2, Dh=2]
    out = apply_rotary(x, cos, sin)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([1.0, 0.0]))  # position 0: no turn
    torch.testing.assert_close(out[0, 0, 1], torch.tensor([math.cos(1.0), math.sin(1.0)]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_fast_form_matches_the_rotation_on_attention_views(dtype):
    """q and k are permuted views of the qkv projection, as in CausalSelfAttention."""
    B, L, H, Dh = 3, 10, 4, 8
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, L, 3 * H * Dh, generator=gen).to(dtype).requires_grad_()
    cos, sin = rotary_tables(L, Dh)
    upstream = torch.randn(B, H, L, Dh, generator=gen).to(dtype)
    results = []
    for rotate in (apply_rotary, lambda x, c, s: _by_hand(x, c.to(x.dtype), s.to(x.dtype))):
        q, k, _ = qkv.view(B, L, 3, H, Dh).permute(2, 0, 3, 1, 4)
        assert _pairs_viewable_as_complex(k)  # the complex form is taken for fp32/fp64
        out = rotate(k, cos, sin)
        (grad,) = torch.autograd.grad(out, qkv, upstream)
        results.append((out, grad))
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(results[0][0], results[1][0], **tol)
    torch.testing.assert_close(results[0][1], results[1][1], **tol)
    # a rotation keeps each pair's length
    pairs = results[0][0].float().unflatten(-1, (-1, 2)).norm(dim=-1)
    q, k, _ = qkv.detach().float().view(B, L, 3, H, Dh).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(pairs, k.unflatten(-1, (-1, 2)).norm(dim=-1), **tol)
