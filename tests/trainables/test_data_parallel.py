"""Data-parallel training: two gloo workers keep one model, draw their own data, and the
global_batch scope counts the tokens of both; the Ray Train trial (inside Tune) reports what a
one-process trial reports and resumes each worker on its own data stream.

The no-Ray test spawns two processes (files carry results: tensors outlive the workers). The Ray
tests start a local 2-CPU Ray (2 workers x 1 CPU; the Tune trial reserves memory only) and stop
it at the end.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainables.config import TrialConfig
from trainables.distributed import DistributedGroup
from trainables.training import run_to_end, train
from study.run.trial import CHECKPOINT_FILE, load_trial_state, result_builder
from study.run.trial_context import TrialContext

from tests.trainables.helpers import tiny_config

WORKERS = 2
REFERENCE = {"val_loss": 5.0, "purity": 1.0}


def _cfg(small_mix_config, **flat) -> TrialConfig:
    """Tiny LBL at global_batch on the small real mix; one thread for repeatable sums."""
    base = {"router.method": "lbl", "router.scope": "global_batch", "router.lbl_coef": 0.1,
            "train.steps": 4, "train.eval_every": 2, "train.warmup_steps": 1, "train.threads": 1,
            "data.eval_sequences_per_domain": 4}
    base.update(flat)
    cfg = tiny_config(**base)
    cfg.data = dataclasses.replace(small_mix_config, seq_len=cfg.data.seq_len,
                                   eval_sequences_per_domain=cfg.data.eval_sequences_per_domain,
                                   step_composition=cfg.data.step_composition)
    return cfg


def _window_counts(cfg: TrialConfig, world_size: int) -> float:
    """Routed slots of one optimizer step over every worker: B x accumulation x L x K x workers."""
    t = cfg.train
    tokens = t.micro_batch_size * t.grad_accum * cfg.data.seq_len * world_size
    return float(tokens * cfg.model.top_k)


# -- two gloo processes, no Ray ---------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, world: int, port: int, cfg: TrialConfig, out_dir: str):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        reports = list(train(cfg, dist_group=DistributedGroup()))
        torch.save({"metrics": [r.metrics for r in reports], "model": reports[-1].state()["model"]},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run_gloo_workers(cfg: TrialConfig, out_dir) -> list[dict]:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_gloo_worker, args=(r, WORKERS, port, cfg, str(out_dir)))
             for r in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORKERS)]


def test_two_gloo_workers_keep_one_model_and_count_both_workers_tokens(small_mix_config, tmp_path):
    cfg = _cfg(small_mix_config)
    rank0, rank1 = _run_gloo_workers(cfg, tmp_path)

    # averaged gradients: after 4 steps on different data, both ranks hold the same parameters
    assert rank0["model"].keys() == rank1["model"].keys()
    for name, p0 in rank0["model"].items():
        assert torch.equal(p0, rank1["model"][name]), name
    last0, last1 = rank0["metrics"][-1], rank1["metrics"][-1]
    # ... and evaluate identically on the fixed validation set
    assert last0["val_loss"] == last1["val_loss"] and last0["purity"] == last1["purity"]
    # each rank trained on its own stream: its training loss is its own batches' loss
    assert last0["train_loss"] != last1["train_loss"]

    # the global_batch window spans both workers' micro-batches
    for last in (last0, last1):
        assert last["balance_window_tokens"] == WORKERS * cfg.balance_window_tokens(1)
        assert last["global_counts_total"] == _window_counts(cfg, WORKERS)
        assert last["global_counts_total"] == last["balance_window_tokens"] * cfg.model.top_k

    # one worker alone counts half as much and ends elsewhere: the other worker's gradients count
    alone = run_to_end(cfg)
    assert alone.metrics["global_counts_total"] == _window_counts(cfg, 1)
    alone_model = alone.state()["model"]
    assert any(not torch.equal(alone_model[k], rank0["model"][k]) for k in alone_model)


def test_a_checkpoint_gives_every_rank_its_own_stream():
    from study.run.trial import RANKS_KEY, own_rank_state

    shared = {"model": {"w": torch.ones(2)}, "optimizer": {}, "step": 4,
              "sampler": {"rank": 0}, "torch_rng": "rank0-rng"}
    state = {**shared, RANKS_KEY: [{"sampler": {"rank": 0}, "torch_rng": "rng0"},
                                   {"sampler": {"rank": 1}, "torch_rng": "rng1"}]}
    mine = own_rank_state(state, 1, 2)
    assert mine["sampler"] == {"rank": 1} and mine["torch_rng"] == "rng1"
    assert mine["model"] is shared["model"] and mine["step"] == 4
    assert own_rank_state(None, 1, 2) is None
    with pytest.raises(RuntimeError, match="2 workers; this run has 3"):
        own_rank_state(state, 0, 3)
    with pytest.raises(RuntimeError, match="no per-rank state"):
        own_rank_state(shared, 0, 2)


# -- Ray Train inside Tune ----------------------------------------------------------------------
@pytest.fixture
def ray_two_cpus():
    ray = pytest.importorskip("ray")
    from study.run.runner import local_ray

    assert not ray.is_initialized()
    with local_ray(num_cpus=WORKERS, include_dashboard=False, configure_logging=False,
                   log_to_driver=False):
        yield ray


def _tune_config(cfg: TrialConfig, context) -> dict:
    return context.tune_config(cfg.to_flat())


@pytest.mark.slow
def test_data_parallel_tune_trial_spans_both_workers(small_mix_config, ray_two_cpus, tmp_path):
    from types import SimpleNamespace

    from ray import tune

    from study.run.runner import _with_resources, trial_context
    from study.spec.types import ResourceSpec
    from study.run.trial import trial_function

    cfg = _cfg(small_mix_config)
    spec = SimpleNamespace(resources=ResourceSpec(cpu=1, gpu=0, workers=WORKERS))
    tuner = tune.Tuner(
        _with_resources(trial_function, spec),
        param_space=_tune_config(cfg, trial_context(spec, reference=REFERENCE)),
        run_config=tune.RunConfig(name="dp", storage_path=str(tmp_path), verbose=0),
    )
    result = tuner.fit()[0]
    assert result.error is None
    reported = result.metrics
    history = result.metrics_dataframe
    assert list(history["step"]) == [2, 4]  # rank 0's reports only, one per evaluation point

    # the global_batch window spans both workers
    assert reported["balance_window_tokens"] == WORKERS * cfg.balance_window_tokens(1)
    assert reported["global_counts_total"] == _window_counts(cfg, WORKERS)
    assert reported["tokens"] == cfg.train.steps * WORKERS * (
        cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.data.seq_len)

    # the same result as a one-process trial: metric names, gaps to the reference, count table
    single = result_builder(TrialContext(reference=REFERENCE))(run_to_end(cfg))
    assert set(single) <= set(reported)
    assert reported["gap_loss"] == pytest.approx(reported["val_loss"] - REFERENCE["val_loss"])
    assert reported["gap_purity"] == pytest.approx(REFERENCE["purity"] - reported["purity"])
    n_LED = torch.tensor(reported["count_table"])
    assert n_LED.shape == (cfg.model.n_layers, cfg.model.n_experts, len(reported["domains"]))

    # rank 0's checkpoint of the last step lies in the trial's folder, with both ranks' streams
    checkpoint = reported["checkpoint_path"]
    assert checkpoint.startswith(str(tmp_path))
    state = torch.load(os.path.join(checkpoint, CHECKPOINT_FILE), weights_only=False)
    assert state["step"] == cfg.train.steps
    assert [r["sampler"]["rank"] for r in state["ranks"]] == [0, 1]


@pytest.mark.slow
def test_data_parallel_run_resumes_every_worker_where_it_stopped(small_mix_config, ray_two_cpus,
                                                                 tmp_path):
    from study.run.trial import fit_data_parallel

    # constant learning rate, so that a 4-step run is the first 4 steps of a 6-step run
    constant = {"train.warmup_steps": 0, "train.min_lr_ratio": 1.0}
    six_steps = _cfg(small_mix_config, **constant, **{"train.steps": 6})
    uninterrupted = _run_gloo_workers(six_steps, tmp_path)
    workers = TrialContext(workers=WORKERS, cpu_per_worker=1, gpu_per_worker=0)

    def fit(**flat):
        cfg = _cfg(small_mix_config, **constant, **flat)
        return fit_data_parallel(_tune_config(cfg, workers), name="resumed",
                                 storage_path=str(tmp_path / "train"))

    first = fit(**{"train.steps": 4})
    assert first.metrics["step"] == 4
    assert load_trial_state(first.checkpoint)["step"] == 4
    # same run name and storage: Train hands the workers the step-4 checkpoint. The other seed
    # would start another run; matching the uninterrupted seed-0 run shows that the model, the
    # optimizer and each worker's own data stream all came from the checkpoint
    resumed = fit(**{"train.steps": 6, "train.seed": 1}).metrics
    expected = uninterrupted[0]["metrics"][-1]
    assert resumed["step"] == 6
    assert resumed["val_loss"] == pytest.approx(expected["val_loss"], abs=1e-5)
    assert resumed["purity"] == pytest.approx(expected["purity"], abs=1e-9)
    assert resumed["train_loss"] == pytest.approx(expected["train_loss"], abs=1e-5)
