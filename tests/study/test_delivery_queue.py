"""The tracker's delivery queue: in order, off the caller's thread, retried, drained, spooled.

A real sqlite MLflow store; a thin wrapper around its client injects the faults (a write that
blocks, writes that fail) that a tracking server outage would cause.
"""

from __future__ import annotations

from pathlib import Path

import json
import threading

import pytest
from mlflow import MlflowClient

from study.run.tracking import _DeliveryQueue, render_routing_artifacts


class FlakyClient:
    """An MlflowClient whose log_batch fails ``failures`` times, or waits for ``gate``."""

    def __init__(self, client: MlflowClient, failures: int = 0, gate: threading.Event | None = None):
        self.client, self.failures, self.gate = client, failures, gate
        self.attempts = 0

    def log_batch(self, *args, **kwargs):
        self.attempts += 1
        if self.gate is not None:
            self.gate.wait()
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("tracking server unreachable")
        return self.client.log_batch(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture
def store(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("q", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    return client, run_id


def _queue(client, run_id, tmp_path):
    q = _DeliveryQueue(client, tmp_path / "spool.jsonl", resolve=lambda trial, kw: run_id,
                       render=render_routing_artifacts)
    q.RETRY_S = 0.05
    return q


def _history(client, run_id):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]


def test_put_returns_while_a_write_is_in_flight_and_order_is_kept(store, tmp_path):
    client, run_id = store
    gate = threading.Event()
    q = _queue(FlakyClient(client, gate=gate), run_id, tmp_path)
    for step in range(5):
        q.put("batch", trial="t", metrics={"loss": float(step)}, ts=step, step=step)
    assert len(q.snapshot()) == 5  # the first write is blocked; put() did not wait for it
    gate.set()
    assert q.drain(timeout_s=30)
    assert _history(client, run_id) == [(s, float(s)) for s in range(5)]
    assert q.delivered == 5 and q.busy_s > 0


def test_failed_writes_are_retried_in_the_background(store, tmp_path):
    client, run_id = store
    flaky = FlakyClient(client, failures=3)
    q = _queue(flaky, run_id, tmp_path)
    q.put("batch", trial="t", metrics={"loss": 1.0}, ts=0, step=1)
    q.put("batch", trial="t", metrics={"loss": 2.0}, ts=0, step=2)
    assert q.drain(timeout_s=30)
    assert flaky.attempts == 3 + 2 and _history(client, run_id) == [(1, 1.0), (2, 2.0)]
    assert not (tmp_path / "spool.jsonl").exists()


def test_what_cannot_be_delivered_is_spooled_in_order_and_replayed(store, tmp_path):
    client, run_id = store
    q = _queue(FlakyClient(client, failures=10**6), run_id, tmp_path)
    q.put("batch", trial="t", metrics={"loss": 1.0}, ts=0, step=1)
    q.put("terminate", trial="t", status="FINISHED")
    assert not q.drain(timeout_s=0.2)
    lines = [json.loads(x) for x in (tmp_path / "spool.jsonl").read_text().splitlines()]
    assert [x["op"] for x in lines] == ["batch", "terminate"]
    assert q.snapshot() == []

    replay = _queue(client, run_id, tmp_path)  # the next driver (moe-study resume)
    assert replay.replay_spool() == 2
    assert _history(client, run_id) == [(1, 1.0)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not (tmp_path / "spool.jsonl").exists()


def test_routing_figures_are_drawn_by_the_delivery_thread(store, tmp_path):
    client, run_id = store
    q = _queue(client, run_id, tmp_path)
    table = [[[30, 1, 1], [1, 30, 1], [1, 1, 30], [10, 10, 10]]]  # 1 layer x 4 experts x 3 domains
    q.put("count_table", trial="t", table=table, domains=["a", "b", "c"])
    q.put("heatmap", trial="t", table=table, domains=["a", "b", "c"])
    assert q.drain(timeout_s=30)
    assert sorted(a.path for a in client.list_artifacts(run_id)) == [
        "count_table.csv", "count_table.parquet", "routing_heatmap.png"]
    # the CSV twin is what MLflow's artifact view previews: one row per (layer, expert)
    csv = Path(client.download_artifacts(run_id, "count_table.csv", str(tmp_path / "dl"))).read_text()
    assert csv.splitlines() == ["layer,expert,a,b,c", "0,0,30,1,1", "0,1,1,30,1", "0,2,1,1,30", "0,3,10,10,10"]


def test_wait_for_returns_once_that_write_is_delivered(store, tmp_path):
    client, run_id = store
    gate = threading.Event()
    flaky = FlakyClient(client, gate=gate)
    q = _queue(flaky, run_id, tmp_path)
    q.put("batch", trial="t", metrics={"loss": 1.0}, ts=0, step=1)
    end = q.put("terminate", trial="t", status="FINISHED")
    assert not q.wait_for(end, timeout_s=0.2)  # still blocked behind the first write
    gate.set()
    assert q.wait_for(end, timeout_s=30)
    assert client.get_run(run_id).info.status == "FINISHED" and q.snapshot() == []


def test_wait_for_gives_up_while_the_store_fails(store, tmp_path):
    client, run_id = store
    q = _queue(FlakyClient(client, failures=10**6), run_id, tmp_path)
    handle = q.put("batch", trial="t", metrics={"loss": 1.0}, ts=0, step=1)
    assert not q.wait_for(handle, timeout_s=30)  # returns on the error, long before 30 s
    assert len(q.snapshot()) == 1  # kept for the retries
    q.stop(5)
