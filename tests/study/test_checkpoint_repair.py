"""Resuming after a driver was killed between Tune's deleting a checkpoint and saving its state
(ray-project/ray#27790): the checkpoint Tune's state names is put back from the newest one."""

from __future__ import annotations

import os

import pytest

from study.run.checkpoint_repair import CHECKPOINT_FILE, referenced_checkpoints, repair, newest_checkpoint_dir
from study.run import trial


def _checkpoint(trial_dir, n: int, content: bytes = b"state") -> None:
    d = trial_dir / f"checkpoint_{n:06d}"
    d.mkdir(parents=True)
    if content:
        (d / CHECKPOINT_FILE).write_bytes(content)


def test_the_state_file_name_is_the_trainables():
    assert CHECKPOINT_FILE == trial.CHECKPOINT_FILE


def test_newest_complete_checkpoint_is_chosen(tmp_path):
    for n, content in ((1, b"a"), (2, b"b"), (3, b"")):  # 3: killed while being written
        _checkpoint(tmp_path, n, content)
    (tmp_path / "result.json").write_text("{}")
    assert newest_checkpoint_dir(tmp_path) == tmp_path / "checkpoint_000002"
    assert newest_checkpoint_dir(tmp_path / "missing") is None


def test_the_missing_checkpoint_is_replaced_by_the_newest_for_unfinished_trials_only(tmp_path):
    running, done, lost, elsewhere = (tmp_path / n for n in ("running", "done", "lost", "elsewhere"))
    _checkpoint(running, 3, b"step 225")  # state names 2, deleted when 3 came
    _checkpoint(done, 4)
    lost.mkdir()
    refs = [
        ("RUNNING", str(running / "checkpoint_000002")),
        ("TERMINATED", str(done / "checkpoint_000003")),  # finished: never restored
        ("PAUSED", str(lost / "checkpoint_000001")),  # nothing left to resume from
        ("RUNNING", "/nowhere/trial/checkpoint_000001"),  # outside the study's folder
        ("RUNNING", str(elsewhere)),  # not a checkpoint folder
    ]
    fixes = repair(refs, tmp_path)
    assert [(f.trial_dir.name, os.path.basename(f.missing), f.moved_from and os.path.basename(f.moved_from))
            for f in fixes] == [("running", "checkpoint_000002", "checkpoint_000003"),
                                ("lost", "checkpoint_000001", None)]
    assert (running / "checkpoint_000002" / CHECKPOINT_FILE).read_bytes() == b"step 225"
    assert not (running / "checkpoint_000003").exists()
    assert (done / "checkpoint_000004").exists() and not (done / "checkpoint_000003").exists()
    assert repair(refs, tmp_path)[0].trial_dir.name == "lost"  # done once: the first is whole now


@pytest.fixture
def ray_one_cpu():
    import ray

    from study.run.runner import local_ray

    assert not ray.is_initialized()
    with local_ray(num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False):
        yield


@pytest.mark.usefixtures("ray_one_cpu")
def test_paths_are_read_from_a_real_tune_state(tmp_path):
    from ray import tune

    def three_checkpoints(config):
        for step in range(3):
            d = tmp_path / f"src{step}"
            d.mkdir()
            (d / CHECKPOINT_FILE).write_bytes(b"x")
            tune.report({"step": step}, checkpoint=tune.Checkpoint.from_directory(str(d)))

    tune.Tuner(three_checkpoints, run_config=tune.RunConfig(
        name="search", storage_path=str(tmp_path / "runs"), verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))).fit()
    (status, path), = referenced_checkpoints(tmp_path / "runs" / "search")
    assert status == "TERMINATED"
    assert os.path.basename(path) == "checkpoint_000002" and os.path.isdir(path)
