"""The thin adapter that runs ``trainables.training.train`` as a Ray Tune function trainable.

The Tune config is the flat trial config (dotted keys) plus private keys starting with ``_``:
``_reference`` holds the reference router's final metrics, so every report carries
``gap_loss`` / ``gap_purity`` for the searcher and the scheduler to act on; ``_workers`` > 1
runs the trial data-parallel on a Ray Train ``TorchTrainer`` (``trainables.tune_data_parallel``),
which reports the same result through the same ``result_builder``.

Every report comes with a checkpoint (model, optimizer, data stream), so a paused, preempted or
crashed trial resumes where it was. The expert x domain table travels in the result as
``count_table`` (nested lists, small: layers x experts x domains) for the driver-side tracker.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import torch
import ray
from ray import tune

from trainables.config import TrialConfig
from trainables.metrics import gaps
from trainables.training import Report, train


CHECKPOINT_FILE = "trial_state.pt"
EVAL_STEPS_KEY = "_eval_steps"
"""Private config key: steps to evaluate at besides every ``train.eval_every`` (ASHA's rungs)."""
WORKERS_KEY = "_workers"
"""Private config key: data-parallel workers of the trial; > 1 runs it as a Ray Train TorchTrainer
(``trainables.tune_data_parallel``)."""


def split_tune_config(config: dict) -> tuple[TrialConfig, dict]:
    """Separate the trial config (dotted keys) from the study's private ``_`` keys."""
    flat = {k: v for k, v in config.items() if not k.startswith("_")}
    private = {k: v for k, v in config.items() if k.startswith("_")}
    return TrialConfig.from_flat(flat), private


def extra_eval_steps(private: dict) -> frozenset[int]:
    return frozenset(int(s) for s in private.get(EVAL_STEPS_KEY) or ())


def trial_function(config: dict) -> None:
    if int(config.get(WORKERS_KEY) or 1) > 1:
        from trainables.tune_data_parallel import data_parallel_trial

        data_parallel_trial(config)
        return
    cfg, private = split_tune_config(config)
    _match_threads_to_cpus(cfg)
    build_result = result_builder(private)
    # only checkpoints Tune handed back for this very trial, from the study's own storage
    resume_state = load_trial_state(tune.get_checkpoint())
    for report in train(cfg, resume_state=resume_state, extra_eval_steps=extra_eval_steps(private)):
        with tempfile.TemporaryDirectory() as d:
            save_trial_state(report.state(), d)
            tune.report(build_result(report), checkpoint=tune.Checkpoint.from_directory(d))


def _match_threads_to_cpus(cfg: TrialConfig) -> None:
    """Use as many torch threads as the trial holds CPUs (unless train.threads says otherwise).

    torch starts one thread per core; two 1-CPU trials on a 2-core machine then run four
    spinning OpenMP threads on two cores, and every parallel region waits for a descheduled
    thread (BENCHMARKS.md, "Threads on a shared machine")."""
    if cfg.train.threads:
        return
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    torch.set_num_threads(max(1, int(cpus)))


def result_builder(private: dict) -> Callable[[Report], dict]:
    """What a trial reports for a training Report, the same on the one-process and the
    data-parallel path: the metrics, the gaps to the reference, the rescored objective values
    and the expert x domain table."""
    reference = private.get("_reference") or {}
    scorer = _objective_scorer(private.get("_objective"))
    node_id = ray.get_runtime_context().get_node_id()

    def build(report: Report) -> dict:
        result = dict(report.metrics)
        if reference:
            result.update(gaps(result, reference))
        if scorer is not None:  # penalised objective values under the spec's constraints
            result.update(scorer.scored(result, done=report.done))
        if report.count_table is not None:
            result["count_table"] = report.count_table.tolist()
            result["domains"] = list(report.domains)
        result["node_id"] = node_id  # where the trial ran (tagged on its MLflow run)
        result["mix_hash"] = report.mix_hash  # which text it trained on (tagged too)
        if report.done and report.routing_counts is not None:  # kept as an artifact, once
            result["routing_counts"] = report.routing_counts.to_sparse()
        return result

    return build


def save_trial_state(state: dict, directory: str) -> None:
    """Write a training state (``Report.state()``: model, optimizer, data stream, step) into
    ``directory``, as the checkpoint file ``load_trial_state`` reads."""
    torch.save(state, os.path.join(directory, CHECKPOINT_FILE))


def load_trial_state(checkpoint) -> dict | None:
    """The training state in a Tune or Train checkpoint (the same class), None without one."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        # tensors, numbers, strings and containers only: the safe loader takes it, so a
        # checkpoint cannot run code even if its storage were written by someone else
        return torch.load(os.path.join(d, CHECKPOINT_FILE), weights_only=True)


def _objective_scorer(objective: dict | None):
    """The spec's objective when the searcher needs rescored values (constraints, multi-objective)."""
    if not objective:
        return None
    from study.spec_types import Objective  # the spec owns the objective semantics

    scorer = Objective.from_dict(objective)
    return scorer if scorer.rescored else None
