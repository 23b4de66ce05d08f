"""End to end, as a user runs it: `moe-study run smoke.yaml` on a real local Ray cluster with a
real MLflow sqlite store, then `moe-study best` in all three formats."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study import naming

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


def moe_study(*args: str, cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "study.cli", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    d = tmp_path_factory.mktemp("smoke-study")
    uri = f"sqlite:///{d}/mlflow.db"
    r = moe_study("run", str(SMOKE), "--tracking-uri", uri, "--storage", str(d / "runs"), cwd=d)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return d, uri, r.stdout


def _runs(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    assert exp is not None
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_study_writes_parent_run_and_nested_trial_runs_with_gaps(smoke_study, tmp_path):
    from study.spec import load_spec
    from trainables.routing_counts import read_routing_counts
    from trainables.specialisation import specialisation_metrics

    tmp = tmp_path
    _, uri, stdout = smoke_study
    client, runs = _runs(uri)
    parents = [r for r in runs if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_STUDY]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent_id)]

    children = [r for r in runs if r.data.tags.get(naming.TAG_PARENT_RUN) == parent_id]
    refs = [r for r in children if r.data.tags[naming.TAG_ROLE] == naming.ROLE_REFERENCE]
    trials = [r for r in children if r.data.tags[naming.TAG_ROLE] == naming.ROLE_TRIAL]
    assert len(refs) == 1 and len(trials) == 4
    ref = refs[0].data.metrics
    assert ref["purity"] == 1.0 and ref["reference_agreement"] == 1.0
    # the parent names its reference run's key: the report finds a reused reference by it
    assert parents[0].data.tags[naming.TAG_REFERENCE_KEY] == refs[0].data.tags[naming.TAG_CONFIG_HASH]

    for run in trials:
        m, p = run.data.metrics, run.data.params
        assert run.info.status == "FINISHED"
        assert p["router.method"] in ("lbl", "eb") and "router.method" not in run.data.tags  # once: a param
        # named by its settings in the MLflow UI
        assert run.data.tags["mlflow.runName"] == f"{p['router.method']}-{p['router.scope']}-s{p['train.seed']}"
        assert p["router.scope"] in ("micro_batch", "global_batch")
        # a conditional param exists only where its condition holds
        assert ("router.lbl_coef" in p) == (p["router.method"] == "lbl")
        # the whole resolved config is logged, defaults included
        assert p["data.domains_per_micro_batch"] == "1" and p["model.n_experts"] == "12"
        # the gaps are computed against this study's reference run
        assert m["gap_purity"] == pytest.approx(ref["purity"] - m["purity"])
        assert m["gap_loss"] == pytest.approx(m["val_loss"] - ref["val_loss"])
        assert 0 <= m["purity"] <= 1 and m["balance_window_tokens"] > 0
        # the step-0 baseline and the token-controlled metrics, mean and per layer
        layers = [k.split("/")[1] for k in m if k.startswith("purity/layer")]
        assert layers
        for name in ("purity", "cmi", "shared_purity", "excess_purity", "nmi_domain"):
            for suffix in ("", *(f"/{layer}" for layer in layers)):
                lift, init = m[f"{name}_lift{suffix}"], m[f"{name}_init{suffix}"]
                assert lift == pytest.approx(m[f"{name}{suffix}"] - init, abs=1e-9)
        assert m["cmi"] <= 1 and 0 < m["shared_coverage"] < 1 and m["init_eval_s"] > 0
        # what it cost: the time it held its resources x what it reserved (smoke: 1 CPU, no GPU)
        assert m["cost/cpu_s"] == pytest.approx(m["trial_wall_s"]) and m["cost/gpu_s"] == 0
        steps = sorted(h.step for h in client.get_metric_history(run.info.run_id, "val_loss"))
        # ASHA's rungs (10, 20; grace 10, factor 2) and every eval_every (20): a curve, not a point
        stopped = run.data.tags[naming.TAG_STOPPED_EARLY] == "true"
        assert steps == [10, 20, 40][:len(steps)]
        assert stopped == (steps[-1] < 40)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"count_table.parquet", "routing_heatmap.png"} <= artifacts
        if not stopped:  # the raw counts of the final evaluation give back its logged metrics
            assert naming.ROUTING_COUNTS_FILE in artifacts
            counts, domains = read_routing_counts(
                client.download_artifacts(run.info.run_id, naming.ROUTING_COUNTS_FILE, str(tmp)))
            again = specialisation_metrics(counts.n_LXED, counts.n_LQE, counts.domain_Q)
            assert again["cmi"] == pytest.approx(m["cmi"]) and len(domains) == counts.n_LXED.shape[3]
            assert again["excess_purity/layer0"] == pytest.approx(m["excess_purity/layer0"])
    assert "trials done, 0 failed" in stdout and "] finished in " in stdout
    # a console a person reads: one line per trial event, no library tables, logs or colours
    lines = stdout.splitlines()
    assert len(lines) < 40, stdout
    for chatter in ("╭", "Trial status", "_objective", "TBX", "snapshotting", "\033[", "View detailed results"):
        assert chatter not in stdout, chatter
    assert sum(("] done " in ln) or ("] stopped early " in ln) for ln in lines) == 4
    assert "optuna-dashboard sqlite:///" in stdout  # the study's Optuna copy, opened by its tool
    assert "next:" in stdout and f"#/experiments/{client.get_experiment_by_name('smoke').experiment_id}/runs" in stdout
    # what the MLflow UI shows without clicking: the runs view, the spec's search settings and the
    # study's outcome on the parent, the reference's zero gaps, provenance on every run
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.note.content"] == load_spec(SMOKE).description
    parent = client.get_run(parent_id).data
    assert parent.params["sampler.type"] == "tpe" and parent.params["budget.trials"] == "4"
    full = [t for t in trials if t.data.tags[naming.TAG_STOPPED_EARLY] == "false"]
    assert parent.metrics["trials_finished"] == len(full) and parent.metrics["trials_failed"] == 0
    assert parent.metrics["trials_stopped_early"] == 4 - len(full) and parent.metrics["study_wall_s"] > 0
    paid = sum(r.data.metrics["cost/cpu_s"] for r in [*refs, *trials])
    assert parent.metrics["cost/cpu_s"] == pytest.approx(paid)
    objective = load_spec(SMOKE).objective
    best = [t.data.metrics[objective.metrics[0]] for t in full]
    assert parent.metrics[f"best_{objective.metrics[0]}"] == (min(best) if objective.modes[0] == "min" else max(best))
    assert ref["gap_purity"] == 0.0 and ref["gap_loss"] == 0.0
    assert refs[0].data.tags["mlflow.runName"] == "reference-s0"
    for run in [parents[0], *refs, *trials]:
        assert run.data.tags[naming.TAG_TORCH_VERSION] and run.data.tags[naming.TAG_CODE_VERSION]
        assert run.data.tags[naming.TAG_GIT_COMMIT]
    # every run names the text it trained on: the study's mix, as built from its base config
    from study.run.runner import spec_base_config
    from trainables.data import build_mix

    mix_hash = build_mix(spec_base_config(load_spec(SMOKE)).data).content_hash
    assert {r.data.tags.get(naming.TAG_MIX_HASH) for r in [parents[0], *refs, *trials]} == {mix_hash}


def test_the_optuna_study_holds_each_trial_once_with_its_real_params(smoke_study):
    """The study's Optuna copy, named on the parent run, is what Optuna's own tools open: one
    trial per Tune trial, the spec's param names, COMPLETE for full-length trials with the raw
    objective, PRUNED for those ASHA stopped, and `optuna best-trial` gives the best feasible one."""
    import optuna

    d, uri, stdout = smoke_study
    _, runs = _runs(uri)
    parent = next(r for r in runs if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_STUDY)
    url, name = parent.data.tags[naming.TAG_OPTUNA_STORAGE], parent.data.tags[naming.TAG_OPTUNA_STUDY]
    assert (url, name) == (f"sqlite:///{d / 'runs' / 'smoke' / naming.OPTUNA_DB_FILE}", "smoke")
    assert f"optuna-dashboard {url}" in stdout
    trials = {r.data.tags[naming.TAG_TRIAL_ID]: r for r in runs
              if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL}
    study = optuna.load_study(study_name=name, storage=url)
    assert sorted(t.user_attrs[naming.TAG_TRIAL_ID] for t in study.trials) == sorted(trials)
    for t in study.trials:
        run = trials[t.user_attrs[naming.TAG_TRIAL_ID]]
        params = run.data.params
        assert set(t.params) == {"router.method", "router.scope"} | (
            {"router.lbl_coef"} if params["router.method"] == "lbl" else set())
        assert {k: str(v) for k, v in t.params.items()} == {k: params[k] for k in t.params}
        if run.data.tags[naming.TAG_STOPPED_EARLY] == "true":
            assert t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.value == pytest.approx(run.data.metrics["gap_purity"])
            assert t.constraints == {"load_entropy >= 0.5": pytest.approx(0.5 - run.data.metrics["load_entropy"])}
    feasible = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                and all(v <= 0 for v in t.constraints.values())]
    best = subprocess.run([str(Path(sys.executable).parent / "optuna"), "best-trial", "--study-name", name,
                           "--storage", url, "-f", "json"], capture_output=True, text=True, timeout=120)
    if feasible:
        assert best.returncode == 0, best.stderr
        assert json.loads(best.stdout)["number"] == min(feasible, key=lambda t: t.value).number
    else:  # no feasible full-length trial: Optuna has no best trial either
        assert best.returncode != 0


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_best_returns_trials_in_gap_order_in_every_format(smoke_study, fmt):
    d, uri, _ = smoke_study
    r = moe_study("best", "smoke", "--tracking-uri", uri, "--format", fmt, "--by", "gap_purity", cwd=d)
    assert r.returncode == 0, r.stderr
    client, runs = _runs(uri)
    # trials ASHA stopped early are left out (their gap is from an early step)
    expected = sorted(
        (r for r in runs if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL
         and r.data.tags[naming.TAG_STOPPED_EARLY] == "false"),
        key=lambda r: r.data.metrics["gap_purity"],
    )
    assert expected, "every smoke trial was stopped early"
    expected_gaps = [r.data.metrics["gap_purity"] for r in expected]
    if fmt == "json":
        rows = json.loads(r.stdout)
        assert [row["gap_purity"] for row in rows] == pytest.approx(expected_gaps)
        assert {row["run_id"] for row in rows} == {r.info.run_id for r in expected}
        every = moe_study("best", "smoke", "--tracking-uri", uri, "--format", "json", "--include-stopped", cwd=d)
        trials = {r.info.run_id for r in runs if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL}
        assert {row["run_id"] for row in json.loads(every.stdout)} == trials
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert [float(row["gap_purity"]) for row in rows] == pytest.approx(expected_gaps)
    else:
        positions = [r.stdout.index(run.info.run_id[:8]) for run in expected  # the id, shortened
                     if expected_gaps.count(run.data.metrics["gap_purity"]) == 1]
        assert positions == sorted(positions)


def test_best_on_an_unknown_experiment_is_bad_input(smoke_study):
    d, uri, _ = smoke_study
    r = moe_study("best", "no-such-study", "--tracking-uri", uri, cwd=d)
    assert r.returncode == 2 and "no-such-study" in r.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_mlflow_ui_shows_the_trials_with_method_scope_and_objective(smoke_study, tmp_path):
    """A real `mlflow server` on loopback and a headless browser: the study's runs page (the
    address the study prints) lists every run of the study flat, with its method, scope and
    objective, sorted by the objective."""
    import re

    from study.run.mlflow_layout import runs_page
    from study.spec import load_spec
    from tests.e2e.servers import MlflowServer

    d, uri, stdout = smoke_study
    client, runs = _runs(uri)
    exp = client.get_experiment_by_name("smoke")
    server = MlflowServer(d).start()
    try:
        page = runs_page(server.uri, exp.experiment_id, "smoke")
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1920,1080",
             "--virtual-time-budget=20000", "--dump-dom", page],
            capture_output=True, text=True, timeout=180).stdout
    finally:
        server.stop()
    cells = [c.strip() for c in re.split(r"<[^>]+>", dom) if c.strip()]
    objective = load_spec(SMOKE).objective.metrics[0]
    assert {"router.method", "router.scope", objective} <= set(cells)  # the view's columns
    trials = [r for r in runs if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]
    for run in trials:
        assert run.data.tags["mlflow.runName"] in cells  # a row per trial, not folded
        value = run.data.metrics[objective]
        assert any(c.startswith(f"{value:.4f}"[:5]) for c in cells), (objective, value)
    assert {"eb", "global_batch", "micro_batch"} <= set(cells)
    assert f"#/experiments/{exp.experiment_id}/runs?viewStateShareKey=smoke" in stdout  # printed at the end
