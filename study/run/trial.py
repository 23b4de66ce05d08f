"""The thin adapter that runs ``trainables.training.train`` as a Ray Tune function trainable.

The Tune config is the flat trial config (dotted keys) plus the study's ``TrialContext``
(``study.run.trial_context``): its ``reference`` holds the reference router's final metrics, so
every report carries ``gap_loss`` / ``gap_purity`` for the searcher and the scheduler to act on;
``workers`` > 1 runs the trial data-parallel on a Ray Train ``TorchTrainer`` (the second half of
this module), which reports the same result through the same ``result_builder``.

Every report comes with a checkpoint (model, optimizer, data stream), so a paused, preempted or
crashed trial resumes where it was. The expert x domain table travels in the result as
``count_table`` (nested lists, small: layers x experts x domains) for the driver-side tracker.

**Data-parallel trials**: the trial runs on a Ray Train ``TorchTrainer`` inside its Tune trial.

``trial_function`` hands a trial to ``data_parallel_trial`` when its context's ``workers`` is
above 1. Ray 2.60 (Train V2) runs Train inside Tune this way: the Tune trial is
only the Train driver and reserves next to nothing (``DRIVER_RESOURCES``); the TorchTrainer's
``ScalingConfig`` reserves the workers (the context's ``cpu_per_worker`` / ``gpu_per_worker``).

Every worker runs ``trainables.training.train`` on the torch.distributed group Ray Train set up
(gloo on CPU; on GPU nccl, with gloo for CPU tensors): its own data stream (the StepSampler's
rank), the same seeded initialisation, gradients averaged after every step, and the
``global_batch`` scope's expert counts all-reduced over all workers
(``trainables.distributed.DistributedGroup``). Every worker reports at every evaluation point (Train
waits for all of them); rank 0's report, built by the same ``result_builder`` as the one-process
trial, is what Tune sees, through ``TuneReportCallback``.

Resume: rank 0 attaches a checkpoint to each report (the model and optimizer, the same on every
rank, and every rank's own data stream and RNG) and Train keeps the latest under
``<Tune trial folder>/train`` on the study's storage. A restarted Tune trial (a
``FailureConfig`` retry, ``moe-study resume``) builds the same run name on the same storage, Ray
Train restores its checkpoint bookkeeping from there, and ``ray.train.get_checkpoint()`` hands
every worker the latest state.

What the study must do around it (Ray 2.60, measured): Tune must not reuse trial actors
(``reuse_actors=False``; a stopped trial's Train run otherwise blocks on its next report and
keeps its workers' placement group), and the Ray dashboard must run: when ASHA stops a trial,
Train's ``PlacementGroupCleaner`` frees the workers' placement group through the state API, and
without it the next trial waits for those CPUs forever.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterable

import ray
import ray.train
import torch
import torch.distributed as dist
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer

from study import naming
from study.run.cluster_resources import node_type_of_this_node
from study.run.trial_context import TrialContext, split_tune_config
from trainables.config import TrialConfig
from trainables import metric_names as names
from trainables.metrics import gaps
from trainables.distributed import DistributedGroup
from trainables.training import Report, train


CHECKPOINT_FILE = "trial_state.pt"


def trial_function(config: dict) -> None:
    if TrialContext.from_tune_config(config).workers > 1:
        data_parallel_trial(config)  # validates the config itself, before any worker starts
        return
    cfg, context = split_tune_config(config)
    _match_threads_to_cpus(cfg)
    build_result = result_builder(context)
    # only checkpoints Tune handed back for this very trial, from the study's own storage
    resume_state = load_trial_state(tune.get_checkpoint())
    for report in train(cfg, resume_state=resume_state, extra_eval_steps=context.eval_steps):
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


def result_builder(context: TrialContext) -> Callable[[Report], dict]:
    """What a trial reports for a training Report, the same on the one-process and the
    data-parallel path: the metrics, the gaps to the reference, the rescored objective values
    and the expert x domain table."""
    reference = context.reference
    scorer = _objective_scorer(context.objective)
    node_id = ray.get_runtime_context().get_node_id()
    node_type = node_type_of_this_node()

    def build(report: Report) -> dict:
        result = dict(report.metrics)
        if reference:
            result.update(gaps(result, reference))
        if scorer is not None:  # penalised objective values under the spec's constraints
            result.update(scorer.scored(result, done=report.done))
        if report.count_table is not None:
            result["count_table"] = report.count_table.tolist()
            result["domains"] = list(report.domains)
        held = report.metrics.get(names.TRIAL_WALL_S)
        if held is not None:  # what the trial cost: its wall time x what it reserved
            result[names.COST_CPU_S] = held * context.cpu_per_worker * context.workers
            result[names.COST_GPU_S] = held * context.gpu_per_worker * context.workers
        result["node_id"] = node_id  # where the trial ran (tagged on its MLflow run)
        if node_type:
            result["node_type"] = node_type  # on which kind of machine (tagged too)
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
    from study.spec.types import Objective  # the spec owns the objective semantics

    scorer = Objective.from_dict(objective)
    return scorer if scorer.rescored else None


# -- data-parallel trials ---------------------------------------------------------------------
TRAIN_RUN_NAME = "train"
"""The Train run's folder inside the Tune trial's folder; the same on every restart of the
trial, which is what makes Train restore its latest checkpoint."""

RANKS_KEY = "ranks"
"""Checkpoint key: every rank's own data stream and RNG state, in rank order."""

