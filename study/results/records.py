"""What the report reads from MLflow: every run of one experiment, as plain records.

All runs come from ONE paginated ``search_runs`` over the experiment (params, tags and final
metrics travel with each run), so the cost is a handful of calls for thousands of runs and the
same against a sqlite store or a tracking server. Only artifacts (count tables) and metric
histories (learning curves) need a call per run, and the report asks for few of those.

A study that reused a reference run from an earlier study has no reference run in its own
experiment; the reference is then looked up across experiments by the config hash of the
study's reference config (the same key the runner reuses it by, see ``study.run.reference.find_reference``).
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from trainables.config import METHODS
from trainables.scope import SCOPE_NAMES, WindowScope, parse_scope_label, scope_label
from trainables.errors import ConfigError, did_you_mean

from study import naming


_PAGE = 1000  # runs per search_runs page (the most a file/sqlite store returns at once)


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as the report sees it (params are MLflow's strings)."""

    run_id: str
    name: str
    role: str
    status: str
    parent_id: str | None
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.params.get(naming.TAG_METHOD) or self.tags.get(naming.TAG_METHOD) or "?"

    @property
    def scope(self) -> str:
        """The balancing scope; ``window n`` for the window scope of n sequences, so every
        window size is a cell of its own."""
        return scope_label(self._raw_scope or "?", self.balance_window)

    @property
    def _raw_scope(self) -> str | None:
        return self.params.get(naming.TAG_SCOPE) or self.tags.get(naming.TAG_SCOPE)

    @property
    def balance_window(self) -> int | None:
        """Sequences per balance window (``router.balance_window``) at the window scope, else None."""
        if self._raw_scope != WindowScope.name:
            return None
        try:
            return int(self.params["router.balance_window"])
        except (KeyError, ValueError):
            return None

    @property
    def capacity(self) -> float:
        """``router.capacity_factor``; 0 (the config default) means dropless."""
        try:
            return float(self.params.get("router.capacity_factor", 0.0))
        except ValueError:
            return math.nan

    @property
    def domains_per_micro_batch(self) -> str:
        return self.params.get("data.domains_per_micro_batch", "1")

    @property
    def seed(self) -> str:
        return self.params.get("train.seed", "0")

    @property
    def steps(self) -> int | None:
        try:
            return int(self.params["train.steps"])
        except (KeyError, ValueError):
            return None

    @property
    def stopped_early(self) -> bool:
        return self.tags.get(naming.TAG_STOPPED_EARLY, "false").lower() == "true"

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    @property
    def full_length(self) -> bool:
        """Finished and ran all of ``train.steps`` (the scheduler did not stop it)."""
        return self.finished and not self.stopped_early

    @property
    def error(self) -> str:
        return self.tags.get(naming.TAG_ERROR, "")

    @property
    def mix_hash(self) -> str:
        """Content hash of the text the run trained on; empty for runs logged before it was."""
        return self.tags.get(naming.TAG_MIX_HASH, "")

    def metric(self, name: str) -> float:
        """The run's final value of ``name``, ``nan`` when it did not log it."""
        value = self.metrics.get(name)
        return float(value) if value is not None else math.nan


