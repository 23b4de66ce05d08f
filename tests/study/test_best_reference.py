"""``best --include-reference`` with the default ``--by gap_purity``: the reference router ranks by
its gap to itself, 0, whether its run logged it (newer studies) or not (older ones), and a study
that reused another study's reference finds that run."""

from __future__ import annotations

import pytest

from study import naming
from study.results.queries import best_runs

KEY = "0123456789abcdef"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    client = MlflowClient(uri)

    def study(name, reference_key=None):
        exp = client.create_experiment(name)
        tags = {naming.TAG_ROLE: naming.ROLE_STUDY, naming.TAG_STUDY: name,
                naming.TAG_SEARCH_KEYS: "router.method"}
        if reference_key:
            tags[naming.TAG_REFERENCE_KEY] = reference_key
        return exp, client.create_run(exp, run_name=f"study-{name}", tags=tags).info.run_id

    def run(exp, parent, name, role, method, metrics, tags=None):
        r = client.create_run(exp, run_name=name, tags={
            naming.TAG_PARENT_RUN: parent, naming.TAG_ROLE: role, **(tags or {})})
        client.log_batch(r.info.run_id, metrics=[Metric(k, v, 0, 100) for k, v in metrics.items()],
                         params=[Param("router.method", method), Param("train.seed", "0")])
        client.set_terminated(r.info.run_id)
        return r.info.run_id

    stopped = {naming.TAG_STOPPED_EARLY: "false"}
    # a newer study: its reference run logged its gaps as 0 and carries the tracker's tags
    exp, parent = study("fresh", KEY)
    run(exp, parent, "g1", naming.ROLE_TRIAL, "lbl", {"gap_purity": 0.2, "gap_loss": -0.05, "purity": 0.8}, stopped)
    run(exp, parent, "g2", naming.ROLE_TRIAL, "eb", {"gap_purity": 0.4, "gap_loss": 0.1, "purity": 0.6}, stopped)
    fresh_ref = run(exp, parent, "reference-s0", naming.ROLE_REFERENCE, "reference",
                    {"gap_purity": 0.0, "gap_loss": 0.0, "purity": 1.0, "val_loss": 2.5},
                    {**stopped, naming.TAG_CONFIG_HASH: KEY})
    # an older study: no gap metrics on its reference run, no stopped-early tag either
    exp, parent = study("old")
    run(exp, parent, "o1", naming.ROLE_TRIAL, "lbl", {"gap_purity": 0.3, "gap_loss": 0.2, "purity": 0.7}, stopped)
    run(exp, parent, "o2", naming.ROLE_TRIAL, "eb", {"gap_purity": 0.1, "gap_loss": 0.05, "purity": 0.9}, stopped)
    run(exp, parent, "reference-s0", naming.ROLE_REFERENCE, "reference", {"purity": 1.0, "val_loss": 2.4})
    # a study that reused fresh's reference run (no reference run in its own experiment)
    exp, parent = study("reuser", KEY)
    run(exp, parent, "u1", naming.ROLE_TRIAL, "lbl", {"gap_purity": 0.25, "purity": 0.75}, stopped)
    run(exp, parent, "u2", naming.ROLE_TRIAL, "eb", {"gap_purity": 0.5, "purity": 0.5}, stopped)
    client.set_terminated(parent)
    return uri, fresh_ref


def names(rows):
    return [r["trial"] for r in rows]


def test_reference_that_logged_its_zero_gaps_heads_the_default_ranking(store):
    uri, _ = store
    rows = best_runs(uri, "fresh", include_reference=True)
    assert names(rows) == ["reference-s0", "g1", "g2"]
    assert rows[0]["gap_purity"] == 0.0 and rows[0]["method"] == "reference"
    assert names(best_runs(uri, "fresh", include_reference=True, top=1)) == ["reference-s0"]
    assert names(best_runs(uri, "fresh")) == ["g1", "g2"]  # only when asked


