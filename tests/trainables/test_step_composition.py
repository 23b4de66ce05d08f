"""Domain-complete optimizer steps, and the same-script mix: counted, step by step."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from trainables.config import NAMED_MIXES, TrialConfig
from trainables.data import StepSampler, build_mix
from trainables.errors import ConfigError

D = 6


def config(small_mix_config, **flat) -> TrialConfig:
    base = {"data.cache_dir": small_mix_config.cache_dir,
            "data.bytes_per_domain": small_mix_config.bytes_per_domain,
            "train.micro_batch_size": 4, "train.grad_accum": 6}
    return TrialConfig.from_flat({**base, **flat})


def step_counts(sampler: StepSampler) -> tuple[Counter, list[list[int]]]:
    """Sequences per domain in one step, and each micro-batch's labels."""
    batches = sampler.next_step()
    labels = [mb.domains.tolist() for mb in batches]
    return Counter(d for mb in labels for d in mb), labels


def test_independent_steps_miss_domains(small_mix_config):
    """The old rule, counted: a 6-micro-batch step over 6 domains holds 6 (1 - (5/6)^6) = 3.99
    domains on average, all six with probability 6!/6^6 = 1.5 %."""
    cfg = config(small_mix_config, **{"data.step_composition": "independent"})
    sampler = StepSampler(build_mix(cfg.data), cfg)
    held = [len(step_counts(sampler)[0]) for _ in range(400)]
    assert abs(np.mean(held) - 6 * (1 - (5 / 6) ** 6)) < 0.15
    assert np.mean([h == 6 for h in held]) < 0.05


