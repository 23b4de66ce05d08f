"""After a driver is killed and the study resumed, every trial run holds each report once.

The cases (seen in tests/e2e/test_interrupt_resume.py): the driver is killed after Tune saved a
trial's checkpoint and result but before the tracker's delivery thread wrote the report; or a
trial Tune had no checkpoint of is rerun from scratch and reports its first steps again; or a
trial restored at its last step gives its last report again (trainables.training.train). The
restored result must reach the run, and no step may be logged twice.

A real sqlite MLflow store and the real StudyTracker; the Tune trial is a stand-in holding what
the tracker reads of one (id, config, last result).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from study import naming
from study.run.tracking import StudyTracker

STEPS = 40


def _report(step: int) -> dict:
    return {"step": step, "val_loss": 5.0 - step / 10, "gap_purity": 0.7 - step / 1000, "training_iteration": step // 10}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("s", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment_id).info.run_id

    def tracker() -> StudyTracker:
        return StudyTracker(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
                            study_name="s")

    def trial_run():
        runs = [r for r in client.search_runs([experiment_id]) if r.data.tags.get(naming.TAG_TRIAL_ID) == "t1"]
        assert len(runs) == 1  # the resumed trial continued its run
        run = client.get_run(runs[0].info.run_id)
        return run, [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")]

    return tracker, trial_run


def _trial():
    return SimpleNamespace(trial_id="t1", config={"train.steps": STEPS, "router.method": "lbl"},
                           last_result=None, status="RUNNING")


def _report_to(tracker: StudyTracker, trial, step: int) -> None:
    tracker.on_trial_result(0, [trial], trial, _report(step))
    trial.last_result = _report(step)  # Tune updates it after the callbacks


# (steps the killed driver delivered, the result Tune restored, reports after the resume)
SCENARIOS = {
    "final-report-lost-then-given-again": ((10, 20, 30), 40, (40,)),
    "final-report-delivered-then-given-again": ((10, 20, 30, 40), 40, (40,)),
    "final-report-lost-and-not-given-again": ((10, 20, 30), 40, ()),
    "report-lost-before-the-next": ((10, 20), 30, (40,)),
    "rerun-from-scratch": ((10,), None, (10, 20, 30, 40)),
}


@pytest.mark.parametrize("delivered, restored, after", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_resumed_trial_run_holds_every_report_once(store, delivered, restored, after):
    new_tracker, trial_run = store
    trial = _trial()
    killed = new_tracker()  # the first driver, up to the kill
    for step in delivered:
        _report_to(killed, trial, step)
    assert killed.close(timeout_s=30)

    resumed = new_tracker()  # as Tuner.restore brings it back: no results seen
    trial.last_result = _report(restored) if restored else {}
    for step in after:
        _report_to(resumed, trial, step)
    resumed.on_trial_complete(0, [trial], trial)
    assert resumed.close(timeout_s=30)

    run, history = trial_run()
    assert history == [(s, 5.0 - s / 10) for s in (10, 20, 30, 40)]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["gap_purity"] == pytest.approx(0.7 - STEPS / 1000)
    assert run.data.tags[naming.TAG_STOPPED_EARLY] == "false"
