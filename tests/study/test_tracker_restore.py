"""A trial restored from a checkpoint gets the report that went with it into MLflow, once.

The case (seen in tests/e2e/test_interrupt_resume.py[sigkill]): the driver is killed after Tune
saved a trial's checkpoint and result but before the tracker's delivery thread wrote the report.
Restored at its last step, the trial trains nothing and reports nothing and Tune completes it
with the result it restored; restored earlier, its next report comes one step later. Either way
the restored result must reach the run, and only once.

A real sqlite MLflow store and the real StudyTracker; the Tune trial is a stand-in holding what
the tracker reads of one (id, config, last result).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from study import naming
from study.tracking import StudyTracker

STEPS = 40


def _report(step: int) -> dict:
    return {"step": step, "val_loss": 5.0 - step / 10, "gap_purity": 0.7 - step / 1000, "training_iteration": step // 10}


def _tracker(uri: str, experiment_id: str, parent: str) -> StudyTracker:
    return StudyTracker(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
                        study_name="s", objective="gap_purity", progress=False)


@pytest.mark.parametrize("delivered_before_kill", [False, True], ids=["final-report-lost", "final-report-delivered"])
def test_restored_trial_ends_with_its_final_report_logged_once(tmp_path, delivered_before_kill):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("s", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment_id).info.run_id
    trial = SimpleNamespace(trial_id="t1", config={"train.steps": STEPS, "router.method": "lbl"},
                            last_result=None, status="RUNNING")

    killed = _tracker(uri, experiment_id, parent)  # the first driver: reports up to the kill
    for step in (10, 20, 30, 40) if delivered_before_kill else (10, 20, 30):
        killed.on_trial_result(0, [trial], trial, _report(step))
    assert killed.close(timeout_s=30)

    resumed = _tracker(uri, experiment_id, parent)  # as Tuner.restore brings it back: no results seen
    trial.last_result = _report(STEPS)  # what Tune restored with the trial
    resumed.on_trial_restore(0, [trial], trial)
    resumed.on_trial_complete(0, [trial], trial)
    assert resumed.close(timeout_s=30)

    runs = client.search_runs([experiment_id], f"tags.`{naming.TAG_TRIAL_ID}` = 't1'")
    assert len(runs) == 1  # the resumed trial continued its run
    run_id = runs[0].info.run_id
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(history) == [(s, 5.0 - s / 10) for s in (10, 20, 30, 40)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["gap_purity"] == pytest.approx(0.7 - STEPS / 1000)
    assert run.data.tags[naming.TAG_STOPPED_EARLY] == "false"


def test_restored_trial_fills_the_report_lost_before_its_next_one(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("s", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment_id).info.run_id
    trial = SimpleNamespace(trial_id="t1", config={"train.steps": STEPS}, last_result=None, status="RUNNING")
    killed = _tracker(uri, experiment_id, parent)
    for step in (10, 20):
        killed.on_trial_result(0, [trial], trial, _report(step))
    assert killed.close(timeout_s=30)  # the step-30 report was saved by Tune, never delivered

    resumed = _tracker(uri, experiment_id, parent)
    trial.last_result = _report(30)
    resumed.on_trial_result(0, [trial], trial, _report(40))
    trial.last_result = _report(40)
    resumed.on_trial_complete(0, [trial], trial)
    assert resumed.close(timeout_s=30)
    run_id = next(r.info.run_id for r in client.search_runs([experiment_id])
                  if r.data.tags.get(naming.TAG_TRIAL_ID) == "t1")
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(steps) == [10, 20, 30, 40]
