"""The Optuna define-by-run space, run through real Optuna studies on toy objectives."""

from __future__ import annotations

import copy
import math

import optuna
import pytest

from study import naming
from study.spec.space import define_by_run, grid_points, make_sampler, trial_values
from study.spec import spec_from_dict

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC = {
    "name": "space",
    "fixed": {"model.n_experts": 12, "model.top_k": 2, "train.steps": 50},
    "search": {
        "router.method": {"choice": ["lbl", "eb", "sh"]},
        "router.lbl_coef": {"loguniform": [1e-4, 1.0], "when": {"router.method": "lbl"}},
        "router.bias_update_rate": {"loguniform": [1e-4, 1e-2], "when": {"router.method": ["eb"]}},
        "train.lr": {"uniform": [1e-3, 5e-3]},
        "model.n_layers": {"int": [1, 5], "step": 2},
        "router.sinkhorn_iters": {"loguniform_int": [1, 64], "when": {"router.method": "sh"}},
    },
    "objective": {"metric": "gap_purity"},
    "sampler": {"type": "tpe", "seed": 0},
    "budget": {"trials": 40},
}


def run_study(spec, n_trials, directions=("minimize",), objective=None):
    """A real Optuna study over the spec's space; returns the flat configs Tune would build."""
    space = define_by_run(spec)
    configs = []

    def toy(trial):
        config = trial_values(trial, space(trial))
        configs.append(config)
        spec.trial_config(config)  # every suggested config is a valid trial config
        values = objective(config) if objective else [config.get("train.lr", 0.0)] * len(directions)
        return values[0] if len(directions) == 1 else values

    study = optuna.create_study(sampler=make_sampler(spec), directions=list(directions))
    study.optimize(toy, n_trials=n_trials)
    return study, configs


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_conditional_params_appear_only_when_their_condition_holds(sampler):
    spec = spec_from_dict(SPEC | {"sampler": {"type": sampler, "seed": 1}})
    _, configs = run_study(spec, 40)
    assert len(configs) == 40
    methods = {c["router.method"] for c in configs}
    assert methods == {"lbl", "eb", "sh"}  # every branch visited
    for c in configs:
        assert ("router.lbl_coef" in c) == (c["router.method"] == "lbl")
        assert ("router.bias_update_rate" in c) == (c["router.method"] == "eb")
        assert ("router.sinkhorn_iters" in c) == (c["router.method"] == "sh")
        # the fixed values come back as constants with every trial
        assert (c["model.n_experts"], c["model.top_k"], c["train.steps"]) == (12, 2, 50)


def test_ranges_are_respected():
    spec = spec_from_dict(SPEC | {"sampler": {"type": "random", "seed": 2}})
    _, configs = run_study(spec, 60)
    for c in configs:
        assert 1e-3 <= c["train.lr"] <= 5e-3
        assert c["model.n_layers"] in (1, 3, 5)  # int [1, 5] with step 2
        if "router.lbl_coef" in c:
            assert 1e-4 <= c["router.lbl_coef"] <= 1.0
        if "router.sinkhorn_iters" in c:
            assert isinstance(c["router.sinkhorn_iters"], int) and 1 <= c["router.sinkhorn_iters"] <= 64
    assert {c["model.n_layers"] for c in configs} == {1, 3, 5}


def test_log_ranges_sample_uniformly_in_the_exponent():
    spec_dict = copy.deepcopy(SPEC)
    spec_dict["search"] = {"router.lbl_coef": {"loguniform": [1e-4, 1.0]}}
    spec_dict["sampler"] = {"type": "random", "seed": 3}
    spec = spec_from_dict(spec_dict)
    _, configs = run_study(spec, 400)
    exponents = [math.log10(c["router.lbl_coef"]) for c in configs]
    # log-uniform on [1e-4, 1]: the exponent is uniform on [-4, 0], so about half lie below 1e-2
    # (a linear-uniform draw would put 1% there) and each decade holds about a quarter
    below = sum(e < -2 for e in exponents) / len(exponents)
    assert 0.4 < below < 0.6
    for decade in range(-4, 0):
        share = sum(decade <= e < decade + 1 for e in exponents) / len(exponents)
        assert 0.15 < share < 0.35


