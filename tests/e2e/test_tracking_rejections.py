"""Through a real `mlflow server` on loopback: a write the server refuses (HTTP 400,
INVALID_PARAMETER_VALUE) is set aside and tracking goes on; the server being down (connection
refused) is an outage, spooled and delivered later. The study's name holds a quote."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from study import naming
from study.run.tracking import StudyTracker

from tests.e2e.servers import MlflowServer

pytestmark = pytest.mark.slow

NAME = "bob's-study"
BAD = "val_loss/c++"


def test_a_refused_write_is_set_aside_and_an_outage_is_spooled(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as the runner: the queue retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = MlflowServer(tmp_path / "server").start()
    study = tmp_path / "runs" / NAME
    try:
        client = MlflowClient(server.uri)
        exp = client.create_experiment(NAME)
        parent = client.create_run(exp, tags={naming.TAG_STUDY: NAME}).info.run_id

        def tracker():
            return StudyTracker(tracking_uri=server.uri, experiment_id=exp, parent_run_id=parent,
                                study_name=NAME, spool_path=study / "mlflow-spool.jsonl")

        trial = SimpleNamespace(trial_id="t1", config={"train.steps": 20, "router.method": "lbl"},
                                last_result=None, status="RUNNING")
        first = tracker()
        first.on_trial_result(0, [trial], trial, {"step": 10, "val_loss": 2.0, BAD: 1.0})
        assert first.close(timeout_s=30)
        run_id = first.run_ids["t1"]
        run = client.get_run(run_id)
        assert run.data.metrics == {"val_loss": 2.0} and run.data.tags[naming.TAG_REJECTED_WRITES] == "1"
        rejected = [json.loads(x) for x in (study / "mlflow-rejected.jsonl").read_text().splitlines()]
        assert [list(r["metrics"]) for r in rejected] == [[BAD]]
        assert rejected[0]["error"].startswith("INVALID_PARAMETER_VALUE")

        server.stop()  # now an outage: not a rejection
        trial.last_result = {"step": 10, "val_loss": 2.0}
        down = tracker()
        down.on_trial_result(0, [trial], trial, {"step": 20, "val_loss": 1.0, BAD: 0.5})
        down.on_trial_complete(0, [trial], trial)
        assert not down.close(timeout_s=2)
        assert down.queue.rejected == 0 and len(rejected) == 1
        assert (study / "mlflow-spool.jsonl").exists()

        spooled = [json.loads(x)["op"] for x in (study / "mlflow-spool.jsonl").read_text().splitlines()]
        assert spooled == ["open", "batch", "batch", "batch", "terminate"]

        server.start()
        replay = tracker().queue  # moe-study resume
        assert replay.replay_spool() == 5 and replay.rejected == 1  # the step-20 report's BAD
        assert not (study / "mlflow-spool.jsonl").exists()
        run = client.get_run(run_id)  # found again by its tags, the quote in the name no matter
        assert run.info.status == "FINISHED" and run.data.tags[naming.TAG_REJECTED_WRITES] == "2"
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")] == [(10, 2.0), (20, 1.0)]
        assert len(client.search_runs([exp], f"tags.{naming.TAG_TRIAL_ID} = 't1'")) == 1
    finally:
        server.stop()
