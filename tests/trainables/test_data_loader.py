"""Training micro-batches (composition, weights, determinism, resume) and the validation set."""

import dataclasses

import numpy as np
import pytest
import torch

from trainables.config import TrialConfig
from trainables.data import StepSampler, build_mix, eval_batches
from trainables.errors import ConfigError


def _trial(data_cfg, **data_changes):
    """Micro-batches drawn independently (the composition these tests count); domain-complete
    steps are counted in test_step_composition.py."""
    data_changes.setdefault("step_composition", "independent")
    cfg = TrialConfig(data=dataclasses.replace(data_cfg, **data_changes))
    cfg.train.micro_batch_size = 6
    cfg.train.grad_accum = 4
    cfg.data.seq_len = 32
    return cfg


@pytest.fixture(scope="module")
def mix(small_mix_config):
    return build_mix(small_mix_config)


def _labels_per_micro_batch(sampler, steps):
    return [mb.domains.tolist() for _ in range(steps) for mb in sampler.next_step()]


def test_step_shapes_and_windows_come_from_the_labelled_domain(mix, small_mix_config):
    cfg = _trial(small_mix_config)
    step = StepSampler(mix, cfg).next_step()
    assert len(step) == cfg.train.grad_accum
    streams = [s.tobytes() for s in mix.train]
    for mb in step:
        assert mb.tokens.shape == (6, 33) and mb.tokens.dtype == torch.int64
        assert mb.domains.shape == (6,) and mb.domains.dtype == torch.int64
        assert torch.equal(mb.inputs, mb.tokens[:, :-1]) and torch.equal(mb.targets, mb.tokens[:, 1:])
        for row, d in zip(mb.tokens, mb.domains.tolist()):
            assert bytes(row.tolist()) in streams[d]


@pytest.mark.parametrize("per_micro_batch,expected_distinct", [(1, {1}), (2, {2}), (3, {3})])
def test_fixed_number_of_domains_per_micro_batch(mix, small_mix_config, per_micro_batch, expected_distinct):
    sampler = StepSampler(mix, _trial(small_mix_config, domains_per_micro_batch=per_micro_batch))
    batches = _labels_per_micro_batch(sampler, 50)
    assert {len(set(b)) for b in batches} == expected_distinct
    for b in batches:  # equal shares: 6 sequences over k domains
        counts = np.unique(b, return_counts=True)[1]
        assert counts.max() - counts.min() <= 1
    # Over many micro-batches every domain shows up.
    assert set(np.concatenate(batches)) == set(range(len(mix.domains)))


def test_random_composition_mixes_domains_iid(mix, small_mix_config):
    sampler = StepSampler(mix, _trial(small_mix_config, domains_per_micro_batch="random"))
    batches = _labels_per_micro_batch(sampler, 250)  # 1000 micro-batches of 6
    distinct = [len(set(b)) for b in batches]
    # iid over 6 equally likely domains: P(all 6 labels the same) = 6 / 6**6, and the expected
    # number of distinct labels in 6 draws is 6 * (1 - (5/6)**6) = 3.99.
    assert min(distinct) >= 1 and max(distinct) >= 5
    assert abs(np.mean(distinct) - 6 * (1 - (5 / 6) ** 6)) < 0.1


@pytest.mark.parametrize("composition", [1, "random"])
def test_weights_skew_domain_frequencies(mix, small_mix_config, composition):
    """json weighted 4, the other five 1: json should be 4/9 of the sequences, each other 1/9."""
    cfg = _trial(small_mix_config, domains_per_micro_batch=composition, weights={"json": 4.0})
    labels = np.concatenate(_labels_per_micro_batch(StepSampler(mix, cfg, seed=3), 300))
    freq = np.bincount(labels, minlength=len(mix.domains)) / labels.size
    expected = np.full(len(mix.domains), 1 / 9)
    expected[mix.domains.index("json")] = 4 / 9
    # 7200 sequences (1200 independent draws for composition 1): a binomial standard error of
    # at most sqrt(0.25 / 1200) = 0.0144; 0.05 is more than three of them.
    assert np.abs(freq - expected).max() < 0.05, freq


def test_deterministic_for_seed_and_rank(mix, small_mix_config):
    cfg = _trial(small_mix_config, domains_per_micro_batch="random")

    def stream(**kw):
        sampler = StepSampler(mix, cfg, world_size=2, **kw)
        return torch.cat([mb.tokens for _ in range(3) for mb in sampler.next_step()])

    a = stream(rank=0, seed=5)
    assert torch.equal(a, stream(rank=0, seed=5))
    assert not torch.equal(a, stream(rank=1, seed=5))
    assert not torch.equal(a, stream(rank=0, seed=6))
    # Without an explicit seed the sampler follows train.seed.
    cfg.train.seed = 5
    assert torch.equal(a, stream(rank=0))


def test_state_dict_round_trip_continues_the_stream(mix, small_mix_config):
    cfg = _trial(small_mix_config, domains_per_micro_batch=2, weights={"c": 2.0})
    original = StepSampler(mix, cfg, seed=11)
    for _ in range(5):
        original.next_step()
    state = original.state_dict()
    expected = [original.next_step() for _ in range(3)]
    resumed = StepSampler(mix, cfg, seed=999)  # the saved state decides, not the new seed
    resumed.load_state_dict(state)
    assert resumed.steps_drawn == 5
    got = [resumed.next_step() for _ in range(3)]
    for step_a, step_b in zip(expected, got):
        for a, b in zip(step_a, step_b):
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.domains, b.domains)


def test_eval_batches_are_fixed_balanced_and_from_validation(mix, small_mix_config):
    cfg = _trial(small_mix_config, eval_sequences_per_domain=10)
    batches = eval_batches(mix, cfg, batch_size=16)
    again = eval_batches(mix, cfg, batch_size=16)
    assert [b.tokens.shape[0] for b in batches] == [16, 16, 16, 12]  # 60 sequences
    for a, b in zip(batches, again):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.domains, b.domains)
    labels = torch.cat([b.domains for b in batches])
    assert torch.bincount(labels).tolist() == [10] * len(mix.domains)
    assert all(len(set(b.domains.tolist())) > 1 for b in batches)  # batches mix domains
    val = [s.tobytes() for s in mix.val]
    train = [s.tobytes() for s in mix.train]
    tokens = torch.cat([b.tokens for b in batches])
    in_train = 0
    for row, d in zip(tokens, labels.tolist()):
        window = bytes(row.tolist())
        assert window in val[d]
        in_train += window in train[d]
    # Held-out documents; only a stock phrase ("Nach einer interfraktionellen Vereinbarung")
    # may also occur in training text.
    assert in_train <= 0.1 * len(tokens)
    # Windows spread over the whole stream: the first starts at 0, the last ends at the end.
    first_of_domain0 = bytes(tokens[0].tolist())
    assert val[0].startswith(first_of_domain0)
    last_of_domain0 = bytes(tokens[-len(mix.domains)].tolist())
    assert val[0].endswith(last_of_domain0)


def test_bad_loader_settings_are_config_errors(mix, small_mix_config):
    too_long = _trial(small_mix_config)
    too_long.data.seq_len = 10_000_000
    with pytest.raises(ConfigError, match="data.seq_len"):
        StepSampler(mix, too_long)
    with pytest.raises(ConfigError, match="data.seq_len"):
        eval_batches(mix, too_long)
    with pytest.raises(ConfigError, match="domains_per_micro_batch"):
        StepSampler(mix, _trial(small_mix_config, domains_per_micro_batch=7))
