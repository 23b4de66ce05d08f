"""Expert feed-forward networks computed on tokens sorted by expert.

Shape legend: S routed slots (token copies after dispatch, sorted by expert), D model width,
H expert hidden width, E experts.

Why this layout (BENCHMARKS.md, "MoE layer vs dense FFN": the `loop-mask` and `padded-bmm` rows
against `routed`; "What changed the figures", item 4): weights are stored as one [E, D, 2H] /
[E, H, D] tensor pair and multiplied with ``torch._grouped_mm`` on contiguous per-expert chunks,
so there is no per-expert masking, no padding in the dropless path, and backward never
materialises a full-size zero gradient per expert (which indexing ``W[e]`` in a Python loop
does). Where ``_grouped_mm`` is unavailable or cannot take the sizes (row strides must be
multiples of 16 bytes: d and h multiples of 4 in fp32), a loop over ``unbind(0)`` views is used.
With MOE_EXPERT_THREADS=1 the CPU products go through ``trainables.expert_threads`` instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables import expert_threads
from trainables.activation import swiglu

_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


class GroupedExperts(nn.Module):
    """E SwiGLU experts: y = (silu(x W_gate) * (x W_up)) W_down, gate and up fused."""

    def __init__(self, n_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.n_experts, self.d_model, self.hidden = n_experts, d_model, hidden
        self.w_gate_up_EDH2 = nn.Parameter(torch.empty(n_experts, d_model, 2 * hidden))
        self.w_down_EHD = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.w_gate_up_EDH2, std=1.0 / math.sqrt(self.d_model))
        nn.init.normal_(self.w_down_EHD, std=1.0 / math.sqrt(self.hidden))

    def forward(self, x_SD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """x_SD: slots already sorted by expert; counts_E: slots per expert (sums to S)."""
        if x_SD.shape[0] == 0:
            return x_SD.new_zeros(0, self.d_model)
        if self._grouped_mm_fits(x_SD.dtype):
            return self._forward_grouped(x_SD, counts_E)
        return self._forward_loop(x_SD, counts_E)

    def _grouped_mm_fits(self, dtype: torch.dtype) -> bool:
        """_grouped_mm takes fp32/bf16 rows whose strides are multiples of 16 bytes."""
        if not _HAS_GROUPED_MM or dtype not in (torch.float32, torch.bfloat16):
            return False
        row_bytes = torch.finfo(dtype).bits // 8
        return (self.d_model * row_bytes) % 16 == 0 and (self.hidden * row_bytes) % 16 == 0

    def _forward_grouped(self, x_SD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        offsets_E = torch.cumsum(counts_E, 0, dtype=torch.int32)
        counts = counts_E.tolist() if x_SD.device.type == "cpu" else None  # no GPU sync
        w1, w2 = self.w_gate_up_EDH2, self.w_down_EHD
        if x_SD.dtype != w1.dtype:  # autocast does not cover _grouped_mm
            w1, w2 = w1.to(x_SD.dtype), w2.to(x_SD.dtype)
        hidden_SH = swiglu(_grouped_mm_contig(x_SD, w1, offsets_E, counts))
        return _grouped_mm_contig(hidden_SH, w2, offsets_E, counts)

    def _forward_loop(self, x_SD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(x_SD, counts_E.tolist())
        outs = []
        for x_cD, w1_DH2, w2_HD in zip(chunks, self.w_gate_up_EDH2.unbind(0), self.w_down_EHD.unbind(0)):
            if x_cD.shape[0] == 0:
                continue
            outs.append(swiglu(x_cD @ w1_DH2.to(x_cD.dtype)) @ w2_HD.to(x_cD.dtype))
        return torch.cat(outs) if outs else x_SD.new_zeros(0, self.d_model)


class _ContiguousGradGroupedMM(torch.autograd.Function):
    """``torch._grouped_mm`` whose backward receives a contiguous gradient (required on CPU).

    On CPU with several intra-op threads and enough work, the per-expert products run in
    ``trainables.expert_threads`` instead (experts spread over the threads, same results).
    """

    @staticmethod
    def forward(ctx, a_SK, b_EKN, offsets_E, counts):
        ctx.save_for_backward(a_SK, b_EKN, offsets_E)
        ctx.counts = counts
        if counts is not None and expert_threads.worth_threading(a_SK, b_EKN.shape[-1]):
            return expert_threads.grouped_mm_rows(a_SK, b_EKN, counts)
        return torch._grouped_mm(a_SK, b_EKN, offs=offsets_E)

    @staticmethod
    def backward(ctx, grad_SN):
        a_SK, b_EKN, offsets_E = ctx.saved_tensors
        grad_SN = grad_SN.contiguous()
        threaded = ctx.counts is not None and expert_threads.worth_threading(grad_SN, a_SK.shape[1])
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            # dA = dY @ B^T, expert by expert on the same chunks
            if threaded:
                grad_a = expert_threads.grouped_mm_rows(grad_SN, b_EKN.transpose(1, 2), ctx.counts)
            else:
                grad_a = torch._grouped_mm(grad_SN, b_EKN.transpose(1, 2), offs=offsets_E)
        if ctx.needs_input_grad[1]:
            # dB_e = A_e^T @ dY_e: the (K x S) @ (S x N) form with offsets on the shared S dim
            if threaded:
                grad_b = expert_threads.grouped_mm_weight_grad(a_SK, grad_SN, ctx.counts)
            else:
                grad_b = torch._grouped_mm(a_SK.t(), grad_SN, offs=offsets_E)
        return grad_a, grad_b, None, None


def _grouped_mm_contig(a_SK: torch.Tensor, b_EKN: torch.Tensor, offsets_E: torch.Tensor, counts=None):
    """counts: the Python list of rows per expert (CPU only; enables the threaded path)."""
    return _ContiguousGradGroupedMM.apply(a_SK.contiguous(), b_EKN, offsets_E, counts)
