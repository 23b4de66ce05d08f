"""A study on S3 storage, end to end, against an S3-compatible server on loopback (moto's, from
PyPI: the test extra; no cloud account): `--storage 's3://bucket/tune?endpoint_override=...'`,
with MLflow's artifacts on the same bucket through an `mlflow server --artifacts-destination
s3://...`.

The driver is killed (SIGKILL, with its Ray processes) after its first trial; every checkpoint
on the bucket is renumbered, so those Tune's saved state names are gone; a new process resumes
the study with the same storage while the tracking server goes away before the end (the
undelivered writes are spooled to the bucket); a third resumes it, the storage from
MOE_STUDY_STORAGE, once the server is back; then it is reported. Everything the study keeps
(study.json, Tune's experiment and checkpoints, the spool, MLflow's artifacts) is read back from
the bucket through pyarrow's S3 filesystem, the one Tune uses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study import naming
from study.run.checkpoint_repair import CHECKPOINT_FILE, referenced_checkpoints
from tests.e2e.servers import MlflowServer

pytest.importorskip("boto3", reason="boto3 (the test extra) is not installed: the MLflow server cannot write to S3")

import pyarrow.fs as pafs  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
SPEC = HERE / "s3.yaml"
NAME = "s3study"
N_TRIALS = 5
STEPS = 20


def _start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study.cli", *args], cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, text=True,
        stdout=open(cwd / f"{args[0]}-{time.time():.0f}.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill reaches Ray's processes too
    )


def _logs(cwd: Path, what: str) -> str:
    return "\n".join(p.read_text() for p in sorted(cwd.glob(f"{what}-*.log")))


def _trial_runs(uri: str, status: str | None = None) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(NAME)
    if exp is None:
        return []
    f = f"tags.{naming.TAG_ROLE} = '{naming.ROLE_TRIAL}'"
    if status:
        f += f" AND attributes.status = '{status}'"
    return client.search_runs([exp.experiment_id], f, max_results=1000)


def _wait_finished(uri: str, n: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(_trial_runs(uri, "FINISHED")) < n:
        assert proc.poll() is None, "the study ended before the test could act"
        assert time.monotonic() < deadline, "timed out waiting for the study to make progress"
        time.sleep(0.5)


def _files(fs, base: str) -> list[str]:
    """Every object under ``base`` on the bucket, relative to it."""
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File)


def _renumber_checkpoints(fs, search: str) -> int:
    """Move every trial's ``checkpoint_N`` to ``checkpoint_N+1000`` (copy, then delete)."""
    infos = fs.get_file_info(pafs.FileSelector(search, recursive=True))
    folders = sorted(i.path for i in infos if i.type == pafs.FileType.Directory
                     and i.base_name.startswith("checkpoint_") and i.path.count("/") == search.count("/") + 2)
    for src in folders:
        head, n = src.rsplit("_", 1)
        dst = f"{head}_{int(n) + 1000:06d}"
        fs.create_dir(dst)
        pafs.copy_files(src, dst, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src)
    return len(folders)


