"""The SwiGLU activation silu(gate) * up on a fused [..., 2H] gate/up tensor, with a hand-written
backward.

Why by hand: autograd's version takes the gate and up halves with ``chunk``, and the backward of
``chunk`` concatenates the two half gradients into a new [..., 2H] tensor: one more full read and
write of the largest activation of the FFN (on the benchmark's C3 experts, a 64 MB ``cat`` per
step, ~4 % of the layer's time on one thread). Here the two halves of the gradient are written
straight into their places in one buffer. Used by the dense SwiGLU and the grouped experts alike,
so the MoE-vs-dense benchmarks compare equals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, where gate and up are the first and second halves of the last dim."""
    return _SwiGLU.apply(gate_up)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        silu_gate = F.silu(gate)
        # the same two tensors autograd's silu-then-multiply would keep
        ctx.save_for_backward(gate_up, silu_gate)
        return silu_gate * up

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        gate_up, silu_gate = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad = torch.empty_like(gate_up)
        grad_gate, grad_up = grad.chunk(2, dim=-1)  # views: written in place, no concatenation
        torch.mul(grad_out, silu_gate, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad_out * up, gate, grad_input=grad_gate)
        return grad
