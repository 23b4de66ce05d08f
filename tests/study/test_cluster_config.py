"""cluster.yaml, deploy/kuberay.yaml and study.run.cluster_check, checked offline.

No cloud and no Kubernetes here: the launcher config goes through Ray's own validator (the check
`ray up` runs first; private API, so these tests pin its behaviour for Ray 2.60), and the
properties the project promises (autoscaling from zero, nothing open to the world, services on
loopback, no keys) are read straight from the parsed files.
"""

from __future__ import annotations

import copy
import re
import shlex
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from study.run.cluster_check import cluster_config_problems, main, validate_cluster_config
from trainables.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
KUBERAY_YAML = REPO / "deploy" / "kuberay.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
CLUSTER_DOC = REPO / "docs" / "cluster.md"
FILES_WE_SHIP = [CLUSTER_YAML, KUBERAY_YAML, DOCKERFILE, CLUSTER_DOC,
                 REPO / "study" / "run" / "cluster_check.py"]
WORLD_CIDRS = ("0.0.0.0/0", "::/0")
HEAD = "ray.head.cpu"


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _worker_types(cluster: dict) -> dict:
    head = cluster["head_node_type"]
    return {n: t for n, t in cluster["available_node_types"].items() if n != head}


def _all_strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _all_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _all_strings(value)
    elif isinstance(node, str):
        yield node


def _invocations(commands: list[str], program: str, subcommand: str) -> list[list[str]]:
    """Argument lists of every `program subcommand ...` in a list of shell command lines."""
    found = []
    for line in commands:
        for simple in re.split(r";|&&|\|\|", line):
            words = shlex.split(simple)
            for i in range(len(words) - 1):
                if Path(words[i]).name == program and words[i + 1] == subcommand:
                    found.append(words[i + 2:])
    return found


def _option(args: list[str], name: str) -> str | None:
    for i, word in enumerate(args):
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
        if word == name and i + 1 < len(args):
            return args[i + 1]
    return None


# ---------------------------------------------------------------- Ray's own offline validator


def test_ray_is_the_version_these_configs_were_written_for():
    # validate_config/prepare_config are private API, and the launcher on your machine must run
    # the cluster's Ray; a Ray upgrade must come with a re-check of cluster.yaml and kuberay.yaml.
    assert ray.__version__ == "2.60.0"


def test_shipped_cluster_yaml_passes_rays_validator(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))  # raises if Ray disagrees


def _misspell_key(c):
    c["idle_timeout_minuts"] = c.pop("idle_timeout_minutes")


def _drop_head_node_type(c):
    del c["head_node_type"]


def _min_workers_above_global_max(c):
    c["max_workers"] = 1
    c["available_node_types"]["ray.worker.gpu_a10g"]["min_workers"] = 2


@pytest.mark.parametrize("breakage, error", [
    (_misspell_key, jsonschema.ValidationError),
    (_drop_head_node_type, ValueError),
    (_min_workers_above_global_max, ValueError),
])
def test_rays_validator_rejects_broken_copies(cluster, breakage, error):
    breakage(cluster)
    with pytest.raises(error):
        validate_config(prepare_config(cluster))


def test_rays_validator_misses_min_above_max_within_one_node_type(cluster):
    # Why study.run.cluster_check has its own per-node-type check: Ray 2.60 only compares the sum
    # of min_workers with the global max_workers (10 here), so 9 > 8 passes Ray.
    cluster["available_node_types"]["ray.worker.gpu_a10g"]["min_workers"] = 9
    validate_config(prepare_config(copy.deepcopy(cluster)))
    assert cluster_config_problems(cluster) == [
        'available_node_types["ray.worker.gpu_a10g"]: min_workers 9 > max_workers 8'
    ]


