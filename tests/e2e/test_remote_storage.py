"""The cluster workflow's storage: MOE_STUDY_STORAGE set to a URI (s3://... on a cluster; here a
file:// URI, which takes the same path through pyarrow and Tune's storage_filesystem). The study
keeps its state and Tune's experiment there, and `moe-study resume` finds them there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

from study import naming

from tests.e2e.test_network_exposure import LOOPBACK_SPEC


def _moe_study(*args: str, cwd, storage: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOE_STUDY_STORAGE": storage, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "study.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_a_study_runs_and_resumes_on_storage_given_as_a_uri(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = f"file://{tmp_path}/bucket/tune"
    r = _moe_study("run", str(LOOPBACK_SPEC), "--tracking-uri", uri, cwd=tmp_path, storage=storage)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study_dir = tmp_path / "bucket" / "tune" / "loopback"
    state = json.loads((study_dir / "study.json").read_text())
    assert state["storage"] == storage
    assert list((study_dir / "search").glob("experiment_state-*.json"))
    assert not (tmp_path / "runs").exists()  # nothing fell back to the local default

    r = _moe_study("resume", "loopback", cwd=tmp_path, storage=storage)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 trials done, 0 failed" in r.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("loopback")
    trials = [x for x in client.search_runs([exp.experiment_id])
              if x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    # the Optuna copy: sqlite cannot live in an object store, so it is in this machine's folder
    # of the study (beside its lock), named on the parent run; the resume did not duplicate
    import optuna

    parent = next(x for x in client.search_runs([exp.experiment_id])
                  if x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_STUDY)
    url = parent.data.tags[naming.TAG_OPTUNA_STORAGE]
    assert url.startswith("sqlite:///") and "bucket" not in url and url.endswith("/loopback/optuna.db")
    copied = optuna.load_study(study_name=parent.data.tags[naming.TAG_OPTUNA_STUDY], storage=url).trials
    assert [t.user_attrs[naming.TAG_TRIAL_ID] for t in copied] == [trials[0].data.tags[naming.TAG_TRIAL_ID]]
