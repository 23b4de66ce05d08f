"""The domain data mix: distinguishable text domains, balanced, cached, and batched by domain.

``build_mix(cfg.data)`` gives a DomainMix (per-domain byte streams, train and validation);
``StepSampler`` / ``eval_batches`` turn it into labelled micro-batches. The loader (and with it
torch) is imported only when one of its names is used, so ``moe-study data describe`` stays light.
"""

from trainables.data.mix import DomainMix, build_mix, check_sources, describe_mix, mix_cache_key
from trainables.data.user_sources import with_absolute_paths

_LOADER_NAMES = {"MicroBatch", "StepSampler", "eval_batches", "domain_probabilities"}

__all__ = [
    "DomainMix", "build_mix", "check_sources", "describe_mix", "mix_cache_key", "with_absolute_paths",
    *sorted(_LOADER_NAMES),
]


def __getattr__(name: str):
    if name in _LOADER_NAMES:
        from trainables.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
