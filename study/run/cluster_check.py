"""Offline check of a Ray cluster launcher config (cluster.yaml): no cloud call, ~1 s.

Three layers, every problem collected and raised once as ConfigError:
1. Ray's own JSON schema (ray/autoscaler/ray-schema.json): unknown or misspelled keys, wrong
   types. Ray stops at the first error; here every error is listed, with a "did you mean".
2. Consistency Ray checks late, vaguely or not at all: head_node_type present and declared,
   min_workers <= max_workers per node type (Ray 2.60 only compares the *sum* of min_workers with
   the global max_workers), then Ray's own `validate_config(prepare_config(...))`, the check
   `ray up` runs. That is private Ray API, pinned with Ray (tests/study/test_cluster_config.py).
3. This project's safety rules: no ingress rule open to the world, no security group left for
   the launcher to create (it always opens SSH to 0.0.0.0/0), MLflow and the Ray dashboard bound
   to loopback, no AWS access keys in the file, Ray's token authentication on (every `ray start`
   runs with RAY_AUTH_MODE=token, the token file reaches every node through file_mounts, no
   token written in the config). With `require_edited`, also no EDIT_ME_ placeholder left.

A Kubernetes manifest (deploy/kuberay.yaml: several documents, each with a `kind`) gets the
KubeRay rules instead (`kuberay_problems`): token authentication through `authOptions`, a
NetworkPolicy that admits only the cluster's own pods to its Ray pods, the dashboard on loopback,
no LoadBalancer/NodePort Service, nothing open to the world, no AWS keys.

Not checked offline: the contents of node_config (EC2 RunInstances arguments; AWS rejects bad
ones at launch) and whether the AMI, security group, bucket and instance profiles exist.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from trainables.errors import ConfigError, did_you_mean

PLACEHOLDER = re.compile(r"\bEDIT_ME_[A-Z0-9_]+")
WORLD_CIDRS = ("0.0.0.0/0", "::/0")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Where Ray 2.60 looks for its token when RAY_AUTH_TOKEN(_PATH) is unset: ~/.ray/auth_token.
TOKEN_FILE = ".ray/auth_token"
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Access key ids of long-term (AKIA) and temporary (ASIA) AWS credentials.
AWS_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
# Provider keys the AWS provider of Ray 2.60 reads (beyond the schema's generic ones). The
# schema lets `provider` hold anything, so a misspelled key there is silently ignored by Ray:
# flag near misses of these names.
AWS_PROVIDER_KEYS = (
    "type", "region", "availability_zone", "cache_stopped_nodes", "security_group",
    "use_internal_ips", "use_external_head_ip", "key_pair", "cloudwatch", "aws_credentials",
    "disable_node_updaters", "disable_launch_config_check", "foreground_node_launch",
    "worker_liveness_check", "module",
)


def validate_cluster_config(path: str | os.PathLike, *, require_edited: bool = False) -> None:
    """Raise ConfigError listing every problem of the cluster config at `path`; return if none.

    require_edited: also report EDIT_ME_* placeholders still in the file (use before `ray up`;
    the shipped template has them on purpose).
    """
    documents = _load_documents(path)
    if _is_kubernetes_manifest(documents):
        problems = kuberay_problems(documents)
        if require_edited:
            problems += placeholder_problems({"documents": documents})
    else:
        problems = cluster_config_problems(load_cluster_config(path), require_edited=require_edited)
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])


def load_cluster_config(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML mapping at `path`; ConfigError if it is missing, unparsable or not a mapping."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read cluster config ({e.strerror})") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(config, dict):
        kind = type(config).__name__
        raise ConfigError(f"{path}: a cluster config is a YAML mapping, got {kind}")
    return config


def _load_documents(path: str | os.PathLike) -> list[Any]:
    """Every YAML document of the file (ConfigError if unreadable or not YAML)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read cluster config ({e.strerror})") from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None


def _is_kubernetes_manifest(documents: list[Any]) -> bool:
    return bool(documents) and all(isinstance(d, dict) and "kind" in d and "apiVersion" in d
                                   for d in documents)


def cluster_config_problems(config: dict[str, Any], *, require_edited: bool = False) -> list[str]:
    """Every problem found in a parsed cluster config, each naming its key; [] if none."""
    problems = schema_problems(config) + node_type_problems(config)
    if not problems:  # Ray's prepare_config assumes the structure checked above
        problems = ray_validation_problems(config)
    problems += security_problems(config)
    if require_edited:
        problems += placeholder_problems(config)
    return problems


