"""How a study looks in MLflow: run names from settings, the spec's search settings as parent
params, the study's outcome from its trial runs (a real sqlite store)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from study import naming
from study.run.mlflow_layout import (
    CUSTOM_MODEL_DEVELOPMENT, EXPERIMENT_KIND_TAG, ensure_experiment, flat_spec_params,
    log_study_outcome, provenance_tags, run_name, start_parent_run,
)


@pytest.mark.parametrize("role, params, name", [
    (naming.ROLE_TRIAL, {"router.method": "eb", "router.scope": "global_batch", "train.seed": 0}, "eb-global_batch-s0"),
    (naming.ROLE_TRIAL, {"router.method": "lbl", "router.scope": "window", "router.balance_window": 8,
                         "router.capacity_factor": 1.0, "train.seed": 2}, "lbl-window8-cap1-s2"),
    (naming.ROLE_TRIAL, {"router.method": "sh", "router.scope": "micro_batch", "router.capacity_factor": 0.0},
     "sh-micro_batch-s0"),
    (naming.ROLE_REFERENCE, {"router.method": "reference", "train.seed": 1}, "reference-s1"),
])
def test_runs_are_named_by_their_settings(role, params, name):
    assert run_name(role, params) == name


def test_the_spec_sections_become_parent_params():
    spec = {"search": {"router.method": {}, "train.seed": {}}, "sampler": {"type": "grid", "seed": 0},
            "budget": {"trials": 12, "time_s": None}, "objective": {"metric": ["purity"], "mode": ["max"]}}
    assert flat_spec_params(spec) == {"sampler.type": "grid", "sampler.seed": "0", "budget.trials": "12",
                                      "objective.metric": '["purity"]', "objective.mode": '["max"]',
                                      "search.keys": "router.method,train.seed"}


def test_experiment_parent_and_outcome_on_a_real_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = ensure_experiment(uri, "layout", "what the study asks")
    assert ensure_experiment(uri, "layout") == exp  # fetched, not made twice
    tags = client.get_experiment(exp).tags
    assert tags[EXPERIMENT_KIND_TAG] == CUSTOM_MODEL_DEVELOPMENT and tags["mlflow.note.content"] == "what the study asks"
    parent = start_parent_run(uri, exp, "layout", {"description": "d", "sampler": {"type": "tpe"}}, tags={})
    data = client.get_run(parent).data
    assert data.params["sampler.type"] == "tpe" and data.tags["mlflow.note.content"] == "d"
    assert {k: data.tags[k] for k in provenance_tags()} == provenance_tags()

    def trial(status, value, early=False, cpu_s=10.0, role=naming.ROLE_TRIAL):
        run = client.create_run(exp, tags={naming.TAG_PARENT_RUN: parent, naming.TAG_ROLE: role,
                                           naming.TAG_STOPPED_EARLY: str(early).lower()})
        client.log_metric(run.info.run_id, "cmi_lift/layer1", value)
        client.log_metric(run.info.run_id, naming.COST_CPU_S, cpu_s)
        client.set_terminated(run.info.run_id, status=status)

    trial("FINISHED", 0.05)
    trial("FINISHED", 0.08)
    trial("FINISHED", 0.50, early=True)  # measured early: not the best
    trial("FAILED", 0.90, cpu_s=3.0)  # paid for all the same
    trial("FINISHED", 0.99, cpu_s=7.0, role=naming.ROLE_REFERENCE)  # no trial; its cost counts
    log_study_outcome(uri, exp, parent, "cmi_lift/layer1", "max", wall_s=12.5)
    outcome = client.get_run(parent).data.metrics
    assert outcome == {"trials_finished": 2, "trials_stopped_early": 1, "trials_failed": 1,
                       "best_cmi_lift_layer1": 0.08, "study_wall_s": 12.5,
                       naming.COST_CPU_S: 10.0 * 3 + 3.0 + 7.0, naming.COST_GPU_S: 0.0}
