"""Study efficiency: how much of the machine a whole study spends training, and where the rest goes.

Runs ``moe-study run`` on a spec (default ``search_spaces/quick.yaml``, the README's main job) in a
fresh process with its own MLflow sqlite store, times it from process start to exit, and reads
every trial's and the reference's MLflow run back. The **study efficiency** is

    sum over runs of (optimizer-step seconds x CPUs held) / (cores x wall seconds)

where a run's optimizer-step seconds are its ``train_s`` less its periodic evaluations
(``eval_s``). The cores x wall core-seconds are split, from one run, into:

- in the runs, from their metrics: optimizer steps; evaluations at reports (``eval_s``); the
  step-0 evaluation (``init_eval_s``); reporting and checkpoints (``elapsed_s - train_s``);
  setting up (data, model, restore: ``trial_wall_s - elapsed_s - init_eval_s``); Ray starting and
  stopping the trial (the MLflow run's open span less ``trial_wall_s``);
- idle cores, from the MLflow runs' start and end times laid on the study's timeline: before
  the first run (imports, Ray, MLflow, the data mix), while the reference ran alone, between
  runs (scheduling), the tail (after the last run started, fewer runs than cores), after the
  last run (closing, the summary).

``--compare`` runs the spec twice in one invocation, with the reference run first and beside the
search (``study.run.reference``), and prints both and their ratio. Reference first is forced by
a constraint on a gap that every trial meets (``gap_loss <= 1e9``): with a grid sampler and a
FIFO scheduler the trials are the same; the constraint only makes the trials need the reference.

``--before CHECKOUT`` runs it first with the code of another checkout (a ``git worktree`` of an
older commit), then with this one: the before / after of a change, from one invocation.

    python bench/study.py [--spec search_spaces/quick.yaml] [--set train.steps=150]
                          [--compare | --before CHECKOUT] [--workdir /tmp/moe-bench-study]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, run as a script
from common import format_table, load_average  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EFFICIENCY_TARGET = 0.9
FORCE_REFERENCE_FIRST = "objective.constraints.gap_loss.max=1e9"


@dataclass
class RunTimes:
    """One trial's (or the reference's) MLflow run: when it was open and what it reported."""

    role: str
    start_s: float  # on the study's clock: seconds since the driver process started
    end_s: float
    cpus: float
    train_s: float
    eval_s: float
    init_eval_s: float
    elapsed_s: float
    trial_wall_s: float


IN_RUN = ("optimizer steps", "evaluations at reports", "step-0 evaluation", "reporting and checkpoints",
          "setting up (data, model)", "Ray starting and stopping the trial")
IDLE = ("idle: before the first run", "idle: reference alone", "idle: between runs", "idle: tail",
        "idle: after the last run")


def account(runs: list[RunTimes], wall_s: float, cores: float) -> dict[str, float]:
    """Core-seconds of a study by where they went (keys ``IN_RUN + IDLE``); they sum to
    ``cores x wall_s`` when no two runs together held more than ``cores``."""
    out = dict.fromkeys(IN_RUN + IDLE, 0.0)
    for r in runs:
        steps = r.train_s - r.eval_s
        parts = (steps, r.eval_s, r.init_eval_s, r.elapsed_s - r.train_s,
                 r.trial_wall_s - r.elapsed_s - r.init_eval_s, (r.end_s - r.start_s) - r.trial_wall_s)
        for name, seconds in zip(IN_RUN, parts):
            out[name] += seconds * r.cpus
    # idle cores: walk the timeline between consecutive run starts and ends
    edges = sorted({0.0, wall_s, *(r.start_s for r in runs), *(r.end_s for r in runs)})
    first_start = min(r.start_s for r in runs)
    last_start = max(r.start_s for r in runs)
    last_end = max(r.end_s for r in runs)
    for a, b in zip(edges, edges[1:]):
        open_runs = [r for r in runs if r.start_s <= a and r.end_s >= b]
        idle = max(0.0, cores - sum(r.cpus for r in open_runs)) * (b - a)
        if b <= first_start:
            out["idle: before the first run"] += idle
        elif a >= last_end:
            out["idle: after the last run"] += idle
        elif open_runs and all(r.role == "reference" for r in open_runs) and a < last_start:
            out["idle: reference alone"] += idle
        elif a >= last_start:
            out["idle: tail"] += idle
        else:
            out["idle: between runs"] += idle
    return out


def run_study(spec: Path, sets: list[str], workdir: Path, name: str,
              code: Path = REPO) -> tuple[float, list[RunTimes]]:
    """Run the study in a fresh process with the code of checkout ``code``: its wall seconds and
    its runs on the study's clock."""
    from mlflow import MlflowClient

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "study.cli", "run", str(spec), "--name", name, "--tracking-uri", uri,
           "--storage", str(workdir / "runs"), *(a for s in sets for a in ("--set", s))]
    started_ms = time.time() * 1000
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(code)}  # Ray's workers inherit it: trials run that code too
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env)
    wall = time.perf_counter() - t0
    (workdir / "study.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"the study failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    found = client.search_runs([exp.experiment_id], "tags.`moe_study.role` != 'study'", max_results=10_000)
    runs = []
    for r in found:
        m = r.data.metrics
        runs.append(RunTimes(
            role=r.data.tags["moe_study.role"], start_s=(r.info.start_time - started_ms) / 1000,
            end_s=(r.info.end_time - started_ms) / 1000,
            cpus=float(m["cost/cpu_s"]) / max(float(m["trial_wall_s"]), 1e-9),
            train_s=m["train_s"], eval_s=m.get("eval_s", 0.0), init_eval_s=m["init_eval_s"],
            elapsed_s=m["elapsed_s"], trial_wall_s=m["trial_wall_s"]))
    return wall, runs


def summary(label: str, wall: float, runs: list[RunTimes], cores: float) -> dict[str, float]:
    parts = account(runs, wall, cores)
    total = cores * wall
    print(f"\n{label}: {len(runs)} runs ({sum(r.role == 'reference' for r in runs)} reference), "
          f"wall {wall:.0f} s, {cores:g} cores = {total:.0f} core-s")
    rows = [[name, f"{seconds:.0f}", f"{seconds / total:.3f}"] for name, seconds in parts.items()]
    rows.append(["(unaccounted: runs holding more than the cores)", f"{total - sum(parts.values()):.0f}",
                 f"{(total - sum(parts.values())) / total:.3f}"])
    print(format_table(["where the core-seconds went", "core-s", "share"], rows))
    efficiency = parts["optimizer steps"] / total
    print(f"{label}: study efficiency {efficiency:.3f} (target {EFFICIENCY_TARGET}); with the "
          f"evaluations {(parts['optimizer steps'] + parts['evaluations at reports']) / total:.3f}")
    return {"wall": wall, "efficiency": efficiency}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(REPO / "search_spaces" / "quick.yaml"))
    p.add_argument("--set", dest="sets", action="append", default=[], help="moe-study run --set, repeatable")
    pair = p.add_mutually_exclusive_group()
    pair.add_argument("--compare", action="store_true", help="reference first vs beside the search, one run each")
    pair.add_argument("--before", metavar="CHECKOUT", type=Path,
                   help="first run the spec with the code of this checkout (git worktree add ... OLD), then "
                        "with this one, and print after / before")
    p.add_argument("--cores", type=float, default=float(os.cpu_count() or 1),
                   help="CPUs the study's local Ray holds (default: this machine's)")
    p.add_argument("--workdir", default="/tmp/moe-bench-study")
    args = p.parse_args()
    workdir = Path(args.workdir)
    print(f"load average before: {load_average()}", flush=True)
    modes = {"beside": ([], REPO)}
    if args.compare:
        modes = {"reference first": ([FORCE_REFERENCE_FIRST], REPO), "beside": ([], REPO)}
    if args.before:
        modes = {"before": ([], args.before.resolve()), "after": ([], REPO)}
    results = {}
    for label, (extra, code) in modes.items():
        print(f"running {Path(args.spec).name} ({label}, code in {code}) ...", flush=True)
        wall, runs = run_study(Path(args.spec), [*args.sets, *extra], workdir / label.replace(" ", "_"),
                               f"bench_study_{label.replace(' ', '_')}", code)
        results[label] = summary(label, wall, runs, args.cores)
    print(f"load average after: {load_average()}")
    if len(results) == 2:
        (a_label, a), (b_label, b) = results.items()
        print(f"{b_label} / {a_label}: wall {b['wall'] / a['wall']:.3f}, "
              f"efficiency {b['efficiency'] / a['efficiency']:.3f}")


if __name__ == "__main__":
    main()