def test_a_study_on_s3_is_killed_resumed_elsewhere_and_reported(tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket  # moto's server (tests/conftest.py)
    storage = f"s3://{bucket}/tune?endpoint_override={endpoint}&scheme=http"
    fs, base = pafs.FileSystem.from_uri(storage)
    study = f"{base}/{NAME}"
    server = MlflowServer(tmp_path / "mlflow", artifacts_destination=f"s3://{bucket}/mlflow").start()
    common = ["--tracking-uri", server.uri, "--storage", storage]
    procs = []
    try:
        # 1. run, killed with its Ray processes once a trial has finished
        run = _start(["run", str(SPEC), *common], tmp_path)
        procs.append(run)
        _wait_finished(server.uri, 1, run)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
        done_before = len(_trial_runs(server.uri, "FINISHED"))
        assert 1 <= done_before < N_TRIALS
        state = json.loads(fs.open_input_stream(f"{study}/study.json").read())
        assert state["name"] == NAME and state["storage"] == storage
        assert any(f.startswith("search/experiment_state-") for f in _files(fs, study))
        # Tune's saved state may name a checkpoint it deleted for a newer one before the kill
        # (ray-project/ray#27790): every checkpoint on the bucket gets a new number, so each
        # one the state names is gone; the resume puts the newest back (checkpoint_repair,
        # copying: S3 cannot rename a folder). Whether the state names one of an unfinished
        # trial depends on when Tune last saved it
        named = [p for status, p in referenced_checkpoints(f"{study}/search", fs)
                 if status in ("PENDING", "RUNNING", "PAUSED")]
        assert _renumber_checkpoints(fs, f"{study}/search") >= len(named)

        # 2. resumed by a new process; the tracking server goes away before the end, so the
        # writes it could not deliver are spooled to the bucket
        resumed = _start(["resume", NAME, "--storage", storage], tmp_path, MOE_STUDY_TRACKING_DRAIN_S="5")
        procs.append(resumed)
        _wait_finished(server.uri, done_before + 1, resumed)
        server.stop()  # at least two trials are left, one at a time: their writes are not delivered
        code = resumed.wait(timeout=900)
        log = _logs(tmp_path, "resume")
        assert code == 1 and f"moe-study resume {NAME}" in log, log[-4000:]
        assert "took over the study's lock from process" in log, log[-4000:]  # the killed driver's
        if named:
            assert "was gone (ray-project/ray#27790): resuming from checkpoint_001" in log, log[-4000:]
        assert "mlflow-spool.jsonl" in _files(fs, study), log[-4000:]
        spool = fs.open_input_stream(f"{study}/mlflow-spool.jsonl").read().decode().splitlines()
        assert spool and all(json.loads(line)["op"] for line in spool)

        # 3. the server is back: one more resume (the storage from MOE_STUDY_STORAGE this time)
        # delivers the spool and closes the study
        server.start()
        for p in tmp_path.glob("resume-*.log"):
            p.rename(p.with_suffix(".first"))
        again = _start(["resume", NAME], tmp_path, MOE_STUDY_STORAGE=storage)
        procs.append(again)
        assert again.wait(timeout=600) == 0, _logs(tmp_path, "resume")[-4000:]
        assert "delivered" in _logs(tmp_path, "resume")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=60)

    try:
        # MLflow: exactly the budget, each trial once, every step once, the study closed
        client = MlflowClient(server.uri)
        runs = _trial_runs(server.uri)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        ids = [r.data.tags[naming.TAG_TRIAL_ID] for r in finished]
        assert len(ids) == len(set(ids)) == N_TRIALS, [(r.info.status, r.data.tags.get(naming.TAG_TRIAL_ID))
                                                       for r in runs]
        # a trial Tune started after its last saved state is forgotten: closed KILLED, not left RUNNING
        assert all(r.info.status == "KILLED" for r in runs if r not in finished)
        for r in finished:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, naming.VAL_LOSS)]
            assert steps == sorted(set(steps)) and steps[-1] == STEPS, steps
        exp = client.get_experiment_by_name(NAME)
        parents = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
                   if r.data.tags.get(naming.TAG_ROLE) == naming.ROLE_STUDY]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"

        # S3: the study's state, Tune's experiment with every trial's last checkpoint, no spool
        files = _files(fs, study)
        assert "study.json" in files and "mlflow-spool.jsonl" not in files
        assert any(f.startswith("search/experiment_state-") for f in files)
        assert any(f.startswith("search/searcher-state-") for f in files)
        for trial_id in ids:
            ours = [f for f in files if f.startswith("search/") and f"_{trial_id}/" in f]
            assert any(f.endswith(f"/{CHECKPOINT_FILE}") for f in ours), (trial_id, ours)
            result = next(f for f in ours if f.endswith("/result.json"))
            lines = fs.open_input_stream(f"{study}/{result}").read().decode().splitlines()
            assert json.loads(lines[-1])["step"] == STEPS
        assert not (tmp_path / "runs").exists()  # nothing fell back to the local default
        # MLflow's artifacts (the spec, count tables, heatmaps) are on the bucket too
        artifacts = _files(fs, f"{bucket}/mlflow")
        assert sum(f.endswith(f"/{naming.COUNT_TABLE_FILE}") for f in artifacts) >= N_TRIALS, artifacts

        # the report reads the runs and their count tables (downloaded from S3 through MLflow)
        out = tmp_path / "report"
        r = subprocess.run([sys.executable, "-m", "study.cli", "report", NAME, "--out", str(out),
                            "--tracking-uri", server.uri], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert (out / "report.md").is_file() and (out / "heatmaps_layer0.png").is_file(), r.stdout[-3000:]
    finally:
        server.stop()
