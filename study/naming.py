"""Names shared by the runner, the MLflow tracking, the queries and the reports.

Everything a user can see or filter on in MLflow is spelled here once: run tags, artifact names
and which direction is better for each metric (the metric names themselves come from
``trainables.metric_names``, re-exported here). No side effects at import time, and nothing
heavier than the standard library: the command line imports it at start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Mapping

from trainables.errors import did_you_mean
from trainables.metric_names import (  # noqa: F401 - the metric vocabulary, re-exported
    AUXILIARY_METRIC_NAMES, CMI, DEAD_EXPERT_FRACTION, DROPPED_FRACTION, EXCESS_PURITY,
    EXCESS_PURITY_NULL_SD, GAP_LOSS, GAP_METRIC_NAMES, GAP_NMI, GAP_PURITY, GAP_REFERENCE_AGREEMENT,
    INIT_SUFFIX, LAYER_METRIC_NAMES, LIFT_METRIC_NAMES, LIFT_SUFFIX, LOAD_ENTROPY, MAX_VIO, NMI,
    NMI_DOMAIN, PURITY, REFERENCE_AGREEMENT, SHARED_COVERAGE, SHARED_PURITY,
    SPECIALISATION_METRIC_NAMES, TRAIN_LOSS, VAL_LOSS, baseline_names,
    BALANCE_WINDOW_TOKENS, ELAPSED_S, GLOBAL_COUNTS_TOTAL, INIT_EVAL_S, LR, STEP, TOKENS, TOKENS_PER_S,
    TRAIN_S, EVAL_S, TRIAL_WALL_S, COST_CPU_S, COST_GPU_S,
)

# -- run tags ----------------------------------------------------------------------------------
TAG_ROLE = "moe_study.role"
"""What a run is: ``study`` (parent run of one study execution), ``trial`` or ``reference``."""
ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
ROLE_REFERENCE = "reference"
TAG_STUDY = "moe_study.study"
"""The study's name, on the parent run and on every child."""
TAG_TRIAL_ID = "moe_study.trial_id"
TAG_STOPPED_EARLY = "moe_study.stopped_early"
"""``true`` on a trial run the scheduler (ASHA) stopped before train.steps, else ``false``."""
TAG_ERROR = "moe_study.error"
"""Why a trial failed (the end of its traceback), on a failed trial run."""
TAG_NODE = "moe_study.node_id"
"""The Ray node a trial finished on."""
TAG_NODE_TYPE = "moe_study.node_type"
"""The autoscaler's node type of that node (its ``ray.io/node-group`` label: cluster.yaml's or
KubeRay's node type name), on trial runs whose node has one: what a GPU-second cost there."""
TAG_MIX_HASH = "moe_study.mix_hash"
"""Content hash of the data mix's bytes (``DomainMix.content_hash``), on the parent run and on
every trial run: studies on different text must not be compared silently."""
TAG_CONFIG_HASH = "moe_study.config_hash"
"""``config_hash`` of the trial's flat config; reference runs are found and reused by it."""
TAG_SPEC_HASH = "moe_study.spec_hash"
"""``StudySpec.content_hash()`` on the parent run (a resumed study must match it)."""
TAG_REFERENCE_KEY = "moe_study.reference_key"
"""On the parent run: the ``TAG_CONFIG_HASH`` of the reference run the study uses (its own or a
reused one), so the results side finds a reused reference without recomputing the key."""
TAG_SEARCH_KEYS = "moe_study.search_keys"
"""Comma-separated searched keys, on the parent run: ``best`` shows these params as columns."""
TAG_OPTUNA_STORAGE = "moe_study.optuna_storage"
"""On the parent run: the URL of the Optuna storage (an RDB such as ``sqlite:///.../optuna.db``)
that holds the study's own Optuna copy, one Optuna trial per Tune trial with the real param names
(``study.run.optuna_store``): ``optuna-dashboard URL``, ``optuna best-trial --storage URL``."""
TAG_OPTUNA_STUDY = "moe_study.optuna_study"
"""On the parent run: the Optuna study's name in ``TAG_OPTUNA_STORAGE`` (``--study-name``)."""
TAG_REJECTED_WRITES = "moe_study.rejected_writes"
"""How many writes (metrics, params, tags, artifacts) MLflow refused for this run (a 4xx such as
INVALID_PARAMETER_VALUE); each is kept in ``mlflow-rejected.jsonl`` in the study's folder."""
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_METHOD = "router.method"
TAG_SCOPE = "router.scope"
"""Read-only: runs logged before the method and scope were params alone carried them as tags
too (the same names); readers take the param first."""
TAG_CODE_VERSION = "moe_study.version"
TAG_GIT_COMMIT = "moe_study.git_commit"
TAG_TORCH_VERSION = "moe_study.torch_version"
"""Provenance on every run (``study.run.mlflow_layout.provenance_tags``)."""

