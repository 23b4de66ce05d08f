"""The study's Optuna copy (study.run.optuna_store) as Tune's driver writes it, without Ray trials.

A real sqlite Optuna storage and the real ``OptunaRecorder`` callback; a Tune trial is a stand-in
holding what the recorder reads of one (id, config, last result, error file). Grid configs come
from the searcher's own define-by-run space and GridSampler, so the copy is checked against what
Tune really hands out (a ``_grid_point`` index to the searcher, real names in the copy).
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import optuna
import pytest

from study import naming
from study.run import optuna_store
from study.run.optuna_store import OptunaCopy
from study.run.tracking import OptunaRecorder
from study.spec import spec_from_dict
from study.spec.space import define_by_run, grid_points, make_sampler, optuna_distributions, trial_values

optuna.logging.set_verbosity(optuna.logging.WARNING)

GRID = {
    "name": "grid",
    "fixed": {"train.steps": 40},
    "search": {
        "router.method": {"choice": ["lbl", "eb"]},
        "router.lbl_coef": {"choice": [0.01, 0.1], "when": {"router.method": "lbl"}},
        "router.scope": {"choice": ["micro_batch", "global_batch"]},
    },
    "objective": {"metric": "gap_purity", "constraints": {"load_entropy": {"min": 0.5}}},
    "sampler": {"type": "grid"},
}


def _copy(tmp_path, spec) -> OptunaCopy:
    url = optuna_store.storage_url(tmp_path)
    name = optuna_store.free_study_name(url, spec.name)
    optuna_store.create_study(url, name, spec.objective.modes, {"mlflow_parent_run_id": "p"})
    return OptunaCopy(url, name, spec.objective.to_dict(), optuna_distributions(spec))


def _grid_configs(spec) -> list[dict]:
    """The Tune configs of every grid trial, as OptunaSearch builds them from the define-by-run
    space (the searcher's study sees only ``_grid_point``)."""
    space, configs = define_by_run(spec), []

    def objective(trial):
        configs.append({k: v for k, v in trial_values(trial, space(trial)).items()
                        if k != naming.GRID_POINT_PARAM})
        assert list(trial.params) == [naming.GRID_POINT_PARAM]
        return 0.0

    optuna.create_study(sampler=make_sampler(spec)).optimize(objective, n_trials=len(grid_points(spec)))
    return configs


def _trial(i: int, config: dict) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"t{i}", config={**config, "_study": {}}, last_result=None,
                           error_msg=None, error_file=None)


