"""``moe-study`` exit codes and dispatch: 0 success, 2 bad input, 1 a failed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from study import cli
from study.cli import main
from study.naming import default_tracking_uri

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "search_spaces" / "smoke.yaml"

TINY = {
    "data": {"bytes_per_domain": 300_000, "seq_len": 32, "eval_sequences_per_domain": 2},
    "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_experts": 6, "top_k": 1, "expert_hidden": 32},
    "train": {"steps": 2, "eval_every": 2, "micro_batch_size": 1, "grad_accum": 6, "warmup_steps": 1},
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture
def bad_spec(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("search:\n  router.method: {choice: [lbl, foo]}\nbudget: {trials: 2}\n")
    return path


def fake_module(monkeypatch, name, **functions):
    """Stand in for a dispatch target of another module (never Ray, Optuna or MLflow)."""
    module = types.ModuleType(name)
    for fn_name, fn in functions.items():
        setattr(module, fn_name, fn)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_validate_ok_and_summary(capsys):
    assert main(["validate", str(SMOKE)]) == 0
    out = capsys.readouterr().out
    assert "valid study spec 'smoke'" in out
    assert "search router.lbl_coef: loguniform [0.01, 0.1] when router.method in ['lbl']" in out
    assert "trials: 4" in out


def test_validate_bad_spec_exits_2_naming_the_key(bad_spec, capsys):
    assert main(["validate", str(bad_spec)]) == 2
    err = capsys.readouterr().err
    assert "search.router.method.choice[1]: unknown value 'foo'" in err
    assert main(["validate", str(bad_spec.parent / "missing.yaml")]) == 2
    assert "cannot read the study spec" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["best"], ["best", "x", "--top", "0"], ["best", "x", "--format", "xml"], ["data"]],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage: moe-study" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_version_prints_the_package_version_and_exits_0(capsys):
    from importlib import metadata

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"moe-study {metadata.version('moe-routing-study')}"


def test_train_runs_one_trial_with_sets(tiny_config, capsys):
    code = main(["train", str(tiny_config), "--set", "router.method=eb", "--set", "train.micro_batch_size=4",
                 "--format", "csv"])
    assert code == 0
    import csv

    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(rows) == 1
    metrics = {k: float(v) for k, v in rows[0].items()}
    # --set values reached the config: global-batch window = seq_len x micro-batch x accumulation
    assert metrics["balance_window_tokens"] == 32 * 4 * 6
    assert metrics["step"] == 2 and 0 < metrics["purity"] <= 1


def test_train_bad_input_exits_2(tiny_config, capsys):
    assert main(["train", str(tiny_config), "--set", "router.methd=lbl"]) == 2
    assert "router.methd: unknown key; did you mean 'router.method'?" in capsys.readouterr().err
    assert main(["train", str(tiny_config), "--set", "train.steps"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert main(["train", str(tiny_config), "--set", "model.top_k=9"]) == 2
    assert "model.top_k: 9 is larger than model.n_experts=6" in capsys.readouterr().err


def test_train_dispatch_contract(tiny_config, monkeypatch, capsys):
    seen = {}

    def train_main(cfg, json_out=False, out_dir=None, fmt=None):
        seen.update(cfg=cfg, json_out=json_out, out_dir=out_dir, fmt=fmt)
        return 0

    fake_module(monkeypatch, "trainables.training", train_main=train_main)
    assert main(["train", str(tiny_config), "--set", "train.steps=50", "--out", "somewhere"]) == 0
    assert seen["cfg"].train.steps == 50 and seen["cfg"].model.n_experts == 6
    assert (seen["fmt"], seen["out_dir"]) == ("table", "somewhere")
    # one output flag across commands; --json stays, as --format json
    for flags, fmt in ((["--json"], "json"), (["--format", "json"], "json"), (["--format", "csv"], "csv")):
        assert main(["train", str(tiny_config), *flags]) == 0 and seen["fmt"] == fmt


def test_run_dispatch_and_failures(monkeypatch, capsys, tmp_path):
    calls = []

    def run_study(spec, *, tracking_uri, address, name, storage, on_success, verbose):
        calls.append((spec.name, tracking_uri, address, name, storage, on_success, verbose))
        return 0

    module = fake_module(monkeypatch, "study.run.runner", run_study=run_study)
    assert main(["run", str(SMOKE), "--tracking-uri", "sqlite:///x.db", "--address", "auto",
                 "--name", "renamed", "--storage", str(tmp_path)]) == 0
    # the command line, not the runner, prints the best trials once the study ended well
    assert calls == [("smoke", "sqlite:///x.db", "auto", "renamed", str(tmp_path), cli._print_best, False)]
    assert main(["run", str(SMOKE), "-v"]) == 0 and calls[-1][-1] is True  # library output back

    module.run_study = lambda spec, **kw: 1  # a study whose trials failed
    assert main(["run", str(SMOKE)]) == 1

    def crash(spec, **kw):
        raise RuntimeError("worker lost")

    module.run_study = crash
    assert main(["run", str(SMOKE)]) == 1
    assert "worker lost" in capsys.readouterr().err


def test_run_bad_spec_never_reaches_the_runner(bad_spec, monkeypatch):
    fake_module(monkeypatch, "study.run.runner", run_study=lambda *a, **k: pytest.fail("ran a bad spec"))
    assert main(["run", str(bad_spec)]) == 2


def test_resume_and_report_dispatch(monkeypatch, capsys, tmp_path):
    seen = {}
    fake_module(monkeypatch, "study.run.runner",
                resume_study=lambda name, **kw: seen.setdefault("resume", (name, kw)) and 0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert main(["resume", "quick", "--storage", str(tmp_path)]) == 0
    assert seen["resume"] == ("quick", {"tracking_uri": "sqlite:///env.db", "address": None,
                                        "storage": str(tmp_path), "on_success": cli._print_best,
                                        "verbose": False})
    # no store named: the study's own (in its state) is used, and no "ignoring" note is due
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    seen.clear()
    assert main(["resume", "quick", "--storage", str(tmp_path)]) == 0
    assert seen["resume"][1]["tracking_uri"] is None

    fake_module(monkeypatch, "study.results.report",
                write_report=lambda exp, out_dir=None, tracking_uri=None, compare=(): (
                    seen.setdefault("compare", list(compare)), Path(out_dir or "reports") / exp)[1])
    assert main(["report", "quick", "--out", str(tmp_path), "--compare", "a", "--compare", "b"]) == 0
    assert f"report written to {tmp_path / 'quick'}" in capsys.readouterr().out
    assert seen["compare"] == ["a", "b"]


def test_missing_module_exits_1(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "study.results.report", None)  # import fails
    assert main(["report", "quick"]) == 1
    assert "study.results.report is not available" in capsys.readouterr().err


def test_default_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == "sqlite:///" + os.path.join(str(tmp_path), "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert default_tracking_uri() == "http://tracking:5000"


def test_module_entry_point_exit_codes(bad_spec):
    """``python -m study.cli`` as a user runs it: exit status and stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bad = subprocess.run([sys.executable, "-m", "study.cli", "validate", str(bad_spec)],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert bad.returncode == 2 and "unknown value 'foo'" in bad.stderr
    good = subprocess.run([sys.executable, "-m", "study.cli", "validate", str(SMOKE)],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert good.returncode == 0, good.stderr


def test_data_describe_prints_pins_and_content_hashes(small_mix_config, capsys):
    """The default domains in both formats: each domain's pinned source and sha256 and its content
    hash, and the mix's content hash, as the mix itself has them."""
    import json

    from trainables.data import archives, build_mix

    sets = [f"data.cache_dir={small_mix_config.cache_dir}",
            f"data.bytes_per_domain={small_mix_config.bytes_per_domain}"]
    mix = build_mix(small_mix_config)
    args = ["data", "describe", *(a for s in sets for a in ("--set", s))]
    assert main([*args, "--format", "json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["content_hash"] == mix.content_hash
    rows = {r["domain"]: r for r in described["domains"]}
    assert list(rows) == mix.domains
    assert [rows[d]["content_hash"] for d in mix.domains] == [i["content_hash"] for i in mix.info]
    assert rows["json"]["pinned"] == f"botocore=={archives.BOTOCORE.version}"
    assert rows["json"]["sha256"] == archives.BOTOCORE.sha256
    assert main(args) == 0
    table = capsys.readouterr().out
    assert f"mix content hash {mix.content_hash}" in table
    assert archives.DJANGO.sha256 in table and "Django==5.1.4" in table