def grid_spec():
    return spec_from_dict({
        "name": "grid",
        "fixed": {"model.n_experts": 12, "model.top_k": 2},
        "search": {
            "router.method": {"choice": ["none", "lbl", "eb"]},
            "router.scope": {"choice": ["micro_batch", "global_batch", "sequence"]},
            "router.lbl_coef": {"choice": [0.01, 0.1], "when": {"router.method": "lbl"}},
        },
        "exclude": [{"router.scope": "sequence", "router.method": ["none", "eb"]}],
        "sampler": {"type": "grid", "seed": 0},
    })


def test_grid_points_follow_conditions_and_exclusions():
    points = grid_points(grid_spec())
    # lbl: 3 scopes x 2 coefficients = 6; none and eb: 2 scopes each (no sequence) = 4
    assert len(points) == 10
    assert sum(p["router.method"] == "lbl" for p in points) == 6
    assert all("router.lbl_coef" not in p for p in points if p["router.method"] != "lbl")
    assert not any(p["router.scope"] == "sequence" and p["router.method"] != "lbl" for p in points)
    assert grid_spec().num_trials == 10


def test_grid_sampler_enumerates_every_point_exactly_once():
    spec = grid_spec()
    study, configs = run_study(spec, 50)  # more trials than points: Optuna stops at the grid's end
    assert len(configs) == 10
    searched = [{k: c[k] for k in spec.search_keys if k in c} for c in configs]
    as_keys = [tuple(sorted(s.items())) for s in searched]
    assert len(set(as_keys)) == 10
    assert set(as_keys) == {tuple(sorted(p.items())) for p in grid_points(spec)}
    assert all(set(t.params) == {naming.GRID_POINT_PARAM} for t in study.trials)


def test_multi_objective_samplers():
    for sampler in ({"type": "nsga2", "seed": 0, "population_size": 4}, {"type": "tpe", "seed": 0}):
        spec = spec_from_dict(SPEC | {"sampler": sampler, "objective": {"metric": ["gap_purity", "gap_loss"]}})
        study, configs = run_study(
            spec, 12, directions=("minimize", "minimize"),
            objective=lambda c: (c["train.lr"], 1.0 / c["train.lr"]),
        )
        assert len(study.trials) == 12 and len(study.best_trials) >= 1


def test_make_sampler_types_and_options():
    def sampler_for(**sampler):
        return make_sampler(spec_from_dict(SPEC | {"sampler": sampler}))

    tpe = sampler_for(type="tpe", seed=0, n_startup_trials=3)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._n_startup_trials == 3 and tpe._group  # conditional params: grouped TPE
    assert isinstance(sampler_for(type="random", seed=0), optuna.samplers.RandomSampler)
    nsga = sampler_for(type="nsga2", seed=0, population_size=6)
    assert isinstance(nsga, optuna.samplers.NSGAIISampler) and nsga._population_size == 6
    grid = make_sampler(grid_spec())
    assert isinstance(grid, optuna.samplers.GridSampler)
    assert grid._search_space == {naming.GRID_POINT_PARAM: list(range(10))}


def test_same_seed_same_suggestions():
    spec = spec_from_dict(SPEC | {"sampler": {"type": "tpe", "seed": 7, "n_startup_trials": 5}})
    _, first = run_study(spec, 12)
    _, second = run_study(spec, 12)
    assert first == second


def test_through_ray_tune_optuna_search():
    """The space and sampler as Ray Tune's OptunaSearch uses them (no Ray cluster needed)."""
    pytest.importorskip("ray.tune.search.optuna")
    from ray.tune.search.optuna import OptunaSearch

    spec = grid_spec()
    search = OptunaSearch(space=define_by_run(spec), metric="gap_purity", mode="min", sampler=make_sampler(spec))
    configs = [search.suggest(f"t{i}") for i in range(3)]
    for i, config in enumerate(configs):
        # Tune's config: the whole flat trial config plus the private grid index
        assert config[naming.GRID_POINT_PARAM] in range(10)
        assert config["model.n_experts"] == 12 and config["router.method"] in ("none", "lbl", "eb")
        assert spec.trial_config(config).model.top_k == 2
        search.on_trial_complete(f"t{i}", {"gap_purity": 0.1 * i})
    assert len({c[naming.GRID_POINT_PARAM] for c in configs}) == 3


def test_space_survives_pickling():
    """Tune pickles the searcher, define-by-run function included, to resume a study."""
    import pickle

    for spec in (spec_from_dict(SPEC), grid_spec()):
        space = pickle.loads(pickle.dumps(define_by_run(spec)))
        study = optuna.create_study(sampler=make_sampler(spec))
        trial = study.ask()
        config = trial_values(trial, space(trial))
        assert spec.trial_config(config).model.n_experts == 12