COUNT_TABLE_FILE = "count_table.parquet"
"""Artifact of a trial run: its final n[layer, expert, domain] as Parquet."""
ROUTING_COUNTS_FILE = "routing_counts.parquet"
"""Artifact of a trial run: the raw counts of its final evaluation behind the token-controlled
metrics, n[layer, byte, expert, domain] and n[layer, sequence, expert] (trainables.routing_counts)."""
OPTUNA_DB_FILE = "optuna.db"
"""The sqlite file of a study's Optuna copy, in its folder (``study.run.optuna_store``)."""
SPEC_ARTIFACT = "spec.yaml"
"""Artifact name of the study spec (``StudySpec.to_dict()`` as YAML) on the parent run."""

# -- private parameter names -------------------------------------------------------------------
# The Tune config is the flat trial config plus the study's context under one private key
# (study.run.trial_context); names starting with "_" never reach TrialConfig.
PRIVATE_PREFIX = "_"


def trial_params(config) -> dict:
    """The trial's own dotted keys of a Tune config or a trial's params (private names dropped)."""
    return {k: v for k, v in config.items() if not k.startswith(PRIVATE_PREFIX)}


GRID_POINT_PARAM = PRIVATE_PREFIX + "grid_point"
"""The one Optuna parameter of a grid study: the index into ``space.grid_points(spec)``."""

# -- metrics -----------------------------------------------------------------------------------
# Metric names are spelled in trainables.metric_names (next to the code that computes them);
# this module adds each one's direction and the names of the run itself.

LAYER_METRICS = (*LAYER_METRIC_NAMES, *SPECIALISATION_METRIC_NAMES, *AUXILIARY_METRIC_NAMES)
"""Routing metrics reported per MoE layer as ``<name>/layer<i>`` (i from 0) and as their mean."""
LIFT_METRICS = LIFT_METRIC_NAMES
"""Specialisation metrics that also come as ``<name>_init`` (the same trial before its first
update) and ``<name>_lift`` (value - init), mean and per layer: what training added."""


def init_of(metric: str) -> str:
    """``purity`` -> ``purity_init``; ``purity/layer1`` -> ``purity_init/layer1``."""
    return baseline_names(metric)[0]


def lift_of(metric: str) -> str:
    """``purity`` -> ``purity_lift``; ``purity/layer1`` -> ``purity_lift/layer1``."""
    return baseline_names(metric)[1]


GAP_METRICS = GAP_METRIC_NAMES
"""Metrics that need the reference router's run."""
SUMMARY_METRICS = (
    VAL_LOSS, PURITY, lift_of(PURITY), CMI, lift_of(CMI), NMI, REFERENCE_AGREEMENT, LOAD_ENTROPY,
    MAX_VIO, DEAD_EXPERT_FRACTION, DROPPED_FRACTION, GAP_LOSS, GAP_PURITY,
)
"""The columns of ``moe-study best`` and of the report tables."""

METRIC_MODES: dict[str, str] = {
    VAL_LOSS: "min", TRAIN_LOSS: "min", PURITY: "max", NMI: "max", REFERENCE_AGREEMENT: "max",
    LOAD_ENTROPY: "max", MAX_VIO: "min", DEAD_EXPERT_FRACTION: "min", DROPPED_FRACTION: "min",
    GAP_LOSS: "min", GAP_PURITY: "min", GAP_NMI: "min", GAP_REFERENCE_AGREEMENT: "min",
    TOKENS_PER_S: "max", CMI: "max", SHARED_PURITY: "max", EXCESS_PURITY: "max", NMI_DOMAIN: "max",
    SHARED_COVERAGE: "max", EXCESS_PURITY_NULL_SD: "min", INIT_EVAL_S: "min",
    TRIAL_WALL_S: "min", COST_CPU_S: "min", COST_GPU_S: "min",
    **{init_of(m): "max" for m in LIFT_METRICS}, **{lift_of(m): "max" for m in LIFT_METRICS},
}
"""Which direction is better for every metric a study may optimise or rank by."""

