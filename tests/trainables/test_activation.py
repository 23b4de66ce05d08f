"""The hand-written SwiGLU backward against autograd's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.activation import swiglu


def _reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def test_values_and_gradients_match_autograd():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64)
    ours = swiglu(x)
    (grad_ours,) = torch.autograd.grad(ours, x, upstream)
    ref = _reference(x)
    (grad_ref,) = torch.autograd.grad(ref, x, upstream)
    # not bit for bit: silu of the contiguous gate copy takes the vectorised kernel, autograd's
    # silu of the strided half the scalar one (they differ in the last bit in float64)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(swiglu, (x[:1, :2].detach().requires_grad_(),))


def test_by_hand_at_zero_and_one():
    # silu(0) = 0, silu'(0) = 1/2; silu(1) = sigmoid(1), silu'(1) = s + s(1 - s) with s = sigmoid(1)
    x = torch.tensor([[0.0, 1.0, 3.0, 2.0]], dtype=torch.float64, requires_grad=True)
    out = swiglu(x)
    s = torch.sigmoid(torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(out, torch.stack([torch.tensor(0.0, dtype=torch.float64), 2 * s]).view(1, 2))
    out.sum().backward()
    expected = torch.stack([3 * torch.tensor(0.5, dtype=torch.float64), 2 * (s + s * (1 - s)),
                            torch.tensor(0.0, dtype=torch.float64), s]).view(1, 4)
    torch.testing.assert_close(x.grad, expected)
