"""Interrupting a study (Ctrl-C, or a driver killed with SIGKILL) and resuming it finishes the
budget with no lost or duplicated trial in Tune, Optuna (the searcher's and the study's Optuna
copy) or MLflow."""

from __future__ import annotations

import glob
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study import naming

HERE = Path(__file__).resolve().parent
SPEC = HERE / "interrupt.yaml"
N_TRIALS = 6

pytestmark = pytest.mark.slow


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "study.cli", *args], cwd=cwd, env=env, text=True,
        stdout=open(cwd / f"{args[0]}-{time.time():.0f}.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill reaches Ray's processes too
    )


def _finished_trials(uri: str) -> int:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("interrupt")
    if exp is None:
        return 0
    return len(client.search_runs(
        [exp.experiment_id],
        f"tags.{naming.TAG_ROLE} = 'trial' AND attributes.status = 'FINISHED'",
    ))


def _wait_for(pred, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        assert proc.poll() is None, "the study ended before it could be interrupted"
        time.sleep(1.0)
    raise AssertionError("timed out waiting for the study to make progress")


def _check_complete(d: Path, uri: str, killed: bool) -> None:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("interrupt")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    all_trials = [r for r in runs if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]
    trials = [r for r in all_trials if r.info.status == "FINISHED"]
    ids = [r.data.tags[naming.TAG_TRIAL_ID] for r in trials]
    # MLflow: one finished run per trial of the budget, with its final metrics
    assert len(ids) == len(set(ids)) == N_TRIALS
    forgotten = [r for r in all_trials if r.info.status != "FINISHED"]
    if killed:
        # Tune saves its experiment state every ~10 s: a trial it started after the last save
        # is unknown to the resumed study, which fills the budget with a new one; its run is
        # closed as KILLED, never left RUNNING (docs/faults.md)
        assert all(r.info.status == "KILLED" for r in forgotten), [r.info.status for r in forgotten]
    else:  # Ctrl-C: Tune saves its state on the way out, nothing is forgotten
        assert forgotten == []
    assert all("gap_purity" in r.data.metrics for r in trials)
    for r in trials:  # a continued run has no step logged twice
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        assert steps == sorted(set(steps)) and steps[-1] == 40
    parents = [r for r in runs if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_STUDY]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # the study's Optuna copy (study.run.optuna_store): each finished trial once, though the
    # resume gives some trial ends again
    import optuna

    tags = parents[0].data.tags
    copied = optuna.load_study(study_name=tags[naming.TAG_OPTUNA_STUDY], storage=tags[naming.TAG_OPTUNA_STORAGE]).trials
    assert sorted(t.user_attrs[naming.TAG_TRIAL_ID] for t in copied) == sorted(ids)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in copied)
    # Tune: the experiment state holds exactly the budget, all terminated
    search = d / "runs" / "interrupt" / "search"
    trial_dirs = [p for p in search.iterdir() if p.is_dir() and (p / "params.json").exists()]
    if killed:  # a forgotten trial's folder stays behind
        trial_dirs = [p for p in trial_dirs if any(p.name.endswith("_" + i) for i in ids)]
    # named by their settings and Tune's id (console.tune_trial_name), not by config keys
    assert all(len(p.name) < 60 and p.name.split("-")[0] in ("lbl", "eb", "sh", "ba", "none") for p in trial_dirs)
    assert len(trial_dirs) == N_TRIALS
    for p in trial_dirs:
        results = [json.loads(line) for line in (p / "result.json").read_text().splitlines()]
        assert results[-1]["step"] == 40
    # Optuna: the searcher's study saw each trial once, all complete
    state = sorted(glob.glob(str(search / "searcher-state-*.pkl")))[-1]
    with open(state, "rb") as f:
        searcher = pickle.load(f)
    ot_trials = searcher["_ot_study"].trials
    assert len(ot_trials) == N_TRIALS
    assert all(t.state.name == "COMPLETE" for t in ot_trials)
    assert sorted(ids) == sorted(searcher["_ot_trials"])


