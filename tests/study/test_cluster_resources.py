"""What the largest node of a cluster offers (study.run.cluster_resources), on hand-computed
cases: live nodes, the node types an autoscaler may launch, and where those types are read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.run.cluster_resources import (
    kuberay_node_types, largest_node, launchable_node_types, node_group_resources,
)

ROOT = Path(__file__).resolve().parents[2]


def test_largest_node_takes_the_most_per_kind_over_live_nodes_and_node_types():
    live = [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": False, "Resources": {"GPU": 8.0}}]
    assert largest_node(live) == {"CPU": 4.0, "GPU": 0.0}  # dead nodes offer nothing
    assert largest_node(live, None) == {"CPU": 4.0, "GPU": 0.0}
    # a cluster scaled to zero: the GPU comes from a type the autoscaler may launch
    assert largest_node(live, [{"CPU": 1, "GPU": 1}]) == {"CPU": 4.0, "GPU": 1.0}
    # per kind, not per node: 8 CPUs from one type, 4 GPUs from another
    assert largest_node([], [{"CPU": 8}, {"CPU": 2, "GPU": 4}, {"GPU": 0.5}]) == {"CPU": 8.0, "GPU": 4.0}
    assert largest_node([{"Alive": True}]) == {"CPU": 0.0, "GPU": 0.0}  # no Resources at all


def test_launchable_node_types_leave_out_types_with_max_workers_zero():
    config = {"available_node_types": {
        "head": {"resources": {"CPU": 0}, "max_workers": 0},
        "gpu": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 2},
        "cpu": {"resources": {"CPU": 4}},  # no max_workers: bounded by the cluster's only
    }}
    assert launchable_node_types(config) == [{"CPU": 1, "GPU": 1}, {"CPU": 4}]
    assert launchable_node_types({}) == [] and launchable_node_types(None) == []


def test_shipped_cluster_yaml_offers_its_gpu_types():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert largest_node([], launchable_node_types(config))["GPU"] == 4  # g6e.12xlarge: 4x L40S


def test_gcs_cluster_config_node_groups_that_may_have_nodes():
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig()
    for name, resources, max_count in (("none", {"GPU": 8}, 0), ("a10g", {"CPU": 4, "GPU": 1}, 8),
                                       ("any", {"CPU": 2}, -1)):
        group = config.node_group_configs.add(name=name, max_count=max_count)
        group.resources.update(resources)
    assert node_group_resources(config.node_group_configs) == [{"CPU": 4, "GPU": 1}, {"CPU": 2}]


def test_kuberay_manifest_gpu_group_is_seen_as_ray_s_autoscaler_sees_it():
    """deploy/kuberay.yaml's RayCluster through Ray's own KubeRay autoscaler code: the head
    group (no workers to launch) drops out, the GPU group offers 1 GPU."""
    cluster = next(d for d in yaml.safe_load_all((ROOT / "deploy" / "kuberay.yaml").read_text())
                   if d and d.get("kind") == "RayCluster")
    cluster["metadata"].setdefault("namespace", "default")  # the API server fills it in
    types = kuberay_node_types(cluster)
    assert [(t["CPU"], t["GPU"]) for t in types] == [(4, 1)]
    assert largest_node([], types) == {"CPU": 4.0, "GPU": 1.0}


@pytest.mark.parametrize("text", ["{}", "available_node_types: {}"])
def test_a_config_file_without_node_types_adds_none(tmp_path, text):
    from study.run.cluster_resources import _config_file

    (tmp_path / "c.yaml").write_text(text)
    assert _config_file(tmp_path / "c.yaml") == [] and _config_file(tmp_path / "missing.yaml") == []
