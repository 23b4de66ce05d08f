"""A trial whose worker process is killed is retried from its last checkpoint, and its MLflow
run is continued, not duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from study import naming

from tests.e2e.test_interrupt_resume import N_TRIALS, SPEC

pytestmark = pytest.mark.slow


def _trial_worker_pids(marker: str) -> list[int]:
    """Trial workers of this test's study only: Ray's processes inherit the driver's
    environment, which carries a marker no other study on the machine has."""
    # the trial actor's process title: ray::<trainable class>.<method>
    out = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"],
                         capture_output=True, text=True).stdout
    pids = []
    for p in out.split():
        try:
            if marker.encode() in open(f"/proc/{p}/environ", "rb").read():
                pids.append(int(p))
        except OSError:
            continue
    return pids


def test_killed_trial_worker_is_retried_and_its_run_continued(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    marker = f"MOE_STUDY_TEST_MARKER={tmp_path.name}"
    env = {**os.environ, "MOE_STUDY_TEST_MARKER": tmp_path.name}
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "study.cli", "run", str(SPEC), "--tracking-uri", uri,
         "--storage", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    client = MlflowClient(uri)
    try:
        deadline = time.monotonic() + 600
        killed = None
        while killed is None and time.monotonic() < deadline:
            exp = client.get_experiment_by_name("interrupt")
            running = [] if exp is None else client.search_runs(
                [exp.experiment_id],
                f"tags.{naming.TAG_ROLE} = 'trial' AND attributes.status = 'RUNNING'")
            # a trial that has reported (and so checkpointed) at least once, not yet finished
            victims = _trial_worker_pids(marker)
            if any("val_loss" in r.data.metrics for r in running) and victims:
                killed = victims[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.5)
        assert killed is not None, "no trial worker to kill"
        assert proc.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    exp = client.get_experiment_by_name("interrupt")
    trials = [r for r in client.search_runs([exp.experiment_id], max_results=100)
              if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]
    ids = [r.data.tags[naming.TAG_TRIAL_ID] for r in trials]
    assert len(ids) == len(set(ids)) == N_TRIALS  # the retried trial kept its one run
    assert all(r.info.status == "FINISHED" for r in trials)
    for r in trials:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        assert steps[-1] == 40 and len(steps) == len(set(steps))
    assert "6 trials done, 0 failed" in (tmp_path / "run.log").read_text()
    # Tune saw the failure and retried: the killed trial has an error record
    search = tmp_path / "runs" / "interrupt" / "search"
    assert any(search.glob("*/error.txt")), "no trial failed: the kill did not hit a trial worker"
