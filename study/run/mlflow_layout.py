"""How a study looks in MLflow: its experiment, its parent run, its runs' names and provenance.

What a person opening ``mlflow ui`` needs without clicking around: the experiment opens on
the runs view (it is a model-development experiment, not a GenAI one) with the study's
description; the parent run carries the spec's search settings as params and the study's
outcome as metrics; trial runs are named by their settings; every run says which code, package
and torch version produced it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from mlflow.tracking import MlflowClient

from study import naming

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"
"""The experiment kind whose MLflow UI opens on the runs table (an untagged experiment in MLflow
3 opens on the GenAI overview)."""
DESCRIPTION_TAG = "mlflow.note.content"
"""The experiment's and a run's description in the MLflow UI."""
SPEC_PARAM_SECTIONS = ("objective", "sampler", "scheduler", "budget", "resources", "reference")
"""Spec sections logged as params on the parent run (``sampler.type``, ``budget.trials``)."""


@functools.lru_cache(maxsize=1)
def provenance_tags() -> dict[str, str]:
    """Which code produced a run: the package version, the git commit of the checkout it runs
    from (with ``-dirty`` when it has uncommitted changes) and the torch version. Read without
    importing torch; a commit that cannot be read (an installed wheel) is ``unknown``."""
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        naming.TAG_CODE_VERSION: version("moe-routing-study"),
        naming.TAG_GIT_COMMIT: _git_commit(Path(__file__).resolve().parents[2]),
        naming.TAG_TORCH_VERSION: version("torch"),
    }


def _git_commit(repo: Path) -> str:
    if not (repo / ".git").exists():
        return "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def run_name(role: str, params: Mapping[str, Any]) -> str:
    """A run's name from its settings: ``eb-global_batch-s0``, ``lbl-window8-cap1-s2``,
    ``reference-s0``. Several runs may share one (a search over other keys): the trial id tag
    tells them apart."""
    if role == naming.ROLE_REFERENCE:
        return f"reference-s{params.get('train.seed', 0)}"
    return "-".join(naming.setting_parts(params))


def flat_spec_params(spec_dict: Mapping[str, Any]) -> dict[str, str]:
    """The spec's search settings as ``section.key`` params (lists and mappings as JSON)."""
    out = {}
    for section in SPEC_PARAM_SECTIONS:
        body = spec_dict.get(section)
        if not isinstance(body, Mapping):
            continue
        for key, value in body.items():
            if value is None:
                continue
            out[f"{section}.{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    out["search.keys"] = ",".join(spec_dict.get("search") or {}) or "-"
    return out


def ensure_experiment(tracking_uri: str, name: str, description: str = "") -> str:
    """Create (once, in the driver, before trials start) or fetch the study's experiment, set up
    to open on its runs table with the study's description."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        experiment_id = exp.experiment_id
    else:
        experiment_id = client.create_experiment(name)
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, CUSTOM_MODEL_DEVELOPMENT)
    if description:
        client.set_experiment_tag(experiment_id, DESCRIPTION_TAG, description)
    return experiment_id


SHARED_VIEW_TAG = "mlflow.sharedViewState."
"""Experiment tag prefix the MLflow UI reads a shared view from (``?viewStateShareKey=KEY``):
its filter, sort and columns. A study's view lists its runs flat (the UI folds nested runs under
their parent), sorted by the objective, with the searched settings and the key metrics."""


def set_study_view(tracking_uri: str, experiment_id: str, study_name: str, parent_run_id: str,
                   search_keys, objectives, modes) -> str:
    """Store the study's runs-table view on its experiment; returns the key of its URL."""
    metrics = list(dict.fromkeys([*objectives, naming.GAP_PURITY, naming.PURITY, naming.LOAD_ENTROPY,
                                  naming.VAL_LOSS]))
    params = list(dict.fromkeys([naming.TAG_METHOD, naming.TAG_SCOPE, *search_keys]))
    state = {
        "searchFilter": f"tags.`{naming.TAG_PARENT_RUN}` = {naming.filter_literal(parent_run_id)}",
        "orderByKey": f"metrics.`{objectives[0]}`",
        "orderByAsc": modes[0] == "min",
        "selectedColumns": [f"params.`{p}`" for p in params] + [f"metrics.`{m}`" for m in metrics],
    }
    MlflowClient(tracking_uri).set_experiment_tag(experiment_id, SHARED_VIEW_TAG + study_name, json.dumps(state))
    return study_name


