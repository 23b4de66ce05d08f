"""Study spec loading: every class of bad input is a ConfigError naming its key or value."""

from __future__ import annotations

import copy

import pytest
import yaml

from study.spec import load_spec, load_trial_config, parse_set, spec_from_dict
from study.spec.types import CONSTRAINT_PENALTY, UNFINISHED_PENALTY, Objective
from trainables.config import RouterConfig
from trainables.errors import ConfigError

# A small valid spec that every bad-input test breaks in one place.
VALID = {
    "name": "unit",
    "description": "a spec for tests",
    "fixed": {"model": {"n_experts": 12, "top_k": 2}, "train.steps": 60, "train.eval_every": 20},
    "search": {
        "router.method": {"choice": ["lbl", "eb"]},
        "router.scope": {"choice": ["micro_batch", "global_batch"]},
        "router.lbl_coef": {"loguniform": [1e-3, 1e-1], "when": {"router.method": "lbl"}},
        "train.lr": {"uniform": [1e-3, 5e-3]},
    },
    "objective": {"metric": "gap_purity", "constraints": {"load_entropy": {"min": 0.8}}},
    "sampler": {"type": "tpe", "seed": 0},
    "scheduler": {"type": "asha", "grace_period": 20, "reduction_factor": 2},
    "budget": {"trials": 8, "time_s": 600},
    "resources": {"cpu": 1, "gpu": 0, "workers": 1, "max_concurrent": "auto"},
    "reference": {"reuse": True},
    "tracking": {"uri": None, "experiment": None},
}