def _end(recorder: OptunaRecorder, trial, steps=(20, 40), value=0.5, entropy=0.8) -> None:
    for step in steps:
        result = {"step": step, "gap_purity": value + (40 - step) / 100, "load_entropy": entropy,
                  "time_total_s": step / 10, "training_iteration": step // 20}
        recorder.on_trial_result(0, [], trial, result)
        trial.last_result = result  # Tune updates it after the callbacks
    recorder.on_trial_complete(0, [], trial)


def test_a_grid_is_recorded_with_its_real_param_names_and_distributions(tmp_path):
    spec = spec_from_dict(GRID)
    copy = _copy(tmp_path, spec)
    recorder = OptunaRecorder(copy, "grid")
    configs = _grid_configs(spec)
    assert len(configs) == 6  # lbl x 2 coefs x 2 scopes + eb x 2 scopes
    for i, config in enumerate(configs):
        _end(recorder, _trial(i, config), value=0.1 * i, entropy=0.8 if i != 0 else 0.3)

    study = optuna.load_study(study_name=copy.study_name, storage=copy.storage_url)
    trials = study.trials
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t, config in zip(trials, configs):
        assert naming.GRID_POINT_PARAM not in t.params
        assert t.params == {k: config[k] for k in spec.search_keys if k in config}
        assert ("router.lbl_coef" in t.params) == (t.params["router.method"] == "lbl")
        # a categorical over the grid's choices of each key, whatever point the trial was
        assert t.distributions["router.scope"] == optuna.distributions.CategoricalDistribution(
            ["micro_batch", "global_batch"])
        assert t.intermediate_values == {20: pytest.approx(t.value + 0.2), 40: t.value}
        assert t.user_attrs[naming.TAG_TRIAL_ID] == f"t{trials.index(t)}"
    # the first trial (best value) misses load_entropy >= 0.5: best_trial is the best feasible one
    assert trials[0].constraints == {"load_entropy >= 0.5": pytest.approx(0.2)}
    assert study.best_trial.number == 1
    assert study.user_attrs["mlflow_parent_run_id"] == "p"


def test_stopped_early_is_pruned_and_a_failure_fails(tmp_path):
    spec = spec_from_dict(GRID)
    copy = _copy(tmp_path, spec)
    recorder = OptunaRecorder(copy, "grid")
    config = {"router.method": "eb", "router.scope": "micro_batch", "train.steps": 40}
    _end(recorder, _trial(0, config), steps=(20,))  # ASHA stopped it at step 20 of 40
    failed = _trial(1, config)
    failed.error_msg = "Traceback ...\nTrainingDiverged: loss is nan"
    recorder.on_trial_error(0, [], failed)
    silent = _trial(2, config)  # ended without ever reporting the objective
    silent.last_result = {"step": 40}
    recorder.on_trial_complete(0, [], silent)

    pruned, fail, no_value = optuna.load_study(study_name=copy.study_name, storage=copy.storage_url).trials
    assert pruned.state == optuna.trial.TrialState.PRUNED and pruned.value is None
    assert pruned.intermediate_values == {20: pytest.approx(0.7)}
    assert fail.state == optuna.trial.TrialState.FAIL and "TrainingDiverged" in fail.user_attrs[naming.TAG_ERROR]
    assert no_value.state == optuna.trial.TrialState.FAIL
    assert "without reporting gap_purity" in no_value.user_attrs[naming.TAG_ERROR]


def test_a_resumed_study_does_not_duplicate_trials(tmp_path):
    """Tune pickles the recorder into its experiment state; a driver killed after a trial's end
    was recorded but before Tune saved it gives that end again after the resume."""
    spec = spec_from_dict(GRID)
    copy = _copy(tmp_path, spec)
    first = OptunaRecorder(copy, "grid")
    configs = _grid_configs(spec)
    trials = [_trial(i, c) for i, c in enumerate(configs)]
    _end(first, trials[0])
    _end(first, trials[1])
    resumed = pickle.loads(pickle.dumps(first))  # as Tuner.restore brings it back
    assert resumed.copy._study is None  # no connection travels in the pickle
    _end(resumed, trials[1])  # restored at its last step: its end again
    _end(resumed, trials[2])
    again = OptunaRecorder(OptunaCopy(copy.storage_url, copy.study_name, copy.objective,
                                      copy.distributions), "grid")  # a fresh process
    _end(again, trials[0])
    ids = [t.user_attrs[naming.TAG_TRIAL_ID]
           for t in optuna.load_study(study_name=copy.study_name, storage=copy.storage_url).trials]
    assert ids == ["t0", "t1", "t2"]


def test_a_taken_study_name_gets_a_suffix(tmp_path):
    spec = spec_from_dict(GRID)
    first = _copy(tmp_path, spec)
    second = _copy(tmp_path, spec)
    assert (first.study_name, second.study_name) == ("grid", "grid-2")
    assert first.storage_url == "sqlite:///" + str(tmp_path / naming.OPTUNA_DB_FILE)


def test_a_failing_storage_does_not_end_the_study(tmp_path, capsys):
    spec = spec_from_dict(GRID)
    copy = OptunaCopy(optuna_store.storage_url(tmp_path), "never-created", spec.objective.to_dict(),
                      optuna_distributions(spec))
    _end(OptunaRecorder(copy, "grid"), _trial(0, {"router.method": "eb", "router.scope": "micro_batch",
                                                   "train.steps": 40}))
    assert "could not add trial t0 to the Optuna study never-created" in capsys.readouterr().out


def test_searched_ranges_keep_their_distributions():
    spec = spec_from_dict({
        "name": "ranges", "search": {
            "train.lr": {"loguniform": [1e-4, 1e-2]}, "model.n_layers": {"int": [1, 5], "step": 2},
            "router.sinkhorn_iters": {"loguniform_int": [1, 64]}},
        "objective": {"metric": "gap_purity"}, "budget": {"trials": 4}})
    d = optuna_distributions(spec)
    assert d["train.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.n_layers"] == optuna.distributions.IntDistribution(1, 5, step=2)
    assert d["router.sinkhorn_iters"] == optuna.distributions.IntDistribution(1, 64, log=True)


def test_several_objectives_are_recorded_raw_with_their_directions(tmp_path):
    spec = spec_from_dict({**GRID, "objective": {"metric": ["gap_purity", "val_loss"], "mode": ["min", "min"]}})
    copy = _copy(tmp_path, spec)
    recorder = OptunaRecorder(copy, "grid")
    config = {"router.method": "eb", "router.scope": "micro_batch", "train.steps": 40}
    for i, (gap, loss) in enumerate([(0.3, 2.0), (0.2, 2.5), (0.4, 2.6)]):
        trial = _trial(i, config)
        # what Tune hands the searcher is penalised (objective/...); the copy keeps the metrics
        trial.last_result = {"step": 40, "gap_purity": gap, "val_loss": loss,
                             "objective/gap_purity": gap + 1e6, "objective/val_loss": loss + 1e6}
        recorder.on_trial_complete(0, [], trial)
    study = optuna.load_study(study_name=copy.study_name, storage=copy.storage_url)
    assert [t.values for t in study.trials] == [[0.3, 2.0], [0.2, 2.5], [0.4, 2.6]]
    assert all(t.intermediate_values == {} for t in study.trials)
    assert sorted(t.number for t in study.best_trials) == [0, 1]
