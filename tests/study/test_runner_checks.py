"""The runner's pre-flight checks: they fail before Ray starts or anything is written (the tracking
store is checked while Ray starts: tests/study/test_runner_start.py)."""

from __future__ import annotations

import math

import pytest

from study.run.runner import check_resources, max_concurrent, resume_study, run_study
from study.spec import load_spec
from trainables.errors import ConfigError

from tests.e2e.test_smoke_study import SMOKE


def test_an_existing_study_name_is_not_run_twice(tmp_path):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "study.json").write_text("{}")
    with pytest.raises(ConfigError, match="moe-study resume smoke"):
        run_study(load_spec(SMOKE), tracking_uri=f"sqlite:///{tmp_path}/m.db", storage=str(tmp_path))
    assert not (tmp_path / "m.db").exists()


def test_resuming_an_unknown_study_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        resume_study("nope", storage=str(tmp_path))


def test_resources_and_concurrency_follow_the_cluster():
    spec = load_spec(SMOKE)
    check_resources(spec, {"CPU": 1, "GPU": 0})  # one CPU a trial fits
    assert max_concurrent(spec, {"CPU": 6, "GPU": 0}) == 6
    spec.resources.gpu = 0.5
    assert max_concurrent(spec, {"CPU": 6, "GPU": 1}) == 2  # the GPUs bound it
    with pytest.raises(ConfigError, match="GPU 0.5"):
        check_resources(spec, {"CPU": 8, "GPU": 0})


def test_a_spec_whose_fixed_part_alone_is_invalid_still_runs():
    """balance_window.yaml fixes scope: window and searches the window size: the fixed part alone
    (window 0) is no valid trial, every trial is (load_spec checked them all)."""
    from pathlib import Path

    from study.run.runner import spec_base_config

    spec = load_spec(Path(SMOKE).parent / "balance_window.yaml")
    base = spec_base_config(spec)
    assert base.router.scope == "window" and base.router.balance_window == 0
    assert spec.reference_key()  # the reference config drops router.* and is valid


def test_reference_key_ignores_settings_at_their_default():
    """A reference run stays reusable when the trial config gains a field (at its default), or
    when a spec spells out a default value."""
    from study.spec import spec_from_dict

    base = {"search": {"router.scope": {"choice": ["micro_batch", "global_batch"]}},
            "objective": {"metric": "purity"}, "sampler": {"type": "grid"}}
    plain = spec_from_dict({**base, "name": "a"})
    spelled = spec_from_dict({**base, "name": "b", "fixed": {"train.micro_batch_size": 4,
                                                             "router.balance_window": 0}})
    other = spec_from_dict({**base, "name": "c", "fixed": {"train.steps": 50}})
    assert plain.reference_key() == spelled.reference_key() != other.reference_key()


def test_reference_key_names_the_step_composition_whose_default_changed():
    """A reference run of the old default (independent steps; its key omits the composition)
    must not be reused for a study on the new default (domain-complete steps), nor the reverse."""
    from study import naming
    from study.spec import spec_from_dict

    base = {"search": {"router.scope": {"choice": ["micro_batch", "global_batch"]}},
            "objective": {"metric": "purity"}, "sampler": {"type": "grid"}}
    new_default = spec_from_dict({**base, "name": "a"})
    independent = spec_from_dict({**base, "name": "b", "fixed": {"data.step_composition": "independent"}})
    flat = new_default.reference_flat_config()
    assert flat["data.step_composition"] == "domain_complete"
    old_key = naming.config_hash({**{k: v for k, v in flat.items() if k != "data.step_composition"},
                                  "_workers": 1})  # how the key was formed before
    keys = {new_default.reference_key(), independent.reference_key(), old_key}
    assert len(keys) == 3
    # a study run before the parent-run tag is looked up under both (the report's fallback)
    assert new_default.reference_keys_before_tags() == [new_default.reference_key(), old_key]
    # a spec that set the composition away from today's default was keyed with it then too
    assert independent.reference_keys_before_tags() == [independent.reference_key()]


@pytest.mark.parametrize("grace, rf", [(75, 3), (75, 4), (25, 3), (30, 2.5)])
def test_trials_evaluate_at_the_rungs_ray_judges(grace, rf):
    """The rungs the spec computes (and the trials evaluate at) are Ray ASHA's own."""
    from ray.tune.schedulers import ASHAScheduler

    spec = load_spec(SMOKE)
    spec.scheduler.type, spec.scheduler.grace_period, spec.scheduler.reduction_factor = "asha", grace, rf
    spec.fixed["train.steps"] = 300
    ray_rungs = ASHAScheduler(time_attr="step", metric="m", mode="min", max_t=spec.max_steps(),
                              grace_period=grace, reduction_factor=rf)._brackets[0]._rungs
    assert spec.asha_rungs() == sorted(math.ceil(milestone) for milestone, _ in ray_rungs)
