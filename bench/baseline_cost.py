"""What the step-0 baseline and the token-controlled metrics cost a trial.

Every trial now evaluates once more, before its first update, and every evaluation computes the
token-controlled metrics (counts by byte and by sequence, CMI, shared-token purity, the
200-shuffle null of excess purity). This measures, in one process on the trial config (TrialConfig
defaults plus any --set) and interleaved: one optimizer step, one evaluation, and the metric
computation alone on that evaluation's counts. It reports the baseline's share of a whole trial
(``train.steps`` steps and ``steps / eval_every`` evaluations) and the metrics' share of an
evaluation.

    python bench/baseline_cost.py [--repeats 5] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, run as a script
from common import add_process_args, format_table, load_average, medians, setup_from_args, time_interleaved  # noqa: E402

from trainables.config import TrialConfig  # noqa: E402
from trainables.data import StepSampler, build_mix, eval_batches  # noqa: E402
from trainables.model import MoETransformer  # noqa: E402
from trainables.routers import runs_whole_step_forward  # noqa: E402
from trainables.specialisation import specialisation_metrics  # noqa: E402
from trainables.training import apply_update, build_optimizer, evaluate, forward_backward  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    add_process_args(parser)
    args = parser.parse_args()
    args.threads = args.threads or 1  # how study trials run (resources.cpu: 1)
    print(setup_from_args(args))
    cfg = TrialConfig.from_flat({k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sets)})
    device = torch.device("cpu")
    mix = build_mix(cfg.data)
    model = MoETransformer(cfg)
    optimizer = build_optimizer(model, cfg)
    sampler = StepSampler(mix, cfg, seed=0)
    batches = eval_batches(mix, cfg)
    whole = runs_whole_step_forward(cfg)

    def step() -> None:
        forward_backward(model, sampler.next_step(), device, whole)
        apply_update(model, optimizer, cfg.train.grad_clip)
        model.post_step()

    def one_evaluation() -> None:
        evaluate(model, batches, cfg, mix.domains, device)

    # the counts of one evaluation, to time the metric computation on its own
    raw = evaluate(model, batches, cfg, mix.domains, device)[2]

    def metrics_only() -> None:
        specialisation_metrics(raw.n_LXED, raw.n_LQE, raw.domain_Q)

    times = time_interleaved({"step": step, "evaluation": one_evaluation, "metrics": metrics_only},
                             repeats=args.repeats, clock=args.clock)
    med = medians(times)
    evals = cfg.train.steps // cfg.train.eval_every + (cfg.train.steps % cfg.train.eval_every > 0)
    trial = cfg.train.steps * med["step"] + evals * med["evaluation"]
    print(format_table(["case", "median s"], [[k, f"{v:.4f}"] for k, v in med.items()]))
    print(f"trial: {cfg.train.steps} steps, {evals} evaluations = {trial:.1f} s "
          f"(load average {load_average()})")
    print(f"token-controlled metrics / one evaluation: {med['metrics'] / med['evaluation']:.3f}")
    print(f"step-0 evaluation / the rest of the trial: {med['evaluation'] / trial:.4f}")


if __name__ == "__main__":
    main()
