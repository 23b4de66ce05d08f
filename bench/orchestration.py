"""Per-trial overhead of the study platform (Ray Tune + Optuna + MLflow) against a direct call.

Trials of the quick study's size (``search_spaces/quick.yaml``: default model, 300 steps, one
thread) run twice:

- **direct**: ``trainables.training.run_to_end(cfg)`` in this process, one config after another;
- **platform**: the same configs as one ``moe-study run`` (a fresh process: imports, a local Ray
  cluster, Optuna's grid sampler, one trial at a time, checkpoints, the MLflow tracker on a
  sqlite store), timed from process start to exit.

Training time varies by several seconds between two runs of the same 90 s trial, far more than
the overhead sought, so the overhead is not a difference of wall times. Each trial reports its
own training time (``train_s``: first step to the final evaluation, less the time the caller
held the run at each report, i.e. checkpointing and reporting); the overhead is the wall
time minus the training time, per trial, for the platform, minus the same for the direct call
(which pays for loading the data and building the model too):

    overhead per trial = (platform wall - sum of platform train_s) / N
                         - mean(direct wall - direct train_s)

Starting the study (imports, Ray, the MLflow experiment) and shutting it down is paid once per
study, not per trial; the MLflow runs' start and end times (the tracker opens a trial's run when
Tune starts it and closes it when it completes) split it off:

    per trial = ((last run's end - first run's start) - sum of train_s) / N - direct extra
    once per study = wall - (last run's end - first run's start)

The logging share is the tracker's time in MLflow calls (it prints it at the study's end) over
the trials' training time.

    python bench/orchestration.py [--trials 3] [--steps 300] [--workdir /tmp/moe-bench-orch]

The last line is the headline: overhead per trial and logging share against the targets; the
once-per-study cost is printed above it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, run as a script
from common import format_table, load_average  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OVERHEAD_TARGET_S = 0.5
LOGGING_TARGET = 0.05


def study_spec(trials: int, steps: int) -> dict:
    """quick.yaml's trial, LBL at global scope, one grid point per seed, one trial at a time."""
    quick = yaml.safe_load((REPO / "search_spaces" / "quick.yaml").read_text())
    fixed = {**quick["fixed"], "router": {"method": "lbl", "scope": "global_batch"}}
    fixed["train"] = {**fixed["train"], "steps": steps}
    return {
        "name": "bench_orchestration",
        "fixed": fixed,
        "search": {"train.seed": {"choice": list(range(trials))}},
        "objective": {"metric": "purity", "mode": "max"},
        "sampler": {"type": "grid", "seed": 0},
        "scheduler": {"type": "fifo"},
        "resources": {"cpu": 1, "gpu": 0, "workers": 1, "max_concurrent": 1},
        "reference": {"enabled": False},
    }


def direct_trials(spec: dict) -> list[tuple[float, float]]:
    """(wall, train_s) of each config trained by a plain function call."""
    from study.spec import spec_from_dict
    from trainables.runtime import tune_allocator
    from trainables.training import run_to_end

    tune_allocator()  # what a trial does at start-up
    loaded = spec_from_dict(spec)
    out = []
    for seed in spec["search"]["train.seed"]["choice"]:
        cfg = loaded.trial_config({"train.seed": seed})
        t0 = time.perf_counter()
        report = run_to_end(cfg)
        out.append((time.perf_counter() - t0, float(report.metrics["train_s"])))
        print(f"  direct seed {seed}: {out[-1][0]:.1f} s wall, {out[-1][1]:.1f} s training", flush=True)
    return out


def platform_study(spec: dict, workdir: Path) -> tuple[float, float, list[float], int, float]:
    """Wall time of ``moe-study run``, the span from the first trial run's start to the last one's
    end, each trial's train_s, and the tracker's writes and seconds."""
    from mlflow import MlflowClient

    name = f"bench_orchestration_{int(time.time())}"
    spec_path = workdir / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "study.cli", "run", str(spec_path), "--name", name,
           "--tracking-uri", uri, "--storage", str(workdir / "ray")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"the study failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    m = re.search(r"tracking: (\d+) MLflow writes in ([0-9.]+) s", done.stdout + done.stderr)
    if not m:
        raise SystemExit("the study did not print its tracking summary")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`moe_study.role` = 'trial'")
    elapsed = [float(r.data.metrics["train_s"]) for r in runs]
    if len(elapsed) != len(spec["search"]["train.seed"]["choice"]):
        raise SystemExit(f"expected one MLflow run per trial, found {len(elapsed)}")
    span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    return wall, span, elapsed, int(m.group(1)), float(m.group(2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--steps", type=int, default=300, help="train.steps per trial (quick.yaml: 300)")
    p.add_argument("--workdir", default="/tmp/moe-bench-orch")
    args = p.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec = study_spec(args.trials, args.steps)

    load_before = load_average()
    print(f"direct: {args.trials} trials of {args.steps} steps", flush=True)
    direct = direct_trials(spec)
    print("platform: the same trials as one study", flush=True)
    wall, span, elapsed, writes, logging_s = platform_study(spec, workdir)
    n = args.trials

    direct_extra = sum(w - e for w, e in direct) / n
    platform_extra = (span - sum(elapsed)) / n
    overhead = platform_extra - direct_extra
    once = wall - span
    logging_share = logging_s / sum(elapsed)
    print(f"\nload average {load_before} -> {load_average()}\n")
    print(format_table(
        ["path", "wall s (all trials)", "training s", "outside training s / trial"],
        [["direct call", f"{sum(w for w, _ in direct):.1f}", f"{sum(e for _, e in direct):.1f}",
          f"{direct_extra:.2f}"],
         ["moe-study run, trials", f"{span:.1f}", f"{sum(elapsed):.1f}", f"{platform_extra:.2f}"],
         ["moe-study run, whole", f"{wall:.1f}", f"{sum(elapsed):.1f}", f"{(wall - sum(elapsed)) / n:.2f}"]]))
    print(f"\nonce per study (start-up, Ray, MLflow set-up, shut-down): {once:.1f} s")
    print(f"\ntracker: {writes} MLflow writes in {logging_s:.2f} s "
          f"({logging_s / max(writes, 1) * 1000:.1f} ms each)")
    print(f"\nheadline: platform overhead {overhead:.2f} s per trial (target <= {OVERHEAD_TARGET_S} s: "
          f"{'met' if overhead <= OVERHEAD_TARGET_S else 'missed'}); logging {logging_share:.1%} of "
          f"trial time (target <= {LOGGING_TARGET:.0%}: {'met' if logging_share <= LOGGING_TARGET else 'missed'})")


if __name__ == "__main__":
    main()
