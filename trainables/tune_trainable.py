"""The thin adapter that runs ``trainables.training.train`` as a Ray Tune function trainable.

The Tune config is the flat trial config (dotted keys) plus private keys starting with ``_``:
``_reference`` holds the reference router's final metrics, so every report carries
``gap_loss`` / ``gap_purity`` for the searcher and the scheduler to act on.

Every report comes with a checkpoint (model, optimizer, data stream), so a paused, preempted or
crashed trial resumes where it was. The expert x domain table travels in the result as
``count_table`` (nested lists, small: layers x experts x domains) for the driver-side tracker.
"""

from __future__ import annotations

import os
import tempfile

import torch
from ray import tune

from trainables.config import TrialConfig
from trainables.metrics import gaps
from trainables.training import train

CHECKPOINT_FILE = "trial_state.pt"


def split_tune_config(config: dict) -> tuple[TrialConfig, dict]:
    """Separate the trial config (dotted keys) from the study's private ``_`` keys."""
    flat = {k: v for k, v in config.items() if not k.startswith("_")}
    private = {k: v for k, v in config.items() if k.startswith("_")}
    return TrialConfig.from_flat(flat), private


def trial_function(config: dict) -> None:
    cfg, private = split_tune_config(config)
    reference = private.get("_reference") or {}
    scorer = _objective_scorer(private.get("_objective"))
    resume_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            # only checkpoints Tune handed back for this very trial, from the study's own storage
            resume_state = torch.load(os.path.join(d, CHECKPOINT_FILE), weights_only=False)
    for report in train(cfg, resume_state=resume_state):
        result = dict(report.metrics)
        if reference:
            result.update(gaps(result, reference))
        if scorer is not None:  # penalised objective values under the spec's constraints
            result.update(scorer.scored(result, done=report.done))
        if report.count_table is not None:
            result["count_table"] = report.count_table.tolist()
            result["domains"] = list(report.domains)
        with tempfile.TemporaryDirectory() as d:
            torch.save(report.state(), os.path.join(d, CHECKPOINT_FILE))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))


def _objective_scorer(objective: dict | None):
    """The spec's objective when the searcher needs rescored values (constraints, multi-objective)."""
    if not objective:
        return None
    from study.spec_types import Objective  # the spec owns the objective semantics

    scorer = Objective.from_dict(objective)
    return scorer if scorer.rescored else None
