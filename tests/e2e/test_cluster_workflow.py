"""docs/cluster.md, as far as one machine follows it.

The offline steps run as the page writes them: `python -m study.run.cluster_check` on the shipped
configs, and step 2's `sed` that fills in the placeholders followed by the `--require-edited`
check. Then the head: Ray's token made with `ray get-auth-token --generate` (step 2), Ray
started with the arguments of cluster.yaml's `head_start_ray_commands` (token authentication, the
dashboard on 127.0.0.1), and the `mlflow server` the head runs, bound to 127.0.0.1 as the config
binds it (sqlite and a local folder here instead of Postgres and S3; a local folder instead of
`s3://` as `MOE_STUDY_STORAGE`). A separate driver process submits the study the way step 5
does (`moe-study run SPEC --address ... --tracking-uri http://127.0.0.1:PORT --name ...`), and
the laptop side reads it back through the same tracking URI (`moe-study best`, `moe-study
report`). What differs from a real cluster and why is in docs/cluster.md ("What the tests run").
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study import naming
from study.results.cost import money_text
from tests.e2e.servers import MlflowServer, free_port
from tests.e2e.test_network_exposure import _environ, _name, is_loopback, listening_sockets, process_tree, socket_inodes
from tests.e2e.test_smoke_study import ROOT, SMOKE
from tests.study.test_cluster_config import _invocations, _option
from trainables.data.cache import default_cache_root

CLUSTER_YAML = ROOT / "cluster.yaml"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"
PER_CPU_HOUR = 0.05
STUDY = "cluster-smoke"


def doc_block(after: str) -> str:
    """The first ```bash block of docs/cluster.md after the line holding ``after``."""
    text = CLUSTER_DOC.read_text()
    start = text.index(after)
    match = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert match, f"no bash block after {after!r} in docs/cluster.md"
    return match.group(1)


def python_first_env(**extra: str) -> dict[str, str]:
    """The environment with this interpreter's folder first on PATH: the page's ``python`` and
    ``ray`` are the project's."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **extra}


# -- step 2 and the offline checks: run as the page writes them -----------------------------------
@pytest.mark.parametrize("config", ["cluster.yaml", "deploy/kuberay.yaml"])
def test_the_pages_offline_check_passes_the_shipped_configs(config):
    r = subprocess.run([sys.executable, "-m", "study.run.cluster_check", config], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_pages_fill_in_command_makes_a_copy_that_passes_require_edited(tmp_path):
    """Step 2's `sed ... > cluster.local.yaml` and the check after it, verbatim, on made-up
    values (the page's shell variables); the unfilled original fails the same check (exit 2)."""
    (tmp_path / "cluster.yaml").write_text(CLUSTER_YAML.read_text())
    block = doc_block("**Fill in the placeholders.**")
    assert "cluster.local.yaml" in block and "--require-edited" in block
    env = python_first_env(BUCKET="moe-study-test-bucket", AMI_ID="ami-0123456789abcdef0",
                           SG_ID="sg-0123456789abcdef0", REGION="eu-central-1",
                           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    filled = yaml.safe_load((tmp_path / "cluster.local.yaml").read_text())
    assert filled["provider"]["region"] == "eu-central-1"
    assert "EDIT_ME_" not in json.dumps(filled)  # (the comments still explain the placeholders)
    unfilled = subprocess.run([sys.executable, "-m", "study.run.cluster_check", "cluster.yaml", "--require-edited"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert unfilled.returncode == 2 and "EDIT_ME_BUCKET" in unfilled.stdout + unfilled.stderr


# -- the head, a driver, the laptop --------------------------------------------------------------
def head_ray_start_args() -> list[str]:
    """`ray start` of cluster.yaml's head_start_ray_commands, with RAY_AUTH_MODE=token on it."""
    commands = yaml.safe_load(CLUSTER_YAML.read_text())["head_start_ray_commands"]
    [line] = [c for c in commands if "ray start" in c]
    assert "RAY_AUTH_MODE=token ray start" in line
    [args] = _invocations([line], "ray", "start")
    return args


class Head:
    """Ray's head as cluster.yaml starts it, on this machine: `ray start --head --block` in a
    process group of its own (its GCS, raylet, dashboard and workers), stopped by that group, so
    that no other Ray on the machine is touched (the config's `ray stop` would stop every one)."""

    def __init__(self, home: Path, env: dict[str, str]):
        config_args = head_ray_start_args()
        assert "--head" in config_args and _option(config_args, "--dashboard-host") == "127.0.0.1"
        self.port = free_port()
        # Ray's files under a short folder of its own (unix socket paths are short): its
        # ray_current_cluster file then points no other `ray.init()` on the machine at this head
        self.temp_dir = tempfile.mkdtemp(prefix="rayh")
        one_machine = {
            "--port": self.port, "--object-manager-port": free_port(),
            # every other fixed port of Ray's defaults, free ones: other Rays may run here
            "--dashboard-port": free_port(), "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
        }
        args = [a for a in config_args
                if not a.startswith(("--autoscaling-config", *(f"{k}=" for k in one_machine)))]
        args += [f"{k}={v}" for k, v in one_machine.items()]
        # the head advertises 0 CPUs in cluster.yaml (trials go to GPU workers); with no worker
        # to join on one machine, it offers the CPUs a smoke trial needs
        args += ["--num-cpus=2", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                 "--disable-usage-stats", "--block"]
        self.log = open(home.parent / "ray-head.log", "w")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", *args],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.address = f"127.0.0.1:{self.port}"

    def wait_until_up(self, env: dict[str, str], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        probe = "import ray, sys; ray.init(address=sys.argv[1]); print(ray.cluster_resources().get('CPU'))"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()[-3000:]
            r = subprocess.run([sys.executable, "-c", probe, self.address], env=env,
                               capture_output=True, text=True, timeout=120)
            if r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "2.0":
                return
            time.sleep(3)
        raise AssertionError(f"the Ray head did not come up: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:  # what SIGTERM left (Ray's servers outlive `ray start` for a while)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()
        subprocess.run(["rm", "-rf", self.temp_dir], check=False)


def listeners(root_pid: int) -> list[tuple[str, str, str, int]]:
    """(process, protocol, address, port) of every socket the process tree listens on."""
    table = listening_sockets(root_pid)
    return [(_name(pid), *table[inode]) for pid in process_tree(root_pid) for inode in socket_inodes(pid) & table.keys()]


@pytest.mark.slow
def test_the_cluster_workflow_on_one_machine(tmp_path):
    home = tmp_path / "home"  # the head's home: its ~/.ray/auth_token
    home.mkdir()
    head_env = {**python_first_env(), "HOME": str(home), "PYTHONUNBUFFERED": "1",
                "MOE_STUDY_CACHE": str(default_cache_root()),  # the built data mix, not a new home's
                # ~/.moe_study_env of the head: token auth for Ray's clients, the study's storage
                # (a local folder for s3://<bucket>/tune) and the tracking server
                "RAY_AUTH_MODE": "token", "MOE_STUDY_STORAGE": str(tmp_path / "tune"),
                # one machine: keeps Ray's node on 127.0.0.1 (Ray 2.60 otherwise moves a node IP
                # of 127.0.0.1 to the machine's network address, every interface listening)
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    for leftover in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        head_env.pop(leftover, None)
    laptop_env = {k: v for k, v in head_env.items() if not k.startswith(("RAY_", "MOE_STUDY_STORAGE"))}
    laptop_env["HOME"] = os.environ.get("HOME", str(home))

    # step 2: the cluster's token, made once (the page's commands, verbatim)
    token_block = doc_block("**Ray's token.**")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", token_block], env=head_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    token_file = home / ".ray" / "auth_token"
    assert token_file.stat().st_mode & 0o777 == 0o600 and len(token_file.read_text().strip()) >= 32

    server = MlflowServer(tmp_path / "mlflow")
    head = None
    try:
        server.start()
        head_env["MLFLOW_TRACKING_URI"] = server.uri  # head_setup_commands
        head = Head(home, head_env)
        head.wait_until_up(head_env)

        # step 5, the driver on the head (here its own process, joining by address: `auto` could
        # find another Ray of this machine)
        run = subprocess.run(
            [sys.executable, "-m", "study.cli", "run", str(SMOKE), "--address", head.address,
             "--tracking-uri", server.uri, "--name", STUDY, "--set", f"cost.per_cpu_hour={PER_CPU_HOUR}"],
            cwd=tmp_path, env=head_env, capture_output=True, text=True, timeout=1200)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert (tmp_path / "tune" / STUDY / "study.json").exists()  # MOE_STUDY_STORAGE, as on S3

        # the head listens on loopback only, and its GCS and raylet demand the token
        ray_listeners = listeners(head.proc.pid)
        assert {"gcs_server", "raylet"} <= {name for name, *_ in ray_listeners}, ray_listeners
        assert not [s for s in ray_listeners if not is_loopback(ipaddress.ip_address(s[2]))], ray_listeners
        servers = {_name(pid): pid for pid in process_tree(head.proc.pid)}
        assert _environ(servers["gcs_server"]).get("RAY_AUTH_MODE") == "token"
        mlflow_listeners = listeners(server.proc.pid)
        assert mlflow_listeners and all(s[2] == "127.0.0.1" for s in mlflow_listeners), mlflow_listeners

        # the laptop, through the tunnel's address: best and report
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name(STUDY)
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        trials = [x for x in runs if x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_TRIAL]
        refs = [x for x in runs if x.data.tags.get(naming.TAG_ROLE) == naming.ROLE_REFERENCE]
        assert len(trials) == 4 and len(refs) == 1
        full = {t.info.run_id: t for t in trials if t.data.tags[naming.TAG_STOPPED_EARLY] == "false"}
        assert full, "ASHA stopped every smoke trial"

        best = subprocess.run(
            [sys.executable, "-m", "study.cli", "best", STUDY, "--tracking-uri", server.uri, "--show-cost",
             "--format", "json"], cwd=tmp_path, env=laptop_env, capture_output=True, text=True, timeout=600)
        assert best.returncode == 0, best.stderr
        rows = json.loads(best.stdout)
        assert {row["run_id"] for row in rows} == set(full)
        for row in rows:
            cpu_s = full[row["run_id"]].data.metrics[naming.COST_CPU_S]
            assert row["cpu_h"] == pytest.approx(cpu_s / 3600) and row["gpu_h"] == 0
            assert row["cost"] == pytest.approx(cpu_s / 3600 * PER_CPU_HOUR) and row["currency"] == "USD"
        table = subprocess.run(
            [sys.executable, "-m", "study.cli", "best", STUDY, "--tracking-uri", server.uri, "--show-cost"],
            cwd=tmp_path, env=laptop_env, capture_output=True, text=True, timeout=600)
        assert table.returncode == 0 and "CPU-h" in table.stdout and "USD" in table.stdout
        assert max(len(line) for line in table.stdout.splitlines()) <= 120

        report = subprocess.run(
            [sys.executable, "-m", "study.cli", "report", STUDY, "--tracking-uri", server.uri,
             "--out", str(tmp_path / "report")], cwd=tmp_path, env=laptop_env, capture_output=True,
            text=True, timeout=900)
        assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
        md = (tmp_path / "report" / "report.md").read_text()
        paid_s = sum(x.data.metrics[naming.COST_CPU_S] for x in [*trials, *refs])
        assert (f"- **Cost**: {paid_s / 3600:.2f} CPU-hours, "
                f"{money_text(paid_s / 3600 * PER_CPU_HOUR, 'USD')} over 5 runs") in md, md
        assert "5 run(s) per CPU- and GPU-hour" in md
        # the heatmaps' count tables came through the server's artifact proxy
        assert list((tmp_path / "report").glob("heatmaps_layer*.png"))
    finally:
        if head is not None:
            head.stop()
        server.stop()
