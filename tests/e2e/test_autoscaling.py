"""A study on a cluster scaled to zero GPU nodes: Ray's real autoscaler (v1) with its fake
multi-node provider, which starts each node it launches as local Ray processes with the node
type's declared resources. Token authentication on, every process on 127.0.0.1.

The head has one CPU and no GPU; the only GPU node type (mirroring cluster.yaml's) starts at
zero workers. The resource check must accept a GPU spec from the node type alone and refuse one
no type can hold; the autoscaler launches GPU workers for the trials, each trial's MLflow run
names the GPU worker it ran on, and the workers go away after the idle timeout. A GPU worker
removed mid-study (its processes killed, as a cloud takes back a preempted instance) is
replaced, and its trials resume from their checkpoints.

Torch sees no CUDA here: a trial holding a (fake) GPU trains on the CPU."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
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


def _autoscaler_config(gcs_address: str, gpu_workers: int = 2, preemptible: bool = False) -> dict:
    """Ray's fake multi-node config (its example.yaml, which the wheel does not ship), with
    cluster.yaml's shape: a head that runs no GPU trial, GPU workers from zero to gpu_workers.
    preemptible: the provider reports a node whose raylet died as terminated, as a cloud
    reports a preempted instance (tests/e2e/preemptible_provider.py says why Ray's does not)."""
    provider = {"type": "fake_multinode"}
    if preemptible:
        provider = {"type": "external",
                    "module": f"{__package__}.preemptible_provider.PreemptibleFakeMultiNodeProvider"}
    return {
        "cluster_name": "moe-study-autoscale-test",
        "max_workers": 2,
        "provider": {**provider, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            GPU_TYPE: {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 150 * 2**20},
                       "node_config": {}, "min_workers": 0, "max_workers": gpu_workers},
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": IDLE_TIMEOUT_S / 60,
        "docker": {}, "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


@pytest.fixture()
def autoscaling_cluster(request, tmp_path, monkeypatch):
    """The head (ray.cluster_utils.Cluster, so this process owns it) with the autoscaler
    monitor reading the fake provider's config; an indirect parameter passes
    _autoscaler_config's keywords. Torn down by process id: the head's processes,
    and the GPU workers the monitor started (never `ray stop`, which would end every Ray on
    the machine)."""
    from ray._private import ray_constants
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster
    import psutil  # Ray's own copy (ray/thirdparty_files), on the path once ray is imported

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    # this process caches the token it first read: a second cluster here has a new one
    reset_auth_token_state()
    # the monitor and the nodes it starts inherit these: the fake provider, a fast loop, and
    # node addresses on loopback (runner.local_ray explains the variable)
    monkeypatch.setenv("RAY_FAKE_CLUSTER", "1")
    monkeypatch.setenv("AUTOSCALER_UPDATE_INTERVAL_S", "1")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    # the monitor imports an external provider from this checkout
    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))

    port = _free_port()
    address = f"127.0.0.1:{port}"
    config_path = tmp_path / "autoscaler.json"
    config_path.write_text(json.dumps(_autoscaler_config(address, **getattr(request, "param", {}))))
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
        reset_auth_token_state()


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


STEPS, EVAL_EVERY = 300, 10  # long enough to be caught mid-run, a checkpoint every 10 steps


