"""Early stopping: the quick study under ASHA against the same study at full budget.

Runs ``search_spaces/quick.yaml`` twice with ``moe-study run`` into one MLflow store: as shipped
(FIFO: every trial trains all of ``train.steps``) and with the ASHA scheduler (trials whose
``gap_purity`` trails at a rung are stopped). Both studies see the same grid of configs and
seeds, and share the reference run. Reported from MLflow: the trial-steps each study spent (the
sum over trials of the last step each one reached) and the best ``gap_purity`` each found.

"Within noise" uses the seed-to-seed range of purity for one config at this size, 0.020
(three seeds, ``docs/calibration.md``): the two bests must differ by at most that.

    python bench/early_stopping.py [--grace-period 25] [--reduction-factor 3] [--workdir DIR] [--full-study NAME]

Trials evaluate at ASHA's rungs (25, 75, 225 steps with the defaults) besides every 75 steps, so
each judgement happens at the step it names (``StudySpec.asha_rungs``).

The last line is the headline: trial-steps saved and the difference of the bests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, run as a script
from common import format_table, load_average  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED_RANGE = 0.020
SAVING_TARGET = 0.5


def write_spec(workdir: Path, name: str, scheduler: dict) -> Path:
    spec = yaml.safe_load((REPO / "search_spaces" / "quick.yaml").read_text())
    spec["name"] = name
    spec["scheduler"] = scheduler
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_study(spec_path: Path, name: str, uri: str, workdir: Path) -> float:
    cmd = [sys.executable, "-m", "study.cli", "run", str(spec_path), "--name", name,
           "--tracking-uri", uri, "--storage", str(workdir / "ray")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if done.returncode:
        raise SystemExit(f"study {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def study_figures(uri: str, name: str, steps: int) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    trials = client.search_runs([exp.experiment_id], "tags.`moe_study.role` = 'trial'")
    # the step of a trial's last report (metrics are logged at the trial's step)
    reached = [max((m.step for m in client.get_metric_history(r.info.run_id, "val_loss")), default=0)
               for r in trials]
    full = [r for r, s in zip(trials, reached) if s >= steps]
    best = min(full, key=lambda r: r.data.metrics["gap_purity"])
    return {"trials": len(trials), "trial_steps": sum(reached), "full_length": len(full),
            "best": best.data.metrics["gap_purity"], "best_run": best.info.run_name,
            "best_config": f"{best.data.params.get('router.method')}/{best.data.params.get('router.scope')}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grace-period", type=int, default=25, help="ASHA: steps before a trial can stop")
    p.add_argument("--reduction-factor", type=float, default=3)
    p.add_argument("--workdir", default="/tmp/moe-bench-early-stopping")
    p.add_argument("--full-study", help="reuse this finished full-budget study from the workdir's store")
    args = p.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    stamp = int(time.time())
    asha = {"type": "asha", "grace_period": args.grace_period, "reduction_factor": args.reduction_factor}
    studies = {args.full_study or f"quick_full_{stamp}": {"type": "fifo"}, f"quick_asha_{stamp}": asha}
    steps = yaml.safe_load((REPO / "search_spaces" / "quick.yaml").read_text())["fixed"]["train"]["steps"]

    load_before = load_average()
    figures, walls = {}, {}
    for name, scheduler in studies.items():
        if name == args.full_study:
            walls[name] = float("nan")  # run earlier
        else:
            print(f"running {name} ({scheduler['type']}) ...", flush=True)
            walls[name] = run_study(write_spec(workdir, name, scheduler), name, uri, workdir)
        figures[name] = study_figures(uri, name, steps)
    full, early = (figures[n] for n in studies)
    print(f"\nload average {load_before} -> {load_average()}; ASHA grace period {args.grace_period}, "
          f"reduction factor {args.reduction_factor:g}\n")
    print(format_table(
        ["study", "trials", "ran all steps", "trial-steps", "wall s", "best gap_purity", "best trial"],
        [[n.rsplit("_", 1)[0], str(f["trials"]), str(f["full_length"]), str(f["trial_steps"]),
          f"{walls[n]:.0f}", f"{f['best']:.4f}", f"{f['best_run']} ({f['best_config']})"]
         for n, f in figures.items()]))
    saved = 1 - early["trial_steps"] / full["trial_steps"]
    diff = early["best"] - full["best"]
    print(f"\nheadline: ASHA spent {saved:.0%} fewer trial-steps (target >= {SAVING_TARGET:.0%}: "
          f"{'met' if saved >= SAVING_TARGET else 'missed'}); best gap_purity {early['best']:.4f} vs "
          f"{full['best']:.4f}, difference {diff:+.4f} (within noise if |d| <= {SEED_RANGE:.3f}: "
          f"{'yes' if abs(diff) <= SEED_RANGE else 'no'})")


if __name__ == "__main__":
    main()
