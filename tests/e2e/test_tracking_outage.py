"""The tracking server goes away in the middle of a study (stopped and restarted by the test):
no metric of a finished trial is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from study import naming

from tests.e2e.servers import MlflowServer
from tests.e2e.test_interrupt_resume import SPEC as INTERRUPT_SPEC

pytestmark = pytest.mark.slow


def _trial_runs(uri: str, status: str | None = None):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("interrupt")
    if exp is None:
        return []
    f = f"tags.{naming.TAG_ROLE} = 'trial'"
    if status:
        f += f" AND attributes.status = '{status}'"
    return client.search_runs([exp.experiment_id], f, max_results=100)


def _start_study(tmp_path, uri, *args, drain_s: int = 120):
    env = {**os.environ, "MOE_STUDY_TRACKING_DRAIN_S": str(drain_s)}
    return subprocess.Popen(
        [sys.executable, "-m", "study.cli", *args, "--tracking-uri", uri,
         "--storage", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, stdout=open(tmp_path / f"{args[0]}.log", "w"), stderr=subprocess.STDOUT,
    )


def _wait_finished(server, proc, n, timeout=600):
    deadline = time.monotonic() + timeout
    while len(_trial_runs(server.uri, "FINISHED")) < n:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(1)


def _assert_complete(uri: str):
    trials = _trial_runs(uri)
    assert len(trials) == 6 and all(t.info.status == "FINISHED" for t in trials)
    client = MlflowClient(uri)
    for t in trials:
        assert "gap_purity" in t.data.metrics
        steps = [m.step for m in client.get_metric_history(t.info.run_id, "val_loss")]
        assert steps == [10, 20, 30, 40]  # every report delivered, none twice


def test_outage_in_the_middle_is_bridged(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    proc = _start_study(tmp_path, server.uri, "run", str(INTERRUPT_SPEC))
    try:
        _wait_finished(server, proc, 1)
        server.stop()
        time.sleep(20)  # trials keep running and reporting while nobody listens
        server.start()
        assert proc.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-3000:]
        _assert_complete(server.uri)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


def test_outage_past_the_end_is_spooled_and_delivered_on_resume(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    proc = _start_study(tmp_path, server.uri, "run", str(INTERRUPT_SPEC), drain_s=5)
    try:
        _wait_finished(server, proc, 1)
        server.stop()
        code = proc.wait(timeout=900)  # the study ends while the server is down
        log = (tmp_path / "run.log").read_text()
        assert code == 1 and "moe-study resume interrupt" in log, log[-3000:]
        assert (tmp_path / "runs" / "interrupt" / "mlflow-spool.jsonl").exists()
        server.start()
        resumed = _start_study(tmp_path, server.uri, "resume", "interrupt")
        assert resumed.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
        _assert_complete(server.uri)
        assert not (tmp_path / "runs" / "interrupt" / "mlflow-spool.jsonl").exists()
    finally:
        for p in (proc,):
            if p.poll() is None:
                p.kill()
        server.stop()
