"""Balancing scopes: over which tokens a balancing method takes its statistics.

``sequence``     each sequence on its own;
``window``       every ``router.balance_window`` consecutive sequences of the step (LBL only);
``micro_batch``  one forward pass on one worker;
``global_batch`` everything that goes into one optimizer step: every gradient-accumulation
                 micro-batch and every data-parallel worker.

A scope is an object registered by name (``SCOPES``): it knows its token count, how a
per-token solver runs over its tokens, how expert counts are pooled over it and whether the
training loop must run the whole step in one forward pass. Routers call it instead of testing
scope names. Definitions and references: docs/design.md, "Balancing scopes".

This module imports no torch at module level: config validation (``trainables.config``) reads
the registry, and the spec checks of the CLI stay fast to start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from trainables.config import TrialConfig
    from trainables.distributed import DistributedGroup, ScopeCounts

Solver = Callable[["torch.Tensor"], "torch.Tensor"]
"""A per-token solver: rows (tokens) in, the same rows out."""


class Scope:
    name = ""
    per_window = False
    """Statistics per window of consecutive sequences (``window_sequences`` of them), each
    window on its own; otherwise pooled over the scope's tokens (``pooled_counts``)."""
    spans_step = False
    """Statistics over every micro-batch of the optimizer step and every worker: pooled counts
    accumulate in the step's buffer, which is reset after every optimizer step."""

    def window_sequences(self, cfg: "TrialConfig") -> int:
        """Sequences per window (per-window scopes only)."""
        raise NotImplementedError(f"scope {self.name!r} has no windows")

    def tokens(self, cfg: "TrialConfig", world_size: int = 1) -> int:
        """Tokens whose statistics one balancing decision sees."""
        raise NotImplementedError

    def needs_whole_step(self, solver_based: bool, exact_counts: bool) -> bool:
        """Whether the training loop runs the optimizer step as one forward pass: a solver over
        the step's tokens or exact step counts need them all at once; a window may span
        micro-batches."""
        return False

    def solve(self, solver: Solver, x_TE: "torch.Tensor", window_tokens: int,
              group: "DistributedGroup") -> "torch.Tensor":
        """Apply ``solver`` over the tokens of the scope (rows of ``x_TE``, one forward pass;
        ``window_tokens``: tokens per window of a per-window scope)."""
        if self.per_window:
            import torch

            return torch.cat([solver(chunk) for chunk in x_TE.split(window_tokens)])
        return solver(x_TE)

    def pooled_counts(self, counts_E: "torch.Tensor", buffer: "ScopeCounts",
                      group: "DistributedGroup") -> "torch.Tensor":
        """The scope's expert counts, given this forward pass's (pooled scopes only)."""
        return counts_E


class SequenceScope(Scope):
    name = "sequence"
    per_window = True

    def window_sequences(self, cfg):
        return 1

    def tokens(self, cfg, world_size=1):
        return cfg.data.seq_len


class WindowScope(Scope):
    """n consecutive sequences: n = 1 is the sequence scope, n = micro_batch_size x grad_accum
    the step of one worker (the Qwen-style window sweep)."""

    name = "window"
    per_window = True

    def window_sequences(self, cfg):
        return cfg.router.balance_window

    def tokens(self, cfg, world_size=1):
        return cfg.data.seq_len * cfg.router.balance_window

    def needs_whole_step(self, solver_based, exact_counts):
        return True  # a window may span micro-batches


class MicroBatchScope(Scope):
    name = "micro_batch"

    def tokens(self, cfg, world_size=1):
        return cfg.data.seq_len * cfg.train.micro_batch_size


class GlobalBatchScope(Scope):
    name = "global_batch"
    spans_step = True

    def tokens(self, cfg, world_size=1):
        t = cfg.train
        return cfg.data.seq_len * t.micro_batch_size * t.grad_accum * world_size

    def needs_whole_step(self, solver_based, exact_counts):
        return solver_based or exact_counts

    def solve(self, solver, x_TE, window_tokens, group):
        """The forward pass (the whole step, see ``needs_whole_step``) gathered over every
        data-parallel worker; each worker keeps its own rows."""
        if group.world_size == 1:
            return solver(x_TE)
        all_xE, offset = group.all_gather_cat(x_TE.detach())
        return solver(all_xE)[offset : offset + x_TE.shape[0]]

    def pooled_counts(self, counts_E, buffer, group):
        return buffer.add(group.all_reduce_sum(counts_E))


SCOPES: dict[str, Scope] = {s.name: s for s in (SequenceScope(), MicroBatchScope(), GlobalBatchScope(),
                                                 WindowScope())}
"""Every scope by name, in display order."""
SCOPE_NAMES = tuple(SCOPES)


def scope_of(cfg: "TrialConfig") -> Scope:
    return SCOPES[cfg.router.scope]


def scope_label(name: str, balance_window: int | None = None) -> str:
    """A scope as a cell of a results table: ``window n`` per window size, else its name."""
    if name == WindowScope.name:
        return f"{name} {balance_window if balance_window is not None else '?'}"
    return name


def parse_scope_label(label: str) -> tuple[str, int | None]:
    """(scope name, window size or None) of a ``scope_label``."""
    name, _, size = label.partition(" ")
    return name, int(size) if size.isdigit() else None
