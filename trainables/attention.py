"""Causal self-attention: softmax(q k^T / sqrt(Dh) + causal mask) v.

Shape legend: B batch, H heads, L sequence, Dh head width, N = B*H.

PyTorch's SDPA, except on CPU at one intra-op thread (how study trials run), where the math
path in blocks of query rows is faster for the short sequences of this project: rows r0..r1
are scored against keys 0..r1 only, so with 32-row blocks 5/8 of the full L x L score matrix is
computed at L = 128, in plain batched matrix products (MKL) with a softmax in between. The
probabilities are kept for the backward pass (no recomputation as in a flash kernel): about
N x L^2 / 2 floats per layer. Against SDPA's CPU flash kernel, one thread, fp32, forward +
backward in the model's layout, 3072 tokens (``bench/attention.py``; BENCHMARKS.md, "Step
utilisation"): 1.09x as fast at L = 128 (Dh 16, 32, 64: 1.09, 1.09, 1.08), 1.01-1.13x at
L = 64, 1.12-1.20x at 256, 1.33-1.37x at 512; forward alone 1.0-1.2x. With more threads SDPA is
kept (its flash kernel splits batch x heads x query blocks over the threads; the blocked path
was not measured on a quiet machine there), as on GPUs, in other dtypes and beyond
``MAX_BLOCKED_LEN``, where the probabilities' memory grows as L^2.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

BLOCK_ROWS = 32
"""Query rows per block (an earlier version measured at L = 128, Dh = 32: blocks of 64 rows
9.9 ms, 32 rows 9.1, 16 rows 9.9, one block of all 128 rows 12.0)."""
MAX_BLOCKED_LEN = 512
"""Longest sequence the blocked path takes (the longest measured)."""
IMPLEMENTATION = "auto"
"""``auto``: blocked where it was measured faster (above), SDPA elsewhere; ``sdpa``: always SDPA
(the benchmarks' A/B switch)."""


def causal_attention(q_BHLDh: torch.Tensor, k_BHLDh: torch.Tensor, v_BHLDh: torch.Tensor) -> torch.Tensor:
    """Causal attention with the default scale 1/sqrt(Dh): [B, H, L, Dh]."""
    if not blocked_path_fits(q_BHLDh):
        return F.scaled_dot_product_attention(q_BHLDh, k_BHLDh, v_BHLDh, is_causal=True)
    return _BlockedCausalAttention.apply(q_BHLDh, k_BHLDh, v_BHLDh)


def blocked_path_fits(q: torch.Tensor) -> bool:
    return (
        IMPLEMENTATION == "auto"
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and q.shape[-2] <= MAX_BLOCKED_LEN
        and torch.get_num_threads() == 1
        and not torch.compiler.is_compiling()
    )


@functools.lru_cache(maxsize=8)
def _causal_mask(L: int, dtype: torch.dtype) -> torch.Tensor:
    """[L, L]: 0 on and below the diagonal, -inf above (CPU only: the blocked path's)."""
    return torch.full((L, L), float("-inf"), dtype=dtype).triu_(1)


def _blocks(L: int):
    return [(r0, min(r0 + BLOCK_ROWS, L)) for r0 in range(0, L, BLOCK_ROWS)]


class _BlockedCausalAttention(torch.autograd.Function):
    """[B, H, L, Dh] in and out, computed on [N, L, Dh]; keeps each block's probabilities
    [N, r1 - r0, r1] for the backward pass. The output is a [B, H, L, Dh] view of a [B, L, H, Dh]
    tensor, as SDPA's CPU kernel returns it: merging the heads afterwards is a view, not a copy."""

    @staticmethod
    def forward(ctx, q_BHLDh, k_BHLDh, v_BHLDh):
        B, H, L, Dh = q_BHLDh.shape
        q, k, v = (t.reshape(B * H, L, Dh) for t in (q_BHLDh, k_BHLDh, v_BHLDh))
        scale = Dh**-0.5
        mask = _causal_mask(L, q.dtype)
        out_BHLDh = q.new_empty(B, L, H, Dh).transpose(1, 2)
        probs = []
        for r0, r1 in _blocks(L):
            scores = torch.baddbmm(mask[r0:r1, :r1], q[:, r0:r1], k[:, :r1].transpose(1, 2), alpha=scale)
            p = torch.softmax(scores, dim=-1)
            out_BHLDh[:, :, r0:r1] = torch.bmm(p, v[:, :r1]).view(B, H, r1 - r0, Dh)
            probs.append(p)
        ctx.save_for_backward(q, k, v, *probs)
        return out_BHLDh

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, *probs = ctx.saved_tensors
        N, L, Dh = q.shape
        B = grad_out.shape[0]
        grad_out = grad_out.reshape(N, L, Dh)
        grad_q = torch.empty_like(q, memory_format=torch.contiguous_format)
        grad_k = grad_v = None
        # the last block first: it spans every key, so its key and value gradients are whole
        # [N, L, Dh] tensors the earlier blocks add into (never an in-place product into a
        # strided slice: MKL cannot take those as one batch, torch loops over the batch)
        for (r0, r1), p in reversed(list(zip(_blocks(L), probs))):
            g = grad_out[:, r0:r1]
            block_grad_v = torch.bmm(p.transpose(1, 2), g)
            # softmax backward: p * (dp - sum(dp * p)), dp = g v^T
            ds = torch._softmax_backward_data(torch.bmm(g, v[:, :r1].transpose(1, 2)), p, -1, p.dtype)
            grad_q[:, r0:r1] = torch.bmm(ds, k[:, :r1])
            block_grad_k = torch.bmm(ds.transpose(1, 2), q[:, r0:r1])
            if grad_v is None:
                grad_v, grad_k = block_grad_v, block_grad_k
            else:
                grad_v[:, :r1] += block_grad_v
                grad_k[:, :r1] += block_grad_k
        scale = Dh**-0.5
        return tuple(t.view(B, -1, L, Dh) for t in (grad_q.mul_(scale), grad_k.mul_(scale), grad_v))
