"""``best_runs`` against a real local MLflow sqlite store holding real nested runs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from study import naming
from study.results.queries import best_runs, format_rows, translate_where
from trainables.errors import ConfigError

# (run name, method, scope, lbl_coef, gap_purity, purity, status)
TRIALS = [
    ("t0", "lbl", "global_batch", 0.01, 0.30, 0.55, "FINISHED"),
    ("t1", "lbl", "micro_batch", 0.05, 0.45, 0.40, "FINISHED"),
    ("t2", "eb", "global_batch", None, 0.10, 0.75, "FINISHED"),
    ("t3", "eb", "micro_batch", None, 0.60, 0.25, "FINISHED"),
    ("t4", "sh", "global_batch", None, 0.20, 0.65, "FINISHED"),
    ("t5", "ba", "micro_batch", None, 0.05, 0.80, "FAILED"),  # best value, but failed
    ("t6", "ba", "global_batch", None, None, 0.50, "FINISHED"),  # never logged gap_purity
]
# stopped by ASHA at an early step: the best values of all, from a barely trained router
STOPPED = ("t7", "sh", "micro_batch", None, 0.01, 0.90, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("study_a")
    parent = client.create_run(exp, run_name="study_a", tags={
        naming.TAG_ROLE: naming.ROLE_STUDY, naming.TAG_STUDY: "study_a",
        naming.TAG_SEARCH_KEYS: "router.method,router.scope,router.lbl_coef",
    }).info.run_id

    def child(name, role, method, scope, metrics, params, status="FINISHED", stopped=False):
        run = client.create_run(exp, run_name=name, tags={
            naming.TAG_PARENT_RUN: parent, naming.TAG_ROLE: role, naming.TAG_STUDY: "study_a",
            naming.TAG_METHOD: method, naming.TAG_SCOPE: scope,
            naming.TAG_STOPPED_EARLY: str(stopped).lower(),  # as the tracker tags every trial's end
        })
        flat = {"router.method": method, "router.scope": scope, "train.lr": 0.003,
                # free-form values with quotes in them, as str() of the typed value stores them
                "data.cache_dir": "/data/o'neil" if name == "t0" else "/data/cache",
                "data.domains": ["english", "c"] if name == "t1" else ["english", "german"], **params}
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, 0, 100) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in flat.items()],
        )
        client.set_terminated(run.info.run_id, status=status)

    for name, method, scope, coef, gap, purity, status in [*TRIALS, STOPPED]:
        # lift against the step-0 router: the order differs from purity's on purpose
        metrics = {"purity": purity, "val_loss": 2.0 + purity, "load_entropy": 0.95,
                   "purity_lift": round(0.5 - purity if method == "eb" else purity - 0.5, 3)}
        if gap is not None:
            metrics["gap_purity"] = gap
        params = {"router.lbl_coef": coef} if coef is not None else {}
        child(name, naming.ROLE_TRIAL, method, scope, metrics, params, status, stopped=name == STOPPED[0])
    child("reference", naming.ROLE_REFERENCE, "reference", "global_batch",
          {"purity": 1.0, "gap_purity": 0.0, "val_loss": 2.5}, {})
    client.set_terminated(parent)
    # another study whose runs must never show up
    other = client.create_experiment("study_b")
    run = client.create_run(other, tags={naming.TAG_ROLE: naming.ROLE_TRIAL})
    client.log_batch(run.info.run_id, metrics=[Metric("gap_purity", -1.0, 0, 0)])
    client.set_terminated(run.info.run_id)
    return uri


def names(rows):
    return [r["trial"] for r in rows]


def expected_order(key_index, reverse, method=None):
    rows = [t for t in TRIALS if t[6] == "FINISHED" and t[key_index] is not None and (method is None or t[1] == method)]
    return [t[0] for t in sorted(rows, key=lambda t: t[key_index], reverse=reverse)]


def test_min_metric_ascending_only_finished_trials_with_the_metric(store):
    rows = best_runs(store, "study_a", by="gap_purity")
    assert names(rows) == expected_order(4, reverse=False) == ["t2", "t4", "t0", "t1", "t3"]
    assert [r["gap_purity"] for r in rows] == sorted(r["gap_purity"] for r in rows)


def test_max_metric_descending(store):
    rows = best_runs(store, "study_a", by="purity")
    assert names(rows) == expected_order(5, reverse=True) == ["t2", "t4", "t0", "t6", "t1", "t3"]


def test_mode_override_and_top(store):
    assert names(best_runs(store, "study_a", by="purity", mode="min", top=2)) == ["t3", "t1"]
    assert names(best_runs(store, "study_a", top=1)) == ["t2"]


def test_trials_stopped_early_only_when_asked(store):
    assert "t7" not in names(best_runs(store, "study_a", by="purity", top=100))
    assert names(best_runs(store, "study_a", include_stopped=True, top=2)) == ["t7", "t2"]


def test_reference_runs_only_when_asked(store):
    assert "reference" not in names(best_runs(store, "study_a"))
    rows = best_runs(store, "study_a", include_reference=True, top=2)
    assert names(rows) == ["reference", "t2"]
    assert rows[0]["method"] == "reference"


def test_rows_hold_method_scope_metrics_and_searched_params(store):
    row = best_runs(store, "study_a", where="router.method=lbl", top=1)[0]
    assert (row["trial"], row["method"], row["scope"]) == ("t0", "lbl", "global_batch")
    assert row["gap_purity"] == 0.30 and row["purity"] == 0.55 and row["val_loss"] == pytest.approx(2.55)
    assert row["max_vio"] is None  # a summary column the run did not log
    assert row["router.lbl_coef"] == "0.01"  # the searched params, from the parent's tag
    assert "train.lr" not in row  # not searched
    assert len(row["run_id"]) == 32


@pytest.mark.parametrize(
    "where, expected",
    [
        ("method=lbl", ["t0", "t1"]),
        ("router.method = 'eb'", ["t2", "t3"]),
        ("scope=global_batch, purity>0.5", ["t2", "t4", "t0"]),
        ("router.lbl_coef=0.05", ["t1"]),
        ("params.`router.scope` = 'micro_batch'", ["t1", "t3"]),
        ("params.`router.method` != 'lbl' and metrics.purity < 0.7", ["t4", "t3"]),
    ],
)
def test_where_filters(store, where, expected):
    assert names(best_runs(store, "study_a", where=where)) == expected


@pytest.mark.parametrize(
    "where, needle",
    [
        ("method=lbl2", "router.method has no value 'lbl2', expected one of ['none', 'lbl', 'eb', "
                        "'sh', 'ba', 'ec', 'reference']; did you mean 'lbl'?"),
        ("scope!=globl_batch", "router.scope has no value 'globl_batch'"),
        ("purity>0.3 and router.drop_policy=prob", "did you mean 'probs'?"),
        ("train.device=gpu", "train.device has no value 'gpu', expected one of ['auto', 'cpu', 'cuda']"),
        ("data.mix=same-script", "did you mean 'same_script'?"),
    ],
)
def test_where_value_outside_a_fixed_vocabulary_is_bad_input(store, where, needle, capsys):
    """A typo in a value with a known vocabulary says so (exit 2) instead of matching no run."""
    from study.cli import main

    with pytest.raises(ConfigError) as info:
        best_runs(store, "study_a", where=where)
    assert f"--where {where!r}" in str(info.value) and needle in str(info.value)
    assert main(["best", "study_a", "--tracking-uri", store, "--where", where]) == 2
    assert needle in capsys.readouterr().err


def test_where_free_form_values_with_quotes_and_lists(store):
    """Free-form keys match any value: one holding a quote is quoted by naming.filter_literal
    (it broke MLflow's filter when put inside '...'), a list value keeps its commas."""
    assert names(best_runs(store, "study_a", where="data.cache_dir=/data/o'neil")) == ["t0"]
    assert names(best_runs(store, "study_a", where="data.cache_dir='/data/o'neil'")) == ["t0"]
    assert names(best_runs(store, "study_a", where="data.domains=[english, c]")) == ["t1"]
    assert names(best_runs(store, "study_a", where="router.lbl_coef=0.5")) == []
    assert translate_where("data.cache_dir=/data/o'neil") == 'params.`data.cache_dir` = "/data/o\'neil"'
    with pytest.raises(ConfigError, match="holds both kinds of quote"):
        best_runs(store, "study_a", where="""data.cache_dir=a'b"c""")


def test_translate_where_shorthand():
    assert translate_where("method=lbl") == "params.`router.method` = 'lbl'"
    # params are stored as str() of the typed value: 1 for a float key is '1.0'
    assert translate_where("router.capacity_factor=1") == "params.`router.capacity_factor` = '1.0'"
    assert translate_where("train.lr=1e-3") == "params.`train.lr` = '0.001'"
    assert translate_where("train.steps==300 and purity/layer1>=0.5") == (
        "params.`train.steps` = '300' and metrics.`purity/layer1` >= 0.5")
    assert translate_where("tags.`router.scope` = 'global_batch'") == "tags.`router.scope` = 'global_batch'"


@pytest.mark.parametrize(
    "where, needle",
    [
        ("methd=lbl", "'methd' is neither a trial-config key nor a metric; did you mean 'method'?"),
        ("train.lr>0.1", "compare train.lr with = or != only"),
        ("purity>high", "metric purity needs a number"),
        ("purity", "cannot read 'purity'"),
        ("params.x == = 'y'", "Invalid clause"),
    ],
)
def test_bad_filters_name_the_filter(store, where, needle):
    with pytest.raises(ConfigError) as info:
        best_runs(store, "study_a", where=where)
    message = str(info.value)
    assert f"--where {where!r}" in message and needle in message


def test_unknown_experiment_and_metric(store):
    with pytest.raises(ConfigError, match=r"experiment 'stduy_a' not found .*did you mean 'study_a'\?"):
        best_runs(store, "stduy_a")
    with pytest.raises(ConfigError, match=r"--by: unknown metric 'purty'; did you mean 'purity'\?"):
        best_runs(store, "study_a", by="purty")


def test_formats_parse_back(store):
    rows = best_runs(store, "study_a")
    parsed = json.loads(format_rows(rows, "json"))
    assert [r["trial"] for r in parsed] == names(rows)
    assert [r["gap_purity"] for r in parsed] == [r["gap_purity"] for r in rows]
    assert parsed[0]["max_vio"] is None

    table = list(csv.DictReader(io.StringIO(format_rows(rows, "csv"))))
    assert [r["trial"] for r in table] == names(rows)
    assert [float(r["gap_purity"]) for r in table] == [r["gap_purity"] for r in rows]
    assert table[0]["max_vio"] == "" and table[0]["run_id"] == rows[0]["run_id"]

    text = format_rows(rows, "table").splitlines()
    assert len(text) == len(rows) + 2  # header, rule, one line per run
    assert text[0].split()[:4] == ["run_id", "trial", "method", "scope"]
    assert text[2].split()[:4] == [rows[0]["run_id"], "t2", "eb", "global_batch"]
    assert format_rows([], "table") == "(no finished runs match)"
    assert json.loads(format_rows([], "json")) == []
    with pytest.raises(ConfigError, match="unknown format 'xml'"):
        format_rows(rows, "xml")


def test_cli_best(store, capsys):
    from study.cli import main

    args = ["best", "study_a", "--tracking-uri", store]
    assert main(args + ["--by", "purity", "--top", "3", "--format", "json"]) == 0
    assert [r["trial"] for r in json.loads(capsys.readouterr().out)] == ["t2", "t4", "t0"]
    assert main(args + ["--where", "method=eb", "--format", "csv"]) == 0
    assert [r["trial"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))] == ["t2", "t3"]
    assert main(args + ["--include-reference", "--top", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:3] == ["1", "0", "reference"]
    assert main(["best", "nothing_here", "--tracking-uri", store]) == 2
    assert "experiment 'nothing_here' not found" in capsys.readouterr().err
    assert main(args + ["--where", "methd=lbl"]) == 2
    assert "--where 'methd=lbl'" in capsys.readouterr().err


def _store_file(uri: str) -> Path:
    return Path(uri[len("sqlite:///"):])


def test_best_reads_the_store_without_writing_to_it(store):
    """No ANALYZE, no store opened for writing: the file's bytes stay as they were, on the
    MLflow-free path and through MlflowClient (a raw MLflow filter) alike."""
    import sqlite3

    path = _store_file(store)
    before = path.read_bytes()
    assert best_runs(store, "study_a", by="purity")
    assert best_runs(store, "study_a", by="purity", where="params.`router.method` = 'lbl'")
    assert path.read_bytes() == before
    assert {p.name for p in path.parent.iterdir()} == {path.name}  # no journal or WAL left
    with sqlite3.connect(path) as db:
        assert not db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'sqlite_stat%'").fetchall()


@pytest.mark.parametrize("command", ["best", "report"])
def test_a_mistyped_sqlite_store_is_no_such_store(tmp_path, command, capsys):
    from study.cli import main

    typo = tmp_path / "typo.db"
    hashed = tmp_path / "a#b" / "m.db"  # '#' once ended the file URI: a stray file 'a' appeared
    for uri in (f"sqlite:///{typo}", f"sqlite:///{hashed}"):
        assert main([command, "study_a", "--tracking-uri", uri]) == 2
        assert f"--tracking-uri {uri}: no such store" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created: no store, no stray file


def test_a_sqlite_file_that_is_no_mlflow_store_is_left_alone(tmp_path, capsys):
    import sqlite3

    from study.cli import main

    other = tmp_path / "notes.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text)")
    before = other.read_bytes()
    assert main(["best", "study_a", "--tracking-uri", f"sqlite:///{other}"]) == 2
    assert "is not an MLflow tracking store (no table experiments, runs" in capsys.readouterr().err
    assert other.read_bytes() == before


