"""The reference router beside the first trials: a study whose objective, scheduler and
constraints need no gap starts its search at once, runs the reference in the same driver at the
same time, and writes every trial's gaps into MLflow when the reference has finished."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from study import naming
from trainables.metric_names import GAPS

from tests.e2e.test_smoke_study import SMOKE, moe_study


def test_reference_runs_beside_the_search_and_gaps_are_filled_in(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = moe_study("run", str(SMOKE), "--tracking-uri", uri, "--storage", str(tmp_path / "runs"),
                  "--set", "objective.metric=purity", "--set", "name=beside",
                  # long enough a reference (~10 s) that the search's start-up does not outlast it
                  "--set", "train.steps=100", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "runs beside the first trials" in r.stdout
    assert "gaps to the reference written for 4 trials" in r.stdout

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("beside")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    refs = [x for x in runs if x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_REFERENCE]
    trials = [x for x in runs if x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]
    assert len(refs) == 1 and len(trials) == 4
    ref = refs[0]
    assert ref.info.status == "FINISHED" and all(t.info.status == "FINISHED" for t in trials)
    # beside, not before: a trial ran while the reference ran
    assert any(t.info.start_time < ref.info.end_time and t.info.end_time > ref.info.start_time
               for t in trials)

    for trial in trials:
        for gap, metric, sign in GAPS:
            history = {m.step: m.value for m in client.get_metric_history(trial.info.run_id, metric)}
            gaps = {m.step: m.value for m in client.get_metric_history(trial.info.run_id, gap)}
            # every step the trial reported the metric at, against the reference's final value
            assert gaps.keys() == history.keys() and gaps
            for step, value in history.items():
                assert gaps[step] == pytest.approx(sign * (value - ref.data.metrics[metric]))

    # the study keeps the reference, so a resume neither runs it again nor rewrites the gaps
    state = json.loads((tmp_path / "runs" / "beside" / "study.json").read_text())
    assert state["reference"]["purity"] == ref.data.metrics["purity"]
    again = moe_study("resume", "beside", "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "runs beside" not in again.stdout
    assert "gaps to the reference written" not in again.stdout
    after = client.search_runs([exp.experiment_id], max_results=100)
    assert sum(x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_REFERENCE for x in after) == 1