def test_domain_complete_steps_hold_every_domain_equally(small_mix_config):
    cfg = config(small_mix_config, **{"data.step_composition": "domain_complete"})
    sampler = StepSampler(build_mix(cfg.data), cfg)
    orders = set()
    for _ in range(200):
        counts, labels = step_counts(sampler)
        assert counts == {d: 4 * 6 // D for d in range(D)}  # micro_batch_size * grad_accum / D
        assert all(len(set(mb)) == 1 for mb in labels)  # still one domain per micro-batch
        orders.add(tuple(mb[0] for mb in labels))
    assert len(orders) > 100  # the micro-batches' order is shuffled, step by step


def test_domain_complete_with_random_micro_batches(small_mix_config):
    cfg = config(small_mix_config, **{"data.step_composition": "domain_complete",
                                      "data.domains_per_micro_batch": "random", "train.grad_accum": 3})
    sampler = StepSampler(build_mix(cfg.data), cfg)
    mixed = 0
    for _ in range(100):
        counts, labels = step_counts(sampler)
        assert counts == {d: 4 * 3 // D for d in range(D)}
        mixed += sum(len(set(mb)) > 1 for mb in labels)
    assert mixed > 250  # sequences of several domains share micro-batches


def test_every_data_parallel_worker_is_domain_complete_and_draws_its_own_data(small_mix_config):
    cfg = config(small_mix_config, **{"data.step_composition": "domain_complete"})
    mix = build_mix(cfg.data)
    ranks = [StepSampler(mix, cfg, rank=r, world_size=2) for r in range(2)]
    for _ in range(50):
        steps = [r.next_step() for r in ranks]
        total = Counter(d for step in steps for mb in step for d in mb.domains.tolist())
        assert total == {d: 2 * 4 * 6 // D for d in range(D)}  # the global step: both workers
        for step in steps:
            assert Counter(d for mb in step for d in mb.domains.tolist()) == {d: 4 for d in range(D)}
        assert not np.array_equal(steps[0][0].tokens.numpy(), steps[1][0].tokens.numpy())


def test_resumed_sampler_continues_the_same_domain_complete_stream(small_mix_config):
    cfg = config(small_mix_config, **{"data.step_composition": "domain_complete"})
    mix = build_mix(cfg.data)
    a = StepSampler(mix, cfg)
    for _ in range(3):
        a.next_step()
    b = StepSampler(mix, cfg)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        sa, sb = a.next_step(), b.next_step()
        assert all(np.array_equal(x.tokens, y.tokens) and np.array_equal(x.domains, y.domains)
                   for x, y in zip(sa, sb))


def test_weighted_domain_complete_steps_hold_each_domain_in_proportion(small_mix_config):
    """english weighs 3: 3 of a step's 8 micro-batches, every other domain 1, every step (a
    skewed mix whose global batch still holds every domain, and as many sequences as 6 x 4)."""
    cfg = config(small_mix_config, **{"data.step_composition": "domain_complete",
                                      "data.weights": {"english": 3}, "train.micro_batch_size": 3,
                                      "train.grad_accum": 8})
    english = cfg.data.domains.index("english")
    sampler = StepSampler(build_mix(cfg.data), cfg)
    firsts = set()
    for _ in range(100):
        counts, labels = step_counts(sampler)
        assert counts == {d: 3 * (3 if d == english else 1) for d in range(D)}
        assert all(len(set(mb)) == 1 for mb in labels)
        firsts.add(labels[0][0])
    assert len(firsts) == D  # shuffled: any domain may come first
    random_mbs = config(small_mix_config, **{"data.step_composition": "domain_complete",
                                             "data.weights": {"english": 3}, "train.micro_batch_size": 4,
                                             "data.domains_per_micro_batch": "random"})
    counts, _ = step_counts(StepSampler(build_mix(random_mbs.data), random_mbs))
    assert counts == {d: 9 if d == english else 3 for d in range(D)}  # 24 sequences split 3:1


@pytest.mark.parametrize("flat,message", [
    ({"train.grad_accum": 4}, "train.grad_accum (4) divisible by the 6 domains"),
    ({"data.domains_per_micro_batch": 2}, "1 or 'random' (got 2)"),
    ({"data.weights": {"english": 4.0}},
     "train.grad_accum (6) to split in proportion to data.weights {'english': 4.0}"),
    ({"data.weights": {"english": 3.0}, "train.grad_accum": 9}, "train.grad_accum (9) to split"),
    ({"data.domains_per_micro_batch": "random", "train.micro_batch_size": 5, "train.grad_accum": 1},
     "train.micro_batch_size x train.grad_accum (5) divisible by the 6 domains"),
])
def test_domain_complete_configs_that_cannot_be_are_refused(flat, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrialConfig.from_flat({"data.step_composition": "domain_complete", **flat})
    with pytest.raises(ConfigError, match="data.step_composition: expected one of"):
        TrialConfig.from_flat({"data.step_composition": "complete"})


def test_named_mix_sets_the_domains_by_one_key():
    cfg = TrialConfig.from_flat({"data.mix": "same_script"})
    assert cfg.data.domains == list(NAMED_MIXES["same_script"]) and "chinese" not in cfg.data.domains
    assert TrialConfig.from_flat(cfg.to_flat()).data.domains == cfg.data.domains  # round trip
    with pytest.raises(ConfigError, match="differs from data.mix 'same_script'"):
        TrialConfig.from_flat({"data.mix": "same_script", "data.domains": ["english", "python"]})
    with pytest.raises(ConfigError, match="data.mix: unknown mix 'latin'"):
        TrialConfig.from_flat({"data.mix": "latin"})


def test_same_script_mix_has_no_domain_owning_byte_values(small_mix_config):
    """In the default mix 15 % of tokens are bytes one domain owns (> 90 % of their occurrences:
    Chinese UTF-8); in the same-script mix, under 2 %."""
    def owned_share(domains):
        mix = build_mix(dataclasses.replace(small_mix_config, domains=list(domains)))
        occ = np.stack([np.bincount(s, minlength=256) for s in mix.val], axis=1).astype(float)
        total = occ.sum(axis=1)
        owned = (total > 0) & (occ.max(axis=1) > 0.9 * total)
        return occ[owned].sum() / occ.sum()

    assert owned_share(NAMED_MIXES["default"]) > 0.1
    assert owned_share(NAMED_MIXES["same_script"]) < 0.02
