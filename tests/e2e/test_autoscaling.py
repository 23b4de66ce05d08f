"""A study on a cluster scaled to zero GPU nodes: Ray's real autoscaler (v1) with its fake
multi-node provider, which starts each node it launches as local Ray processes with the node
type's declared resources. Token authentication on, every process on 127.0.0.1.

The head has one CPU and no GPU; the only GPU node type (mirroring cluster.yaml's) starts at
zero workers. The resource check must accept a GPU spec from the node type alone and refuse one
no type can hold; the autoscaler launches GPU workers for the trials, each trial's MLflow run
names the GPU worker it ran on, and the workers go away after the idle timeout.

Torch sees no CUDA here: a trial holding a (fake) GPU trains on the CPU."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study import naming

from tests.e2e.test_smoke_study import moe_study

pytestmark = pytest.mark.slow

SPEC = Path(__file__).parent / "autoscale.yaml"
GPU_TYPE = "ray.worker.gpu"
IDLE_TIMEOUT_S = 15


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _autoscaler_config(gcs_address: str) -> dict:
    """Ray's fake multi-node config (its example.yaml, which the wheel does not ship), with
    cluster.yaml's shape: a head that runs no GPU trial, GPU workers from zero."""
    return {
        "cluster_name": "moe-study-autoscale-test",
        "max_workers": 2,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            GPU_TYPE: {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 150 * 2**20},
                       "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": IDLE_TIMEOUT_S / 60,
        "docker": {}, "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


@pytest.fixture()
def autoscaling_cluster(tmp_path, monkeypatch):
    """The head (ray.cluster_utils.Cluster, so this process owns it) with the autoscaler
    monitor reading the fake provider's config. Torn down by process id: the head's processes,
    and the GPU workers the monitor started (never `ray stop`, which would end every Ray on
    the machine)."""
    from ray._private import ray_constants
    from ray._raylet import Config
    from ray.cluster_utils import Cluster
    import psutil  # Ray's own copy (ray/thirdparty_files), on the path once ray is imported

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    Config.initialize("")
    # the monitor and the nodes it starts inherit these: the fake provider, a fast loop, and
    # node addresses on loopback (runner.local_ray explains the variable)
    monkeypatch.setenv("RAY_FAKE_CLUSTER", "1")
    monkeypatch.setenv("AUTOSCALER_UPDATE_INTERVAL_S", "1")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)

    port = _free_port()
    address = f"127.0.0.1:{port}"
    config_path = tmp_path / "autoscaler.json"
    config_path.write_text(json.dumps(_autoscaler_config(address)))
    cluster = Cluster(initialize_head=True, head_node_args={
        "gcs_server_port": port, "node_ip_address": "127.0.0.1", "num_cpus": 1, "include_dashboard": False,
        "autoscaling_config": str(config_path)})
    assert cluster.address == address
    try:
        yield cluster
    finally:
        ours = psutil.Process().children(recursive=True)  # this test's processes only
        cluster.shutdown()
        for proc in ours:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(ours, timeout=10)
        monkeypatch.undo()
        Config.initialize("")


def _gpu_nodes(cluster) -> list[dict]:
    """Every GPU node the cluster has had, alive or gone."""
    return [n for n in cluster.global_state.node_table() if n["Resources"].get("GPU", 0) > 0]


def _trial_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [x for x in client.search_runs([exp.experiment_id])
            if x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]


def test_gpu_study_scales_a_cluster_up_from_zero_and_back(tmp_path, autoscaling_cluster):
    cluster = autoscaling_cluster
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert not _gpu_nodes(cluster)  # scaled to zero

    # more GPU than any node type offers: refused before a trial starts
    r = moe_study("run", str(SPEC), "--set", "resources.gpu=2", "--name", "too-big",
                  "--address", cluster.address, "--tracking-uri", uri,
                  "--storage", str(tmp_path / "runs"), cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resources" in r.stderr and "GPU 2" in r.stderr, r.stderr[-3000:]
    assert not _gpu_nodes(cluster)
    # refused before any work: no study state, no MLflow experiment
    assert not (tmp_path / "runs" / "too-big").exists()
    assert MlflowClient(uri).get_experiment_by_name("too-big") is None

    # half a GPU a trial (two share a worker), then a whole one: accepted from the node type
    # while no GPU node exists
    started = time.monotonic()
    for gpu, cpu, name in ((0.5, 0.5, "autoscale"), (1, 1, "whole-gpu")):
        r = moe_study("run", str(SPEC), "--set", f"resources.gpu={gpu}", "--set", f"resources.cpu={cpu}",
                      "--name", name, "--address", cluster.address, "--tracking-uri", uri,
                      "--storage", str(tmp_path / "runs"), cwd=tmp_path, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "2 trials done, 0 failed" in r.stdout, r.stdout[-3000:]

        gpu_nodes = _gpu_nodes(cluster)
        assert gpu_nodes, "the autoscaler launched no GPU worker"
        assert all(n["Resources"]["GPU"] == 1 for n in gpu_nodes)  # the declared type, launched
        gpu_ids = {n["NodeID"] for n in gpu_nodes}
        trials = _trial_runs(uri, name)
        assert len(trials) == 2
        for t in trials:
            assert t.info.status == "FINISHED" and "val_loss" in t.data.metrics
            assert t.data.tags[naming.TAG_NODE] in gpu_ids, (t.data.tags, gpu_ids)
            assert t.data.tags[naming.TAG_NODE_TYPE] == GPU_TYPE
            # what it cost: its GPU share for the time it held it (trained on the CPU: no CUDA)
            assert t.data.metrics["cost/gpu_s"] == pytest.approx(gpu * t.data.metrics["trial_wall_s"])

    # no work left: the GPU workers are removed after the idle timeout
    deadline = time.monotonic() + IDLE_TIMEOUT_S + 120
    while any(n["Alive"] for n in _gpu_nodes(cluster)):
        assert time.monotonic() < deadline, f"GPU workers still up: {_gpu_nodes(cluster)}"
        time.sleep(2)
    print(f"study and scale-down in {time.monotonic() - started:.0f}s")