@dataclass
class StudyRuns:
    """Every run of an experiment, split by role."""

    experiment: str
    experiment_id: str
    studies: list[RunRecord]
    trials: list[RunRecord]
    references: list[RunRecord]
    """Finished reference runs, newest first (found in another experiment when reused)."""
    reference_source: str = ""
    """Empty when the reference ran in this experiment, else where it was found."""
    equivalence_margin: float = 0.01
    """``report.equivalence_margin`` of the newest study spec (the spec's default without one)."""
    objective: str = ""
    """The newest study spec's (first) objective metric; empty without a spec."""
    constraints: dict = field(default_factory=dict)
    """The newest study spec's objective constraints (``{metric: {min/max: bound}}``)."""
    cpus_per_trial: float | None = None
    """CPUs one trial held (all its workers), from the newest study spec; None without one."""
    spec: Any = None
    """The newest study's ``StudySpec`` (its search space: ``study.results.importance``); None
    without one."""

    @property
    def reference(self) -> RunRecord | None:
        return self.references[0] if self.references else None

    @property
    def finished_trials(self) -> list[RunRecord]:
        return [t for t in self.trials if t.finished]

    @property
    def full_length_trials(self) -> list[RunRecord]:
        return [t for t in self.trials if t.full_length]

    @property
    def mix_hashes(self) -> list[str]:
        """The distinct data-mix content hashes of the study's finished trials and reference
        (more than one: numbers on different text are mixed; none: logged before they were)."""
        runs = [*self.finished_trials, *([self.reference] if self.reference else [])]
        return sorted({r.mix_hash for r in runs if r.mix_hash})


def record_of(run: Any) -> RunRecord:
    tags = dict(run.data.tags)
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or tags.get("mlflow.runName", run.info.run_id[:8]),
        role=tags.get(naming.TAG_ROLE, ""),
        status=run.info.status,
        parent_id=tags.get(naming.TAG_PARENT_RUN),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=tags,
    )


