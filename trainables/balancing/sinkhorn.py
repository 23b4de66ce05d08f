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

    Leading batch dimensions are balanced independently, e.g. ``(B, L, E)`` for the sequence
    scope; ``col_target_E`` is then ``(E,)`` for all or ``(B, E)``.
    """
    *batch, n_tokens, n_experts = logits_TE.shape
    dtype = torch.promote_types(logits_TE.dtype, torch.float32)
    if n_tokens == 0:
        return logits_TE.new_zeros(logits_TE.shape, dtype=dtype)
    logits_BTE = logits_TE.to(dtype).reshape(-1, n_tokens, n_experts)
    n_batch = logits_BTE.shape[0]
    device = logits_BTE.device
    if col_target_E is None:
        target_BE = torch.full((n_batch, n_experts), n_tokens / n_experts, dtype=dtype, device=device)
    else:
        target = col_target_E.to(device=device, dtype=dtype)
        if target.shape not in ((n_experts,), (*batch, n_experts)):
            expected = f"({n_experts},) or {(*batch, n_experts)}"
            raise ValueError(f"col_target_E has shape {tuple(target.shape)}, expected {expected}")
        target_BE = target.expand(*batch, n_experts).reshape(n_batch, n_experts)
        total_B = target_BE.sum(1, keepdim=True)
        if bool((target_BE < 0).any()) or not bool((total_B > 0).all()):
            raise ValueError("col_target_E must be non-negative with a positive sum")
        target_BE = target_BE * (n_tokens / total_B)

    # Every row keeps an entry of exactly 1, so row sums never vanish. A column can underflow
    # entirely only if its logits sit ~87 (float32) below every token's best: such an expert
    # cannot be given mass at this precision and keeps a zero column instead of turning to NaN.
    kernel_BTE = torch.exp(logits_BTE - logits_BTE.amax(dim=2, keepdim=True))
    max_scale = torch.finfo(dtype).max / (4 * n_experts)  # keeps kernel @ col_scale finite
    tol_abs = tol * n_tokens / n_experts
    col_scale_BE = torch.ones_like(target_BE)
    row_scale_BT = 1.0 / kernel_BTE.sum(dim=2)
    # Column sums are col_scale_BE * col_mass_BE.
    col_mass_BE = torch.bmm(row_scale_BT[:, None, :], kernel_BTE).squeeze(1)
    for _ in range(n_iters):
        col_scale_BE = torch.where(col_mass_BE > 0, target_BE / col_mass_BE, 0.0).clamp(max=max_scale)
        row_scale_BT = 1.0 / torch.bmm(kernel_BTE, col_scale_BE[:, :, None]).squeeze(2)
        col_mass_BE = torch.bmm(row_scale_BT[:, None, :], kernel_BTE).squeeze(1)
        # Rows are exact after the row step; the columns carry all the remaining error.
        if float((col_scale_BE * col_mass_BE - target_BE).abs().max()) < tol_abs:
            break
    plan_BTE = row_scale_BT[:, :, None] * kernel_BTE * col_scale_BE[:, None, :]
    return plan_BTE.reshape(logits_TE.shape)
