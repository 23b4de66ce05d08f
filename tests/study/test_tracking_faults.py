"""Writes MLflow rejects, names that reach its filters, and a spool that a full disk or a crash
damaged: none of them stops tracking or blocks ``moe-study resume`` (docs/faults.md).

A real sqlite MLflow store (it rejects a bad key with INVALID_PARAMETER_VALUE, as a server does
with HTTP 400); where an outage is needed, a thin wrapper around its client fails some calls with
a connection error, as tests/study/test_delivery_queue.py does.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException, get_error_code
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from study import naming
from study.run import tracking
from study.run.tracking import StudyTracker, _DeliveryQueue, render_routing_artifacts

BAD = "val_loss/c++"  # a data.extra domain named c++ gives this key; MLflow refuses it


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("q", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    return SimpleNamespace(uri=uri, client=client, exp=exp, run_id=run_id)


class Outage:
    """The client, with chosen methods failing as an unreachable server makes them fail."""

    def __init__(self, client, *down: str):
        self.client, self.down = client, set(down)

    def __getattr__(self, name):
        if name in self.down:
            def fail(*a, **k):
                raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch "
                                      "failed with exception ConnectionError('Connection refused')")
            return fail
        return getattr(self.client, name)


def _queue(client, run_id, study_dir: Path) -> _DeliveryQueue:
    q = _DeliveryQueue(client, study_dir / "mlflow-spool.jsonl", resolve=lambda trial, kw: run_id,
                       render=render_routing_artifacts)
    q.RETRY_S = 0.05
    return q


def _history(client, run_id, key="val_loss"):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# -- what is an outage and what is a rejection -------------------------------------------------
@pytest.mark.parametrize("exc, rejected", [
    (MlflowException("bad key", error_code=INVALID_PARAMETER_VALUE), True),  # file/sqlite store
    (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad key"}), True),  # HTTP 400
    (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}), True),  # 404
    (RestException({"error_code": "BAD_REQUEST", "message": "x"}), True),
    (RestException({"error_code": "INTERNAL_ERROR", "message": "x"}), False),  # 500
    (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "x"}), False),  # 503
    (RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "x"}), False),  # 429
    (RestException({"error_code": "UNAUTHENTICATED", "message": "x"}), False),  # 401: fixable, keep
    (MlflowException("API request to http://h/x failed with error code 502 != 200. Response body: ''",
                     error_code=get_error_code(502)), False),  # a proxy's error page
    (MlflowException("API request to http://h/x failed with error code 413 != 200. Response body: ''",
                     error_code=get_error_code(413)), False),  # unknown 4xx: read as a 500 by MLflow
    (MlflowException("API request to http://h/x failed with exception ConnectionError(...)"), False),
    (MlflowException("API request to http://h/x failed with error code 404 != 200. Response body: ''",
                     error_code=get_error_code(404)), False),  # a proxy with no MLflow behind it
    (ConnectionError("refused"), False),
    (OSError(errno.ENOSPC, "full"), False),
])
def test_only_a_4xx_is_a_rejection(exc, rejected):
    assert tracking.is_rejection(exc) is rejected


# -- a rejected write is set aside, the queue moves on -----------------------------------------
def test_a_rejected_metric_key_is_set_aside_and_the_queue_moves_on(store, tmp_path):
    q = _queue(store.client, store.run_id, tmp_path / "study")
    for step in (1, 2, 3):
        q.put("batch", trial="t", metrics={"val_loss": float(step), BAD: 0.5}, ts=step, step=step)
    q.put("terminate", trial="t", status="FINISHED")
    assert q.drain(timeout_s=5)  # before: retried as an outage, then spooled

    assert _history(store.client, store.run_id) == [(1, 1.0), (2, 2.0), (3, 3.0)]
    run = store.client.get_run(store.run_id)
    assert run.info.status == "FINISHED" and BAD not in run.data.metrics
    assert run.data.tags[naming.TAG_REJECTED_WRITES] == "3"
    rejected = _lines(tmp_path / "study" / "mlflow-rejected.jsonl")
    assert [(r["op"], list(r["metrics"]), r["step"]) for r in rejected] == [("batch", [BAD], s) for s in (1, 2, 3)]
    assert all("INVALID_PARAMETER_VALUE" in r["error"] for r in rejected)
    assert not (tmp_path / "study" / "mlflow-spool.jsonl").exists()
    assert q.delivered == 4 and q.rejected == 3


def test_an_outage_is_still_retried_and_spooled_not_set_aside(store, tmp_path):
    q = _queue(Outage(store.client, "log_batch"), store.run_id, tmp_path / "study")
    q.put("batch", trial="t", metrics={"val_loss": 1.0}, ts=0, step=1)
    assert not q.drain(timeout_s=0.2)
    assert [r["op"] for r in _lines(tmp_path / "study" / "mlflow-spool.jsonl")] == ["batch"]
    assert not (tmp_path / "study" / "mlflow-rejected.jsonl").exists() and q.rejected == 0


def test_a_write_to_a_run_that_is_gone_is_set_aside(store, tmp_path):
    store.client.delete_run(store.run_id)  # someone deleted the run in the UI
    q = _queue(store.client, store.run_id, tmp_path / "study")
    q.put("batch", trial="t", metrics={"val_loss": 1.0}, ts=0, step=1)
    q.put("terminate", trial="t", status="FINISHED")
    assert q.drain(timeout_s=5) and q.rejected == 2 and q.delivered == 0


# -- names in filters --------------------------------------------------------------------------
def _trial(trial_id="t1"):
    return SimpleNamespace(trial_id=trial_id, config={"train.steps": 20, "router.method": "lbl"},
                           last_result=None, status="RUNNING")


@pytest.mark.parametrize("name", ["bob's-study", 'say "hi"', "it's \"both\""])
def test_a_study_name_with_quotes_does_not_break_the_run_lookup(store, tmp_path, name):
    def tracker():
        return StudyTracker(tracking_uri=store.uri, experiment_id=store.exp, parent_run_id=store.run_id,
                            study_name=name, spool_path=tmp_path / "s" / "mlflow-spool.jsonl")

    trial, first = _trial(), tracker()
    first.on_trial_result(0, [trial], trial, {"step": 10, "val_loss": 2.0})
    assert first.close(timeout_s=5)  # before: the lookup's filter was invalid, retried as an outage
    trial.last_result = {"step": 10, "val_loss": 2.0}

    resumed = tracker()  # a resumed driver finds the trial's run again by its tags
    resumed.on_trial_restore(0, [trial], trial)
    resumed.on_trial_result(0, [trial], trial, {"step": 20, "val_loss": 1.0})
    resumed.on_trial_complete(0, [trial], trial)
    assert resumed.close(timeout_s=5)
    runs = [r for r in store.client.search_runs([store.exp]) if r.data.tags.get(naming.TAG_TRIAL_ID) == "t1"]
    assert len(runs) == 1 and runs[0].data.tags[naming.TAG_STUDY] == name
    assert runs[0].info.status == "FINISHED"
    assert _history(store.client, runs[0].info.run_id) == [(10, 2.0), (20, 1.0)]


def test_filter_literal_quotes_or_refuses():
    assert naming.filter_literal("bob's") == '"bob\'s"'
    assert naming.filter_literal('say "hi"') == "'say \"hi\"'"
    with pytest.raises(ValueError):
        naming.filter_literal("it's \"both\"")


# -- replay reports what it delivered ----------------------------------------------------------
def test_replay_counts_only_what_was_delivered(store, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    records = [{"op": "batch", "trial": "t", "metrics": {BAD: 1.0}, "ts": 0, "step": s} for s in (1, 2)]
    records.append({"op": "terminate", "trial": "t", "status": "FINISHED"})
    (study / "mlflow-spool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    q = _queue(store.client, store.run_id, study)
    assert q.replay_spool() == 1  # before: 3, though nothing had been delivered
    assert q.rejected == 2 and len(_lines(study / "mlflow-rejected.jsonl")) == 2
    assert store.client.get_run(store.run_id).info.status == "FINISHED"
    assert not (study / "mlflow-spool.jsonl").exists()


def test_replay_keeps_what_an_outage_stopped(store, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    records = [{"op": "terminate", "trial": "t", "status": "FINISHED"},
               {"op": "batch", "trial": "t", "metrics": {"val_loss": 1.0}, "ts": 0, "step": 1}]
    (study / "mlflow-spool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    q = _queue(Outage(store.client, "log_batch"), store.run_id, study)
    assert q.replay_spool() == 1
    assert [r["op"] for r in _lines(study / "mlflow-spool.jsonl")] == ["batch"]  # only the rest


# -- the spool ---------------------------------------------------------------------------------
def test_a_failed_spool_write_loses_nothing(store, tmp_path, monkeypatch):
    study = tmp_path / "study"
    q = _queue(Outage(store.client, "log_batch"), store.run_id, study)
    q.put("batch", trial="t", metrics={"val_loss": 1.0}, ts=0, step=1)
    assert not q.drain(timeout_s=0.1)
    before = (study / "mlflow-spool.jsonl").read_bytes()

    q2 = _queue(Outage(store.client, "log_batch"), store.run_id, study)
    q2.put("batch", trial="t", metrics={"val_loss": 2.0}, ts=0, step=2)
    q2.put("batch", trial="t", metrics={"val_loss": 3.0}, ts=0, step=3)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # a full disk: the data never reaches it
    assert not q2.drain(timeout_s=0.1)
    monkeypatch.undo()
    assert [kw["step"] for _, kw in q2.snapshot()] == [2, 3]  # before: emptied before writing
    assert (study / "mlflow-spool.jsonl").read_bytes() == before  # the earlier spool intact
    assert sorted(p.name for p in study.iterdir() if "spool" in p.name) == ["mlflow-spool.jsonl"]

    q2.spool()  # the disk has room again
    assert [r["step"] for r in _lines(study / "mlflow-spool.jsonl")] == [1, 2, 3]
    assert q2.snapshot() == []


def test_an_unreadable_spool_line_is_quarantined_and_replay_goes_on(store, tmp_path, caplog):
    study = tmp_path / "study"
    study.mkdir()
    good = [{"op": "batch", "trial": "t", "metrics": {"val_loss": float(s)}, "ts": 0, "step": s} for s in (1, 2)]
    truncated = '{"op": "batch", "trial": "t", "metr'  # the driver died mid-write
    (study / "mlflow-spool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good) + truncated)
    q = _queue(store.client, store.run_id, study)
    with caplog.at_level(logging.WARNING, logger=tracking.__name__):
        assert q.replay_spool() == 2  # before: json.loads raised, on every resume
    assert _history(store.client, store.run_id) == [(1, 1.0), (2, 2.0)]
    assert (study / "mlflow-spool.jsonl.corrupt").read_text() == truncated + "\n"
    assert "mlflow-spool.jsonl.corrupt" in caplog.text
    assert not (study / "mlflow-spool.jsonl").exists()


def test_spooled_artifacts_live_in_the_study_folder_and_are_removed_once_delivered(store, tmp_path):
    study = tmp_path / "study"
    table = [[[30, 1, 1], [1, 30, 1], [1, 1, 30], [10, 10, 10]]]
    q = _queue(Outage(store.client, "log_artifact"), store.run_id, study)
    q.put("count_table", trial="t", table=table, domains=["a", "b", "c"])
    q.put("heatmap", trial="t", table=table, domains=["a", "b", "c"])
    assert not q.drain(timeout_s=0.1)
    paths = [Path(r["path"]) for r in _lines(study / "mlflow-spool.jsonl") if "path" in r]
    assert paths and all(p.is_file() and study in p.parents for p in paths)  # before: under /tmp

    replay = _queue(store.client, store.run_id, study)  # moe-study resume, after a reboot too
    assert replay.replay_spool() == 2
    assert sorted(a.path for a in store.client.list_artifacts(store.run_id)) == [
        "count_table.csv", "count_table.parquet", "routing_heatmap.png"]
    assert not any(p.exists() or p.parent.exists() for p in paths)  # temp folders removed
