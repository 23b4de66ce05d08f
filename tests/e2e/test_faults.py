"""Faults a long study meets: a diverging trial, bad resources, two studies on one store."""

from __future__ import annotations

import glob
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study import naming

from tests.e2e.test_smoke_study import SMOKE, moe_study

HERE = Path(__file__).resolve().parent


def test_a_diverging_trial_is_recorded_as_failed_and_the_study_goes_on(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = moe_study("run", str(HERE / "diverge.yaml"), "--tracking-uri", uri,
                  "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("diverge")
    trials = [x for x in client.search_runs([exp.experiment_id])
              if x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]
    by_lr = {float(t.data.params["train.lr"]): t for t in trials}
    assert sorted(by_lr) == [1e-3, 3e-3, 1e30]  # one run per trial, retries continued it
    failed = by_lr[1e30]
    assert failed.info.status == "FAILED"
    assert "loss became" in failed.data.tags["moe_study.error"]
    assert all(by_lr[lr].info.status == "FINISHED" for lr in (1e-3, 3e-3))
    # Optuna was told: the diverged point is a failed trial, the others complete
    state = sorted(glob.glob(str(tmp_path / "runs" / "diverge" / "search" / "searcher-state-*.pkl")))[-1]
    with open(state, "rb") as f:
        ot_trials = pickle.load(f)["_ot_study"].trials
    states = sorted(t.state.name for t in ot_trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]


def test_resources_no_node_can_satisfy_are_bad_input_before_anything_starts(tmp_path):
    spec = tmp_path / "greedy.yaml"
    spec.write_text(SMOKE.read_text().replace("resources: {cpu: 1,", "resources: {cpu: 512,"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = moe_study("run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "runs"),
                  cwd=tmp_path, timeout=300)
    assert r.returncode == 2
    assert "resources" in r.stderr and "CPU 512" in r.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs" / "greedy").exists()


@pytest.mark.slow
def test_two_studies_at_once_on_one_store_do_not_mix(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # create the store first: two processes creating the schema at once race (mlflow#4123)
    MlflowClient(uri).search_experiments()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "study.cli", "run", str(SMOKE), "--name", name,
             "--tracking-uri", uri, "--storage", str(tmp_path / "runs")],
            cwd=tmp_path, stdout=open(tmp_path / f"{name}.log", "w"), stderr=subprocess.STDOUT,
        )
        for name in ("alpha", "beta")
    ]
    codes = [p.wait(timeout=1500) for p in procs]
    logs = "\n".join((tmp_path / f"{n}.log").read_text()[-4000:] for n in ("alpha", "beta"))
    assert codes == [0, 0], logs
    client = MlflowClient(uri)
    for name in ("alpha", "beta"):
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id])
        parents = [x for x in runs if x.data.tags[naming.TAG_ROLE] == naming.ROLE_STUDY]
        assert len(parents) == 1
        children = [x for x in runs if x.data.tags.get(naming.TAG_PARENT_RUN) == parents[0].info.run_id]
        assert all(x.data.tags[naming.TAG_STUDY] == name for x in runs)
        assert len([x for x in children if x.data.tags[naming.TAG_ROLE] == naming.ROLE_TRIAL]) == 4
        assert len(runs) == 1 + len(children)  # nothing of the other study in this experiment