DRIVER_RESOURCES = {"cpu": 0, "gpu": 0, "memory": 256 * 2**20}
"""What the Tune trial reserves for itself when Train workers do the work. Ray refuses an
all-zero request, and any CPU share would keep a 2-CPU node from fitting 2 workers x 1 CPU; a
little logical memory (the driver is an idle Python process) schedules it without a core."""


def data_parallel_trial(config: dict) -> None:
    """The Tune function body of a trial whose context has ``workers`` > 1: run it on a
    TorchTrainer."""
    from ray.tune.integration.ray_train import TuneReportCallback

    path, filesystem = _tune_trial_storage()
    fit_data_parallel(
        config, name=TRAIN_RUN_NAME, storage_path=path, storage_filesystem=filesystem,
        callbacks=[TuneReportCallback()],
    )


def fit_data_parallel(
    config: dict,
    *,
    name: str,
    storage_path: str,
    storage_filesystem=None,
    callbacks: Iterable = (),
) -> ray.train.Result:
    """Train the Tune config ``config`` (flat keys plus the study's context) on the context's
    ``workers`` Ray Train workers; a run of the same ``name`` on the same storage resumes from
    its latest checkpoint."""
    # a bad trial config fails here, before any worker starts
    _, context = split_tune_config(config)
    workers, cpu, gpu = context.workers, float(context.cpu_per_worker), float(context.gpu_per_worker)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        # GPU workers: nccl for the CUDA tensors (gradients, counts), gloo for the CPU tensors some
        # collectives use (the global scope's gathered sizes, the EB window count); CPU: gloo
        torch_config=TorchConfig(backend="cpu:gloo,cuda:nccl" if gpu > 0 else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpu > 0, resources_per_worker={"CPU": cpu, "GPU": gpu},
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_filesystem,
            callbacks=list(callbacks),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            # no Train-level retries: the Tune trial's FailureConfig retries a failed trial, from
            # this run's latest checkpoint, exactly like a one-process trial
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )
    return trainer.fit()


def train_worker(config: dict) -> None:
    """One Ray Train worker: the training loop on Ray Train's process group."""
    cfg, context = split_tune_config(config)
    train_context = ray.train.get_context()
    group = DistributedGroup()
    if group.world_size != train_context.get_world_size():
        # without the process group every worker would silently train alone
        raise RuntimeError(f"torch.distributed spans {group.world_size} workers, Ray Train "
                           f"started {train_context.get_world_size()}")
    rank = train_context.get_world_rank()
    build_result = result_builder(context)
    latest = ray.train.get_checkpoint()  # None on a fresh run
    resume_state = own_rank_state(load_trial_state(latest), rank, group.world_size)
    for report in train(cfg, resume_state=resume_state, dist_group=group,
                        extra_eval_steps=context.eval_steps):
        state = gather_rank_states(report.state(), group)  # collective: every rank takes part
        if rank != 0:
            # Train waits for every worker's report; the models are identical, rank 0 speaks
            ray.train.report({naming.STEP: report.step})
            continue
        with tempfile.TemporaryDirectory() as d:
            save_trial_state(state, d)
            checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(build_result(report), checkpoint=checkpoint)


def gather_rank_states(state: dict, group: DistributedGroup) -> dict:
    """Rank 0's training state plus every rank's data stream and RNG (``RANKS_KEY``).

    The model and optimizer are the same on every rank, but each rank draws its own stream: a
    checkpoint of rank 0's sampler alone would make every worker resume on rank 0's data.
    """
    own = {"sampler": state["sampler"], "torch_rng": state["torch_rng"]}
    everyone: list = [None] * group.world_size
    dist.all_gather_object(everyone, own, group=group.group)
    return {**state, RANKS_KEY: everyone}


def own_rank_state(state: dict | None, rank: int, world_size: int) -> dict | None:
    """The resume state of ``rank``: the shared model and optimizer, its own stream and RNG."""
    if state is None:
        return None
    ranks = state.get(RANKS_KEY)
    if ranks is None or len(ranks) != world_size:
        found = "no per-rank state" if ranks is None else f"{len(ranks)} workers"
        raise RuntimeError(f"the checkpoint holds {found}; this run has {world_size} workers "
                           "(a data-parallel trial resumes on the same number of workers)")
    return {**state, **ranks[rank]}


def _tune_trial_storage() -> tuple[str, object]:
    """(path, pyarrow filesystem) of this Tune trial's folder on the study's storage.

    Ray 2.60 has no public getter for it; ``TuneReportCallback`` reads the same session. The
    trial folder is stable across retries and ``Tuner.restore``, unlike the local trial dir.
    """
    from ray.train._internal.session import get_session

    storage = get_session().storage
    return storage.trial_fs_path, storage.storage_filesystem