def search_all_runs(client: Any, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
    """Every active run matching ``filter_string``, following the pagination token."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string,
                                  max_results=_PAGE, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_study_runs(client: Any, experiment: str, tracking_uri: str) -> StudyRuns:
    """All runs of ``experiment``; ConfigError when it is unknown or has no finished trial."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage == "deleted":
        raise ConfigError(unknown_experiment(client, experiment, tracking_uri))
    records = [record_of(r) for r in search_all_runs(client, [exp.experiment_id])]
    by_role: dict[str, list[RunRecord]] = {}
    for r in records:
        by_role.setdefault(r.role, []).append(r)
    study = StudyRuns(
        experiment=experiment,
        experiment_id=exp.experiment_id,
        studies=by_role.get(naming.ROLE_STUDY, []),
        trials=by_role.get(naming.ROLE_TRIAL, []),
        references=[r for r in by_role.get(naming.ROLE_REFERENCE, []) if r.finished],
    )
    if not study.finished_trials:
        counts = ", ".join(f"{len(v)} {k or 'untagged'}" for k, v in sorted(by_role.items())) or "no runs"
        raise ConfigError(f"experiment {experiment!r} has no finished trial runs ({counts}); "
                          "run a study into it first (moe-study run SPEC.yaml)")
    if not study.references:
        study.references, study.reference_source = _reused_references(client, study.studies)
    # runs come newest first (search_all_runs orders by start time)
    spec = study_spec(client, study.studies[0].run_id) if study.studies else None
    if spec is not None:
        study.spec = spec
        study.equivalence_margin = spec.report.equivalence_margin
        study.objective = spec.objective.metrics[0]
        study.constraints = dict(spec.objective.constraints)
        study.cpus_per_trial = spec.resources.per_trial()["CPU"]
    return study


def unknown_experiment(client: Any, experiment: str, uri: str) -> str:
    """The error for an experiment name the store lacks, with the closest name or the known ones."""
    names = sorted(e.name for e in client.search_experiments(max_results=1000))
    known = f" (known: {', '.join(names)})" if names else ""
    return f"experiment {experiment!r} not found in tracking store {uri}{did_you_mean(experiment, names, otherwise=known)}"


def _reused_references(client: Any, studies: Iterable[RunRecord]) -> tuple[list[RunRecord], str]:
    """Reference runs of other experiments that a study here reused (by config hash)."""
    hashes = sorted({h for s in studies for h in _reference_hashes(client, s.run_id)})
    if not hashes:
        return [], ""
    exp_ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    runs = []
    for h in hashes:  # one search per distinct hash (MLflow has no IN for tags); usually one
        runs += search_all_runs(
            client, exp_ids,
            f"tags.`{naming.TAG_ROLE}` = '{naming.ROLE_REFERENCE}' AND "
            f"tags.`{naming.TAG_CONFIG_HASH}` = '{h}' AND attributes.status = 'FINISHED'",
        )
    runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    if not runs:
        return [], ""
    names = {e.experiment_id: e.name for e in client.search_experiments(max_results=1000)}
    found = [record_of(r) for r in runs]
    source = names.get(runs[0].info.experiment_id, runs[0].info.experiment_id)
    return found, f"reused from experiment {source!r}"


def _reference_hashes(client: Any, parent_run_id: str) -> list[str]:
    """Config hash of the reference run a study used: the parent run's tag, or for a study run
    before the tag existed, the keys its spec artifact may have been given then."""
    tag = client.get_run(parent_run_id).data.tags.get(naming.TAG_REFERENCE_KEY)
    if tag:
        return [tag]
    spec = study_spec(client, parent_run_id)
    try:
        return spec.reference_keys_before_tags() if spec is not None else []
    except Exception:  # noqa: BLE001 - an old spec: the report goes on without
        return []


def study_spec(client: Any, parent_run_id: str):
    """The StudySpec a study ran with, from its parent run's artifact (None without one)."""
    from study.spec import safe_load, spec_from_dict

    try:
        with tempfile.TemporaryDirectory() as d:
            with _quiet_downloads():
                path = client.download_artifacts(parent_run_id, naming.SPEC_ARTIFACT, d)
            return spec_from_dict(safe_load(Path(path).read_text()))
    except Exception:  # noqa: BLE001 - no spec or an old one: the report goes on without
        return None


# -- per-run downloads ------------------------------------------------------------------------
def fetch_count_table(client: Any, run_id: str, dst_dir: str | Path):
    """``(n_LED, domains)`` of a run's count-table artifact, or None when it has none."""
    from trainables.count_table import read_count_table

    try:
        with _quiet_downloads():
            path = client.download_artifacts(run_id, naming.COUNT_TABLE_FILE, str(dst_dir))
        return read_count_table(path)
    except Exception:  # noqa: BLE001 - missing or unreadable artifact: that panel is left out
        return None


@contextmanager
def _quiet_downloads():
    """No tqdm bar per downloaded file on the report's terminal."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def fetch_histories(client: Any, runs: Iterable[RunRecord], metric: str, cap: int
                    ) -> dict[str, list[tuple[int, float]]]:
    """``run_id -> [(step, value)]`` of ``metric`` for the first ``cap`` runs (one call each)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for run in list(runs)[:cap]:
        history = client.get_metric_history(run.run_id, metric)
        points = sorted({int(m.step): float(m.value) for m in history}.items())
        if points:
            out[run.run_id] = points
    return out


def distinct_configs(runs: Iterable[RunRecord]) -> tuple[list[RunRecord], dict[str, str]]:
    """The runs with repeats of an identical config (same seed too) dropped, first one kept.

    A search over a small discrete space samples the same config again; with the same seed it
    is the same measurement, not another sample, so it must not narrow a confidence interval.
    Returns the kept runs and ``{repeat's name: kept run's name}``.
    """
    kept: dict[tuple, RunRecord] = {}
    repeats: dict[str, str] = {}
    for run in runs:
        key = tuple(sorted(run.params.items()))
        if key in kept:
            repeats[run.name] = kept[key].name
        else:
            kept[key] = run
    return list(kept.values()), repeats


# -- ordering shared by tables and plots ------------------------------------------------------
def method_rank(method: str) -> tuple[int, str]:
    return (METHODS.index(method) if method in METHODS else len(METHODS), method)


def scope_rank(scope: str) -> tuple[int, int, str]:
    """Scopes in registry order, window sizes in numeric order, unknown scopes last."""
    name, size = parse_scope_label(scope)
    if name in SCOPE_NAMES:
        return (SCOPE_NAMES.index(name), size or 0, scope)
    return (len(SCOPE_NAMES), 0, scope)
