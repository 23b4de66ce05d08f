"""The training loop: a generator of metric reports, free of Ray.

``train(cfg)`` yields a ``Report`` at every evaluation point (every ``train.eval_every`` steps
and at the last step). The Ray Tune adapter (``study.run.trial``) and the one-trial
CLI (``train_main``) both consume it; tests call it directly.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainables import metric_names as names
from trainables import metrics as routing_metrics_mod
from trainables.config import TrialConfig
from trainables.data.loader import MicroBatch, StepSampler, eval_batches
from trainables.data.mix import DomainMix, build_mix
from trainables.errors import ConfigError
from trainables.model import VOCAB_SIZE, MoETransformer
from trainables.moe import RoutingStats
from trainables.routing_counts import RoutingCounts
from trainables.specialisation import baseline_metrics, specialisation_metrics
from trainables.routers import runs_whole_step_forward
from trainables.runtime import tune_allocator
from trainables.distributed import DistributedGroup


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class Report:
    step: int
    metrics: dict[str, float]
    domains: list[str]
    count_table: np.ndarray | None = None
    """n[layer, expert, domain] of the evaluation at this step."""
    done: bool = False
    state: Callable[[], dict] = field(default=lambda: {}, repr=False)
    """Builds a checkpoint (model, optimizer, data stream, step) when called."""
    mix_hash: str = ""
    """Content hash of the data mix the trial trains and evaluates on (``DomainMix.content_hash``)."""
    routing_counts: RoutingCounts | None = field(default=None, repr=False)
    """The raw counts of this evaluation (token-controlled metrics); None when not evaluated
    again (a trial restored at its last report)."""


def resolve_device(cfg: TrialConfig) -> torch.device:
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def lr_at(step: int, cfg: TrialConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr at the last step."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * cosine)


def build_optimizer(model: torch.nn.Module, cfg: TrialConfig, fused: bool = True) -> torch.optim.Optimizer:
    # no weight decay on norms and the router (decaying router logits pulls them to uniform)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "router" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one kernel over all parameters per step (the MoE model has 4x the dense model's
    # parameters to update; BENCHMARKS.md, "Training step")
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95), fused=fused)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lm_loss(logits_BLV: torch.Tensor, targets_BL: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_BLV.float().reshape(-1, VOCAB_SIZE), targets_BL.reshape(-1))


@torch.no_grad()
def evaluate(
    model: MoETransformer, batches: list[MicroBatch], cfg: TrialConfig, domains: list[str], device
) -> tuple[dict[str, float], np.ndarray | None, RoutingCounts | None]:
    """Validation loss overall (mean over domains) and per domain, and the routing metrics:
    those of the expert x domain table (trainables.metrics) and the token-controlled ones, from
    counts by byte value and by evaluation sequence (trainables.specialisation). Returns the
    metrics, the expert x domain table n[layer, expert, domain] and those raw counts."""
    was_training = model.training
    model.eval()
    layers = model.moe_layers()
    n_sequences = sum(int(mb.tokens.shape[0]) for mb in batches)
    for layer in layers:
        layer.stats = RoutingStats(cfg.model.n_experts, len(domains), n_sequences)
    loss_sum = torch.zeros(len(domains), dtype=torch.float64)
    tok_count = torch.zeros(len(domains), dtype=torch.float64)
    first_sequence = 0
    for mb in batches:
        tokens, dom = mb.tokens.to(device), mb.domains.to(device)
        sequence_B = torch.arange(first_sequence, first_sequence + tokens.shape[0], device=device)
        first_sequence += tokens.shape[0]
        with _autocast(device):
            logits, _ = model(tokens[:, :-1], dom, sequence_B)
        per_tok = F.cross_entropy(
            logits.float().reshape(-1, VOCAB_SIZE), tokens[:, 1:].reshape(-1), reduction="none"
        ).view(tokens.shape[0], -1)
        loss_sum.index_add_(0, mb.domains, per_tok.sum(1).double().cpu())
        tok_count.index_add_(0, mb.domains, torch.full((tokens.shape[0],), per_tok.shape[1], dtype=torch.float64))
    per_domain = (loss_sum / tok_count.clamp_min(1)).tolist()
    out = {f"{names.VAL_LOSS}/{d}": v for d, v in zip(domains, per_domain)}
    out[names.VAL_LOSS] = float(np.mean(per_domain))
    count_table, raw = None, None
    if layers:
        count_table = np.stack([layer.stats.n_ED.numpy() for layer in layers])
        out.update(
            routing_metrics_mod.routing_metrics(
                count_table,
                dropped_L=[layer.stats.dropped for layer in layers],
                experts_per_group=cfg.model.n_experts // len(domains),
            )
        )
        raw = RoutingCounts(np.stack([layer.stats.n_XED.numpy() for layer in layers]),
                            np.stack([layer.stats.n_QE.numpy() for layer in layers]),
                            torch.cat([mb.domains for mb in batches]).numpy())
        out.update(specialisation_metrics(raw.n_LXED, raw.n_LQE, raw.domain_Q))
    for layer in layers:
        layer.stats = None
    model.train(was_training)
    return out, count_table, raw


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train(
    cfg: TrialConfig,
    *,
    resume_state: dict | None = None,
    mix: DomainMix | None = None,
    dist_group: DistributedGroup | None = None,
    extra_eval_steps: Collection[int] = (),
) -> Iterator[Report]:
    """Train one configuration; yield a Report at every evaluation point.

    ``extra_eval_steps`` adds evaluation points (steps counted from 1) to the regular
    ``train.eval_every`` ones: an early-stopping scheduler's rungs, so that it judges a trial
    at the step it names rather than at the next regular evaluation.

    With ``dist_group`` set (an initialised torch.distributed group), gradients are averaged
    over its workers and the global scope all-reduces expert counts across them.
    """
    started = time.perf_counter()  # the trial holds its resources from here (data, init eval)
    tune_allocator()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    dist_group = dist_group or DistributedGroup()
    world_size = dist_group.world_size
    rank = dist.get_rank(dist_group.group) if world_size > 1 else 0
    device = resolve_device(cfg)
    mix = mix or build_mix(cfg.data)
    domains = mix.domains

    seed_everything(cfg.train.seed)  # same init on every worker
    model = MoETransformer(cfg).to(device)
    for layer in model.moe_layers():
        layer.router.dist = dist_group
    optimizer = build_optimizer(model, cfg)
    sampler = StepSampler(mix, cfg, rank=rank, world_size=world_size, seed=cfg.train.seed)
    val_batches = eval_batches(mix, cfg)
    # The step-0 baseline: the same model before any update, on the same evaluation set and
    # code path. A resumed trial rebuilds it from the seed (same weights) before loading its
    # checkpoint, so every report of a trial carries the same *_init values.
    init_metrics, init_eval_s = evaluate_at_init(model, val_batches, cfg, domains, device)
    start_step = 0
    earlier_s = 0.0  # what earlier attempts of this trial held (a resumed one goes on from there)
    if resume_state:
        earlier_s = float((resume_state.get(REPORT_KEY) or {}).get("metrics", {}).get(names.TRIAL_WALL_S, 0.0))
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        sampler.load_state_dict(resume_state["sampler"])
        start_step = int(resume_state["step"])
        torch.set_rng_state(resume_state["torch_rng"])

    whole_step = runs_whole_step_forward(cfg)
    window = cfg.balance_window_tokens(world_size)
    tokens_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.data.seq_len * world_size
    t0 = time.perf_counter()
    paused_s = eval_s = 0.0
    train_losses: list[float] = []
    model.train()

    def checkpoint_state(step: int, metrics: dict, count_table: np.ndarray | None) -> Callable[[], dict]:
        return lambda: {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
            REPORT_KEY: _saved_report(metrics, count_table),
        }

    if start_step >= cfg.train.steps:
        # restored from the checkpoint of the last report: nothing left to train, but that
        # report may never have reached the caller's records (a driver killed right after the
        # checkpoint was saved), so it is given again, as it was
        saved = resume_state.get(REPORT_KEY)
        raw = None  # the raw counts are not in the checkpoint; its report's metrics are
        if saved is not None:
            metrics, table = dict(saved["metrics"]), saved["count_table"]
            count_table = None if table is None else table.numpy()
        else:  # a checkpoint from before reports were saved in it: evaluate again
            metrics, count_table, raw = evaluate(model, val_batches, cfg, domains, device)
            metrics.update(baseline_metrics(metrics, init_metrics), step=start_step,
                           init_eval_s=init_eval_s)
        yield Report(start_step, metrics, domains, count_table, True, lambda: resume_state,
                     mix.content_hash, raw)
        return

    for step in range(start_step, cfg.train.steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = forward_backward(model, sampler.next_step(), device, whole_step)
        if not math.isfinite(step_loss):
            raise TrainingDiverged(f"loss became {step_loss} at step {step}")
        if world_size > 1:
            _average_gradients(model, dist_group)
        apply_update(model, optimizer, cfg.train.grad_clip)
        done = step + 1 == cfg.train.steps
        report_now = (step + 1) % cfg.train.eval_every == 0 or done or (step + 1) in extra_eval_steps
        # read before post_step() empties the buffer (and only when reporting: it syncs a GPU)
        window_counts = global_counts_total(model) if report_now else 0.0
        model.post_step()
        train_losses.append(step_loss)

        if report_now:
            eval_started = time.perf_counter()
            val, count_table, raw = evaluate(model, val_batches, cfg, domains, device)
            eval_s += time.perf_counter() - eval_started
            val.update(baseline_metrics(val, init_metrics))
            elapsed = time.perf_counter() - t0
            val.update({
                names.TRAIN_LOSS: float(np.mean(train_losses)),  # since the previous report
                names.LR: lr,
                names.STEP: step + 1,
                names.TOKENS: (step + 1) * tokens_per_step,
                names.BALANCE_WINDOW_TOKENS: window,
                names.ELAPSED_S: elapsed,
                names.TRAIN_S: elapsed - paused_s,
                names.TOKENS_PER_S: (step + 1 - start_step) * tokens_per_step / max(elapsed, 1e-9),
                names.INIT_EVAL_S: init_eval_s,
                names.EVAL_S: eval_s,
                names.TRIAL_WALL_S: earlier_s + time.perf_counter() - started,
            })
            if window_counts > 0:
                val[names.GLOBAL_COUNTS_TOTAL] = window_counts
            paused_at = time.perf_counter()
            yield Report(step + 1, val, domains, count_table, done,
                         checkpoint_state(step + 1, val, count_table), mix.content_hash, raw)
            # time the caller held the run (checkpointing, reporting) is not training time
            paused_s += time.perf_counter() - paused_at
            train_losses.clear()


def evaluate_at_init(model: MoETransformer, batches: list[MicroBatch], cfg: TrialConfig,
                     domains: list[str], device) -> tuple[dict[str, float], float]:
    """``evaluate`` of the untrained model, and its seconds. The random number generators are
    left as they were: training after the baseline is the training without it."""
    t0 = time.perf_counter()
    rng_state = torch.get_rng_state()
    metrics, _, _ = evaluate(model, batches, cfg, domains, device)
    torch.set_rng_state(rng_state)
    return metrics, time.perf_counter() - t0


REPORT_KEY = "report"
"""Checkpoint key of the report the checkpoint was taken at (metrics and expert x domain table)."""


def _saved_report(metrics: dict, count_table: np.ndarray | None) -> dict:
    # plain floats and a tensor: what torch.load(weights_only=True) accepts back
    return {"metrics": {k: float(v) for k, v in metrics.items()},
            "count_table": None if count_table is None else torch.from_numpy(np.ascontiguousarray(count_table))}


def apply_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
    """Clip the gradients (when ``grad_clip`` > 0), step the optimizer, drop the gradients."""
    if grad_clip > 0:
        clip_gradients(list(model.parameters()), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that skips the multiply when nothing needs clipping, on CPU; returns
    the total norm (a 0-d tensor on the gradients' device, never read back from a GPU here).

    torch always multiplies every gradient by min(1, max_norm / norm) so that a GPU never waits
    for the norm; on CPU reading the norm costs nothing, and most steps of a trial are not clipped,
    so the pass over all gradients (the MoE model's are 4x the dense one's) is skipped then.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if grads[0].device.type != "cpu":
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.nn.utils.get_total_norm(grads)
    if total > max_norm or not torch.isfinite(total):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def global_counts_total(model: MoETransformer) -> float:
    """Routed slots in the first MoE layer's global-scope count buffer, this step so far.

    Only count-based routers (LBL, EB) at ``global_batch`` fill the buffer; for them, after the
    step's last micro-batch it holds every micro-batch of every data-parallel worker:
    ``balance_window_tokens * top_k`` (the ``global_counts_total`` diagnostic). 0 otherwise.
    """
    layers = model.moe_layers()
    if not layers:
        return 0.0
    return float(layers[0].router.counts.step_counts_E.sum())


def forward_backward(model: torch.nn.Module, micro_batches: list[MicroBatch], device,
                     whole_step: bool) -> float:
    """Gradients of one optimizer step's micro-batches (accumulated, or as one forward pass when
    ``whole_step``: the same gradient, see ``runs_whole_step_forward``); returns the mean LM loss."""
    if whole_step:
        micro_batches = [_concat(micro_batches)]
    step_loss = 0.0
    for mb in micro_batches:
        tokens, dom = mb.tokens.to(device), mb.domains.to(device)
        with _autocast(device):
            logits, aux = model(tokens[:, :-1], dom)
        loss = lm_loss(logits, tokens[:, 1:])
        total = (loss + aux) / len(micro_batches)
        total.backward()
        step_loss += loss.item() / len(micro_batches)
    return step_loss


def _concat(micro_batches: list[MicroBatch]) -> MicroBatch:
    return MicroBatch(
        tokens=torch.cat([mb.tokens for mb in micro_batches]),
        domains=torch.cat([mb.domains for mb in micro_batches]),
    )


def _average_gradients(model: torch.nn.Module, group: DistributedGroup) -> None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group.group)
    flat /= group.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def run_to_end(cfg: TrialConfig, **kwargs) -> Report:
    """Train and return the final report (tests, benchmarks, the one-trial CLI)."""
    last = None
    for report in train(cfg, **kwargs):
        last = report
    assert last is not None  # train.steps >= 1 is validated
    return last


def train_main(cfg: TrialConfig, json_out: bool = False, out_dir: str | None = None,
               fmt: str | None = None) -> int:
    """``moe-study train``: train one config, print progress to stderr and the final metrics
    (``fmt``: ``table``, one ``name value`` line each; ``json``, one object; ``csv``, a header and
    one row; ``json_out`` is ``fmt="json"``).

    With ``out_dir`` the expert x domain table is written there as Parquet.
    """
    import csv
    import io
    import json
    import sys

    fmt = fmt or ("json" if json_out else "table")
    if fmt not in ("table", "json", "csv"):
        raise ConfigError(f"--format: unknown format {fmt!r}, expected one of ['table', 'json', 'csv']")

    last = None
    for report in train(cfg):
        last = report
        m = report.metrics
        print(
            f"step {report.step}/{cfg.train.steps}  val_loss {m[names.VAL_LOSS]:.4f}  "
            f"purity {m.get(names.PURITY, float('nan')):.3f}  load_entropy "
            f"{m.get(names.LOAD_ENTROPY, float('nan')):.3f}  {m[names.TOKENS_PER_S]:.0f} tok/s",
            file=sys.stderr, flush=True,
        )
    assert last is not None
    if out_dir and last.count_table is not None:
        from trainables.count_table import write_count_table

        write_count_table(f"{out_dir}/count_table.parquet", last.count_table, last.domains)
    final = {k: v for k, v in last.metrics.items()}
    if fmt == "json":
        print(json.dumps(final, sort_keys=True))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=sorted(final), lineterminator="\n")
        writer.writeheader()
        writer.writerow(final)
        print(out.getvalue(), end="")
    else:
        width = max(len(k) for k in final)
        for k in sorted(final):
            print(f"{k:<{width}}  {final[k]:.6g}")
    return 0
