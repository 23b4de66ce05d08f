"""Sinkhorn balancing (S-BASE; Megatron's ``sinkhorn``): rescale exp(logits) so that every token
carries one unit of mass and every expert receives its target share, then route top-k on it."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def sinkhorn(
    logits_TE: Tensor,
    n_iters: int = 20,
    tol: float = 1e-4,
    col_target_E: Tensor | None = None,
) -> Tensor:
    """Balanced transport plan ``plan_TE``: rows sum to 1, columns to ``col_target_E``.

    ``col_target_E`` is relative (any non-negative weights, rescaled to sum to T); the default is
    uniform, T/E per expert. A non-uniform target lets a caller balance a whole optimizer step
    over gradient-accumulation micro-batches (target = what each expert still has room for).
    Alternates column and row normalisation of exp(logits - row max) (the row max is absorbed by
    the row scaling, so this only guards against overflow) and stops after ``n_iters`` rounds or
    once the largest column error, relative to the mean target, is below ``tol``. Rows are
    normalised last, so they sum to 1 exactly; columns are within ``tol`` once converged.
    The result is a plan for picking experts, not a differentiable gate: no gradient.
    """
    n_tokens, n_experts = logits_TE.shape
    dtype = torch.promote_types(logits_TE.dtype, torch.float32)
    if n_tokens == 0:
        return logits_TE.new_zeros((0, n_experts), dtype=dtype)
    logits_TE = logits_TE.to(dtype)
    if col_target_E is None:
        target_E = torch.full((n_experts,), n_tokens / n_experts, dtype=dtype, device=logits_TE.device)
    else:
        target_E = col_target_E.to(device=logits_TE.device, dtype=dtype)
        if target_E.shape != (n_experts,):
            raise ValueError(f"col_target_E has shape {tuple(target_E.shape)}, expected ({n_experts},)")
        if bool((target_E < 0).any()) or not float(target_E.sum()) > 0:
            raise ValueError("col_target_E must be non-negative with a positive sum")
        target_E = target_E * (n_tokens / target_E.sum())

    kernel_TE = torch.exp(logits_TE - logits_TE.amax(dim=1, keepdim=True))
    tiny = torch.finfo(dtype).tiny  # an expert whose every exp() underflowed must not divide by 0
    tol_abs = tol * n_tokens / n_experts
    col_scale_E = torch.ones_like(target_E)
    row_scale_T = 1.0 / kernel_TE.sum(dim=1)
    col_mass_E = row_scale_T @ kernel_TE  # column sums are col_scale_E * col_mass_E
    for _ in range(n_iters):
        col_scale_E = target_E / col_mass_E.clamp_min(tiny)
        row_scale_T = 1.0 / (kernel_TE @ col_scale_E).clamp_min(tiny)
        col_mass_E = row_scale_T @ kernel_TE
        # Rows are exact after the row step; the columns carry all the remaining error.
        if float((col_scale_E * col_mass_E - target_E).abs().max()) < tol_abs:
            break
    return row_scale_T[:, None] * kernel_TE * col_scale_E[None, :]