def _node_processes(node_id: str) -> list:
    """Every process of one fake node, among this test's own: the fake provider starts a node's
    raylet with RAY_OVERRIDE_NODE_ID_FOR_TESTING=<its node id>; the raylet starts the node's
    agents and workers. (The node's log monitor, which the autoscaler's monitor process starts
    beside the raylet, is neither: it stays until the autoscaler terminates the node.)"""
    import psutil

    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id:
                found[proc.pid] = proc
                if proc.name() == "raylet":
                    found.update((c.pid, c) for c in proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def _trial_nodes() -> set[str]:
    """The nodes a trial worker of this test runs on (its process title: ray::ImplicitFunc)."""
    import psutil

    nodes = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if "ray::ImplicitFunc" in " ".join(proc.cmdline()):
                node = proc.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
                if node:
                    nodes.add(node)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return nodes


def _all_reported_none_done(uri: str, name: str) -> bool:
    """Both trials running, each with a checkpoint (every report writes one) and steps left."""
    client = MlflowClient(uri)
    if client.get_experiment_by_name(name) is None:
        return False
    running = [r for r in _trial_runs(uri, name) if r.info.status == "RUNNING"]
    if len(running) < 2:
        return False
    for r in running:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        if not steps or max(steps) > STEPS - 4 * EVAL_EVERY:
            return False
    return True


@pytest.mark.parametrize("autoscaling_cluster", [{"gpu_workers": 1, "preemptible": True}], indirect=True)
def test_gpu_worker_removed_mid_study_is_replaced_and_its_trials_resume(tmp_path, autoscaling_cluster):
    """What a cloud does to a preempted instance: the GPU worker running both trials goes away
    at once. With one GPU worker allowed, only a replacement the autoscaler launches can take
    the trials back; each resumes from its last checkpoint, and its MLflow run is continued."""
    import psutil

    cluster = autoscaling_cluster
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    name = "node-removed"
    log = open(tmp_path / "run.log", "w")
    # half a GPU a trial (autoscale.yaml): both trials share the one GPU worker, each reports
    # (and checkpoints) every EVAL_EVERY steps
    proc = subprocess.Popen(
        [sys.executable, "-m", "study.cli", "run", str(SPEC), "--set", f"train.steps={STEPS}",
         "--set", f"train.eval_every={EVAL_EVERY}", "--name", name, "--address", cluster.address,
         "--tracking-uri", uri, "--storage", str(tmp_path / "runs")],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 600
        victim = None
        while victim is None:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the trials never ran together mid-way"
            # MLflow only once trial workers run: the study has set its store up by then
            nodes = _trial_nodes()
            if nodes and _all_reported_none_done(uri, name):
                victim = sorted(nodes)[0]
            time.sleep(0.5)
        up_before = {n["NodeID"] for n in _gpu_nodes(cluster) if n["Alive"]}
        assert up_before == {victim}
        # the whole node at once, without warning: raylet, agents, trial workers
        doomed = _node_processes(victim)
        names = [p.name() for p in doomed]
        assert "raylet" in names and len(doomed) >= 3, names  # the raylet and both trials
        for p in doomed:
            p.kill()
        psutil.wait_procs(doomed, timeout=10)
        killed_at = time.monotonic()
        print(f"removed GPU node {victim} ({len(doomed)} processes) after {killed_at - started:.0f}s")
        assert proc.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    print(f"study done {time.monotonic() - killed_at:.0f}s after the removal")
    out = (tmp_path / "run.log").read_text()
    assert "2 trials done, 0 failed" in out, out[-3000:]

    # the GCS saw the node go (a dead node keeps no resources in the table) and the autoscaler
    # launched another of its type for the trials' placement groups
    nodes = {n["NodeID"]: n for n in cluster.global_state.node_table()}
    assert not nodes[victim]["Alive"]
    replacements = {n["NodeID"] for n in _gpu_nodes(cluster)} - up_before
    assert replacements, f"the autoscaler launched no replacement: {nodes}"

    # nothing lost: one finished run per trial, every evaluation logged once, up to the last step
    client = MlflowClient(uri)
    trials = _trial_runs(uri, name)
    ids = [t.data.tags[naming.TAG_TRIAL_ID] for t in trials]
    assert len(ids) == len(set(ids)) == 2
    for t in trials:
        assert t.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(t.info.run_id, "val_loss")]
        assert steps == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)), steps
        assert t.data.tags[naming.TAG_NODE] in replacements  # where it finished
        assert t.data.tags[naming.TAG_NODE_TYPE] == GPU_TYPE

    # Tune: each trial failed on the removed node and was restored on the replacement from its
    # last checkpoint, not from step 0
    search = tmp_path / "runs" / name / "search"
    result_files = sorted(search.glob("*/result.json"))
    assert len(result_files) == 2
    for result_file in result_files:
        results = [json.loads(line) for line in result_file.read_text().splitlines()]
        assert [r["step"] for r in results] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
        before = [r for r in results if r["node_id"] == victim]
        after = results[len(before):]
        assert before and after, result_file  # caught mid-run
        assert all(r["node_id"] in replacements for r in after), result_file
        assert after[0]["iterations_since_restore"] == 1  # a restored trainable counts anew
        assert after[0]["training_iteration"] == len(before) + 1  # Tune's count carried over
        assert (result_file.parent / "error.txt").exists()  # Tune recorded the failure
