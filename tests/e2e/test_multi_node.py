"""The smoke study on a local Ray cluster of several nodes (head + two workers on this machine):
trials land on more than one node. The cluster requires Ray's token, as the shipped cluster
configs do; the study joins it with the token in its environment."""

from __future__ import annotations

import secrets

import pytest
from mlflow.tracking import MlflowClient

from study import naming

from tests.e2e.test_smoke_study import SMOKE, moe_study


@pytest.fixture()
def three_node_cluster(monkeypatch):
    from ray.cluster_utils import Cluster

    from ray._raylet import Config

    # every node, this process and the study's process (it inherits the environment); Ray caches
    # the mode per process, so this one reloads it (what ray.init does for a new local cluster)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    Config.initialize("")

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()
    monkeypatch.undo()
    Config.initialize("")


def test_smoke_study_spreads_trials_over_nodes(tmp_path, three_node_cluster):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = moe_study("run", str(SMOKE), "--address", three_node_cluster.address, "--tracking-uri", uri,
                  "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    trials = [x for x in client.search_runs([exp.experiment_id])
              if x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]
    assert len(trials) == 4 and all("gap_purity" in t.data.metrics for t in trials)
    nodes = {t.data.tags[naming.TAG_NODE] for t in trials}
    assert len(nodes) >= 2, f"every trial ran on one node: {nodes}"
