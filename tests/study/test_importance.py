"""The report's "Main effects" (grids) and "Hyperparameter importance" (searched studies)
sections, on a real MLflow sqlite store of nested runs (``tests.study.test_report.Store``).

The main effects are recomputed here by hand from the objective values of a synthetic 2 x 3
factorial; the importance is checked on a searched study whose objective is driven by one param
while another is noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from study import naming
from study.results.report import write_report
from study.spec import spec_from_dict
from tests.study.test_report import Store, section, table_rows

SCOPES = ["micro_batch", "global_batch"]
CAPACITIES = [0, 1.0, 2.0]
# gap_purity of the 2 x 3 factorial (scope, capacity), one full-length trial each
GAPS = {("micro_batch", 0): 0.50, ("micro_batch", 1.0): 0.46, ("micro_batch", 2.0): 0.41,
        ("global_batch", 0): 0.30, ("global_batch", 1.0): 0.29, ("global_batch", 2.0): 0.22}


def _params(scope, cap, seed=0, **more):
    return {"router.method": "lbl", "router.scope": scope, "router.capacity_factor": cap,
            "train.seed": seed, "train.steps": 30, **more}


def _metrics(gap):
    return {"gap_purity": gap, "purity": 1.0 - gap, "val_loss": 2.0 + gap}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("mlflow-importance"))


def _half_width(values):
    x = np.asarray(values)
    return stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))


def test_main_effects_of_a_factorial_grid_match_a_hand_computation(store, tmp_path):
    spec = spec_from_dict({"name": "factorial", "fixed": {"router.method": "lbl"},
                           "search": {"router.scope": {"choice": SCOPES},
                                      "router.capacity_factor": {"choice": CAPACITIES}},
                           "objective": {"metric": "gap_purity"}, "sampler": {"type": "grid"}})
    exp, parent = store.experiment("factorial", spec_yaml=spec.to_yaml())
    for (scope, cap), gap in GAPS.items():
        store.run(exp, parent, f"{scope}-{cap}", naming.ROLE_TRIAL, _params(scope, cap), _metrics(gap),
                  tags={naming.TAG_STOPPED_EARLY: "false"})
    # stopped early with the best gap of all: not a full-length trial, so not in the effects
    store.run(exp, parent, "stopped", naming.ROLE_TRIAL, _params("global_batch", 0, seed=1), _metrics(0.01),
              tags={naming.TAG_STOPPED_EARLY: "true"})
    text = write_report("factorial", out_dir=tmp_path, tracking_uri=store.uri).read_text()
    assert "## Hyperparameter importance" not in text
    effects = section(text, "Main effects")
    rows = table_rows(effects)

    scope_levels = {s: [GAPS[(s, c)] for c in CAPACITIES] for s in SCOPES}
    cap_levels = {c: [GAPS[(s, c)] for s in SCOPES] for c in CAPACITIES}
    scope_spread = np.mean(scope_levels["micro_batch"]) - np.mean(scope_levels["global_batch"])  # 0.1867
    cap_means = [np.mean(v) for v in cap_levels.values()]
    cap_spread = max(cap_means) - min(cap_means)  # 0.085
    # the factor with the larger spread first; levels in the spec's order
    assert [r[:3] for r in rows] == [
        ["`router.scope`", "micro_batch", "3"], ["", "global_batch", "3"],
        ["`router.capacity_factor`", "0", "2"], ["", "1.0", "2"], ["", "2.0", "2"]]
    expected = [*scope_levels.values(), *cap_levels.values()]
    for row, values in zip(rows, expected):
        assert row[3] == f"{np.mean(values):.3f} ± {_half_width(values):.3f}"
    assert rows[0][4] == f"{scope_spread:.3f}" and rows[2][4] == f"{cap_spread:.3f}"
    assert rows[1][4] == "" and "Unbalanced" not in effects

    # a corner gone (deleted here; failed or excluded in a real grid): capacity 0 keeps one
    # trial, whose mean then covers one scope only, and the table says the design is unbalanced
    gone = [r for r in store.client.search_runs([exp]) if r.info.run_name == "global_batch-0"][0]
    store.client.delete_run(gone.info.run_id)
    effects = section(write_report("factorial", out_dir=tmp_path, tracking_uri=store.uri).read_text(),
                      "Main effects")
    rows = table_rows(effects)
    assert rows[2][:4] == ["`router.capacity_factor`", "0", "1", "0.500 (n=1)"]
    assert "Unbalanced" in effects
    assert "`router.scope`, `router.capacity_factor`" in effects.split("Unbalanced")[1]


def _searched_spec(name: str, trials: int):
    return spec_from_dict({
        "name": name, "fixed": {"router.method": "lbl"},
        "search": {"router.lbl_coef": {"loguniform": [1e-3, 1e-1]},
                   "router.scope": {"choice": SCOPES},
                   "router.z_loss_coef": {"uniform": [0.0, 0.01]},
                   "router.bias_update_rate": {"loguniform": [1e-4, 1e-2],
                                               "when": {"router.scope": "global_batch"}}},
        "objective": {"metric": "gap_purity"}, "sampler": {"type": "tpe"},
        "budget": {"trials": trials}})


def test_importance_ranks_the_param_that_drives_the_objective_first(store, tmp_path):
    spec = _searched_spec("searched", 24)
    exp, parent = store.experiment("searched", spec_yaml=spec.to_yaml())
    store.client.set_tag(parent, naming.TAG_OPTUNA_STORAGE, "sqlite:////x/optuna.db")
    store.client.set_tag(parent, naming.TAG_OPTUNA_STUDY, "searched")
    rng = np.random.default_rng(0)
    for i in range(24):
        coef = float(10 ** rng.uniform(-3, -1))
        scope = SCOPES[i % 2]
        noise = float(rng.uniform(0, 0.01))
        extra = {"router.bias_update_rate": 1e-3} if scope == "global_batch" else {}
        # gap_purity driven by lbl_coef alone (log-linear), the rest is noise
        gap = 0.3 + 0.1 * math.log10(coef) + float(rng.normal(0, 0.002))
        store.run(exp, parent, f"t{i}", naming.ROLE_TRIAL,
                  _params(scope, 0, seed=i, **{"router.lbl_coef": coef, "router.z_loss_coef": noise}, **extra),
                  _metrics(gap), tags={naming.TAG_STOPPED_EARLY: "false"})
    text = write_report("searched", out_dir=tmp_path, tracking_uri=store.uri).read_text()
    assert "## Main effects" not in text
    imp = section(text, "Hyperparameter importance")
    rows = table_rows(imp)
    assert [r[0] for r in rows][0] == "`router.lbl_coef`"
    values = {r[0]: float(r[1]) for r in rows}
    assert set(values) == {"`router.lbl_coef`", "`router.scope`", "`router.z_loss_coef`"}
    assert values["`router.lbl_coef`"] > 0.8 > values["`router.z_loss_coef`"]
    assert sum(values.values()) == pytest.approx(1.0, abs=0.002)
    assert "over the 24 full-length trials" in imp and "seed 0" in imp
    # a conditional param is not in every trial: named as left out
    assert "Left out: `router.bias_update_rate`" in imp
    # where Optuna's own tools find the study
    assert "`optuna-dashboard sqlite:////x/optuna.db`" in imp
    assert "`optuna best-trial --study-name searched --storage sqlite:////x/optuna.db`" in imp
    # seeded: the same runs give the same numbers
    again = section(write_report("searched", out_dir=tmp_path / "again", tracking_uri=store.uri).read_text(),
                    "Hyperparameter importance")
    assert again == imp


def test_too_few_trials_for_importance_are_said(store, tmp_path):
    spec = _searched_spec("few", 4)
    exp, parent = store.experiment("few", spec_yaml=spec.to_yaml())
    for i, coef in enumerate([1e-3, 1e-2, 3e-2, 1e-1]):
        store.run(exp, parent, f"t{i}", naming.ROLE_TRIAL,
                  _params("micro_batch" if i % 2 else "global_batch", 0, seed=i, **{
                      "router.lbl_coef": coef, "router.z_loss_coef": 0.001 * i}),
                  _metrics(0.3 + 0.1 * math.log10(coef)))
    imp = section(write_report("few", out_dir=tmp_path, tracking_uri=store.uri).read_text(),
                  "Hyperparameter importance")
    assert "No importance computed: 4 full-length trials with `gap_purity`, fewer than the 8" in imp
    assert "|" not in imp
