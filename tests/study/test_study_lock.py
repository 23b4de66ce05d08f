"""One process per study (issue 16): ``run`` takes the study's folder and lock at the existence
check and holds them to the end; a second run, a second resume, or a resume while the study runs
exits 2 naming the process. Real processes hold the lock here; nothing starts Ray or MLflow."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from study.cli import main
from study.run.runner import read_state, resume_study, run_study
from study.run.study_lock import LOCK_FILE, acquire, hold_study_lock
from study.spec import spec_from_dict
from trainables.errors import ConfigError

from tests.study.test_spec import VALID

REPO = Path(__file__).resolve().parents[2]
HOLDER = (
    "import sys\n"
    "from study.run.study_lock import hold_study_lock\n"
    "with hold_study_lock(sys.argv[1], 'unit', 'moe-study run'):\n"
    "    print('held', flush=True)\n"
    "    sys.stdin.read()\n"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding study 'unit' in ``tmp_path/unit`` until it is told to stop."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "unit")], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_second_run_or_a_resume_of_a_running_study_exits_2_naming_the_process(tmp_path, holder, capsys):
    (tmp_path / "unit" / "study.json").write_text("{}")  # as the running study wrote it
    assert main(["resume", "unit", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"study 'unit' is in use by process {holder.pid} on host {socket.gethostname()} (moe-study run" in err
    (tmp_path / "unit" / "study.json").unlink()  # still building its data: no state yet
    unrunnable = spec_from_dict({**VALID, "resources": {"cpu": 100_000}})  # never starts Ray
    with pytest.raises(ConfigError, match=f"in use by process {holder.pid} "):
        run_study(unrunnable, tracking_uri=f"sqlite:///{tmp_path}/m.db", storage=str(tmp_path))
    assert not (tmp_path / "m.db").exists()  # refused before any work
    holder.stdin.close()  # the holder ends normally: its lock file goes with it
    assert holder.wait(timeout=60) == 0
    assert not (tmp_path / "unit").exists()  # it created the folder and left nothing in it
    with hold_study_lock(tmp_path / "unit", "unit", "moe-study run") as lock:
        assert lock.taken_over is None  # the name is free, with no note


def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over_with_a_note(tmp_path, holder, capsys):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    lock_file = tmp_path / "unit" / LOCK_FILE
    assert json.loads(lock_file.read_text())["pid"] == holder.pid  # left behind
    with hold_study_lock(tmp_path / "unit", "unit", "moe-study resume") as lock:
        assert lock.taken_over["pid"] == holder.pid
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert f"took over the study's lock from process {holder.pid} on host" in capsys.readouterr().out


def test_a_lock_file_from_another_host_is_not_taken_over(tmp_path):
    folder = tmp_path / "unit"
    folder.mkdir()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "moe-study run"}))
    with pytest.raises(ConfigError, match=f"in use by process 1 on host elsewhere .*delete {folder / LOCK_FILE}"):
        acquire(folder, "unit", "moe-study resume")


def test_a_run_that_fails_before_starting_leaves_no_folder(tmp_path):
    spec = spec_from_dict({**VALID, "resources": {"cpu": 100_000}})
    with pytest.raises(ConfigError, match="resources: a trial needs CPU 100000"):
        run_study(spec, tracking_uri=f"sqlite:///{tmp_path}/m.db", storage=str(tmp_path / "runs"))
    assert list((tmp_path / "runs").iterdir()) == []  # the name is free again


@pytest.mark.parametrize("content, needle", [
    ("{not json", "cannot be read (JSONDecodeError"),
    (b"\xff\xfe", "cannot be read (UnicodeDecodeError"),
    ("[1, 2]", "is not a JSON object"),
    ('{"name": "unit", "spec": {}}', "tracking_uri must be a str (got None)"),
    (json.dumps({"name": "other", "spec": {}, "tracking_uri": "x", "experiment_id": "1",
                 "parent_run_id": "r", "storage": "/s", "reference": None}), "it names study 'other', not 'unit'"),
])
def test_a_corrupt_study_json_on_resume_exits_2(tmp_path, capsys, content, needle):
    state = tmp_path / "unit" / "study.json"
    state.parent.mkdir()
    state.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["resume", "unit", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"NAME unit: the study state {state}" in err and needle in err, err
    assert "Traceback" not in err
    with pytest.raises(ConfigError):
        read_state(state, "unit")
    assert not (state.parent / LOCK_FILE).exists()  # released on the way out
