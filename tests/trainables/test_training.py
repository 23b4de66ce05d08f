"""The training loop on real text: learns every domain, is repeatable, resumes, and the
reference router reaches the upper bound."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from trainables.config import TrialConfig
from trainables.data import build_mix, eval_batches
from trainables.model import MoETransformer
from trainables.training import REPORT_KEY, TrainingDiverged, evaluate, lr_at, run_to_end, seed_everything, train


def _cfg(small_mix_config, **flat) -> TrialConfig:
    base = {
        "model.n_layers": 1, "model.d_model": 64, "model.n_heads": 2, "model.n_experts": 12,
        "model.top_k": 2, "model.expert_hidden": 64, "data.seq_len": 64,
        "data.eval_sequences_per_domain": 8, "train.micro_batch_size": 4, "train.grad_accum": 2,
        "data.step_composition": "independent",  # 2 micro-batches cannot hold 6 domains
        "train.steps": 40, "train.eval_every": 20, "train.warmup_steps": 5, "train.lr": 3e-3,
    }
    base.update(flat)
    cfg = TrialConfig.from_flat(base)
    cfg.data = dataclasses.replace(small_mix_config, **{
        k.split(".", 1)[1]: v for k, v in base.items() if k.startswith("data.")
    })
    return cfg


def test_short_run_lowers_validation_loss_on_every_domain(small_mix_config):
    cfg = _cfg(small_mix_config)
    mix = build_mix(cfg.data)
    seed_everything(cfg.train.seed)
    untrained = evaluate(MoETransformer(cfg), eval_batches(mix, cfg), cfg, mix.domains, torch.device("cpu"))[0]
    final = run_to_end(cfg, mix=mix).metrics
    for d in mix.domains:
        assert final[f"val_loss/{d}"] < untrained[f"val_loss/{d}"] - 0.5, d
    assert math.isclose(final["val_loss"], sum(final[f"val_loss/{d}"] for d in mix.domains) / len(mix.domains))
    assert final["balance_window_tokens"] == 64 * 4 * 2  # global: the whole step


def test_reference_router_reaches_the_upper_bound(small_mix_config):
    cfg = _cfg(small_mix_config, **{"router.method": "reference", "train.steps": 10})
    m = run_to_end(cfg).metrics
    assert m["purity"] == 1.0
    assert m["reference_agreement"] == 1.0
    # expert determines domain: I = H(domain) = log 6, H(expert) = log 12 (two experts a group,
    # both used by top-2): NMI = I / sqrt(H(E) H(D)) = sqrt(log 6 / log 12)
    assert m["nmi"] == pytest.approx(math.sqrt(math.log(6) / math.log(12)))
    assert m["dead_expert_fraction"] == 0.0


def test_same_seed_same_run_and_other_seed_differs(small_mix_config):
    cfg = _cfg(small_mix_config, **{"train.steps": 6, "train.eval_every": 6})
    a, b = run_to_end(cfg).metrics, run_to_end(cfg).metrics
    assert a["val_loss"] == b["val_loss"] and a["purity"] == b["purity"]
    cfg.train.seed = 1
    assert run_to_end(cfg).metrics["val_loss"] != a["val_loss"]


def test_resume_from_a_checkpoint_continues_the_same_run(small_mix_config):
    cfg = _cfg(small_mix_config, **{"train.steps": 8, "train.eval_every": 4})
    full = run_to_end(cfg).metrics
    gen = train(cfg)  # state() reads the live run: take it while the run stands at step 4
    first = next(gen)
    state_at_4 = first.state()
    gen.close()
    resumed = run_to_end(cfg, resume_state=state_at_4).metrics
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], abs=1e-5)
    assert resumed["purity"] == pytest.approx(full["purity"], abs=1e-9)
    # the time the trial held its resources goes on from the first attempt's: its cost
    held_before = first.metrics["trial_wall_s"]
    assert held_before > 0 and resumed["trial_wall_s"] > held_before + resumed["elapsed_s"] - 1e-9


@pytest.mark.parametrize("saved_report", [True, False], ids=["report-in-checkpoint", "older-checkpoint"])
def test_resume_at_the_last_step_gives_the_last_report_again(small_mix_config, tmp_path, saved_report):
    """A trial restored from its final checkpoint trains nothing but reports once more, so a
    report lost with a killed driver reaches the records (docs/faults.md)."""
    cfg = _cfg(small_mix_config, **{"train.steps": 4, "train.eval_every": 2})
    last = list(train(cfg))[-1]
    path = tmp_path / "state.pt"
    torch.save(last.state(), path)
    state = torch.load(path, weights_only=True)  # as study.run.trial loads it
    if not saved_report:
        del state[REPORT_KEY]
    replayed = list(train(cfg, resume_state=state))
    assert len(replayed) == 1 and replayed[0].done and replayed[0].step == 4
    if saved_report:  # exactly the report that was given at the checkpoint
        assert replayed[0].metrics == last.metrics
    else:  # evaluated again on the same weights (no train_loss to recover)
        for name in ("val_loss", "purity", "load_entropy"):
            assert replayed[0].metrics[name] == pytest.approx(last.metrics[name], abs=1e-6)
        assert replayed[0].metrics["step"] == 4
    assert (replayed[0].count_table == last.count_table).all()


def test_warmup_then_cosine_schedule():
    cfg = TrialConfig.from_flat({"train.lr": 1.0, "train.warmup_steps": 10, "train.steps": 110,
                                 "train.min_lr_ratio": 0.1})
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half-way down the cosine: 0.1 + 0.9 * 0.5
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_a_diverging_run_raises(small_mix_config):
    cfg = _cfg(small_mix_config, **{"train.steps": 3, "train.lr": 1e30, "train.grad_clip": 0.0,
                                    "train.warmup_steps": 0})
    with pytest.raises(TrainingDiverged):
        run_to_end(cfg)


def test_window_scope_trains_and_reports_its_window(small_mix_config):
    cfg = _cfg(small_mix_config, **{"router.scope": "window", "router.balance_window": 2,
                                    "train.steps": 6, "train.eval_every": 6})
    m = run_to_end(cfg).metrics
    assert m["balance_window_tokens"] == 64 * 2
    assert math.isfinite(m["val_loss"]) and 0 < m["purity"] <= 1


def test_time_the_caller_holds_the_run_is_not_training_time(small_mix_config):
    import time

    cfg = _cfg(small_mix_config, **{"train.steps": 4, "train.eval_every": 2})
    gen = train(cfg)
    first = next(gen)
    time.sleep(0.3)  # what checkpointing and reporting would take
    last = list(gen)[-1]
    assert first.metrics["train_s"] == pytest.approx(first.metrics["elapsed_s"])
    assert last.metrics["elapsed_s"] - last.metrics["train_s"] >= 0.3
    # the evaluations at the reports are part of train_s, counted up over the reports
    assert 0 < first.metrics["eval_s"] < last.metrics["eval_s"] < last.metrics["train_s"]


def test_extra_eval_steps_add_reports_without_changing_the_run(small_mix_config):
    """A scheduler's rungs become evaluation points; the training itself is the same run, and
    each report's train_loss averages the steps since the previous report."""
    cfg = _cfg(small_mix_config, **{"train.steps": 9, "train.eval_every": 6})
    plain = list(train(cfg))
    extra = list(train(cfg, extra_eval_steps={2, 6, 7}))
    assert [r.step for r in plain] == [6, 9]
    assert [r.step for r in extra] == [2, 6, 7, 9]
    assert extra[-1].metrics["val_loss"] == plain[-1].metrics["val_loss"]
    assert extra[1].metrics["purity"] == plain[0].metrics["purity"]
    # the losses of steps 1-6 are the same in both runs: their mean splits as 2 + 4 steps
    six_step_mean = plain[0].metrics["train_loss"]
    assert (2 * extra[0].metrics["train_loss"] + 4 * extra[1].metrics["train_loss"]) / 6 == pytest.approx(six_step_mean)
    # 3 steps after 6 in the plain run = step 7 + steps 8-9 in the other
    assert (extra[2].metrics["train_loss"] + 2 * extra[3].metrics["train_loss"]) / 3 == pytest.approx(
        plain[1].metrics["train_loss"])


@pytest.mark.parametrize("max_norm", [0.5, 100.0])  # clipped, and left alone
def test_gradient_clipping_matches_torch(max_norm):
    from trainables.training import clip_gradients

    gen = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(5))]
    ref = [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(5))]
    for a, b in zip(ours, ref):
        a.grad = torch.randn(a.shape, generator=gen)
        b.grad = a.grad.clone()
    by_hand = math.sqrt(sum(float((a.grad.double() ** 2).sum()) for a in ours))  # about 3.6
    norm = float(clip_gradients(ours, max_norm))
    torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert norm == pytest.approx(by_hand)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad)
    after = math.sqrt(sum(float((a.grad.double() ** 2).sum()) for a in ours))
    assert after == pytest.approx(min(by_hand, max_norm), rel=1e-5)
