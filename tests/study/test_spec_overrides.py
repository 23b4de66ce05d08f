"""``--set`` on study specs: fixes keys, narrows choices, keeps exclude rules consistent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from study.spec import load_spec
from trainables.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PAPER_SMALL = REPO / "search_spaces" / "paper_small.yaml"


def test_size_override_keeps_the_grid_and_changes_the_trial_config():
    base = load_spec(PAPER_SMALL)
    bigger = load_spec(PAPER_SMALL, sets=["model.d_model=256", "model.expert_hidden=256"])
    assert bigger.num_trials == base.num_trials == 60
    assert bigger.fixed["model.d_model"] == 256 and bigger.fixed["router.lbl_coef"] == 0.05
    assert bigger.content_hash() != base.content_hash()


def test_fixing_searched_keys_shrinks_the_grid_and_follows_the_exclude_rules():
    spec = load_spec(PAPER_SMALL, sets=["router.capacity_factor=0", "train.seed=[0, 1]"])
    assert "router.capacity_factor" not in spec.search_keys
    assert spec.fixed["router.capacity_factor"] == 0
    # methods x scopes left after the two exclude rules: 4 x 2 + lbl sequence + none micro = 10
    assert spec.num_trials == 10 * 2
    only_sequence = load_spec(PAPER_SMALL, sets=["router.scope=sequence"])
    assert only_sequence.num_trials == 1 * 2 * 3  # lbl alone is left at sequence scope
    assert only_sequence.exclude == [{"router.method": ["none", "eb", "sh", "ba"]}]


def test_narrowing_a_choice_drops_rules_that_can_no_longer_match():
    spec = load_spec(PAPER_SMALL, sets=["router.method=[lbl, eb]"])
    assert all("none" not in rule.get("router.method", []) or len(rule["router.method"]) > 1
               for rule in spec.exclude)
    assert {"router.scope": ["global_batch"], "router.method": ["none"]} not in spec.exclude
    assert spec.num_trials == (2 * 2 + 1) * 2 * 3


@pytest.mark.parametrize("sets, fragment", [
    (["router.scope=[local]"], "--set router.scope: ['local'] not among the searched choices"),
    (["router.scope=sequence", "router.method=[eb, sh]"], "exclude: leaves no grid point"),
    (["model.d_modl=256"], "fixed.model.d_modl"),
    (["model.d_model=-1"], "model.d_model: must be >= 1"),
    (["train.steps"], "expected key=value"),
])
def test_bad_overrides_are_named(sets, fragment):
    with pytest.raises(ConfigError) as err:
        load_spec(PAPER_SMALL, sets=sets)
    assert fragment in str(err.value)


def test_cli_validate_takes_set_and_exits_2_on_a_bad_one():
    cmd = [sys.executable, "-m", "study.cli", "validate", str(PAPER_SMALL)]
    ok = subprocess.run([*cmd, "--set", "train.seed=0"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "trials: 20 (grid)" in ok.stdout
    bad = subprocess.run([*cmd, "--set", "router.lbl_coef=abc"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "router.lbl_coef" in bad.stderr


QUICK = REPO / "search_spaces" / "quick.yaml"
SMOKE = REPO / "search_spaces" / "smoke.yaml"


def test_set_reaches_every_section_of_a_spec():
    spec = load_spec(SMOKE, sets=["budget.trials=3", "sampler.type=random", "scheduler.type=fifo",
                                  "objective.constraints.load_entropy.min=0.8", "name=smoke_random",
                                  "report.equivalence_margin=0.02", "resources.max_concurrent=1"])
    assert (spec.num_trials, spec.sampler.type, spec.scheduler.type, spec.name) == (3, "random", "fifo", "smoke_random")
    assert spec.objective.constraints == {"load_entropy": {"min": 0.8}}
    assert spec.report.equivalence_margin == 0.02 and spec.resources.max_concurrent == 1
    metric = load_spec(QUICK, sets=["objective.metric=purity"]).objective
    assert metric.metrics == ["purity"] and metric.constraints  # the rest of the section stays


def test_a_list_makes_a_fixed_key_searched_but_not_a_list_valued_one():
    base = load_spec(QUICK, sets=["train.seed=0"])
    assert base.num_trials == 4 and "train.seed" not in base.search_keys
    seeds = load_spec(QUICK, sets=["train.seed=0", "train.lr=[0.001, 0.002]"])
    assert "train.lr" in seeds.search_keys and seeds.num_trials == 8  # a grid over the new choices
    domains = load_spec(QUICK, sets=["data.domains=[english, german, chinese, python, c, json]"])
    assert "data.domains" not in domains.search_keys  # a list is this field's value


@pytest.mark.parametrize("sets, expected", [
    (["budget.trials=-1"], "--set budget.trials=-1: budget.trials: expected an integer >= 1 (got -1)"),
    (["sampler.type=randm"], "--set sampler.type=randm: sampler.type: unknown value 'randm'"),
    (["model.d_model=-1"], "--set model.d_model=-1: fixed.model.d_model: must be >= 1"),
    (["objective.metric=purity_lyft"], "--set objective.metric=purity_lyft: objective.metric"),
])
def test_a_problem_in_an_overridden_key_blames_the_set_argument(sets, expected):
    with pytest.raises(ConfigError) as err:
        load_spec(SMOKE, sets=sets)
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems
