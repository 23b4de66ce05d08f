"""``study.run.reference.fill_gaps`` on a real MLflow store: the gaps a trial would have logged
had it known the reference, at every step, written once."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from study import naming
from study.run.reference import fill_gaps
from study.spec import spec_from_dict


@pytest.fixture()
def study_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("s", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={naming.TAG_ROLE: naming.ROLE_STUDY}).info.run_id

    def child(role: str, history: dict[str, list[tuple[int, float]]]) -> str:
        run = client.create_run(exp, tags={naming.TAG_ROLE: role, naming.TAG_PARENT_RUN: parent}).info.run_id
        for key, points in history.items():
            for step, value in points:
                client.log_metric(run, key, value, step=step)
        return run

    return client, exp, parent, child


def test_gaps_are_written_at_every_step_and_only_once(study_runs):
    client, exp, parent, child = study_runs
    blind = child(naming.ROLE_TRIAL, {"val_loss": [(10, 3.0), (20, 2.5)], "purity": [(10, 0.4), (20, 0.6)]})
    knew = child(naming.ROLE_TRIAL, {"val_loss": [(20, 2.0)], "gap_loss": [(20, 0.25)]})
    ref_run = child(naming.ROLE_REFERENCE, {"val_loss": [(20, 1.75)], "purity": [(20, 1.0)]})
    reference = {"val_loss": 1.75, "purity": 1.0, "nmi": 0.9}

    assert fill_gaps(client.tracking_uri, exp, parent, reference) == 1
    loss = {m.step: m.value for m in client.get_metric_history(blind, "gap_loss")}
    purity = {m.step: m.value for m in client.get_metric_history(blind, "gap_purity")}
    assert loss == {10: pytest.approx(1.25), 20: pytest.approx(0.75)}  # val_loss - 1.75
    assert purity == {10: pytest.approx(0.6), 20: pytest.approx(0.4)}  # 1.0 - purity
    # nmi was never logged by the trial, so no gap_nmi; the run that knew the reference and the
    # reference run itself are left as they were
    assert not client.get_metric_history(blind, "gap_nmi")
    assert [m.value for m in client.get_metric_history(knew, "gap_loss")] == [0.25]
    assert not client.get_metric_history(ref_run, "gap_loss")
    # idempotent: a resumed study calls it again
    assert fill_gaps(client.tracking_uri, exp, parent, reference) == 0
    assert len(client.get_metric_history(blind, "gap_loss")) == 2


SPEC = {"name": "s", "fixed": {}, "search": {"router.method": {"choice": ["lbl", "eb"]}},
        "sampler": {"type": "grid"}}


@pytest.mark.parametrize("objective, needed", [
    ({"metric": "purity"}, False),
    ({"metric": "cmi_lift/layer1", "constraints": {"load_entropy": {"min": 0.9}}}, False),
    ({"metric": "gap_purity"}, True),
    ({"metric": ["val_loss", "gap_loss"]}, True),
    ({"metric": "purity", "constraints": {"gap_loss": {"max": 0.1}}}, True),
])
def test_trials_need_the_reference_only_when_a_gap_steers_the_search(objective, needed):
    assert spec_from_dict({**SPEC, "objective": objective}).trials_need_reference is needed
