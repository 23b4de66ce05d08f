"""Every shipped study spec and trial config loads and passes validation (litgpt style)."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from study.spec.space import define_by_run, grid_points, make_sampler, trial_values
from study.spec import load_spec, load_trial_config, safe_load, spec_from_dict
from trainables.config import METHODS

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "search_spaces").glob("*.yaml"))
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_the_expected_files_are_shipped():
    assert {p.stem for p in SPECS} >= {"smoke", "quick", "paper", "paper_small"}
    assert {p.stem for p in CONFIGS} == set(METHODS)  # one config per method


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_loads_and_its_space_yields_valid_trials(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    space = define_by_run(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=make_sampler(spec), directions=["minimize"] * len(spec.objective.metrics))
    for _ in range(4):
        trial = study.ask()
        config = trial_values(trial, space(trial))
        assert spec.trial_config(config).router.method in METHODS
        spec.reference_config(config)  # the reference router fits every trial's model
        study.tell(trial, [0.0] * len(spec.objective.metrics))


@pytest.mark.parametrize("path", [p for p in SPECS if "trials" in p.read_text()], ids=lambda p: p.name)
def test_trial_counts_in_comments_are_true(path):
    """A spec's comment that says '= N trials' must match what it runs."""
    claimed = re.findall(r"= (\d+) trials", path.read_text())
    if claimed:
        assert int(claimed[-1]) == load_spec(path).num_trials


def test_the_spec_docs_table_states_each_specs_trial_count():
    """docs/spec.md's table of shipped specs says how many trials each runs: it must be true."""
    table = (REPO / "docs" / "spec.md").read_text()
    stated = dict(re.findall(r"^\| `(\w+)\.yaml` \|.*\| (\d+) trials", table, flags=re.M))
    assert set(stated) == {p.stem for p in SPECS}  # every shipped spec is in the table
    for name, count in stated.items():
        assert load_spec(REPO / "search_spaces" / f"{name}.yaml").num_trials == int(count), name


def test_grid_specs_cover_the_paper_axes():
    small = load_spec(REPO / "search_spaces" / "paper_small.yaml")
    points = grid_points(small)
    scopes_by_method = {}
    for p in points:
        scopes_by_method.setdefault(p["router.method"], set()).add(p["router.scope"])
    assert scopes_by_method == {
        "none": {"micro_batch"}, "lbl": {"micro_batch", "global_batch", "sequence"},
        "eb": {"micro_batch", "global_batch"}, "sh": {"micro_batch", "global_batch"},
        "ba": {"micro_batch", "global_batch"},
    }
    assert {p["router.capacity_factor"] for p in points} == {0, 1.0}
    assert small.base_config().data.step_composition == "domain_complete"
    paper = load_spec(REPO / "search_spaces" / "paper.yaml")
    assert paper.base_config().model.top_k == 4 and paper.resources.gpu > 0


def test_smoke_is_ci_sized():
    spec = load_spec(REPO / "search_spaces" / "smoke.yaml")
    cfg = spec.base_config()
    assert spec.num_trials <= 4 and cfg.train.steps <= 60 and cfg.model.n_layers == 1
    assert cfg.model.n_experts % cfg.n_domains == 0  # the reference router's groups fit


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_trial_config_loads(path):
    cfg = load_trial_config(path)
    assert cfg.router.method == path.stem


def test_examples_in_the_spec_docs_are_valid():
    """The YAML examples in docs/spec.md that are marked as whole specs load."""
    text = (REPO / "docs" / "spec.md").read_text()
    blocks = re.findall(r"```yaml\n(# spec\n.*?)```", text, flags=re.S)
    assert blocks, "docs/spec.md has no '# spec' example"
    for block in blocks:
        spec_from_dict(safe_load(block), default_name="doc_example")