def runs_page(ui_url: str, experiment_id: str, study_name: str) -> str:
    """The address of a study's runs table in the MLflow UI at ``ui_url``."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={study_name}"


def start_parent_run(tracking_uri: str, experiment_id: str, study_name: str, spec_dict: dict,
                     tags: dict[str, Any]) -> str:
    """The study's parent run: its spec as an artifact and as params, its description, its
    provenance; the outcome is logged at the end (``log_study_outcome``)."""
    from mlflow.entities import Param

    client = MlflowClient(tracking_uri)
    description = str(spec_dict.get("description") or "")
    run = client.create_run(
        experiment_id,
        tags={naming.TAG_ROLE: naming.ROLE_STUDY, naming.TAG_STUDY: study_name,
              "mlflow.runName": f"study-{study_name}", **provenance_tags(),
              **({DESCRIPTION_TAG: description} if description else {}),
              **{k: str(v) for k, v in tags.items()}},
    )
    params = [Param(k, v[:6000]) for k, v in flat_spec_params(spec_dict).items()]
    for i in range(0, len(params), 90):  # MLflow takes 100 params a batch
        client.log_batch(run.info.run_id, params=params[i:i + 90])
    with tempfile.TemporaryDirectory() as d:
        import yaml

        p = os.path.join(d, naming.SPEC_ARTIFACT)
        with open(p, "w") as f:
            yaml.safe_dump(spec_dict, f, sort_keys=False)
        client.log_artifact(run.info.run_id, p)
    return run.info.run_id


def study_outcome(runs: list, objective: str, mode: str) -> dict[str, float]:
    """The parent run's metrics from its trial runs (MLflow ``Run`` objects): trials finished,
    stopped early, failed, the CPU- and GPU-seconds all its runs held (the reference's too), and
    the best final objective of the full-length trials."""
    trials = [r for r in runs if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]
    counts = naming.count_trials((r.info.status, r.data.tags.get(naming.TAG_STOPPED_EARLY)) for r in trials)
    out = {k: float(v) for k, v in counts.items() if k != "trials_running"}
    for cost in (naming.COST_CPU_S, naming.COST_GPU_S):  # every run the study paid for
        out[cost] = float(sum(r.data.metrics.get(cost, 0.0) for r in runs
                              if r.data.tags.get(naming.TAG_ROLE) in (naming.ROLE_TRIAL, naming.ROLE_REFERENCE)))
    values = [r.data.metrics[objective] for r in trials
              if r.info.status == "FINISHED" and r.data.tags.get(naming.TAG_STOPPED_EARLY) != "true"
              and objective in r.data.metrics]
    if values:
        out[f"best_{objective.replace('/', '_')}"] = min(values) if mode == "min" else max(values)
    return out


def log_study_outcome(tracking_uri: str, experiment_id: str, parent_run_id: str, objective: str,
                      mode: str, wall_s: float) -> None:
    """Log ``study_outcome`` and the driver's wall time on the parent run (at every end: a
    resumed study logs them again, over all its trials)."""
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.{naming.TAG_PARENT_RUN} = {naming.filter_literal(parent_run_id)}",
        max_results=50000)
    now = int(time.time() * 1000)
    metrics = {**study_outcome(runs, objective, mode), "study_wall_s": float(wall_s)}
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])


def count_table_csv(n_LED, domains, path: str | Path) -> Path:
    """The count table as CSV (layer, expert, one column per domain): MLflow's artifact view
    previews it, where the Parquet file is a download."""
    path = Path(path)
    lines = [",".join(["layer", "expert", *domains])]
    for layer, n_ED in enumerate(n_LED):
        for expert, row in enumerate(n_ED):
            lines.append(",".join([str(layer), str(expert), *(f"{float(v):g}" for v in row)]))
    path.write_text("\n".join(lines) + "\n")
    return path