def test_a_store_under_a_path_with_a_hash_is_read_where_it_is(store, tmp_path):
    import shutil

    from study.results import fast_queries
    from study.results.queries import Query

    folder = tmp_path / "x#y?z"
    folder.mkdir()
    shutil.copy(_store_file(store), folder / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/x#y%3Fz/mlflow.db"  # '?' escaped, as SQLAlchemy reads a URI
    assert [r["trial"] for r in best_runs(uri, "study_a", by="purity", top=2)] == ["t2", "t4"]
    assert fast_queries.search(uri, Query("study_a", "purity", False, 2, False)) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x#y?z"]
    assert sorted(p.name for p in folder.iterdir()) == ["mlflow.db"]


@pytest.mark.parametrize("uri", ["sqlite", "http://127.0.0.1:9", "file:///nowhere/mlruns"])
def test_top_above_mlflow_limit_is_refused_on_every_store_kind(store, uri, capsys):
    from study.cli import main

    uri = store if uri == "sqlite" else uri
    assert main(["best", "study_a", "--top", "50001", "--tracking-uri", uri]) == 2
    assert "--top: at most 50,000, MLflow's limit for one search (got 50,001)" in capsys.readouterr().err


# -- the MLflow-free path answers exactly as MlflowClient does ---------------------------------
QUERIES = [
    {},
    {"top": 2},
    {"by": "purity"},
    {"by": "val_loss", "mode": "max"},
    {"where": "method=lbl"},
    {"where": "scope!=global_batch"},
    {"where": "router.lbl_coef=0.01"},
    {"where": "purity>0.5, load_entropy>=0.95"},
    {"include_reference": True},
    {"where": "router.lbl_coef=0.5"},  # a free-form value no run has: no rows
    {"where": "data.cache_dir=/data/o'neil"},  # a quote inside the value
    {"where": "data.domains=[english, c], purity>0.3"},  # a list value, with its comma
    {"include_stopped": True},
    {"include_stopped": True, "by": "purity", "where": "scope=micro_batch"},
]


@pytest.mark.parametrize("kwargs", QUERIES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_sqlite_fast_path_matches_mlflow_client(store, kwargs):
    from study.results import fast_queries
    from study.results.queries import Query, _best_runs_with_client, parse_where

    fast = best_runs(store, "study_a", **kwargs)
    clauses, raw = parse_where(kwargs["where"]) if "where" in kwargs else ([], None)
    by = kwargs.get("by", naming.GAP_PURITY)
    query = Query("study_a", by, (kwargs.get("mode") or naming.metric_mode(by)) == "min",
                  kwargs.get("top", 10), kwargs.get("include_reference", False), clauses, raw,
                  kwargs.get("include_stopped", False))
    assert fast_queries.search(store, query) is not None  # the fast path answered
    assert fast == _best_runs_with_client(store, query)


def test_fast_path_steps_aside_where_it_cannot_answer(store, tmp_path):
    from study.results import fast_queries
    from study.results.queries import Query

    q = Query("study_a", "purity", False, 5, False)
    assert fast_queries.search(store, Query("no_such_study", "purity", False, 5, False)) is None
    assert fast_queries.search(f"sqlite:///{tmp_path / 'missing.db'}", q) is None
    assert fast_queries.search("file:///somewhere", q) is None
    raw = Query("study_a", "purity", False, 5, False, raw_where="params.`router.method` = 'lbl'")
    assert fast_queries.search(store, raw) is None  # MLflow's filter grammar: MLflow parses it
    # ... and best_runs still answers those through MlflowClient
    assert [r["trial"] for r in best_runs(store, "study_a", by="purity", where="params.`router.method` = 'lbl'")] == ["t0", "t1"]


def test_cli_best_does_not_import_mlflow_for_a_sqlite_store(store):
    import subprocess
    import sys

    code = ("import sys; from study.cli import main; rc = main(['best', 'study_a', '--tracking-uri', "
            f"{store!r}]); assert 'mlflow' not in sys.modules, 'mlflow imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "t2" in done.stdout.splitlines()[2]  # best gap_purity first


def test_best_by_purity_lift(store):
    """``--by purity_lift``: descending (a lift is better when higher), over finished trials."""
    rows = best_runs(store, "study_a", by="purity_lift", top=10)
    lifts = {name: round(0.5 - p if m == "eb" else p - 0.5, 3)
             for name, m, _, _, _, p, status in TRIALS if status == "FINISHED"}
    expected = sorted(lifts, key=lambda n: -lifts[n])
    assert [r["trial"] for r in rows] == expected
    assert [r["purity_lift"] for r in rows] == pytest.approx(sorted(lifts.values(), reverse=True))


# -- the table a person reads ----------------------------------------------------------------------
WIDE_KEYS = ("router.method", "router.scope", "router.lbl_coef", "router.capacity_factor",
             "router.balance_window", "train.lr", "model.n_experts", "train.seed")


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory):
    """A study searching many keys, with long trial names and every summary metric logged."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = "sqlite:///" + str(tmp_path_factory.mktemp("wide") / "mlflow.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("wide")
    parent = client.create_run(exp, tags={naming.TAG_ROLE: naming.ROLE_STUDY,
                                          naming.TAG_SEARCH_KEYS: ",".join(WIDE_KEYS)}).info.run_id
    for i in range(4):
        params = {"router.method": "lbl", "router.scope": "window", "router.lbl_coef": 0.0123456789 * (i + 1),
                  "router.capacity_factor": 1.25, "router.balance_window": 8 * (i + 1),
                  "train.lr": 0.00312345, "model.n_experts": 16, "train.seed": i}
        run = client.create_run(exp, run_name=f"lbl-window{8 * (i + 1)}-cap1.25-s{i}-with-a-long-tail", tags={
            naming.TAG_PARENT_RUN: parent, naming.TAG_ROLE: naming.ROLE_TRIAL, naming.TAG_STOPPED_EARLY: "false"})
        metrics = {m: 0.123456789 + i / 7 for m in naming.SUMMARY_METRICS}
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 10) for k, v in metrics.items()],
                         params=[Param(k, str(v)) for k, v in params.items()])
        client.set_terminated(run.info.run_id)
    return uri


def test_best_table_is_ranked_and_fits_120_columns(wide_store, capsys):
    from study.cli import main

    rows = best_runs(wide_store, "wide")
    assert main(["best", "wide", "--tracking-uri", wide_store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 120, "\n".join(lines)
    header = lines[0].split()
    assert header[:6] == ["#", "gap_purity", "trial", "method", "scope", "seed"] and header[-1] == "run"
    assert "val_loss" in header and "lbl_coef" in header  # key metrics and searched params that fit
    body = [line.split() for line in lines[2:2 + len(rows)]]
    assert [b[0] for b in body] == ["1", "2", "3", "4"]
    assert [float(b[1]) for b in body] == pytest.approx([r["gap_purity"] for r in rows], abs=1e-4)
    assert [b[-1] for b in body] == [r["run_id"][:8] for r in rows]  # the run id, shortened, last
    assert [b[5] for b in body] == [r["seed"] for r in rows] == ["0", "1", "2", "3"]
    assert body[0][2].endswith("~") and len(body[0][2]) == 28  # a long trial name is cut
    # the columns left out are named, and json and csv keep every field
    footer = " ".join(lines[2 + len(rows):])
    assert footer.startswith("(") and "more columns in --format json or csv" in footer
    left_out = footer.split(": ", 1)[1].rstrip(")").split(", ")
    assert left_out and not set(left_out) & set(header)
    assert main(["best", "wide", "--tracking-uri", wide_store, "--format", "json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert set(left_out) <= set(parsed[0]) and len(parsed[0]["run_id"]) == 32
    assert set(naming.SUMMARY_METRICS) | set(WIDE_KEYS[2:-1]) <= set(parsed[0])
    assert main(["best", "wide", "--tracking-uri", wide_store, "--format", "csv"]) == 0
    assert next(csv.reader(io.StringIO(capsys.readouterr().out))) == list(parsed[0])
