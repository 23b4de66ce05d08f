"""The SwiGLU activation silu(gate) * up on a fused [..., 2H] gate/up tensor, with a hand-written
backward.

Why by hand: autograd's version takes the gate and up halves with ``chunk``, and the backward of
``chunk`` concatenates the two half gradients into a new [..., 2H] tensor: one more full read and
write of the largest activation of the FFN (on the benchmark's C3 experts, a 64 MB ``cat`` per
step, ~4 % of the layer's time on one thread). Here the two halves of the gradient are written
straight into their places in one buffer. Used by the dense SwiGLU and the grouped experts alike,
so the MoE-vs-dense benchmarks compare equals.

The transcendental kernels (silu and its backward) read and write the gate half as a contiguous
copy: on CPU they run 3-4x slower on a strided half of the [..., 2H] tensor than on a contiguous
tensor of the same size (1 thread, [12288, 128]: silu 1.7 vs 0.42 ms, silu_backward 2.3 vs
0.61 ms; the copy costs less than the difference). Same results bit for bit; BENCHMARKS.md,
"Step utilisation".
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
        gate = gate.contiguous()  # silu on a strided half is several times slower on CPU
        silu_gate = F.silu(gate)
        # the tensors autograd's silu-then-multiply would keep, the gate half as its own copy
        ctx.save_for_backward(gate_up, gate, silu_gate)
        return silu_gate * up

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        gate_up, gate, silu_gate = ctx.saved_tensors
        up = gate_up.chunk(2, dim=-1)[1]
        grad = torch.empty_like(gate_up)
        grad_gate, grad_up = grad.chunk(2, dim=-1)  # views: written in place, no concatenation
        torch.mul(grad_out, silu_gate, out=grad_up)
        # silu_backward into a contiguous tensor, then one copy into the strided half: faster
        # than writing the strided half directly (see the module docstring)
        grad_gate.copy_(torch.ops.aten.silu_backward(grad_out * up, gate))
        return grad