def test_reference_of_an_older_study_without_gap_metrics_ranks_at_zero(store):
    """Before, the run was left out: it never logged gap_purity (nor the stopped-early tag)."""
    uri, _ = store
    rows = best_runs(uri, "old", include_reference=True)
    assert names(rows) == ["reference-s0", "o2", "o1"]
    assert rows[0]["gap_purity"] == 0.0 and rows[0]["gap_loss"] == 0.0  # by definition
    assert rows[1]["gap_purity"] == 0.1


def test_reference_ranks_by_value_among_trials(store):
    """A trial with a lower val_loss than the reference (a negative gap_loss) ranks above it; by a
    metric the reference logged, its own value counts."""
    uri, _ = store
    assert names(best_runs(uri, "fresh", by="gap_loss", include_reference=True)) == ["g1", "reference-s0", "g2"]
    assert names(best_runs(uri, "old", by="gap_loss", include_reference=True)) == ["reference-s0", "o2", "o1"]
    assert names(best_runs(uri, "old", by="purity", include_reference=True)) == ["reference-s0", "o2", "o1"]
    assert names(best_runs(uri, "old", by="purity", mode="min", include_reference=True)) == ["o1", "o2", "reference-s0"]


def test_reused_reference_of_another_experiment_is_found_by_its_key(store):
    uri, fresh_ref = store
    rows = best_runs(uri, "reuser", include_reference=True)
    assert names(rows) == ["reference-s0", "u1", "u2"]
    assert rows[0]["run_id"] == fresh_ref


def test_where_applies_to_the_reference_too(store):
    uri, _ = store
    assert names(best_runs(uri, "old", include_reference=True, where="method=lbl")) == ["o1"]
    assert names(best_runs(uri, "old", include_reference=True, where="method=reference")) == ["reference-s0"]
    assert names(best_runs(uri, "reuser", include_reference=True, where="purity>0.6")) == ["reference-s0", "u1"]


@pytest.mark.parametrize("experiment", ["fresh", "old", "reuser"])
@pytest.mark.parametrize("by", ["gap_purity", "gap_loss", "purity"])
def test_fast_path_matches_mlflow_client_with_references(store, experiment, by):
    from study.results import fast_queries
    from study.results.queries import Query, _best_runs_with_client

    uri, _ = store
    query = Query(experiment, by, naming.metric_mode(by) == "min", 10, True)
    assert fast_queries.search(uri, query) is not None
    assert best_runs(uri, experiment, by=by, include_reference=True) == _best_runs_with_client(uri, query)


def test_cli_include_reference_with_the_default_by(store, capsys):
    from study.cli import main

    uri, _ = store
    assert main(["best", "old", "--tracking-uri", uri, "--include-reference", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split(",")[1] == "reference-s0" and len(lines) == 4


@pytest.mark.slow
def test_rest_path_matches_mlflow_client_with_references(store, tmp_path):
    """The same store behind a real `mlflow server`: the REST path (no MLflow import) finds the
    references, the reused one through experiments/search, as MlflowClient does."""
    import shutil

    from study.results import fast_queries
    from study.results.queries import Query, _best_runs_with_client
    from tests.e2e.servers import MlflowServer

    uri, fresh_ref = store
    (tmp_path / "server").mkdir()
    shutil.copy(uri[len("sqlite:///"):], tmp_path / "server" / "mlflow.db")
    server = MlflowServer(tmp_path / "server").start()
    try:
        for experiment in ("fresh", "old", "reuser"):
            query = Query(experiment, "gap_purity", True, 10, True)
            fast = best_runs(server.uri, experiment, include_reference=True)
            assert fast_queries.search(server.uri, query) is not None
            assert fast == _best_runs_with_client(server.uri, query)
            assert fast[0]["trial"] == "reference-s0" and fast[0]["gap_purity"] == 0.0
        assert best_runs(server.uri, "reuser", include_reference=True)[0]["run_id"] == fresh_ref
    finally:
        server.stop()