def placeholder_problems(config: dict[str, Any]) -> list[str]:
    """One problem per EDIT_ME_* placeholder left in the config, naming where it occurs."""
    places: dict[str, list[str]] = {}
    for key, value in _strings(config):
        for placeholder in PLACEHOLDER.findall(value):
            places.setdefault(placeholder, []).append(key)
    return [f"{placeholder} still to be replaced (in {', '.join(keys)})"
            for placeholder, keys in sorted(places.items())]


def schema_problems(config: dict[str, Any]) -> list[str]:
    """Violations of Ray's cluster-config JSON schema, all of them, plus provider-key typos."""
    import jsonschema  # a dependency of ray[default]

    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    problems = []
    for error in sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=str):
        where = _key_path(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = list(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(known)):
                problems.append(f"{_key_path([*error.absolute_path, key])}: unknown key"
                                + did_you_mean(key, known, cutoff=0.75))
        else:
            problems.append(f"{where}: {error.message}")
    provider = config.get("provider")
    if isinstance(provider, dict) and provider.get("type") == "aws":
        for key in provider:
            if key not in AWS_PROVIDER_KEYS and did_you_mean(key, AWS_PROVIDER_KEYS, cutoff=0.75):
                problems.append(f"provider.{key}: unknown key (Ray ignores it)"
                                + did_you_mean(key, AWS_PROVIDER_KEYS, cutoff=0.75))
    return problems


def node_type_problems(config: dict[str, Any]) -> list[str]:
    """head_node_type declared and known; min_workers <= max_workers for every node type.
    Wrong types are left to schema_problems (reported there), not reported twice."""
    node_types = _node_types(config)
    if not node_types:
        return ["available_node_types: missing; declare the head and worker node types"]
    problems = []
    head = config.get("head_node_type")
    if head is None:
        problems.append(f"head_node_type: missing; name one of {sorted(node_types)}")
    elif head not in node_types:
        problems.append(f"head_node_type: {head!r} is not one of available_node_types "
                        f"{sorted(node_types)}")
    for name, node_type in node_types.items():
        low, high = node_type.get("min_workers", 0), node_type.get("max_workers")
        if _is_int(low) and _is_int(high) and low > high:
            problems.append(f"{_key_path(['available_node_types', name])}: "
                            f"min_workers {low} > max_workers {high}")
    mins = [t.get("min_workers", 0) for t in node_types.values()]
    total_min = sum(m for m in mins if _is_int(m))
    if _is_int(config.get("max_workers")) and total_min > config["max_workers"]:
        problems.append(f"max_workers: {config['max_workers']} is below the sum of the node "
                        f"types' min_workers ({total_min})")
    return problems


def _node_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """available_node_types, keeping only entries that are mappings (the schema flags others)."""
    node_types = config.get("available_node_types")
    if not isinstance(node_types, dict):
        return {}
    return {name: t for name, t in node_types.items() if isinstance(t, dict)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def ray_validation_problems(config: dict[str, Any]) -> list[str]:
    """What Ray's own offline check (the one `ray up` runs first) says, as a one-item list."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    # prepare_config logs one INFO line per node type; this is a check, keep it quiet.
    ray_logger = logging.getLogger("ray.autoscaler._private.util")
    level = ray_logger.level
    ray_logger.setLevel(logging.WARNING)
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as e:  # Ray raises ValueError, RuntimeError, KeyError, jsonschema errors
        return [f"Ray's validate_config rejects the config: {type(e).__name__}: {e}"]
    finally:
        ray_logger.setLevel(level)
    return []


def security_problems(config: dict[str, Any]) -> list[str]:
    """World-open ingress, launcher-made security groups, non-loopback services, AWS keys."""
    problems = []
    for key, value in _strings(config):
        if any(cidr in value for cidr in WORLD_CIDRS):
            problems.append(f"{key}: {value!r} opens a port to the whole internet; "
                            "allow your own CIDR (e.g. 203.0.113.7/32) instead")
        if AWS_ACCESS_KEY_ID.search(value):
            problems.append(f"{key}: looks like an AWS access key id; use instance profiles "
                            "and your AWS profile, never keys in the config")
    provider = config.get("provider") if isinstance(config.get("provider"), dict) else {}
    if "aws_credentials" in provider:
        problems.append("provider.aws_credentials: credentials in the config; remove them and "
                        "use your AWS profile (AWS_PROFILE) instead")
    if provider.get("type") == "aws":
        for name, node_type in _node_types(config).items():
            node_config = node_type.get("node_config")
            if isinstance(node_config, dict) and not _names_security_group(node_config):
                problems.append(
                    f"{_key_path(['available_node_types', name, 'node_config'])}: no "
                    "SecurityGroupIds; the launcher would create a group with SSH open to "
                    "0.0.0.0/0. Name a group that allows SSH from your IP only")
    for key, command in _commands(config):
        problems += [f"{key}: {p}" for p in _binding_problems(command)]
    return problems + auth_problems(config)


def auth_problems(config: dict[str, Any]) -> list[str]:
    """Ray's token authentication, on for every node: without it anyone who reaches a node's Ray
    ports can run code on the cluster.

    Every `ray start` runs with RAY_AUTH_MODE=token (in its own environment assignments or an
    `export` before it in the same command line); head and worker start commands are given
    (Ray's default ones start Ray without authentication); the token file reaches every node
    through file_mounts (~/.ray/auth_token, or the RAY_AUTH_TOKEN_PATH the start commands name);
    RAY_AUTH_MODE is never set to anything else and no token is written in the config.
    """
    problems = []
    token_paths = set()
    for list_key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = config.get(list_key)
        if not any(_subcommand_args(words, "ray", "start") is not None
                   for command in (commands if isinstance(commands, list) else [])
                   if isinstance(command, str) for words in _simple_commands(command)):
            problems.append(f"{list_key}: no `ray start`; Ray's default start commands run Ray "
                            "without token authentication. Use `RAY_AUTH_MODE=token ray start ...`")
    for key, command in _commands(config):
        exported: dict[str, str] = {}
        for words in _simple_commands(command):
            env, rest = _assignments(words)
            if rest[:1] == ["export"]:
                exported.update(_assignments(rest[1:])[0])
            if _subcommand_args(words, "ray", "start") is None:
                continue
            in_effect = {**exported, **env}
            if in_effect.get("RAY_AUTH_MODE") != "token":
                problems.append(f"{key}: `ray start` without token authentication; run it as "
                                "`RAY_AUTH_MODE=token ray start ...` (docs/cluster.md)")
            if in_effect.get("RAY_AUTH_TOKEN_PATH"):
                token_paths.add(in_effect["RAY_AUTH_TOKEN_PATH"])
    for key, value in _strings(config):
        for mode in re.findall(r"\bRAY_AUTH_MODE=([^\s;&|'\"]*)", value):
            if mode != "token":
                problems.append(f"{key}: RAY_AUTH_MODE={mode} turns Ray's token authentication "
                                "off; use RAY_AUTH_MODE=token")
        if re.search(r"\bRAY_AUTH_TOKEN=[^\s$;&|'\"]", value):
            problems.append(f"{key}: a Ray token written in the config; mount the token file "
                            f"(~/{TOKEN_FILE}) through file_mounts instead")
    mounts = config.get("file_mounts") if isinstance(config.get("file_mounts"), dict) else {}
    if not any(str(remote).endswith("/" + TOKEN_FILE) or str(remote) in token_paths
               for remote in mounts):
        problems.append(f"file_mounts: no Ray token file; add `/home/<user>/{TOKEN_FILE}: "
                        f"~/{TOKEN_FILE}` (made by `ray get-auth-token --generate`, "
                        "docs/cluster.md) so that every node authenticates with it")
    return problems


def kuberay_problems(documents: list[dict[str, Any]]) -> list[str]:
    """The project's rules for a KubeRay manifest, every problem naming its document and key."""
    problems = []
    clusters = [d for d in documents if d.get("kind") == "RayCluster"]
    if not clusters:
        return ["no RayCluster in the manifest"]
    policies = [d for d in documents if d.get("kind") == "NetworkPolicy"]
    for doc in documents:
        where = f"{doc.get('kind')} {_name_of(doc)}"
        for key, value in _strings(doc):
            if any(cidr in value for cidr in WORLD_CIDRS):
                problems.append(f"{where}: {key}: {value!r} opens a port to the whole internet")
            if AWS_ACCESS_KEY_ID.search(value):
                problems.append(f"{where}: {key}: looks like an AWS access key id; use the "
                                "service account's IAM role")
        service_type = (doc.get("spec") or {}).get("type") if doc.get("kind") == "Service" else None
        if service_type in ("LoadBalancer", "NodePort"):
            problems.append(f"{where}: spec.type: {service_type} exposes the service outside "
                            "the cluster; use ClusterIP and `kubectl port-forward`")
    for cluster in clusters:
        problems += [f"RayCluster {_name_of(cluster)}: {p}" for p in _ray_cluster_problems(cluster)]
        name = _name_of(cluster)
        if not any(_admits_only_own_pods(policy, name) for policy in policies):
            problems.append(
                f"RayCluster {name}: no NetworkPolicy admits only the cluster's own pods to its "
                f"Ray pods; add one selecting `ray.io/cluster: {name}` with ingress from the same "
                "pod selector only (deploy/kuberay.yaml)")
    return problems


def _ray_cluster_problems(cluster: dict[str, Any]) -> list[str]:
    spec = cluster.get("spec") if isinstance(cluster.get("spec"), dict) else {}
    problems = []
    auth = spec.get("authOptions") if isinstance(spec.get("authOptions"), dict) else {}
    if auth.get("mode") != "token":
        problems.append("spec.authOptions: Ray's token authentication is off; set "
                        "`authOptions: {mode: token}` (KubeRay >= 1.5.1 makes the token Secret)")
    head = spec.get("headGroupSpec") if isinstance(spec.get("headGroupSpec"), dict) else {}
    params = head.get("rayStartParams") if isinstance(head.get("rayStartParams"), dict) else {}
    host = params.get("dashboard-host")
    if host is not None and host not in LOOPBACK_HOSTS:
        problems.append(f"spec.headGroupSpec.rayStartParams.dashboard-host: {host!r}; use "
                        "127.0.0.1 and `kubectl port-forward`")
    if head.get("serviceType") in ("LoadBalancer", "NodePort"):
        problems.append(f"spec.headGroupSpec.serviceType: {head['serviceType']} exposes Ray "
                        "outside the cluster; use ClusterIP")
    for key, env in _env_entries(spec):
        if env.get("name") == "RAY_AUTH_MODE" and env.get("value") != "token":
            problems.append(f"{key}: RAY_AUTH_MODE={env.get('value')} turns Ray's token "
                            "authentication off")
        if env.get("name") == "RAY_AUTH_TOKEN" and "value" in env:
            problems.append(f"{key}: a Ray token written in the manifest; authOptions takes it "
                            "from a Secret")
    return problems


def _env_entries(node: Any, path: tuple = ("spec",)) -> Iterator[tuple[str, dict]]:
    """(key path, entry) of every item of every `env` list under node."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                for i, entry in enumerate(value):
                    if isinstance(entry, dict):
                        yield _key_path([*path, key, i]), entry
            else:
                yield from _env_entries(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _env_entries(value, (*path, i))


def _admits_only_own_pods(policy: dict[str, Any], cluster_name: str) -> bool:
    """The policy selects the cluster's pods for ingress and admits only pods of the cluster."""
    own = {"ray.io/cluster": cluster_name}
    spec = policy.get("spec") if isinstance(policy.get("spec"), dict) else {}
    selector = spec.get("podSelector") if isinstance(spec.get("podSelector"), dict) else {}
    labels = selector.get("matchLabels") or {}
    if labels != own or selector.get("matchExpressions"):
        return False  # more labels would leave some of the cluster's pods unselected
    if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
        return False
    for rule in spec.get("ingress") or []:  # no rule at all: nothing admitted
        peers = rule.get("from") if isinstance(rule, dict) else None
        if not peers:
            return False  # a rule without `from` admits everyone
        for peer in peers:
            if not isinstance(peer, dict) or set(peer) != {"podSelector"}:
                return False  # ipBlock or namespaceSelector admit pods of other clusters
            peer_selector = peer["podSelector"] if isinstance(peer["podSelector"], dict) else {}
            peer_labels = peer_selector.get("matchLabels") or {}
            if peer_labels.get("ray.io/cluster") != cluster_name:
                return False
    return True


def _name_of(doc: dict[str, Any]) -> str:
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return str(metadata.get("name", "<unnamed>"))


def _assignments(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """The leading NAME=value words of a simple command (as a mapping) and the words after."""
    env = {}
    for i, word in enumerate(words):
        if not ENV_ASSIGNMENT.match(word):
            return env, words[i:]
        name, value = word.split("=", 1)
        env[name] = value
    return env, []


def _binding_problems(command: str) -> list[str]:
    """Non-loopback bind addresses of `ray start --head` and `mlflow server` in a shell command."""
    problems = []
    for words in _simple_commands(command):
        ray_start = _subcommand_args(words, "ray", "start")
        if ray_start is not None and "--head" in ray_start:
            host = _option_value(ray_start, "--dashboard-host")
            if host is not None and host not in LOOPBACK_HOSTS:
                problems.append(f"ray dashboard bound to {host!r}; use --dashboard-host=127.0.0.1 "
                                "and reach it with `ray dashboard cluster.yaml`")
        mlflow_server = _subcommand_args(words, "mlflow", "server")
        if mlflow_server is not None:
            host = _option_value(mlflow_server, "--host", "-h")
            if host is not None and host not in LOOPBACK_HOSTS:
                problems.append(f"mlflow server bound to {host!r}; use --host 127.0.0.1 and "
                                "reach it through an SSH tunnel")
    return problems


def _subcommand_args(words: list[str], program: str, subcommand: str) -> list[str] | None:
    """The words after `program subcommand` (program may be a path and follow a wrapper such
    as sudo or systemd-run); None if the command does not run it."""
    for i in range(len(words) - 1):
        if os.path.basename(words[i]) == program and words[i + 1] == subcommand:
            return words[i + 2:]
    return None


def _simple_commands(command: str) -> Iterator[list[str]]:
    """The words of each simple command in a shell line, split at ; && || | ( )."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    for token in lexer:
        if token and set(token) <= set(";&|()"):
            if words:
                yield words
            words = []
        else:
            words.append(token)
    if words:
        yield words


def _option_value(words: list[str], *names: str) -> str | None:
    """The value of the last `--name=value` / `--name value` among `words`; None if absent."""
    value = None
    for i, word in enumerate(words):
        for name in names:
            if word.startswith(name + "="):
                value = word.split("=", 1)[1]
            elif word == name and i + 1 < len(words):
                value = words[i + 1]
    return value


def _names_security_group(node_config: dict[str, Any]) -> bool:
    if node_config.get("SecurityGroupIds"):
        return True
    interfaces = node_config.get("NetworkInterfaces") or []
    if interfaces and all(isinstance(i, dict) and i.get("Groups") for i in interfaces):
        return True
    return "LaunchTemplate" in node_config  # groups come from the template; not visible offline


_COMMAND_KEYS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands",
)


def _commands(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(key path, command) for every shell command in the config, per-node-type ones included."""
    sources = [([], config)] + [
        (["available_node_types", name], node_type)
        for name, node_type in _node_types(config).items()
    ]
    for prefix, section in sources:
        for list_key in _COMMAND_KEYS:
            commands = section.get(list_key)
            for i, command in enumerate(commands if isinstance(commands, list) else []):
                if isinstance(command, str):
                    yield _key_path([*prefix, list_key, i]), command


def _strings(node: Any, path: tuple = ()) -> Iterator[tuple[str, str]]:
    """(key path, value) for every string (keys included) anywhere in a parsed YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield _key_path([*path, key]), key
            yield from _strings(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, (*path, i))
    elif isinstance(node, str):
        yield _key_path(path), node


def _key_path(parts) -> str:
    """available_node_types["ray.head.cpu"].node_config, setup_commands[2], ... or <top level>."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "." in str(part):
            out += f'["{part}"]'
        else:
            out += f".{part}" if out else str(part)
    return out or "<top level>"


def main(argv: list[str] | None = None) -> int:
    """`python -m study.run.cluster_check cluster.yaml|deploy/kuberay.yaml [--require-edited]`:
    0 valid, 2 problems."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m study.run.cluster_check", description=__doc__
                                     .split("\n")[0])
    parser.add_argument("config", help="Ray cluster launcher YAML (cluster.yaml) or KubeRay "
                        "manifest (deploy/kuberay.yaml)")
    parser.add_argument("--require-edited", action="store_true",
                        help="also fail on EDIT_ME_* placeholders (run this before `ray up`)")
    args = parser.parse_args(argv)
    try:
        validate_cluster_config(args.config, require_edited=args.require_edited)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{args.config}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
