"""What the largest node of a Ray cluster offers, counting the nodes its autoscaler may launch.

The runner refuses a study whose trial fits no node (``runner.check_resources``). A cluster
scaled to zero has no live GPU node, so the live nodes alone would refuse every GPU study on
it; the node types the autoscaler can launch count as well. Ray 2.60 keeps no autoscaler's node
types in a place every cluster shares, so they are gathered from where each deployment has them:

- the cluster config in the GCS (``ray._private.state.state.get_cluster_config()``, what Ray
  Train V2 reads for the same question): filled where the autoscaler reports it (Ray's v2
  autoscaler after 2.60, managed platforms); empty under Ray 2.60's own autoscalers;
- the config file of this cluster's autoscaler, found by its monitor process on this machine
  (``monitor.py --gcs-address=<this cluster> --autoscaling-config=<file>``, v1 and v2 alike):
  a head started by ``ray up`` or ``ray start --head --autoscaling-config``, with the driver
  on the head;
- on KubeRay, the RayCluster the pod belongs to (``RAY_CLUSTER_NAME``, set by the operator),
  read from the Kubernetes API with the pod's service account and turned into node types by
  Ray's own KubeRay autoscaler code;
- ``~/ray_bootstrap_config.yaml``, which ``ray up`` writes on the head.

Ray is imported inside the functions only: the pure part (``largest_node``,
``launchable_node_types``) runs without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

KINDS = ("CPU", "GPU")
NODE_GROUP_LABEL = "ray.io/node-group"
"""The node label Ray sets from ``RAY_NODE_TYPE_NAME`` (the autoscaler's node type of the node,
set by autoscaler v2, KubeRay and the fake multi-node provider)."""
NODE_TYPE_ENV = "RAY_NODE_TYPE_NAME"
NODE_TYPE_LABEL = "moe-study/node-type"
"""The label cluster.yaml gives each worker type (``labels``), since the ``ray up`` launcher of
Ray 2.60 sets neither of the above on its workers."""
BOOTSTRAP_CONFIG = Path.home() / "ray_bootstrap_config.yaml"
_MONITOR_SCRIPTS = ("autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py")
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# -- pure ------------------------------------------------------------------------------------
def largest_node(nodes: Iterable[Mapping[str, Any]],
                 node_types: Iterable[Mapping[str, float]] | None = ()) -> dict[str, float]:
    """Per kind (CPU, GPU), the most any live node (``ray.nodes()`` entries) or any node type
    the autoscaler may launch (resource dicts) offers. Dead nodes offer nothing."""
    best = {kind: 0.0 for kind in KINDS}
    offers = [n.get("Resources") or {} for n in nodes if n.get("Alive")] + list(node_types or ())
    for resources in offers:
        for kind in KINDS:
            best[kind] = max(best[kind], float(resources.get(kind, 0) or 0))
    return best


def launchable_node_types(config: Mapping[str, Any] | None) -> list[dict[str, float]]:
    """The resources of the node types an autoscaler config (``available_node_types`` as in
    cluster.yaml) may launch: every type but those with ``max_workers: 0`` (a head type)."""
    types = (config or {}).get("available_node_types") or {}
    return [dict(t.get("resources") or {}) for t in types.values()
            if isinstance(t, Mapping) and t.get("max_workers", 1) != 0]


def node_group_resources(groups: Iterable[Any]) -> list[dict[str, float]]:
    """The resources of the node groups of a GCS ``ClusterConfig`` (``node_group_configs``)
    that may have nodes (``max_count`` -1 is unbounded, 0 none)."""
    return [dict(g.resources) for g in groups if g.max_count != 0]


# -- reading the cluster (Ray) ---------------------------------------------------------------
def cluster_largest_node() -> dict[str, float]:
    """``largest_node`` of the cluster this process is connected to (``ray.init`` done)."""
    import ray

    return largest_node(ray.nodes(), autoscaler_node_types())


def autoscaler_node_types(gcs_address: str | None = None) -> list[dict[str, float]]:
    """Resources of every node type the cluster's autoscaler may launch, from each source that
    answers (module docstring); empty when none does (a cluster without an autoscaler).
    ``gcs_address``: the cluster's, by default the one this process is connected to."""
    if gcs_address is None:
        gcs_address = _connected_gcs_address()
    found: list[dict[str, float]] = []
    for source in (_gcs_cluster_config, lambda: _monitor_config(gcs_address), _kuberay_cluster,
                   _bootstrap_config):
        try:
            found += source()
        except Exception as exc:  # noqa: BLE001 - a source that cannot answer adds nothing
            log.debug("node types from %s: %s", getattr(source, "__name__", source), exc)
    return found


def _connected_gcs_address() -> str | None:
    import ray

    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None


def _gcs_cluster_config() -> list[dict[str, float]]:
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    return node_group_resources(config.node_group_configs) if config is not None else []


def _monitor_config(gcs_address: str | None) -> list[dict[str, float]]:
    """The config file of the autoscaler monitor of this cluster, where it runs on this machine."""
    if not gcs_address:
        return []
    import ray  # noqa: F401 - puts Ray's own psutil (ray/thirdparty_files) on the path
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info.get("cmdline") or []
        if not any(a.endswith(_MONITOR_SCRIPTS) for a in args[:3]):
            continue
        if f"--gcs-address={gcs_address}" not in args:
            continue  # another cluster's autoscaler on the same machine
        for arg in args:
            if arg.startswith("--autoscaling-config="):
                return _config_file(Path(arg.split("=", 1)[1]))
    return []


def _kuberay_cluster() -> list[dict[str, float]]:
    """The RayCluster this pod belongs to, where the driver runs in a KubeRay pod whose service
    account may read it (the head's, which KubeRay lets its autoscaler use)."""
    name = os.environ.get("RAY_CLUSTER_NAME")
    if not name or not _SERVICE_ACCOUNT_NAMESPACE.exists():
        return []
    from ray.autoscaler._private.kuberay.node_provider import KubernetesHttpApiClient

    namespace = _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    ray_cr = KubernetesHttpApiClient(namespace=namespace).get(f"rayclusters/{name}")
    return kuberay_node_types(ray_cr)


def kuberay_node_types(ray_cr: Mapping[str, Any]) -> list[dict[str, float]]:
    """The launchable node types of a RayCluster object, as Ray's KubeRay autoscaler sees them."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    return launchable_node_types(_derive_autoscaling_config_from_ray_cr(dict(ray_cr)))


def _bootstrap_config() -> list[dict[str, float]]:
    return _config_file(BOOTSTRAP_CONFIG)


def _config_file(path: Path) -> list[dict[str, float]]:
    import yaml

    if not path.exists():
        return []
    return launchable_node_types(yaml.safe_load(path.read_text()) or {})


def node_type_of_this_node() -> str | None:
    """The autoscaler's node type of the node this Ray worker runs on: its ``ray.io/node-group``
    label, else the ``moe-study/node-type`` label of cluster.yaml's worker types, else
    ``RAY_NODE_TYPE_NAME``, the variable Ray derives the first from, which the node's processes
    inherit (the fake multi-node provider sets only the variable). None where the node has none
    of them (a node started by hand)."""
    import ray

    labels = ray.get_runtime_context().get_node_labels() or {}
    value = labels.get(NODE_GROUP_LABEL) or labels.get(NODE_TYPE_LABEL)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return str(value or os.environ.get(NODE_TYPE_ENV) or "") or None