# ---------------------------------------------------------------- study.run.cluster_check


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _problems(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_cluster_config(path, **kwargs)
    return info.value.problems


def test_shipped_cluster_yaml_is_valid():
    validate_cluster_config(CLUSTER_YAML)  # no ConfigError


def test_require_edited_lists_each_documented_placeholder_once():
    problems = _problems(CLUSTER_YAML, require_edited=True)
    placeholders = [re.search(r"EDIT_ME_[A-Z_]+", p).group() for p in problems]
    assert placeholders == sorted(set(placeholders))  # one problem per placeholder
    assert set(placeholders) == set(re.findall(r"EDIT_ME_[A-Z_]+", CLUSTER_YAML.read_text()))
    # Every one of them is explained in the header of cluster.yaml and in docs/cluster.md.
    header = CLUSTER_YAML.read_text().split("\ncluster_name:")[0]
    doc = CLUSTER_DOC.read_text()
    for placeholder in placeholders:
        assert placeholder in header and placeholder in doc, placeholder
    # The bucket placeholder is found in both commands that use it.
    [bucket] = [p for p in problems if "EDIT_ME_BUCKET" in p]
    assert "setup_commands[" in bucket and "head_start_ray_commands[" in bucket


def test_filled_in_copy_passes_require_edited(tmp_path):
    text = re.sub(r"EDIT_ME_BUCKET", "my-bucket", CLUSTER_YAML.read_text())
    text = re.sub(r"EDIT_ME_AMI_ID", "ami-0123456789abcdef0", text)
    text = re.sub(r"EDIT_ME_SECURITY_GROUP_ID", "sg-0123456789abcdef0", text)
    text = re.sub(r"EDIT_ME_(HEAD|WORKER)_INSTANCE_PROFILE", r"moe-study-\1", text)
    path = tmp_path / "cluster.local.yaml"
    path.write_text(text)
    validate_cluster_config(path, require_edited=True)


def test_misspelled_key_is_named_with_a_suggestion(tmp_path, cluster):
    _misspell_key(cluster)
    assert _problems(_write(tmp_path, cluster)) == [
        f"{tmp_path / 'cluster.yaml'}: idle_timeout_minuts: unknown key"
        "; did you mean 'idle_timeout_minutes'?"
    ]


def test_misspelled_node_type_key_is_named_with_its_path(tmp_path, cluster):
    cluster["available_node_types"]["ray.worker.gpu_a10g"]["min_worker"] = 0
    [problem] = _problems(_write(tmp_path, cluster))
    assert 'available_node_types["ray.worker.gpu_a10g"].min_worker: unknown key' in problem
    assert "did you mean 'min_workers'" in problem


def test_missing_head_node_type(tmp_path, cluster):
    _drop_head_node_type(cluster)
    [problem] = _problems(_write(tmp_path, cluster))
    assert "head_node_type: missing" in problem and HEAD in problem


def test_head_node_type_not_declared(tmp_path, cluster):
    cluster["head_node_type"] = "ray.head.gpu"
    [problem] = _problems(_write(tmp_path, cluster))
    assert "head_node_type: 'ray.head.gpu' is not one of available_node_types" in problem


def test_min_workers_above_global_max_workers(tmp_path, cluster):
    _min_workers_above_global_max(cluster)
    [problem] = _problems(_write(tmp_path, cluster))
    assert "max_workers: 1 is below the sum of the node types' min_workers (2)" in problem


def test_misspelled_provider_key_that_ray_would_ignore(tmp_path, cluster):
    # provider accepts any key in Ray's schema; this typo would silently keep stopping nodes.
    cluster["provider"]["cache_stoped_nodes"] = False
    [problem] = _problems(_write(tmp_path, cluster))
    assert "provider.cache_stoped_nodes" in problem and "'cache_stopped_nodes'" in problem


def test_world_open_ingress_rule_is_rejected(tmp_path, cluster):
    cluster["provider"]["security_group"] = {"GroupName": "moe", "IpPermissions": [
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp",
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
    [problem] = _problems(_write(tmp_path, cluster))
    assert problem.endswith("provider.security_group.IpPermissions[0].IpRanges[0].CidrIp: "
                            "'0.0.0.0/0' opens a port to the whole internet; allow your own "
                            "CIDR (e.g. 203.0.113.7/32) instead")


def test_node_type_without_its_own_security_group_is_rejected(tmp_path, cluster):
    del cluster["available_node_types"]["ray.worker.gpu_l40s_x4"]["node_config"]["SecurityGroupIds"]
    [problem] = _problems(_write(tmp_path, cluster))
    where = 'available_node_types["ray.worker.gpu_l40s_x4"].node_config'
    assert f"{where}: no SecurityGroupIds" in problem


def test_services_bound_beyond_loopback_are_rejected(tmp_path, cluster):
    starts = cluster["head_start_ray_commands"]
    starts[:] = [c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
                 .replace("--host 127.0.0.1", "--host 0.0.0.0") for c in starts]
    problems = _problems(_write(tmp_path, cluster))
    assert len(problems) == 2
    assert any("mlflow server bound to '0.0.0.0'" in p for p in problems)
    assert any("ray dashboard bound to '0.0.0.0'" in p for p in problems)


def _without_auth(cluster: dict) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        cluster[key] = [c.replace("RAY_AUTH_MODE=token ", "") for c in cluster[key]]
    del cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"]


def test_config_without_token_authentication_is_rejected(tmp_path, cluster):
    _without_auth(cluster)
    problems = _problems(_write(tmp_path, cluster))
    assert len(problems) == 3, problems
    assert any("head_start_ray_commands[2]: `ray start` without token authentication" in p
               for p in problems)
    assert any("worker_start_ray_commands[1]: `ray start` without token authentication" in p
               for p in problems)
    assert any("file_mounts: no Ray token file" in p for p in problems)


def test_auth_turned_off_or_left_to_rays_defaults_or_token_in_the_config(tmp_path, cluster):
    cluster["setup_commands"].append("echo RAY_AUTH_MODE=disabled >> ~/.moe_study_env")
    cluster["setup_commands"].append("echo RAY_AUTH_TOKEN=abc123 >> ~/.moe_study_env")
    del cluster["worker_start_ray_commands"]  # Ray's default: `ray start` without auth
    problems = _problems(_write(tmp_path, cluster))
    assert len(problems) == 3, problems
    assert any("setup_commands[5]: RAY_AUTH_MODE=disabled turns Ray's token authentication off"
               in p for p in problems)
    assert any("setup_commands[6]: a Ray token written in the config" in p for p in problems)
    assert any("worker_start_ray_commands: no `ray start`" in p for p in problems)


def test_auth_may_be_exported_and_the_token_file_named(tmp_path, cluster):
    _without_auth(cluster)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        cluster[key] = [c.replace("ulimit -n 65536;", "export RAY_AUTH_MODE=token "
                                  "RAY_AUTH_TOKEN_PATH=/opt/ray-token; ulimit -n 65536;")
                        for c in cluster[key]]
    cluster["file_mounts"]["/opt/ray-token"] = "~/.ray/auth_token"
    validate_cluster_config(_write(tmp_path, cluster))  # no ConfigError


def test_aws_access_key_in_config_is_rejected(tmp_path, cluster):
    fake_key_id = "AKIA" + "Q" * 16  # built here so that no key-shaped literal is in the repo
    cluster["setup_commands"].append(f"export AWS_ACCESS_KEY_ID={fake_key_id}")
    cluster["provider"]["aws_credentials"] = {"aws_access_key_id": "x"}
    problems = _problems(_write(tmp_path, cluster))
    assert len(problems) == 2
    assert any("setup_commands[5]: looks like an AWS access key id" in p for p in problems)
    assert any("provider.aws_credentials: credentials in the config" in p for p in problems)


def test_all_problems_are_reported_at_once(tmp_path, cluster):
    _misspell_key(cluster)
    _drop_head_node_type(cluster)
    cluster["head_start_ray_commands"][-1] += " --dashboard-host=0.0.0.0"
    del cluster["available_node_types"][HEAD]["node_config"]["SecurityGroupIds"]
    problems = _problems(_write(tmp_path, cluster))
    assert len(problems) == 4
    for expected in ["idle_timeout_minuts", "head_node_type: missing", "'0.0.0.0'",
                     "no SecurityGroupIds"]:
        assert any(expected in p for p in problems), expected


def test_wrongly_typed_values_are_reported_not_crashed_on(tmp_path, cluster):
    cluster["available_node_types"]["ray.worker.gpu_a10g"]["min_workers"] = "zero"
    cluster["available_node_types"]["ray.worker.gpu_l40s_x4"] = ["not", "a", "mapping"]
    cluster["setup_commands"] = "pip install -e ."
    problems = _problems(_write(tmp_path, cluster))
    assert any("min_workers: 'zero' is not of type 'integer'" in p for p in problems)
    assert any('["ray.worker.gpu_l40s_x4"]: ' in p and "not of type 'object'" in p
               for p in problems)
    assert any("setup_commands: 'pip install -e .' is not of type 'array'" in p for p in problems)


@pytest.mark.parametrize("content, expected", [
    ("[unclosed", "not valid YAML"),
    ("- just\n- a list\n", "a cluster config is a YAML mapping, got list"),
])
def test_unparsable_or_non_mapping_file(tmp_path, content, expected):
    path = tmp_path / "cluster.yaml"
    path.write_text(content)
    [problem] = _problems(path)
    assert expected in problem


def test_missing_file(tmp_path):
    [problem] = _problems(tmp_path / "nope.yaml")
    assert "cannot read cluster config" in problem


def test_command_line_exit_codes(capsys):
    assert main([str(CLUSTER_YAML)]) == 0
    assert main([str(CLUSTER_YAML), "--require-edited"]) == 2
    assert "EDIT_ME_BUCKET still to be replaced" in capsys.readouterr().err


# ---------------------------------------------------------------- promises of cluster.yaml


def test_gpu_workers_autoscale_from_zero_and_time_out(cluster):
    workers = _worker_types(cluster)
    assert len(workers) >= 2
    for name, worker in workers.items():
        assert worker["min_workers"] == 0, name
        assert worker["max_workers"] >= 1, name
        assert worker["resources"]["GPU"] >= 1, name
        assert worker["node_config"]["InstanceType"].split(".")[0][0] in "gp", name  # GPU family
    assert cluster["idle_timeout_minutes"] > 0
    head = cluster["available_node_types"][cluster["head_node_type"]]
    # each worker type names itself in a label its trials' runs are tagged with (prices by
    # node type read it), a label key Ray accepts for a custom label
    from ray._private.label_utils import validate_label_key, validate_node_labels

    from study.run.cluster_resources import NODE_TYPE_LABEL

    for name, worker in workers.items():
        assert worker["labels"] == {NODE_TYPE_LABEL: name}, name
        assert validate_label_key(NODE_TYPE_LABEL) is None
        validate_node_labels(worker["labels"])
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0


def test_nothing_is_open_to_the_world(cluster):
    assert not [s for s in _all_strings(cluster) if any(c in s for c in WORLD_CIDRS)]
    # Every node type names its own security group, so the launcher creates none (a group the
    # launcher creates gets SSH from 0.0.0.0/0, whatever provider.security_group says).
    for name, node_type in cluster["available_node_types"].items():
        assert node_type["node_config"]["SecurityGroupIds"], name
    assert "security_group" not in cluster["provider"]


def test_mlflow_serves_from_postgres_to_s3_on_loopback_only(cluster):
    [args] = _invocations(cluster["head_start_ray_commands"], "mlflow", "server")
    assert _option(args, "--host") == "127.0.0.1"
    assert _option(args, "--backend-store-uri").startswith("postgresql")
    assert _option(args, "--artifacts-destination").startswith("s3://")
    # Postgres is set up on the head, before the start commands run.
    assert any("createdb" in c and "mlflow" in c for c in cluster["head_setup_commands"])


def test_ray_dashboard_binds_to_loopback(cluster):
    [args] = _invocations(cluster["head_start_ray_commands"], "ray", "start")
    assert "--head" in args
    assert _option(args, "--dashboard-host") == "127.0.0.1"


def test_ray_starts_with_token_authentication_on_every_node(cluster):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        [start] = [c for c in cluster[key] if "ray start" in c]
        assert "RAY_AUTH_MODE=token ray start" in " ".join(start.split()), key
    # the token file made on your machine, copied to Ray's default path on every node
    assert cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert "chmod 600 ~/.ray/auth_token" in cluster["setup_commands"]
    # Ray clients on the nodes (the study driver, `ray status`) use it too
    [env_line] = [c for c in cluster["setup_commands"] if "MOE_STUDY_STORAGE=" in c]
    assert "RAY_AUTH_MODE=token" in env_line


def test_tune_storage_is_on_s3_for_every_node(cluster):
    [line] = [c for c in cluster["setup_commands"] if "MOE_STUDY_STORAGE=" in c]
    assert re.search(r"MOE_STUDY_STORAGE=s3://\S+", line)
    # setup_commands run on every node; the file they write is loaded by the login shell.
    assert any(".moe_study_env" in c and ".bashrc" in c for c in cluster["setup_commands"])


def test_setup_installs_pinned_torch_then_the_synced_project(cluster):
    tested_torch = version("torch").split("+")[0]
    for key, build in [("head_setup_commands", "cpu"), ("worker_setup_commands", None)]:
        commands = cluster[key]
        [torch_at] = [i for i, c in enumerate(commands) if f"torch=={tested_torch}" in c]
        [project_at] = [i for i, c in enumerate(commands)
                        if "pip install" in c and "-e /home/ubuntu/moe-routing-study" in c]
        assert torch_at < project_at, key  # so that pip keeps this torch build
        assert (build is not None) == ("whl/cpu" in commands[torch_at]), key
    assert f"torch=={tested_torch}" in DOCKERFILE.read_text()


def test_file_mounts_carry_what_pip_install_needs(cluster):
    mounts = {r: local for r, local in cluster["file_mounts"].items()
              if not r.endswith("/.ray/auth_token")}  # Ray's token: from your home, not the repo
    remote_root = "/home/ubuntu/moe-routing-study"
    assert all(remote.startswith(remote_root + "/") for remote in mounts)
    mounted = {remote[len(remote_root) + 1:] for remote in mounts}
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {"pyproject.toml", pyproject["project"]["readme"], "search_spaces"}
    needed |= {pattern.rstrip("*") for pattern in packages}
    assert needed <= mounted
    # `ray up` asserts that each local path exists, relative to where it runs (the repo root).
    for local in mounts.values():
        assert (REPO / local).exists(), f"{local} is mounted but missing from the repository"


# ---------------------------------------------------------------- KubeRay manifest


@pytest.fixture
def kuberay() -> dict:
    docs = list(yaml.safe_load_all(KUBERAY_YAML.read_text()))
    [cluster] = [d for d in docs if d and d.get("kind") == "RayCluster"]
    return {"docs": [d for d in docs if d], "cluster": cluster}


def _containers(pod_group: dict) -> list[dict]:
    return pod_group["template"]["spec"]["containers"]


def test_kuberay_cluster_autoscales_gpu_workers_from_zero(kuberay):
    spec = kuberay["cluster"]["spec"]
    assert kuberay["cluster"]["apiVersion"] == "ray.io/v1"
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
        [worker] = _containers(group)
        assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_kuberay_exposes_nothing_and_binds_loopback(kuberay):
    head = kuberay["cluster"]["spec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert not [d for d in kuberay["docs"]
                if d["kind"] == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")]
    [mlflow] = [c for c in _containers(head) if c["name"] == "mlflow"]
    assert _option(mlflow["command"], "--host") == "127.0.0.1"
    assert not [s for s in _all_strings(kuberay["docs"]) if any(c in s for c in WORLD_CIDRS)]


def test_kuberay_turns_token_auth_on_and_admits_only_its_own_pods(kuberay):
    spec = kuberay["cluster"]["spec"]
    assert spec["authOptions"] == {"mode": "token"}
    [policy] = [d for d in kuberay["docs"] if d["kind"] == "NetworkPolicy"]
    own = {"ray.io/cluster": kuberay["cluster"]["metadata"]["name"]}
    assert policy["spec"]["podSelector"] == {"matchLabels": own}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": own}}]}]
    validate_cluster_config(KUBERAY_YAML)  # the project's check passes it


def _kuberay_problems(tmp_path: Path, docs: list[dict]) -> list[str]:
    path = tmp_path / "kuberay.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return _problems(path)


def test_kuberay_manifest_without_auth_or_network_policy_is_rejected(tmp_path, kuberay):
    docs = copy.deepcopy(kuberay["docs"])
    [cluster] = [d for d in docs if d["kind"] == "RayCluster"]
    del cluster["spec"]["authOptions"]
    docs = [d for d in docs if d["kind"] != "NetworkPolicy"]
    problems = _kuberay_problems(tmp_path, docs)
    assert len(problems) == 2, problems
    assert any("RayCluster moe-study: spec.authOptions: Ray's token authentication is off" in p
               for p in problems)
    assert any("no NetworkPolicy admits only the cluster's own pods" in p for p in problems)


@pytest.mark.parametrize("opening", [
    lambda rule: rule.update({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}),
    lambda rule: rule.update({"from": [{"namespaceSelector": {}}]}),
    lambda rule: rule.pop("from"),  # a rule without `from` admits everyone
    lambda rule: rule["from"][0]["podSelector"].update({"matchLabels": {"app": "other"}}),
], ids=["ip-block", "namespace", "everyone", "other-pods"])
def test_kuberay_network_policy_admitting_more_is_rejected(tmp_path, kuberay, opening):
    docs = copy.deepcopy(kuberay["docs"])
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    opening(policy["spec"]["ingress"][0])
    problems = _kuberay_problems(tmp_path, docs)
    assert len(problems) == 1 and "no NetworkPolicy admits only" in problems[0], problems


def test_kuberay_auth_turned_off_by_hand_or_token_in_the_manifest(tmp_path, kuberay):
    docs = copy.deepcopy(kuberay["docs"])
    [cluster] = [d for d in docs if d["kind"] == "RayCluster"]
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["env"] += [{"name": "RAY_AUTH_MODE", "value": "disabled"},
                      {"name": "RAY_AUTH_TOKEN", "value": "abc123"}]
    cluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] = "0.0.0.0"
    problems = _kuberay_problems(tmp_path, docs)
    assert len(problems) == 3, problems
    assert any("env[1]: RAY_AUTH_MODE=disabled" in p for p in problems)
    assert any("env[2]: a Ray token written in the manifest" in p for p in problems)
    assert any("dashboard-host: '0.0.0.0'" in p for p in problems)


def test_kuberay_uses_the_same_storage_as_cluster_yaml(kuberay, cluster):
    [line] = [c for c in cluster["setup_commands"] if "MOE_STUDY_STORAGE=" in c]
    storage = re.search(r"MOE_STUDY_STORAGE=(\S+)", line).group(1)
    spec = kuberay["cluster"]["spec"]
    ray_containers = [_containers(spec["headGroupSpec"])[0]]
    ray_containers += [_containers(g)[0] for g in spec["workerGroupSpecs"]]
    for container in ray_containers:
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MOE_STUDY_STORAGE"] == storage, container["name"]


def test_kuberay_image_is_built_on_the_tested_ray():
    base = re.search(r"^FROM rayproject/ray:(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    assert base.startswith(ray.__version__ + "-")


def test_kuberay_placeholders_are_documented():
    doc = CLUSTER_DOC.read_text()
    for placeholder in set(re.findall(r"EDIT_ME_[A-Z_]+", KUBERAY_YAML.read_text())):
        assert placeholder in doc, placeholder


# ---------------------------------------------------------------- no credentials


@pytest.mark.parametrize("path", FILES_WE_SHIP, ids=lambda p: p.name)
def test_no_aws_credentials_in_shipped_files(path):
    text = path.read_text()
    assert not re.search(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", text)
    assert not re.search(r"aws_secret_access_key\s*[:=]\s*\S", text, re.I)
