"""The study's own Optuna study, in an RDB next to the study: what Optuna's tools open.

Tune's ``OptunaSearch`` keeps the study it samples from in memory and pickles it into Tune's
experiment state (that is how ``moe-study resume`` brings the searcher back); a grid reaches it as
one ``_grid_point`` index, and a trial ASHA stopped is told COMPLETE with its last (with
constraints or several objectives, penalised) value. None of that is what optuna-dashboard,
``optuna.importance`` or ``optuna best-trial`` should read. So the driver writes a copy: when a
Tune trial ends, one Optuna trial is added (``Study.add_trial``) to an Optuna study in a sqlite
file, named on the parent MLflow run (``naming.TAG_OPTUNA_STORAGE``, ``naming.TAG_OPTUNA_STUDY``):

- params: the searched keys by their real names and distributions
  (``study.spec.space.optuna_distributions``), for grids too; a conditional param whose
  condition failed is absent, as in MLflow;
- COMPLETE with the raw objective value(s) when the trial ran all of ``train.steps``; PRUNED (no
  value) when the scheduler stopped it early; FAIL when it errored or did not report the
  objective. The objective's ``constraints`` are Optuna constraints (``<metric> >= x`` holds the
  value ``x - metric``; a trial is feasible when every one is <= 0), so ``best_trial`` is the best
  feasible full-length trial, as ``moe-study best`` ranks them;
- intermediate values: the first objective at each report the driver saw (one objective only);
- user attribute ``moe_study.trial_id``: the Tune trial id, also a tag of the trial's MLflow run.
  A trial already in the study is not added again, so a resumed study (which may give a trial's
  end again) does not duplicate it.

Where: ``<storage>/<name>/optuna.db`` on local storage; on remote storage (``s3://``) the machine
-local folder of the study that holds its lock (sqlite needs a local file), so there it lives on
the driver's machine only. The searcher is unchanged: it still samples from its own study.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from study import naming

TRIAL_ID_ATTR = naming.TAG_TRIAL_ID
"""User attribute of each Optuna trial: its Tune trial id (the MLflow run's tag of the same name)."""
ERROR_ATTR = naming.TAG_ERROR


def storage_url(folder: str | Path) -> str:
    """The sqlite URL of the study's Optuna storage in ``folder`` (made absolute)."""
    return "sqlite:///" + str((Path(folder) / naming.OPTUNA_DB_FILE).absolute())


def open_storage(url: str):
    """An Optuna ``RDBStorage`` for ``url``; sqlite waits for a reader (optuna-dashboard) rather
    than failing at once on a locked file."""
    import optuna

    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 30}}} if url.startswith("sqlite:") else {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url, **kwargs)


def free_study_name(url: str, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``... when the storage already holds a study of that name
    (left by an earlier study of the same name whose state was removed)."""
    import optuna

    taken = set(optuna.study.get_all_study_names(open_storage(url)))
    if name not in taken:
        return name
    i = 2
    while f"{name}-{i}" in taken:
        i += 1
    return f"{name}-{i}"


def create_study(url: str, name: str, modes: Sequence[str], user_attrs: Mapping[str, Any]) -> None:
    """Create the (empty) Optuna study, its directions the objective's modes."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))  # "A new study created"
    try:
        study = optuna.create_study(storage=open_storage(url), study_name=name,
                                    directions=["minimize" if m == "min" else "maximize" for m in modes])
    finally:
        optuna.logging.set_verbosity(verbosity)
    for key, value in user_attrs.items():
        study.set_user_attr(key, value)


def constraint_values(constraints: Mapping[str, Mapping[str, float]], result: Mapping[str, Any]
                      ) -> dict[str, float]:
    """Optuna constraints (feasible when <= 0) of the objective's bounds on a final result; a
    metric the result lacks is left out."""
    out = {}
    for metric, bound in constraints.items():
        value = _finite(result.get(metric))
        if value is None:
            continue
        if "min" in bound:
            out[f"{metric} >= {bound['min']:g}"] = float(bound["min"]) - value
        if "max" in bound:
            out[f"{metric} <= {bound['max']:g}"] = value - float(bound["max"])
    return out


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def frozen_trial(*, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any] | None,
                 objective: Mapping[str, Any], distributions: Mapping[str, Any],
                 intermediate: Mapping[int, float] | None = None, error: str | None = None):
    """The Optuna trial that records one ended Tune trial (see the module's docstring).

    ``objective`` is ``Objective.to_dict()`` (``metric``, ``mode``, ``constraints``); ``config``
    the trial's Tune config; ``result`` its last result; ``error`` set when it failed.
    """
    import optuna
    from optuna.trial import TrialState

    result = dict(result or {})
    metrics = list(objective["metric"])
    params = {k: config[k] for k in distributions if k in config}
    dists = {k: distributions[k] for k in params}
    attrs: dict[str, Any] = {TRIAL_ID_ATTR: trial_id}
    values = [_finite(result.get(m)) for m in metrics]
    step = int(result.get(naming.STEP, 0) or 0)
    if error is None and any(v is None for v in values):
        error = "the trial ended without reporting " + ", ".join(
            m for m, v in zip(metrics, values) if v is None)
    if error is not None:
        state, values = TrialState.FAIL, None
        attrs[ERROR_ATTR] = error[-1000:]
    elif step < int(config.get("train.steps", 0) or 0):  # the tracker's rule for stopped_early
        state, values = TrialState.PRUNED, None
    else:
        state = TrialState.COMPLETE
    steps = {int(k): v for k, v in (intermediate or {}).items() if _finite(v) is not None}
    if error is None and len(metrics) == 1 and _finite(result.get(metrics[0])) is not None:
        steps[step] = float(result[metrics[0]])
    trial = optuna.trial.create_trial(
        state=state, values=values, params=params, distributions=dists, user_attrs=attrs,
        intermediate_values=steps if len(metrics) == 1 else None,
        constraints=(constraint_values(objective.get("constraints") or {}, result)
                     if state != TrialState.FAIL else None) or None,
    )
    ended = datetime.datetime.now()
    took = _finite(result.get("time_total_s"))
    trial.datetime_complete = ended
    trial.datetime_start = ended - datetime.timedelta(seconds=took) if took else ended
    return trial


class OptunaCopy:
    """Adds one Optuna trial per ended Tune trial to the study's Optuna study, once per Tune trial
    id. Picklable (Tune pickles the callback holding it into its experiment state): the storage
    connection is opened again on first use after unpickling."""

    def __init__(self, storage_url: str, study_name: str, objective: Mapping[str, Any],
                 distributions: Mapping[str, Any]):
        self.storage_url, self.study_name = storage_url, study_name
        self.objective, self.distributions = dict(objective), dict(distributions)
        self._study = None
        self._recorded: set[str] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_study": None, "_recorded": None}

    def study(self):
        import optuna

        if self._study is None:
            self._study = optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage_url))
            self._recorded = {t.user_attrs.get(TRIAL_ID_ATTR) for t in self._study.get_trials(deepcopy=False)}
        return self._study

    def record(self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any] | None, *,
               intermediate: Mapping[int, float] | None = None, error: str | None = None) -> bool:
        """Add the trial unless the study has it already; whether it was added."""
        study = self.study()
        if trial_id in self._recorded:
            return False
        study.add_trial(frozen_trial(trial_id=trial_id, config=config, result=result,
                                     objective=self.objective, distributions=self.distributions,
                                     intermediate=intermediate, error=error))
        self._recorded.add(trial_id)
        return True
