"""The smoke study against a real `mlflow server` process on loopback."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from study import naming

from tests.e2e.servers import MlflowServer
from tests.e2e.test_smoke_study import SMOKE, moe_study


@pytest.fixture()
def server(tmp_path):
    s = MlflowServer(tmp_path / "server").start()
    yield s
    s.stop()


def test_smoke_study_against_a_tracking_server(tmp_path, server):
    r = moe_study("run", str(SMOKE), "--tracking-uri", server.uri, "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    trials = [x for x in runs if x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]
    assert len(trials) == 4 and all("gap_purity" in t.data.metrics for t in trials)
    # artifacts went through the server into its artifact store
    artifacts = {a.path for a in client.list_artifacts(trials[0].info.run_id)}
    assert "count_table.parquet" in artifacts
    assert any((tmp_path / "server" / "artifacts").rglob("count_table.parquet"))
    best = moe_study("best", "smoke", "--tracking-uri", server.uri, "--format", "json", cwd=tmp_path)
    finished = [t for t in trials if t.data.tags[naming.TAG_STOPPED_EARLY] == "false"]  # ASHA stops some
    assert best.returncode == 0 and best.stdout.count("run_id") == len(finished) >= 1
    # the REST path (no MLflow import) answers as MlflowClient does
    from study.results import fast_queries
    from study.results.queries import Query, _best_runs_with_client, best_runs, parse_where

    for by, where, stopped in (("gap_purity", None, False), ("purity", "method=lbl", False),
                               ("val_loss", "scope=global_batch", False), ("gap_purity", None, True)):
        clauses, _ = parse_where(where) if where else ([], None)
        query = Query("smoke", by, naming.metric_mode(by) == "min", 10, False, clauses, include_stopped=stopped)
        assert fast_queries.search(server.uri, query) is not None
        assert best_runs(server.uri, "smoke", by=by, where=where, include_stopped=stopped) == \
            _best_runs_with_client(server.uri, query)


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path):
    dead = MlflowServer(tmp_path / "dead")  # never started: nothing listens on its port
    r = moe_study("run", str(SMOKE), "--tracking-uri", dead.uri, "--storage", str(tmp_path / "runs"),
                  cwd=tmp_path, timeout=300)
    assert r.returncode == 1
    assert "not reachable" in r.stderr and dead.uri in r.stderr
    assert not (tmp_path / "runs" / "smoke").exists()  # nothing written to the Tune storage