def problems_of(spec: dict, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        spec_from_dict(spec, **kwargs)
    return info.value.problems


def edited(**changes) -> dict:
    """VALID with top-level sections replaced (None deletes the section)."""
    spec = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def with_search(**params) -> dict:
    spec = copy.deepcopy(VALID)
    for key, value in params.items():
        spec["search"][key.replace("__", ".")] = value
    return spec


def one_problem(spec: dict, *needles: str, **kwargs) -> str:
    """The single problem of a spec, checked to contain every needle."""
    problems = problems_of(spec, **kwargs)
    assert len(problems) == 1, problems
    for needle in needles:
        assert needle in problems[0], problems[0]
    return problems[0]


# -- the valid spec ----------------------------------------------------------------------------
def test_valid_spec_parts(tmp_path):
    path = tmp_path / "my_study.yaml"
    spec_dict = edited(name=None)
    # the conditional param first: loading moves it after the key of its condition
    spec_dict["search"] = {"router.lbl_coef": spec_dict["search"].pop("router.lbl_coef"), **spec_dict["search"]}
    path.write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    spec = load_spec(path)
    assert spec.name == "my_study"  # from the file name
    assert spec.fixed == {"model.n_experts": 12, "model.top_k": 2, "train.steps": 60, "train.eval_every": 20}
    assert spec.search_keys == ["router.method", "router.lbl_coef", "router.scope", "train.lr"]
    coef = spec.param("router.lbl_coef")
    assert (coef.distribution, coef.low, coef.high, coef.when) == ("loguniform", 1e-3, 1e-1, {"router.method": ["lbl"]})
    assert spec.objective.metrics == ["gap_purity"] and spec.objective.modes == ["min"]
    assert spec.search_metrics == ["objective/gap_purity"]
    assert spec.scheduler_metric == "objective/gap_purity" and spec.scheduler_mode == "min"
    assert spec.num_trials == 8 and spec.max_steps() == 60
    assert spec.resources.per_trial() == {"CPU": 1, "GPU": 0}


def test_defaults_mode_from_metric_and_grace_period_from_eval_every():
    spec = spec_from_dict(edited(
        objective={"metric": ["purity", "gap_loss"]},
        scheduler={"type": "asha"},
    ))
    assert spec.objective.modes == ["max", "min"]
    # multi-objective: rescored keys (stopped trials are kept off the Pareto front)
    assert spec.search_metrics == ["objective/purity", "objective/gap_loss"]
    single = spec_from_dict(edited(objective={"metric": "purity"}))
    assert single.search_metrics == ["purity"]  # one objective, no constraints: the raw metric
    assert spec.scheduler.grace_period == 20  # train.eval_every


def test_trial_and_reference_configs():
    spec = spec_from_dict(VALID)
    cfg = spec.trial_config({"router.method": "eb", "router.scope": "micro_batch", "train.lr": 0.002, "_reference": {}})
    assert (cfg.router.method, cfg.router.scope, cfg.train.lr, cfg.model.n_experts, cfg.train.steps) == (
        "eb", "micro_batch", 0.002, 12, 60)
    with pytest.raises(ConfigError, match="router.method"):
        spec.trial_config({"router.method": "nope"})
    ref = spec.reference_config({"router.method": "lbl", "router.lbl_coef": 0.5, "train.seed": 3})
    assert ref.router.method == "reference"
    assert ref.router.lbl_coef == RouterConfig().lbl_coef != 0.5  # router.* back to the defaults
    assert ref.train.seed == 3 and ref.model.n_experts == 12
    base = spec.base_config()
    assert base.model.top_k == 2 and base.router.method == "lbl"  # a default


def test_to_dict_round_trip_and_content_hash():
    spec = spec_from_dict(VALID)
    again = spec_from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()
    assert spec_from_dict(yaml.safe_load(spec.to_yaml())).to_dict() == spec.to_dict()
    assert spec.experiment_name == "unit"
    assert again.content_hash() == spec.content_hash()
    renamed = spec_from_dict(edited(name="other", description="words", tracking={"experiment": "x"}))
    assert renamed.content_hash() == spec.content_hash()  # name, description, tracking: not content
    changed = copy.deepcopy(VALID)
    changed["search"]["train.lr"] = {"uniform": [1e-3, 6e-3]}
    assert spec_from_dict(changed).content_hash() != spec.content_hash()


def test_objective_penalises_constraint_violations_by_hand():
    obj = Objective(["gap_purity", "purity"], ["min", "max"], {"load_entropy": {"min": 0.8}, "max_vio": {"max": 1.0}})
    ok = {"gap_purity": 0.2, "purity": 0.5, "load_entropy": 0.9, "max_vio": 0.5}
    assert obj.scored(ok) == {"objective/gap_purity": 0.2, "objective/purity": 0.5}
    # load_entropy misses its floor by 0.1 and max_vio its ceiling by 0.5: violation 0.6
    bad = {"gap_purity": 0.2, "purity": 0.5, "load_entropy": 0.7, "max_vio": 1.5}
    scored = obj.scored(bad)
    assert scored["objective/gap_purity"] == pytest.approx(0.2 + CONSTRAINT_PENALTY + 0.6)
    assert scored["objective/purity"] == pytest.approx(0.5 - CONSTRAINT_PENALTY - 0.6)
    # any infeasible trial ranks behind every feasible one, and a smaller miss ranks ahead
    slightly = obj.scored({**bad, "load_entropy": 0.79, "max_vio": 0.5})
    assert ok["gap_purity"] + 10 < slightly["objective/gap_purity"] < scored["objective/gap_purity"]
    # a constraint metric not reported yet cannot be judged; a missing objective is left out
    assert obj.scored({"gap_purity": 0.3}) == {"objective/gap_purity": 0.3}
    assert Objective.from_dict(obj.to_dict()) == obj


def test_unfinished_reports_rank_behind_finished_ones_in_multi_objective_studies():
    multi = Objective(["gap_purity", "purity"], ["min", "max"])
    report = {"gap_purity": 0.2, "purity": 0.5}
    assert multi.scored(report, done=True) == {"objective/gap_purity": 0.2, "objective/purity": 0.5}
    early = multi.scored(report, done=False)
    assert early == {"objective/gap_purity": 0.2 + UNFINISHED_PENALTY, "objective/purity": 0.5 - UNFINISHED_PENALTY}
    # one objective, no constraints: the searcher sees the raw value, finished or not
    single = Objective(["gap_purity"], ["min"])
    assert single.scored(report, done=False) == {"gap_purity": 0.2}


def test_constraints_are_judged_on_the_last_report_only():
    """Before its last report every trial carries the same constant, so ASHA compares raw
    objective values at a rung however unbalanced the routers still are."""
    obj = Objective(["gap_purity"], ["min"], {"load_entropy": {"min": 0.9}})
    early_balanced = obj.scored({"gap_purity": 0.65, "load_entropy": 0.6}, done=False)
    early_unbalanced = obj.scored({"gap_purity": 0.62, "load_entropy": 0.3}, done=False)
    assert early_balanced == {"objective/gap_purity": 0.65 + UNFINISHED_PENALTY}
    assert early_unbalanced["objective/gap_purity"] < early_balanced["objective/gap_purity"]
    final_infeasible = obj.scored({"gap_purity": 0.62, "load_entropy": 0.85}, done=True)
    assert final_infeasible == {"objective/gap_purity": pytest.approx(0.62 + CONSTRAINT_PENALTY + 0.05)}
    # a stopped trial ranks behind every finished one, feasible or not
    assert final_infeasible["objective/gap_purity"] < early_unbalanced["objective/gap_purity"]


# -- bad input, one class at a time ---------------------------------------------------------------
def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the study spec"):
        load_spec(tmp_path / "missing.yaml")


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_spec(path)


def test_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping.*got a list"):
        load_spec(path)


def test_problems_name_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(edited(budget={"trials": 0}), sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert info.value.problems == [f"{path}: budget.trials: expected an integer >= 1 (got 0)"]


def test_unknown_top_level_key_suggests():
    spec = edited()
    spec["serach"] = spec.pop("search")
    problems = problems_of(spec)
    assert "serach: unknown key; did you mean 'search'?" in problems
    assert any(p.startswith("search: empty search space") for p in problems)


@pytest.mark.parametrize(
    "section, bad_key, suggestion",
    [
        ("objective", "metrc", "metric"),
        ("sampler", "sed", "seed"),
        ("scheduler", "grace_periods", "grace_period"),
        ("budget", "trails", "trials"),
        ("resources", "cpus", "cpu"),
        ("reference", "resue", "reuse"),
        ("tracking", "urI", "uri"),
    ],
)
def test_unknown_nested_key_suggests(section, bad_key, suggestion):
    spec = copy.deepcopy(VALID)
    spec[section][bad_key] = spec[section].get(suggestion, 1)
    one_problem(spec, f"{section}.{bad_key}: unknown key; did you mean '{suggestion}'?")


def test_unknown_key_inside_param_and_constraint():
    spec = with_search(train__lr={"uniform": [1e-3, 5e-3], "wen": {"router.method": "lbl"}})
    spec["objective"]["constraints"] = {"load_entropy": {"mn": 0.8}}
    problems = problems_of(spec)
    assert "search.train.lr.wen: unknown key; did you mean 'when'?" in problems
    assert "objective.constraints.load_entropy.mn: unknown key; did you mean 'min'?" in problems


def test_unknown_trial_keys_suggest():
    spec = copy.deepcopy(VALID)
    spec["fixed"]["train.stepz"] = 10
    spec["fixed"]["routr"] = {"method": "lbl"}  # a misspelt section is not descended into
    spec["search"]["router.lbl_coeff"] = spec["search"].pop("router.lbl_coef")
    problems = problems_of(spec)
    assert "fixed.train.stepz: unknown trial-config key; did you mean 'train.steps'?" in problems
    assert "fixed.routr: unknown trial-config key; did you mean 'router'?" in problems
    assert "search.router.lbl_coeff: unknown trial-config key; did you mean 'router.lbl_coef'?" in problems


def test_wrong_types():
    spec = copy.deepcopy(VALID)
    spec["fixed"]["train.steps"] = "many"
    spec["budget"]["trials"] = "lots"
    spec["reference"]["reuse"] = "yes"
    spec["resources"]["max_concurrent"] = 0
    spec["search"]["train.seed"] = [0, 1, 2]  # a list, not {choice: [...]}
    spec["description"] = 3
    problems = problems_of(spec)
    expected = [
        "fixed.train.steps: expected an integer (got 'many')",
        "budget.trials: expected an integer >= 1 (got 'lots')",
        "reference.reuse: expected true or false (got 'yes')",
        "resources.max_concurrent: expected an integer >= 1 or 'auto' (got 0)",
        "description: expected a string (got int)",
    ]
    for e in expected:
        assert e in problems, problems
    assert any(p.startswith("search.train.seed: expected a mapping such as {choice: [...]}") for p in problems)


def test_empty_search_space():
    one_problem(edited(search={}), "search: empty search space")
    one_problem(edited(search=None), "search: empty search space")


@pytest.mark.parametrize(
    "key, values, bad_index, needle",
    [
        ("router.method", ["lbl", "foo"], 1, "unknown value 'foo'"),
        ("router.scope", ["micro_batch", "globl_batch"], 1, "did you mean 'global_batch'?"),
        ("model.score_fn", ["softmax", "tanh"], 1, "unknown value 'tanh'"),
        ("router.drop_policy", ["probs", 3], 1, "expected a string (got 3)"),
    ],
)
def test_invalid_choice_values_are_named(key, values, bad_index, needle):
    problem = one_problem(with_search(**{key.replace(".", "__"): {"choice": values}}), needle)
    assert problem.startswith(f"search.{key}.choice[{bad_index}]: ")


def test_unknown_sampler_and_scheduler():
    problems = problems_of(edited(sampler={"type": "cmaes"}, scheduler={"type": "hyperband"}))
    assert any(p.startswith("sampler.type: unknown value 'cmaes'") for p in problems)
    assert any(p.startswith("scheduler.type: unknown value 'hyperband'") for p in problems)


def test_option_of_another_sampler_or_scheduler():
    problems = problems_of(edited(sampler={"type": "random", "population_size": 10},
                                  scheduler={"type": "fifo", "grace_period": 5}))
    assert "sampler.population_size: only used by the nsga2 sampler, not random" in problems
    assert "scheduler.grace_period: only used by the asha scheduler, not fifo" in problems


def test_low_above_high():
    one_problem(with_search(router__lbl_coef={"loguniform": [0.1, 0.01]}),
                "search.router.lbl_coef.loguniform: low 0.1 > high 0.01")


@pytest.mark.parametrize("low", [0, -1e-3])
def test_log_range_must_stay_above_zero(low):
    one_problem(with_search(router__bias_update_rate={"loguniform": [low, 1e-2]}),
                "search.router.bias_update_rate.loguniform: a log range needs low > 0")


def test_int_range_needs_integer_bounds_and_int_keys_need_int_ranges():
    problems = problems_of(with_search(model__top_k={"int": [1.5, 2]}, model__n_layers={"uniform": [1, 3]}))
    assert "search.model.top_k.int[0]: an int range needs integer bounds (got 1.5)" in problems
    assert "search.model.n_layers.uniform: model.n_layers is an integer: use int or loguniform_int" in problems


def test_step_must_divide_the_range():
    one_problem(with_search(model__n_layers={"int": [1, 4], "step": 2}),
                "search.model.n_layers.step: range [1, 4] is not a whole number of steps of 2")
    one_problem(with_search(router__z_loss_coef={"loguniform": [1e-4, 1e-2], "step": 1e-3}),
                "search.router.z_loss_coef.step: only uniform and int take a step")
    spec = spec_from_dict(with_search(train__seed={"int": [0, 4], "step": 2}))
    assert (spec.param("train.seed").low, spec.param("train.seed").high, spec.param("train.seed").step) == (0, 4, 2)


def test_when_must_name_a_searched_choice_param_and_its_values():
    spec = with_search(
        router__lbl_coef={"loguniform": [1e-3, 1e-1], "when": {"router.methd": "lbl"}},
        router__bias_update_rate={"loguniform": [1e-4, 1e-2], "when": {"router.method": "ebb"}},
        router__z_loss_coef={"uniform": [0, 1e-3], "when": {"train.lr": 0.002}},
    )
    problems = problems_of(spec)
    assert ("search.router.lbl_coef.when.router.methd: 'router.methd' is not a searched parameter; "
            "did you mean 'router.method'?") in problems
    assert "search.router.bias_update_rate.when.router.method: 'ebb' is not one of the choices ['lbl', 'eb'] of router.method" in problems
    assert "search.router.z_loss_coef.when.train.lr: 'train.lr' is a uniform range; conditions need a choice parameter" in problems


def test_conditions_in_a_cycle():
    spec = copy.deepcopy(VALID)
    spec["search"]["router.method"] = {"choice": ["lbl", "eb"], "when": {"router.scope": "micro_batch"}}
    spec["search"]["router.scope"] = {"choice": ["micro_batch", "global_batch"], "when": {"router.method": "lbl"}}
    problems = problems_of(spec)
    assert any("conditions form a cycle among router.method, router.scope" in p for p in problems)


@pytest.mark.parametrize(
    "param, needle",
    [
        ({"choice": [0, 2]}, "search.model.top_k.choice[0]: must be >= 1 (got 0)"),
        ({"int": [1, 30]}, "search.model.top_k.int[1]: 30 is larger than model.n_experts=12"),
    ],
)
def test_top_k_zero_or_above_n_experts(param, needle):
    spec = with_search(model__top_k=param)
    spec["fixed"] = {"train.steps": 60, "model.n_experts": 12}
    problems = problems_of(spec)
    assert needle in problems, problems


def test_capacity_factor_ranges_must_be_positive_and_choices_not_negative():
    problems = problems_of(with_search(router__capacity_factor={"uniform": [0, 2]}, router__z_loss_coef={"choice": [0, -1]}))
    assert any(p.startswith("search.router.capacity_factor.uniform[0]: a capacity factor range must be > 0") for p in problems)
    assert "search.router.z_loss_coef.choice[1]: must be a finite number >= 0 (got -1.0)" in problems
    # dropless (0) as a choice is fine
    spec_from_dict(with_search(router__capacity_factor={"choice": [0, 1.25]}))


def test_negative_learning_rate():
    one_problem(with_search(train__lr={"uniform": [-1e-3, 5e-3]}), "search.train.lr.uniform[0]: must be > 0 (got -0.001)")


def test_searched_key_also_fixed():
    spec = copy.deepcopy(VALID)
    spec["fixed"]["train.lr"] = 0.003
    one_problem(spec, "search.train.lr: also set under fixed")


def test_combination_of_searched_values():
    # each value fits the fixed config on its own, but top-4 with 3 experts does not
    spec = with_search(model__top_k={"choice": [2, 4]}, model__n_experts={"choice": [3, 12]})
    spec["fixed"] = {"train.steps": 60}
    spec["reference"] = {"enabled": False}
    spec["objective"] = {"metric": "purity"}
    one_problem(spec, "search: model.top_k: 4 is larger than model.n_experts=3 (with model.top_k=4, model.n_experts=3)")
    # a searched top-k that fits every searched expert count is fine, whatever the defaults
    spec["search"]["model.top_k"] = {"choice": [1, 2]}
    spec_from_dict(spec)


def test_reference_groups_must_fit():
    spec = copy.deepcopy(VALID)
    spec["fixed"]["model"] = {"n_experts": 20, "top_k": 2}  # 20 experts cannot split into 6 domains
    one_problem(spec, "reference: router.method: reference needs model.n_experts (20) divisible by the number of domains (6)")
    spec["fixed"]["model"] = {"n_experts": 12}
    spec["search"]["model.top_k"] = {"choice": [2, 3]}  # groups of 12 / 6 = 2 experts
    one_problem(spec, "reference: model.top_k: 3 is larger than the reference router's group of 2", "(with model.top_k=3)")


def test_reference_not_needed_when_disabled_but_gaps_need_it():
    spec = copy.deepcopy(VALID)
    spec["fixed"]["model"] = {"n_experts": 20, "top_k": 2}
    spec["reference"] = {"enabled": False}
    one_problem(spec, "objective.metric: gap_purity is a gap to the reference run, but reference.enabled is false")
    spec["objective"] = {"metric": "purity"}
    spec_from_dict(spec)  # 20 experts are fine without a reference router


def test_missing_data_domains():
    spec = copy.deepcopy(VALID)
    spec["fixed"]["data"] = {"domains": ["english", "klingon"]}
    spec["fixed"]["model"] = {"n_experts": 12, "top_k": 2}
    problems = problems_of(spec)
    assert any(p.startswith("fixed.data.domains: unknown domain 'klingon'") for p in problems), problems


def test_missing_user_domain_file(tmp_path):
    spec = copy.deepcopy(VALID)
    missing = tmp_path / "nowhere.txt"
    spec["fixed"]["data"] = {
        "domains": ["english", "german", "chinese", "python", "c", "mine"],
        "extra": [{"name": "mine", "path": str(missing)}],
    }
    problems = problems_of(spec)
    assert any(p.startswith("fixed.data.extra[0]") and str(missing) in p for p in problems), problems


def test_resources_nobody_can_satisfy():
    spec = edited(resources={"cpu": 2, "gpu": 1, "workers": 2})
    problems = problems_of(spec, cluster_resources={"CPU": 2.0, "GPU": 0.0})
    assert "resources.cpu: a trial needs 2 workers x 2 CPU but the cluster has 2" in problems
    assert "resources.gpu: a trial needs 2 workers x 1 GPU but the cluster has 0" in problems
    spec_from_dict(spec, cluster_resources={"CPU": 8, "GPU": 2})
    spec_from_dict(spec)  # no cluster given: nothing to check against


def test_plain_sections_are_read_by_the_typed_reader():
    """budget, resources, reference, tracking and report: one reader for types, bounds, literals
    and unknown keys, every problem named by its key path."""
    problems = problems_of(edited(
        budget={"trials": 2.5, "time_s": -1, "trails": 3},
        resources={"max_concurrent": "many", "cpu": True},
        tracking={"uri": "", "experiment": 7},
        reference={"enabled": 1},
    ))
    for expected in (
        "budget.trials: expected an integer >= 1 (got 2.5)",
        "budget.time_s: expected a number > 0 (got -1)",
        "budget.trails: unknown key; did you mean 'trials'?",
        "resources.max_concurrent: expected an integer >= 1 or 'auto' (got 'many')",
        "resources.cpu: expected a number > 0 (got True)",
        "tracking.uri: expected a non-empty string (got '')",
        "tracking.experiment: expected a non-empty string (got 7)",
        "reference.enabled: expected true or false (got 1)",
    ):
        assert expected in problems, (expected, problems)
    spec = spec_from_dict(edited(budget={"trials": 4.0, "time_s": None}, resources={"cpu": 2, "max_concurrent": "auto"}))
    assert spec.budget.trials == 4 and isinstance(spec.budget.trials, int)  # a whole float reads as int
    assert spec.budget.time_s is None  # null: unset
    assert spec.resources.cpu == 2 and isinstance(spec.resources.cpu, int)  # as written: the hash sees 2
    assert spec.resources.max_concurrent == "auto"


def test_bad_resource_values():
    problems = problems_of(edited(resources={"cpu": 0, "gpu": 1.5, "workers": 0}))
    assert "resources.cpu: expected a number > 0 (got 0)" in problems
    assert any(p.startswith("resources.gpu: a fraction of a GPU must be below 1") for p in problems)
    assert "resources.workers: expected an integer >= 1 (got 0)" in problems
    spec = copy.deepcopy(VALID)
    spec["fixed"]["train.device"] = "cuda"
    one_problem(spec, "resources.gpu: 0, but train.device is cuda")


def test_objective_problems():
    problems = problems_of(edited(objective={
        "metric": ["gap_purty", "purity/layer5", "val_loss/klingon"],
        "mode": ["min", "max", "down"],
        "constraints": {"load_entropy": {"min": 0.9, "max": 0.5}},
    }))
    assert "objective.metric[0]: unknown metric 'gap_purty'; did you mean 'gap_purity'?" in problems
    assert "objective.metric[1]: unknown metric 'purity/layer5': layers are numbered 0..1" in problems
    assert any(p.startswith("objective.metric[2]: unknown metric 'val_loss/klingon'") for p in problems)
    assert "objective.mode[2]: expected min or max (got 'down')" in problems
    assert "objective.constraints.load_entropy: min 0.9 > max 0.5: no trial can meet it" in problems


def test_scheduler_grace_period_beyond_the_steps():
    one_problem(edited(scheduler={"type": "asha", "grace_period": 100}),
                "scheduler.grace_period: 100 steps is more than train.steps (60)")


def test_budget_trials_required_unless_grid():
    one_problem(edited(budget={"time_s": 60}), "budget.trials: required for the tpe sampler")


def test_grid_rules():
    grid = copy.deepcopy(VALID)
    grid["sampler"] = {"type": "grid"}
    problems = problems_of(grid)
    assert any(p.startswith("search.router.lbl_coef.loguniform: the grid sampler needs choice parameters") for p in problems)
    assert any(p.startswith("search.train.lr.uniform: the grid sampler needs choice parameters") for p in problems)

    grid["search"] = {"router.method": {"choice": ["lbl", "eb"]}, "train.seed": {"choice": [0, 1]}}
    grid["budget"] = {"trials": 5}
    one_problem(grid, "budget.trials: 5 is more than the 4 grid points")
    grid["budget"] = {}
    assert spec_from_dict(grid).num_trials == 4
    grid["exclude"] = [{"router.method": ["lbl", "eb"]}]
    one_problem(grid, "exclude: leaves no grid point to run")
    grid["exclude"] = [{"router.methd": "lbl"}, {"train.seed": 7}]
    problems = problems_of(grid)
    assert "exclude[0].router.methd: not a searched parameter; did you mean 'router.method'?" in problems
    assert "exclude[1].train.seed: 7 is not one of the choices [0, 1]" in problems


def test_exclude_needs_a_grid():
    one_problem(edited() | {"exclude": [{"router.method": "lbl"}]}, "exclude: only a grid study can exclude combinations")


def test_every_problem_of_a_file_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        """
nme: quick
fixed:
  train.stepz: 300
  router: {lbl_coef: abc}
search:
  router.method: {choice: [lbl, foo]}
  router.lbl_coef: {loguniform: [0.1, 0.01], when: {router.method: lbl}}
  train.lr: {uniform: [-0.1, 0.1]}
objective: {metric: gap_purty}
sampler: {type: tpee, seed: 0}
budget: {trials: 4}
"""
    )
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    problems = [p.split(": ", 1)[1] for p in info.value.problems]  # drop the file name
    assert sorted(problems) == sorted([
        "nme: unknown key; did you mean 'name'?",
        "fixed.train.stepz: unknown trial-config key; did you mean 'train.steps'?",
        "fixed.router.lbl_coef: expected a number (got 'abc')",
        "search.router.lbl_coef.loguniform: low 0.1 > high 0.01",
        "sampler.type: unknown value 'tpee', expected one of ['tpe', 'random', 'nsga2', 'grid']; did you mean 'tpe'?",
        "search.router.method.choice[1]: unknown value 'foo', expected one of "
        "['none', 'lbl', 'eb', 'sh', 'ba', 'ec', 'reference']",
        "search.train.lr.uniform[0]: must be > 0 (got -0.1)",
        "objective.metric: unknown metric 'gap_purty'; did you mean 'gap_purity'?",
    ])
    assert str(info.value).startswith("invalid configuration (8 problems):")


# -- one-trial configs and --set ---------------------------------------------------------------
def test_parse_set_reads_values_as_yaml():
    assert parse_set("train.steps=50") == ("train.steps", 50)
    assert parse_set("train.lr=1e-3") == ("train.lr", 1e-3)
    assert parse_set("router.method=lbl") == ("router.method", "lbl")
    assert parse_set("data.domains=[english, german]") == ("data.domains", ["english", "german"])
    assert parse_set("model.dense=true") == ("model.dense", True)
    for bad in ("train.steps", "=5"):
        with pytest.raises(ConfigError, match="expected key=value"):
            parse_set(bad)


def test_load_trial_config_nested_dotted_and_sets(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("router:\n  method: eb\ntrain.steps: 77\nmodel: {top_k: 2}\n")
    cfg = load_trial_config(path, ["train.steps=5", "router.scope=micro_batch"])
    assert (cfg.router.method, cfg.train.steps, cfg.model.top_k, cfg.router.scope) == ("eb", 5, 2, "micro_batch")
    assert load_trial_config(None).router.method == "lbl"  # defaults
    with pytest.raises(ConfigError) as info:
        load_trial_config(path, ["train.stpes=5", "model.top_k=0"])
    assert f"{path}: train.stpes: unknown key; did you mean 'train.steps'?" in info.value.problems
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_trial_config(path)


@pytest.mark.parametrize("grace, rf, rungs", [
    (20, 2, [20, 40]),       # 80 is past train.steps = 60 (ASHA's max_t)
    (10, 3, [10, 30]),       # 90 > 60
    (15, 2.5, [15, 38]),     # 37.5 is reached at step 38
    (60, 2, [60]),           # one rung at the last step: nothing to stop
])
def test_asha_rungs_by_hand(grace, rf, rungs):
    spec = spec_from_dict(edited(scheduler={"type": "asha", "grace_period": grace, "reduction_factor": rf}))
    assert spec.max_steps() == 60
    assert spec.asha_rungs() == rungs


def test_fifo_has_no_rungs():
    assert spec_from_dict(edited(scheduler={"type": "fifo"})).asha_rungs() == []


def test_objective_on_lift_and_cmi_and_the_report_margin():
    """A study can optimise what training added (``purity_lift``, per layer too) or the
    token-controlled ``cmi``; both are maximised. The report margin is a presentation setting:
    not part of the content hash, but checked."""
    spec = spec_from_dict(edited(objective={"metric": ["purity_lift", "cmi_lift/layer1"]}))
    assert spec.objective.modes == ["max", "max"]
    assert spec_from_dict(edited(objective={"metric": "cmi"})).objective.modes == ["max"]
    with pytest.raises(ConfigError, match="purity_lyft"):
        spec_from_dict(edited(objective={"metric": "purity_lyft"}))
    margin = spec_from_dict(edited(report={"equivalence_margin": 0.02}))
    assert margin.report.equivalence_margin == 0.02
    assert margin.content_hash() == spec_from_dict(edited()).content_hash()
    with pytest.raises(ConfigError, match=r"report\.equivalence_margin: expected a number > 0 and < 1 \(got 0\)"):
        spec_from_dict(edited(report={"equivalence_margin": 0}))