_BASELINE_METRICS = frozenset(f(m) for m in LIFT_METRICS for f in (init_of, lift_of))
"""``<metric>_init`` and ``<metric>_lift`` of every lift metric (per-layer variants follow)."""

OBJECTIVE_PREFIX = "objective/"
"""Prefix of the values told to the searcher when they differ from the raw metric: penalised for
a missed constraint, or for a trial the scheduler stopped in a multi-objective study."""

_LAYER_SUFFIX = re.compile(r"^(?P<base>[a-z_]+)/layer(?P<layer>\d+)$")


def per_layer(metric: str, layer: int) -> str:
    return f"{metric}/layer{layer}"


def per_domain(metric: str, domain: str) -> str:
    return f"{metric}/{domain}"


def base_metric(name: str) -> str:
    """``purity/layer1`` -> ``purity``; ``val_loss/german`` -> ``val_loss``."""
    return name.split("/", 1)[0]


def metric_mode(name: str) -> str:
    """``min`` or ``max`` for a metric name (per-layer and per-domain variants included)."""
    return METRIC_MODES.get(base_metric(name), "min")


def metric_problem(name: str, domains: list[str] | None = None, n_layers: int | None = None) -> str:
    """Empty if ``name`` is a metric the training reports, else why not (with a suggestion).

    ``domains`` / ``n_layers`` narrow the per-domain and per-layer variants when known.
    """
    if name in METRIC_MODES:
        return ""
    m = _LAYER_SUFFIX.match(name)
    if m and (m["base"] in LAYER_METRICS or m["base"] in _BASELINE_METRICS):
        layer = int(m["layer"])
        if n_layers is not None and layer >= n_layers:
            return f"unknown metric {name!r}: layers are numbered 0..{n_layers - 1}"
        return ""
    if name.startswith(VAL_LOSS + "/"):
        domain = name.split("/", 1)[1]
        if domains is None or domain in domains:
            return ""
        return f"unknown metric {name!r}: {domain!r} is not one of data.domains {domains}"
    candidates = list(METRIC_MODES) + [per_layer(m, 0) for m in LAYER_METRICS]
    return f"unknown metric {name!r}{did_you_mean(name, candidates)}"


# -- identities --------------------------------------------------------------------------------
def config_hash(flat: Mapping[str, Any]) -> str:
    """A short stable hash of a flat trial config (key order does not matter)."""
    text = json.dumps({k: flat[k] for k in sorted(flat)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def filter_literal(value: Any) -> str:
    """``value`` as a string literal in an MLflow filter (``search_runs``).

    MLflow's filter parser has no escape sequences: a literal is the text between two single or
    two double quotes. So the quote the value does not contain is used, and a value holding both
    kinds cannot be written at all (ValueError): look such a run up another way.
    """
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ValueError(f"{text!r} holds both kinds of quote: no MLflow filter can match it")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a sqlite store ``./mlflow.db`` (absolute path).

    The path is made absolute so that Ray workers, which run in other directories, write to the
    same store as the driver.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + os.path.abspath("mlflow.db")


def setting_parts(params) -> list[str]:
    """A trial's settings as short words: method, scope (``window8`` for a window of 8),
    ``cap1`` with a capacity, ``s0`` for the seed. Run names join them with ``-``
    (``eb-global_batch-s0``), console lines with spaces."""
    scope = str(params.get("router.scope", "?"))
    if scope == "window":
        scope += str(params.get("router.balance_window", ""))
    parts = [str(params.get("router.method", "?")), scope]
    capacity = params.get("router.capacity_factor")
    if isinstance(capacity, (int, float)) and not isinstance(capacity, bool) and capacity > 0:
        parts.append(f"cap{capacity:g}")
    return [*parts, f"s{params.get('train.seed', 0)}"]


def count_trials(children) -> dict[str, int]:
    """Trial runs by outcome, from ``(status, stopped-early tag)`` pairs: finished the full
    ``train.steps``, stopped early by the scheduler, failed, still running. The parent run logs
    the first three at the study's end (``study.run.mlflow_layout``); ``moe-study studies``
    counts all four."""
    children = list(children)
    return {
        "trials_finished": sum(status == "FINISHED" and stopped != "true" for status, stopped in children),
        "trials_stopped_early": sum(status == "FINISHED" and stopped == "true" for status, stopped in children),
        "trials_failed": sum(status == "FAILED" for status, _ in children),
        "trials_running": sum(status == "RUNNING" for status, _ in children),
    }