def _hide_named_checkpoints(search: Path) -> int:
    """Move every trial checkpoint to a new number, so every checkpoint Tune's saved state names
    is gone (what a driver killed between Tune's deleting an old checkpoint and saving its
    state leaves behind) while newer complete ones exist."""
    moved = 0
    for ckpt in sorted(search.glob("*/checkpoint_*")):  # trial folders are named by settings
        n = int(ckpt.name.split("_")[1])
        ckpt.rename(ckpt.with_name(f"checkpoint_{n + 1000:06d}"))
        moved += 1
    return moved


@pytest.mark.parametrize("sig, hide", [(signal.SIGINT, False), (signal.SIGKILL, False), (signal.SIGKILL, True)],
                         ids=["sigint", "sigkill", "sigkill-named-checkpoints-gone"])
def test_interrupt_then_resume_finishes_the_budget(tmp_path, sig, hide):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["--tracking-uri", uri, "--storage", str(tmp_path / "runs")]
    proc = _start(["run", str(SPEC), *common], tmp_path)
    try:
        _wait_for(lambda: _finished_trials(uri) >= 1, 600, proc)
        if sig == signal.SIGINT:
            os.kill(proc.pid, signal.SIGINT)  # Ctrl-C reaches the driver
            code = proc.wait(timeout=300)
            assert code == 130
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name("interrupt")
            runs = client.search_runs([exp.experiment_id], max_results=1000)
            assert all(r.info.status != "RUNNING" for r in runs), "a run was left RUNNING"
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = _finished_trials(uri)
    assert 1 <= done_before < N_TRIALS
    hidden = _hide_named_checkpoints(tmp_path / "runs" / "interrupt" / "search") if hide else 0
    if hide:
        assert hidden >= 1

    resumed = _start(["resume", "interrupt", *common], tmp_path)
    code = resumed.wait(timeout=900)
    logs = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("resume-*.log"))
    assert code == 0, logs
    if hide:  # the resume said which checkpoints it put back (study.run.checkpoint_repair)
        full = "".join(p.read_text() for p in tmp_path.glob("resume-*.log"))
        assert "was gone (ray-project/ray#27790): resuming from checkpoint_001" in full, logs
    _check_complete(tmp_path, uri, killed=sig == signal.SIGKILL)


def test_ctrl_c_while_the_reference_runs_beside_the_search(tmp_path):
    """No gap steers this search, so the reference runs beside it (study.run.reference). Ctrl-C
    while it runs stops it too: its run is not FINISHED (no study may reuse half a reference),
    and the resume runs it again and writes every trial's gaps."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["--tracking-uri", uri, "--storage", str(tmp_path / "runs")]
    proc = _start(["run", str(SPEC), *common, "--set", "objective.metric=purity"], tmp_path)
    log = next(tmp_path.glob("run-*.log"))
    try:
        _wait_for(lambda: "runs beside the first trials" in log.read_text(), 600, proc)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("interrupt")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert all(r.info.status != "RUNNING" for r in runs), "a run was left RUNNING"
    state = json.loads((tmp_path / "runs" / "interrupt" / "study.json").read_text())
    refs = [r for r in runs if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_REFERENCE]
    stopped = "reference router was stopped before its end" in log.read_text()
    assert stopped == (state["reference"] is None)
    if stopped:  # (the usual case) no finished reference, its run KILLED
        assert [r.info.status for r in refs] in ([], ["KILLED"])

    resumed = _start(["resume", "interrupt", *common], tmp_path)
    code = resumed.wait(timeout=900)
    assert code == 0, "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("resume-*.log"))
    _check_complete(tmp_path, uri, killed=False)  # every trial has its gap_purity
    finished = client.search_runs(
        [exp.experiment_id], f"tags.{naming.TAG_ROLE} = 'reference' AND attributes.status = 'FINISHED'")
    assert len(finished) == 1 and finished[0].data.tags[naming.TAG_STOPPED_EARLY] == "false"
