"""Training and evaluation batches drawn from a DomainMix.

A training sequence is a random window of ``seq_len + 1`` bytes from one domain's train stream
(inputs are its first ``seq_len`` bytes, targets the last ``seq_len``). How many domains share a
micro-batch is ``data.domains_per_micro_batch``:

- ``1``: every micro-batch comes from one domain;
- ``n``: each micro-batch holds ``n`` distinct domains in equal shares (sizes differ by at most 1);
- ``"random"``: every sequence's domain is drawn independently.

Domains are drawn with probability proportional to ``data.weights`` (default 1 each).

``data.step_composition`` decides whether an optimizer step is *domain-complete*. With
``independent`` (the rule above, micro-batch by micro-batch) a step of 6 micro-batches over 6
domains holds 4.0 domains on average and rarely all of them, so "global-batch" balancing still
pushes a step's domains onto the experts of the missing ones. With ``domain_complete`` every
step of every data-parallel worker holds each domain equally: one domain per micro-batch gives
each domain ``grad_accum / D`` micro-batches in a shuffled order; ``random`` gives each domain
``micro_batch_size * grad_accum / D`` sequences, shuffled across the step's micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainables.config import TrialConfig, step_shares
from trainables.data.mix import DomainMix
from trainables.errors import ConfigError

# Mixed into every sampler seed so the data stream is independent of other uses of train.seed.
_STREAM_TAG = 0x6D6F65  # "moe"


@dataclass
class MicroBatch:
    tokens: torch.Tensor
    """[B, L+1] int64 byte values."""
    domains: torch.Tensor
    """[B] int64 domain labels (indices into ``DomainMix.domains``)."""

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[:, 1:]

    def to(self, device: torch.device | str) -> "MicroBatch":
        return MicroBatch(self.tokens.to(device, non_blocking=True),
                          self.domains.to(device, non_blocking=True))


def domain_probabilities(mix: DomainMix, cfg: TrialConfig) -> np.ndarray:
    """Sampling probability of each domain, from ``data.weights`` (missing names weigh 1)."""
    weights = np.array([float(cfg.data.weights.get(d, 1.0)) for d in mix.domains])
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ConfigError(f"data.weights: every weight must be > 0 (got {cfg.data.weights})")
    return weights / weights.sum()


def _windows(stream: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """[N, length] slices ``stream[s:s+length]`` for every start."""
    return stream[starts[:, None] + np.arange(length)[None, :]]


def _check_length(mix: DomainMix, streams: list[np.ndarray], length: int, which: str) -> None:
    short = [f"{d} ({s.size} bytes)" for d, s in zip(mix.domains, streams) if s.size < length]
    if short:
        raise ConfigError(
            f"data.seq_len: {which} streams shorter than seq_len + 1 = {length} bytes: "
            f"{', '.join(short)}; lower data.seq_len or raise data.bytes_per_domain"
        )


class StepSampler:
    """The training stream of one data-parallel rank: ``next_step()`` gives one optimizer step."""

    def __init__(self, mix: DomainMix, cfg: TrialConfig, *, rank: int = 0, world_size: int = 1,
                 seed: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.mix = mix
        self.seq_len = cfg.data.seq_len
        self.micro_batch_size = cfg.train.micro_batch_size
        self.grad_accum = cfg.train.grad_accum
        self.composition = cfg.data.domains_per_micro_batch
        if self.composition != "random":
            self.composition = int(self.composition)
            if not 1 <= self.composition <= min(len(mix.domains), self.micro_batch_size):
                raise ConfigError(
                    f"data.domains_per_micro_batch: {self.composition} must be between 1 and "
                    f"min(number of domains {len(mix.domains)}, train.micro_batch_size "
                    f"{self.micro_batch_size})"
                )
        self.probabilities = domain_probabilities(mix, cfg)
        self.domain_complete = cfg.data.step_composition == "domain_complete"
        self.weights = dict(cfg.data.weights)
        _check_length(mix, mix.train, self.seq_len + 1, "train")
        self.seed = cfg.train.seed if seed is None else seed
        self.rank = rank
        # (seed, rank) fixes the stream; different ranks draw independent streams.
        self._rng = np.random.Generator(np.random.PCG64([_STREAM_TAG, self.seed, rank]))
        self.steps_drawn = 0

    def _micro_batch_labels(self) -> np.ndarray:
        n_domains, size = len(self.mix.domains), self.micro_batch_size
        if self.composition == "random":
            return self._rng.choice(n_domains, size=size, p=self.probabilities)
        k = self.composition
        chosen = self._rng.choice(n_domains, size=k, replace=False, p=self.probabilities)
        shares = np.full(k, size // k)
        shares[: size % k] += 1
        return np.repeat(chosen, shares)

    def _step_labels(self) -> np.ndarray:
        """[grad_accum, micro_batch_size] domain labels of a domain-complete step: each domain's
        share of the step (equal, or in proportion to ``data.weights``) in a shuffled order."""
        size, steps = self.micro_batch_size, self.grad_accum
        units = steps if self.composition == 1 else size * steps
        shares = step_shares(self.mix.domains, self.weights, units)
        if shares is None:  # the config check refuses this before a sampler is built
            raise ConfigError(f"data.weights {self.weights}: no whole split of {units} per step")
        labels = np.repeat(np.arange(len(self.mix.domains)), shares)
        self._rng.shuffle(labels)
        if self.composition == 1:
            return np.repeat(labels[:, None], size, axis=1)
        return labels.reshape(steps, size)

    def _micro_batch(self, labels: np.ndarray | None = None) -> MicroBatch:
        labels = self._micro_batch_labels() if labels is None else labels
        tokens = np.empty((labels.size, self.seq_len + 1), dtype=np.uint8)
        for d in np.unique(labels):
            rows = np.flatnonzero(labels == d)
            stream = self.mix.train[d]
            starts = self._rng.integers(0, stream.size - self.seq_len, size=rows.size)
            tokens[rows] = _windows(stream, starts, self.seq_len + 1)
        return MicroBatch(torch.from_numpy(tokens).long(), torch.from_numpy(labels).long())

    def next_step(self) -> list[MicroBatch]:
        """``train.grad_accum`` micro-batches of ``train.micro_batch_size`` sequences each."""
        if self.domain_complete:
            batches = [self._micro_batch(labels) for labels in self._step_labels()]
        else:
            batches = [self._micro_batch() for _ in range(self.grad_accum)]
        self.steps_drawn += 1
        return batches

    def state_dict(self) -> dict:
        return {"rng": self._rng.bit_generator.state, "steps_drawn": self.steps_drawn,
                "seed": self.seed, "rank": self.rank, "mix": self.mix.content_hash}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream of a saved sampler (same mix expected)."""
        if state.get("mix") not in (None, self.mix.content_hash):
            raise ValueError(f"sampler state is for mix {state['mix']}, not {self.mix.content_hash}")
        self._rng.bit_generator.state = state["rng"]
        self.steps_drawn = int(state["steps_drawn"])
        self.seed = state.get("seed", self.seed)
        self.rank = state.get("rank", self.rank)


def eval_batches(mix: DomainMix, cfg: TrialConfig, batch_size: int = 16) -> list[MicroBatch]:
    """The fixed validation set: ``data.eval_sequences_per_domain`` windows per domain, spread
    evenly over each validation stream (no randomness), interleaved so batches mix domains."""
    n = cfg.data.eval_sequences_per_domain
    length = cfg.data.seq_len + 1
    _check_length(mix, mix.val, length, "validation")
    per_domain = []
    for stream in mix.val:
        starts = np.linspace(0, stream.size - length, n).round().astype(np.int64)
        per_domain.append(_windows(stream, starts, length))
    # Row j * D + d is window j of domain d.
    tokens = np.stack(per_domain, axis=1).reshape(-1, length)
    labels = np.tile(np.arange(len(mix.domains)), n)
    tokens_t = torch.from_numpy(tokens).long()
    labels_t = torch.from_numpy(labels).long()
    return [MicroBatch(tokens_t[i:i + batch_size], labels_t[i:i + batch_size])
            for i in range(0, tokens_t.shape[0], batch_size)]
