"""Scopes as objects: each knows its token count, how a solver runs over its tokens, how counts
are pooled over it and whether the step runs as one forward pass. Hand-computed values."""

from __future__ import annotations

import pytest
import torch

from trainables.distributed import DistributedGroup, ScopeCounts
from trainables.routers import ROUTERS, runs_whole_step_forward
from trainables.scope import SCOPE_NAMES, SCOPES, parse_scope_label, scope_label, scope_of

from tests.trainables.helpers import tiny_config

L, MBS, GA = 16, 4, 2  # tiny_config's sequence length, micro-batch size and accumulation


def test_the_registry_names_every_scope_once_in_display_order():
    assert SCOPE_NAMES == ("sequence", "micro_batch", "global_batch", "window")
    assert all(SCOPES[name].name == name for name in SCOPE_NAMES)


@pytest.mark.parametrize("scope, window, world, tokens", [
    ("sequence", 0, 1, L),
    ("micro_batch", 0, 1, L * MBS),
    ("micro_batch", 0, 3, L * MBS),  # one worker's forward pass whatever the world size
    ("global_batch", 0, 1, L * MBS * GA),
    ("global_batch", 0, 3, L * MBS * GA * 3),
    ("window", 4, 1, 4 * L),
])
def test_tokens_per_scope(scope, window, world, tokens):
    cfg = tiny_config(**{"router.method": "lbl", "router.scope": scope, "router.balance_window": window})
    assert scope_of(cfg).tokens(cfg, world) == tokens == cfg.balance_window_tokens(world)


@pytest.mark.parametrize("method, scope, counts, whole", [
    ("lbl", "sequence", "exact", False),
    ("lbl", "micro_batch", "exact", False),
    ("lbl", "global_batch", "exact", True),
    ("lbl", "global_batch", "running", False),
    ("eb", "global_batch", "exact", False),  # EB's step counts need no single pass
    ("sh", "global_batch", "exact", True),
    ("ba", "micro_batch", "exact", False),
    ("lbl", "window", "exact", True),
])
def test_whole_step_forward(method, scope, counts, whole):
    flat = {"router.method": method, "router.scope": scope, "router.global_counts": counts}
    if scope == "window":
        flat["router.balance_window"] = 2
    assert runs_whole_step_forward(tiny_config(**flat)) is whole


def test_a_per_window_scope_solves_each_window_alone():
    x_TE = torch.arange(4 * 3, dtype=torch.float32).view(4, 3)
    seen = []

    def solver(rows):
        seen.append(rows.shape[0])
        return rows - rows.mean(0)  # depends on which rows are solved together

    out = SCOPES["window"].solve(solver, x_TE, window_tokens=2, group=DistributedGroup())
    assert seen == [2, 2]
    assert torch.equal(out, torch.cat([x_TE[:2] - x_TE[:2].mean(0), x_TE[2:] - x_TE[2:].mean(0)]))
    seen.clear()
    for pooled in ("micro_batch", "global_batch"):  # one worker: the forward pass at once
        assert torch.equal(SCOPES[pooled].solve(solver, x_TE, 0, DistributedGroup()), x_TE - x_TE.mean(0))
    assert seen == [4, 4]


def test_pooled_counts_accumulate_over_the_step_only_at_global_scope():
    buffer = ScopeCounts(3)
    first, second = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 4.0, 1.0])
    group = DistributedGroup()  # one worker: all-reduce is the identity
    assert torch.equal(SCOPES["micro_batch"].pooled_counts(first, buffer, group), first)
    assert torch.equal(buffer.step_counts_E, torch.zeros(3))  # the micro scope leaves the buffer alone
    SCOPES["global_batch"].pooled_counts(first, buffer, group)
    assert torch.equal(SCOPES["global_batch"].pooled_counts(second, buffer, group), torch.tensor([1.0, 4.0, 3.0]))


def test_scope_labels_round_trip():
    assert scope_label("window", 8) == "window 8"
    assert scope_label("window") == "window ?"
    assert scope_label("micro_batch", 8) == "micro_batch"
    assert parse_scope_label("window 8") == ("window", 8)
    assert parse_scope_label("global_batch") == ("global_batch", None)


def test_every_router_uses_the_scope_object():
    cfg = tiny_config(**{"router.method": "lbl", "router.scope": "window", "router.balance_window": 2})
    router = ROUTERS["lbl"](cfg)
    assert router.scope is SCOPES["window"] and router.window_sequences == 2


def test_the_router_registry_and_the_config_vocabulary_name_the_same_methods():
    """config.METHODS (torch-free, for validation) and routers.ROUTERS (the classes) must agree:
    a method added to one only would validate and then fail to build, or never validate."""
    from trainables.config import METHODS

    assert tuple(ROUTERS) == METHODS
