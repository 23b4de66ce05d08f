"""``moe-study studies`` (alias ``list``) over a real storage root and a real MLflow store, and
``resume`` of a mistyped name. No Ray: the studies are written as a run leaves them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from study import naming
from study.cli import main
from study.run.study_lock import acquire

# name -> (parent status, trial runs as (status, stopped early)) of studies in the store
STUDIES = {
    "quick": ("FINISHED", [("FINISHED", False), ("FINISHED", False), ("FINISHED", True), ("FAILED", False)]),
    "broken": ("FAILED", [("FAILED", False)]),
    "stopped": ("KILLED", [("FINISHED", False), ("KILLED", True)]),
    "crashed": ("RUNNING", [("FINISHED", False), ("RUNNING", False)]),  # a driver killed hard
    "live": ("RUNNING", [("FINISHED", True), ("RUNNING", False), ("RUNNING", False)]),
}


def write_state(root: Path, name: str, uri: str, experiment_id: str = "0", parent: str = "0" * 32) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "study.json").write_text(json.dumps({
        "name": name, "spec": {"name": name}, "tracking_uri": uri, "experiment_id": experiment_id,
        "parent_run_id": parent, "storage": str(root), "reference": None}))


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    base = tmp_path_factory.mktemp("studies")
    root, uri = base / "runs", f"sqlite:///{base / 'mlflow.db'}"
    client = MlflowClient(uri)
    for name, (status, trials) in STUDIES.items():
        exp = client.create_experiment(name)
        parent = client.create_run(exp, tags={naming.TAG_ROLE: naming.ROLE_STUDY}).info.run_id
        for trial_status, stopped in trials:
            run = client.create_run(exp, tags={naming.TAG_PARENT_RUN: parent, naming.TAG_ROLE: naming.ROLE_TRIAL,
                                               naming.TAG_STOPPED_EARLY: str(stopped).lower()})
            if trial_status != "RUNNING":
                client.set_terminated(run.info.run_id, status=trial_status)
        client.create_run(exp, tags={naming.TAG_PARENT_RUN: parent, naming.TAG_ROLE: naming.ROLE_REFERENCE})
        if status != "RUNNING":
            client.set_terminated(parent, status=status)
        write_state(root, name, uri, exp, parent)
    # a study whose trial runs are gone: the counts its end logged on the parent
    exp = client.create_experiment("pruned")
    parent = client.create_run(exp, tags={naming.TAG_ROLE: naming.ROLE_STUDY}).info.run_id
    client.log_batch(parent, metrics=[Metric("trials_finished", 6.0, 0, 0), Metric("trials_stopped_early", 2.0, 0, 0),
                                      Metric("trials_failed", 1.0, 0, 0)])
    client.set_terminated(parent)
    write_state(root, "pruned", uri, exp, parent)
    # studies whose store cannot answer
    write_state(root, "moved", f"sqlite:///{base / 'gone' / 'mlflow.db'}")
    write_state(root, "remote", "http://127.0.0.1:9")
    write_state(root, "orphan", uri, "0", "f" * 32)
    (root / "garbled").mkdir()
    (root / "garbled" / "study.json").write_text("{not json")
    (root / "empty").mkdir()  # no study.json, no lock: not a study
    return root, uri


def rows_of(capsys, *args) -> dict[str, dict]:
    assert main(["studies", *args, "--format", "json"]) == 0
    return {r["study"]: r for r in json.loads(capsys.readouterr().out)}


def counts(row):
    return (row["trials_finished"], row["trials_stopped_early"], row["trials_failed"], row["trials_running"])


def test_states_and_trial_counts_from_the_lock_and_mlflow(storage, capsys):
    root, uri = storage
    lock = acquire(root / "live", "live", "moe-study run")  # the study's driver, alive
    try:
        rows = rows_of(capsys, "--storage", str(root))
    finally:
        lock.release()
    assert sorted(rows) == sorted([*STUDIES, "pruned", "moved", "remote", "orphan", "garbled"])  # not "empty"
    assert {n: rows[n]["state"] for n in STUDIES} == {
        "quick": "finished", "broken": "failed", "stopped": "interrupted", "crashed": "interrupted", "live": "running"}
    assert counts(rows["quick"]) == (2, 1, 1, 0)  # the reference run is no trial
    assert counts(rows["stopped"]) == (1, 0, 0, 0)  # a trial cut by the interrupt counts in none
    assert counts(rows["live"]) == (0, 1, 0, 2)
    assert rows["live"]["held_by"].startswith("process ") and "moe-study run" in rows["live"]["held_by"]
    assert "moe-study resume crashed" in rows["crashed"]["note"]
    assert counts(rows["pruned"]) == (6, 2, 1, None) and rows["pruned"]["state"] == "finished"
    assert rows["quick"]["tracking_uri"] == uri and rows["quick"]["mlflow_status"] == "FINISHED"
    # the lock released: the study's driver is gone, MLflow still says RUNNING
    assert rows_of(capsys, "--storage", str(root))["live"]["state"] == "interrupted"


def test_a_store_that_cannot_answer_is_unknown_and_never_created(storage, capsys):
    root, uri = storage
    rows = rows_of(capsys, "--storage", str(root))
    assert rows["moved"]["state"] == "unknown" and rows["moved"]["note"].startswith("store missing")
    assert not (root.parent / "gone").exists()  # no sqlite store made
    assert (rows["remote"]["state"], rows["remote"]["note"]) == ("unknown", "tracking server unreachable")
    assert rows["orphan"]["state"] == "unknown" and "not in the store" in rows["orphan"]["note"]
    assert rows["garbled"]["state"] == "unknown" and rows["garbled"]["note"].startswith("study.json unreadable")
    assert counts(rows["moved"]) == (None, None, None, None)


def test_listing_reads_only(storage, capsys):
    root, uri = storage
    db = Path(uri[len("sqlite:///"):])
    before = db.read_bytes(), sorted(p.name for p in db.parent.iterdir()), sorted(p.name for p in root.rglob("*"))
    rows_of(capsys, "--storage", str(root))
    assert (db.read_bytes(), sorted(p.name for p in db.parent.iterdir()),
            sorted(p.name for p in root.rglob("*"))) == before


def test_table_csv_alias_and_default_storage(storage, capsys, monkeypatch):
    root, uri = storage
    monkeypatch.setenv("MOE_STUDY_STORAGE", str(root))
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["study", "state", "finished", "stopped", "failed", "running", "tracking", "note"]
    quick = next(line.split() for line in lines if line.startswith("quick "))
    assert quick[:7] == ["quick", "finished", "2", "1", "1", "0", uri]
    assert main(["studies", "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["study"]: r["state"] for r in table}["broken"] == "failed"
    assert "parent_run_id" in table[0] and "experiment_id" in table[0]  # every field


def test_a_storage_uri_is_listed_too(storage, capsys):
    root, _ = storage
    rows = rows_of(capsys, "--storage", root.as_uri())  # file:///...: through pyarrow
    assert rows["quick"]["state"] == "finished" and counts(rows["quick"]) == (2, 1, 1, 0)


def test_a_missing_storage_root_is_bad_input(tmp_path, capsys):
    assert main(["studies", "--storage", str(tmp_path / "nowhere")]) == 2
    assert f"--storage {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "runs").mkdir()
    assert main(["studies", "--storage", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.strip() == "(no studies)"
    assert main(["studies", "--storage", str(tmp_path / "runs"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_resume_of_a_mistyped_name_suggests_a_stored_study(storage, tmp_path, capsys):
    root, _ = storage
    assert main(["resume", "quik", "--storage", str(root)]) == 2
    err = capsys.readouterr().err
    assert "NAME quik: no study of that name" in err and "did you mean 'quick'?" in err
    assert not (root / "quik").exists()
    assert main(["resume", "zzz", "--storage", str(root)]) == 2
    assert "the studies there: broken, crashed, garbled, live, moved, orphan, pruned, quick" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    assert main(["resume", "quick", "--storage", str(tmp_path / "bare")]) == 2
    assert "no study is stored there" in capsys.readouterr().err


def test_listing_a_sqlite_store_imports_neither_mlflow_nor_ray(storage):
    import subprocess
    import sys

    root, _ = storage
    code = ("import sys; from study.cli import main; rc = main(['studies', '--storage', "
            f"{str(root)!r}]); heavy = [m for m in ('mlflow', 'ray', 'torch') if m in sys.modules]; "
            "assert not heavy, heavy; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert any(line.startswith("quick ") and " finished " in line for line in done.stdout.splitlines())


def test_a_stale_lock_file_is_not_running(storage, capsys):
    """A lock file left by a killed driver (no process holds its flock) does not make a study
    running, and the probe leaves the file as it was."""
    import socket

    root, _ = storage
    stale = root / "crashed" / "study.lock"
    stale.write_text(json.dumps({"pid": 2**22 + 7, "host": socket.gethostname(), "command": "moe-study run"}))
    try:
        before = stale.read_bytes()
        assert rows_of(capsys, "--storage", str(root))["crashed"]["state"] == "interrupted"
        assert stale.read_bytes() == before
    finally:
        stale.unlink()
