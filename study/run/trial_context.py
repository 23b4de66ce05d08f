"""What a Tune trial needs from its study besides its own config, carried under one key.

A Tune config is the flat trial config (dotted keys, ``trainables.config``) plus one private
key, ``_study``: the ``TrialContext`` as a plain dict (plain so that Tune's experiment state,
its ``params.json`` and a resumed study read it like any other config value). The runner builds
it, the trial function and the tracker read it; nobody else spells its fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from study.naming import PRIVATE_PREFIX, trial_params
from trainables.config import TrialConfig
from trainables.errors import ConfigError


CONTEXT_KEY = PRIVATE_PREFIX + "study"
"""The one private key of a Tune config; every other key is a dotted trial-config key."""

_LEGACY_PREFIX = PRIVATE_PREFIX
"""Studies started before the context had one key spelled each field as its own ``_<field>``
key; ``from_tune_config`` still reads those, so such a study resumes."""


@dataclass(frozen=True)
class TrialContext:
    reference: Mapping[str, float] = field(default_factory=dict)
    """The reference router's final metrics: every report carries its gaps to them."""
    objective: Mapping[str, Any] | None = None
    """``Objective.to_dict()`` of the spec: reports carry the penalised objective values."""
    search_keys: tuple[str, ...] = ()
    """The spec's searched keys: one the trial's config lacks was inactive (a condition)."""
    workers: int = 1
    """Data-parallel workers of the trial; > 1 runs it on a Ray Train TorchTrainer."""
    cpu_per_worker: float = 1.0
    gpu_per_worker: float = 0.0
    eval_steps: tuple[int, ...] = ()
    """Steps to evaluate at besides every ``train.eval_every`` (ASHA's rungs)."""
    config_hash: str = ""
    """Identity of the run's config (set on reference runs, which are reused by it)."""

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            problems.append(f"{CONTEXT_KEY}.workers: {self.workers!r} must be a whole number >= 1")
        for name in ("cpu_per_worker", "gpu_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                problems.append(f"{CONTEXT_KEY}.{name}: {value!r} must be a number >= 0")
        if problems:
            raise ConfigError(problems)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["reference"] = dict(self.reference)
        out["search_keys"] = list(self.search_keys)
        out["eval_steps"] = list(self.eval_steps)
        return out

    def tune_config(self, flat: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A Tune config (or param space): the flat trial keys plus this context."""
        return {**(flat or {}), CONTEXT_KEY: self.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialContext":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError([f"{CONTEXT_KEY}: unknown field(s) {unknown}"])
        values = dict(data)
        for name in ("search_keys", "eval_steps"):
            if name in values:
                values[name] = tuple(values[name] or ())
        values["eval_steps"] = tuple(int(s) for s in values.get("eval_steps", ()))
        values["reference"] = dict(values.get("reference") or {})
        return cls(**values)

    @classmethod
    def from_tune_config(cls, config: Mapping[str, Any]) -> "TrialContext":
        if CONTEXT_KEY in config:
            return cls.from_dict(config[CONTEXT_KEY] or {})
        names = {f.name for f in dataclasses.fields(cls)}
        legacy = {k[len(_LEGACY_PREFIX):]: v for k, v in config.items() if k.startswith(_LEGACY_PREFIX)}
        return cls.from_dict({k: v for k, v in legacy.items() if k in names and v is not None})


def split_tune_config(config: Mapping[str, Any]) -> tuple[TrialConfig, TrialContext]:
    """The validated trial config and the study's context of one Tune config."""
    return TrialConfig.from_flat(trial_params(config)), TrialContext.from_tune_config(config)
