"""Does a router learn specialisation its own step-0 router did not have? Positive and negative
controls for the token-controlled metrics.

Each named arm (a trial config from configs/ plus --set style overrides) trains for several
seeds, one process per trial at one thread (as study trials run), evaluated at log-spaced steps
(1, 2, 4, ... and the last). Printed, per arm: the final lift over the same seed's step-0 router
of ``cmi``, ``shared_purity`` and ``purity`` (last layer and mean over layers), each as the mean
and 95 % t-interval over seeds (a lift is already paired: each seed against its own step 0), and
the number of seeds with a positive lift. The curves go to a PNG (``--figure``).

    python bench/learning_control.py [--seeds 3] [--jobs 2] [--figure docs/learning_control.png]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from study.results.stats import mean_ci  # noqa: E402

ARMS = {
    # LBL 0.05 at the global batch: the example config (calibration: the last layer's plug-in
    # CMI rose above the untrained twin's on 3 of 3 seeds)
    "lbl-global": ("configs/lbl.yaml", {"router.scope": "global_batch", "data.step_composition": "independent"}),
    # the same at micro-batch scope with a strong coefficient: balancing each one-domain
    # micro-batch forces every domain across all experts
    "lbl-micro-0.1": ("configs/lbl.yaml", {"router.scope": "micro_batch", "router.lbl_coef": 0.1,
                                           "data.step_composition": "independent"}),
    # global-batch LBL with every step holding each domain equally (data.step_composition)
    "lbl-global-complete": ("configs/lbl.yaml", {"router.scope": "global_batch",
                                                 "data.step_composition": "domain_complete"}),
    # the scope comparison at equal coefficient, domain-complete steps
    "lbl-micro-complete": ("configs/lbl.yaml", {"router.scope": "micro_batch",
                                                "data.step_composition": "domain_complete"}),
    "lbl-micro-0.1-complete": ("configs/lbl.yaml", {"router.scope": "micro_batch", "router.lbl_coef": 0.1,
                                                    "data.step_composition": "domain_complete"}),
    # no balancing at all (calibration: the last layer's CMI rose most, but experts die)
    "none": ("configs/lbl.yaml", {"router.method": "none", "data.step_composition": "independent"}),
}
METRICS = ("cmi", "shared_purity", "purity")


def log_steps(total: int) -> list[int]:
    steps, s = [], 1
    while s < total:
        steps.append(s)
        s *= 2
    return steps + [total]


def run_trial(job: tuple[str, str, dict, int]) -> dict:
    name, config, overrides, seed = job
    import torch

    from study.spec import load_trial_config
    from trainables.training import train

    torch.set_num_threads(1)
    sets = [f"{k}={json.dumps(v)}" for k, v in {**overrides, "train.seed": seed, "train.threads": 1}.items()]
    cfg = load_trial_config(str(ROOT / config), sets)
    t0 = time.perf_counter()
    kept = {*METRICS, *(f"{x}_lift" for x in METRICS)}
    curve = [{"step": report.step, **{k: v for k, v in report.metrics.items() if k.split("/")[0] in kept}}
             for report in train(cfg, extra_eval_steps=log_steps(cfg.train.steps))]
    return {"arm": name, "seed": seed, "curve": curve, "seconds": time.perf_counter() - t0,
            "steps": cfg.train.steps, "layers": cfg.model.n_layers}


def interval(values: list[float]) -> str:
    e = mean_ci(values)
    if e.half_width is None:
        return f"{e.mean:+.4f} (n=1)"
    return f"{e.mean:+.4f} [{e.low:+.4f}, {e.high:+.4f}]"


def summary(results: list[dict]) -> str:
    rows = ["| arm | metric | layer | lift over step 0 (mean, 95% CI over seeds) | seeds > 0 | step-0 value |",
            "|---|---|---|---|---|---|"]
    for arm in dict.fromkeys(r["arm"] for r in results):
        mine = [r for r in results if r["arm"] == arm]
        last = mine[0]["layers"] - 1
        for metric in METRICS:
            for suffix, label in ((f"/layer{last}", f"{last} (last)"), ("", "mean")):
                lifts = [r["curve"][-1][f"{metric}_lift{suffix}"] for r in mine]
                inits = [r["curve"][-1][f"{metric}{suffix}"] - r["curve"][-1][f"{metric}_lift{suffix}"] for r in mine]
                rows.append(f"| {arm} | `{metric}` | {label} | {interval(lifts)} | "
                            f"{sum(v > 0 for v in lifts)} of {len(lifts)} | {np.mean(inits):.4f} |")
    return "\n".join(rows)


def paired_summary(results: list[dict], versus: str) -> str:
    """Each other arm minus ``versus``, seed by seed, on the last layer's lifts."""
    from study.results.paired_stats import paired_difference

    rows = [f"paired over shared seeds, arm - {versus}, last layer:",
            "| arm | metric | difference (mean, 95% CI) | seeds agreeing | p |", "|---|---|---|---|---|"]
    for arm in dict.fromkeys(r["arm"] for r in results if r["arm"] != versus):
        for metric in METRICS:
            def final(name: str) -> dict[int, float]:
                return {r["seed"]: r["curve"][-1][f"{metric}_lift/layer{r['layers'] - 1}"]
                        for r in results if r["arm"] == name}
            d = paired_difference(final(arm), final(versus))
            if d is None:
                continue
            e = d.estimate
            rows.append(f"| {arm} | `{metric}_lift` | {e.mean:+.4f} [{e.low:+.4f}, {e.high:+.4f}] | "
                        f"{d.agree} of {e.n} | {d.p_value:.3f} |")
    return "\n".join(rows)


def figure(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in results))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 3.6))
    for ax, metric in zip(axes, METRICS):
        for i, arm in enumerate(arms):
            for r in (r for r in results if r["arm"] == arm):
                last = r["layers"] - 1
                steps = [0] + [p["step"] for p in r["curve"]]
                key = f"{metric}_lift/layer{last}"
                values = [0.0] + [p[key] for p in r["curve"]]
                ax.plot(steps, values, color=f"C{i}", alpha=0.8, label=arm if r["seed"] == 0 else None)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.set_xlabel("optimizer step (log)")
        ax.set_title(f"{metric} lift over step 0, last layer")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every arm, e.g. --set train.steps=600")
    parser.add_argument("--figure", default="")
    parser.add_argument("--json", default="", help="write every curve here")
    parser.add_argument("--replot", default="", metavar="JSON",
                        help="train nothing: summarise and draw the curves a --json run saved")
    parser.add_argument("--versus", default="", metavar="ARM",
                        help="also print every other arm minus this one, paired by seed")
    args = parser.parse_args()
    if args.replot:
        results = json.loads(Path(args.replot).read_text())
        report(results, args)
        return
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sets)}
    jobs = [(arm, ARMS[arm][0], {**ARMS[arm][1], **extra}, seed)
            for arm in args.arms for seed in range(args.first_seed, args.first_seed + args.seeds)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(run_trial, jobs)
    print(f"{len(jobs)} trials, {time.perf_counter() - t0:.0f} s wall, per trial "
          f"{min(r['seconds'] for r in results):.0f}-{max(r['seconds'] for r in results):.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    report(results, args)


def report(results: list[dict], args: argparse.Namespace) -> None:
    print(summary(results))
    if args.versus:
        print(paired_summary(results, args.versus))
    if args.figure:
        figure(results, Path(args.figure))


if __name__ == "__main__":
    main()
