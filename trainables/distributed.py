"""The data-parallel group and the global scope's per-step count buffer.

For count-based methods (LBL, EB) the ``global_batch`` scope (``trainables.scope``) keeps a
per-layer buffer of expert counts that accumulates over the step's micro-batches and is
all-reduced over the data-parallel group (arXiv 2501.11873, Algorithm 1); it resets after every
optimizer step. The counts carry no gradient, so the global f_i is exact and the loss gradient
through the local P_i keeps full strength on every worker (no 1/world_size weakening).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedGroup:
    """The data-parallel group whose counts the global scope all-reduces (None: one worker)."""

    group: object | None = None

    @property
    def world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.group)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def all_gather_cat(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Concatenate t from every worker along dim 0; return it and this worker's offset."""
        ws = self.world_size
        if ws == 1:
            return t, 0
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(ws)]
        dist.all_gather(sizes, torch.tensor([t.shape[0]]), group=self.group)
        max_n = int(max(s.item() for s in sizes))
        padded = torch.zeros((max_n, *t.shape[1:]), dtype=t.dtype)
        padded[: t.shape[0]] = t.detach().cpu()
        parts = [torch.zeros_like(padded) for _ in range(ws)]
        dist.all_gather(parts, padded, group=self.group)
        rank = dist.get_rank(self.group)
        offset = int(sum(s.item() for s in sizes[:rank]))
        cat = torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])
        return cat.to(t.device), offset


class ScopeCounts:
    """Per-layer expert counts of the current optimizer step (the global-scope buffer)."""

    def __init__(self, n_experts: int):
        self.n_experts = n_experts
        self.step_counts_E = torch.zeros(n_experts)
        self.eb_delta_E = torch.zeros(n_experts)
        self.eb_windows = 0

    def reset(self) -> None:
        self.step_counts_E.zero_()
        self.eb_delta_E.zero_()
        self.eb_windows = 0

    def add(self, counts_E: torch.Tensor) -> torch.Tensor:
        """Add this micro-batch's (already all-reduced) counts; return the step's running total."""
        self.step_counts_E = self.step_counts_E.to(counts_E.device) + counts_E.detach().float()
        return self.step_counts_E
